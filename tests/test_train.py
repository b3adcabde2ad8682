"""Tests of vib_jax.train (and the setup builder): schedules, EMA, the generic step, member keys,
the sweep's equivalence to single runs, evaluation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import smoke
from vib_jax import losses, parallel, sweep, train
from vib_jax.tasks import vib_classifier

INPUT_DIM, NUM_EXAMPLES, BATCH = 12, 96, 16


def vib_hparams(**values):
    """One member's hyperparameters as the step sees them: the task's defaults, then `values`."""
    defaults = {name: spec.default for name, spec in vib_classifier.HYPERPARAMETERS.items()}
    return {name: jnp.float32(value) for name, value in (defaults | values).items()}


def toy_config(**overrides):
    """The smoke config on a small model, for the toy problem below."""
    config = smoke.get_config()
    config.latent_dim, config.hidden_dims, config.batch_size = 4, (16,), BATCH
    config.learning_rate, config.ema_decay, config.train_samples, config.eval_samples = (
        3e-3,
        0.9,
        2,
        3,
    )
    for name, value in overrides.items():
        config[name] = value
    return config


@pytest.fixture(scope="module")
def toy_data():
    """A small learnable classification problem: labels are the argmax of a fixed linear map of
    x."""
    images = jax.random.normal(jax.random.key(0), (NUM_EXAMPLES, INPUT_DIM))
    weights = jax.random.normal(jax.random.key(1), (INPUT_DIM, 10))
    return images, jnp.argmax(images @ weights, axis=-1).astype(jnp.int32)


def vib_task(config, images, labels):
    return vib_classifier.build(config, sweep.data_info(config, images, labels))


def test_learning_rate_schedule_is_the_papers_staircase():
    schedule = train.learning_rate_schedule(1e-4, 0.97, decay_epochs=2, steps_per_epoch=600)
    for step, expected in [
        (0, 1e-4),
        (1199, 1e-4),
        (1200, 0.97e-4),
        (2399, 0.97e-4),
        (2400, 0.97**2 * 1e-4),
        (120_000 - 1, 0.97**99 * 1e-4),
    ]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_iwae_schedule_runs_3_to_the_i_epochs_per_stage():
    schedule = train.iwae_schedule(1e-3, steps_per_epoch=10)
    starts = np.cumsum([0] + [3**i for i in range(8)])  # 0, 1, 4, 13, ..., 1093, 3280 epochs
    for stage, start in enumerate(starts[:8]):
        expected = 1e-3 * 10 ** (-stage / 7)
        assert float(schedule(start * 10)) == pytest.approx(expected, rel=1e-5)
        if stage < 7:
            assert float(schedule(starts[stage + 1] * 10 - 1)) == pytest.approx(expected, rel=1e-5)
    assert float(schedule(10_000 * 10)) == pytest.approx(1e-4, rel=1e-5)  # the last rate stays


def run_steps(toy_data, decay, debias, num_steps):
    """`num_steps` VIB steps from a fresh state: the final state and the params after each step."""
    images, labels = toy_data
    task = vib_task(toy_config(), images, labels)
    step = jax.jit(train.make_train_step(task.update, decay, train.Collectives(), debias))
    state = task.init(jax.random.key(2))
    batch = train.Batch(images[:BATCH], labels[:BATCH], jnp.arange(BATCH, dtype=jnp.int32))
    hparams = vib_hparams(beta=1e-3)
    history = [state.params]
    for _ in range(num_steps):
        state, _ = step(state, batch, jax.random.key(3), hparams)
        history.append(state.params)
    assert int(state.step) == num_steps
    return state, history


def assert_trees_close(actual, expected):
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), actual, expected
    )


def test_plain_ema_follows_its_recursion_from_the_initial_params(toy_data):
    decay = 0.9
    state, history = run_steps(toy_data, decay, debias=False, num_steps=4)
    expected = history[0]
    for params in history[1:]:
        expected = jax.tree_util.tree_map(
            lambda e, p: decay * e + (1 - decay) * p, expected, params
        )
    assert_trees_close(state.ema_params, expected)
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.allclose(a, b), state.ema_params, state.params
    )
    assert any(jax.tree_util.tree_leaves(changed))  # the average lags the params


def test_debiased_ema_is_the_zero_started_average_over_one_minus_decay_to_the_t(toy_data):
    decay, num_steps = 0.9, 5
    state, history = run_steps(toy_data, decay, debias=True, num_steps=num_steps)
    # numpy: m_t = decay m_{t-1} + (1 - decay) p_t from m_0 = 0, then m_t / (1 - decay^t).
    biased = jax.tree_util.tree_map(np.zeros_like, history[0])
    for params in history[1:]:
        biased = jax.tree_util.tree_map(
            lambda m, p: decay * m + (1 - decay) * np.asarray(p), biased, params
        )
    assert_trees_close(
        state.ema_params, jax.tree_util.tree_map(lambda m: m / (1 - decay**num_steps), biased)
    )
    # ... and optax's debiased EMA agrees, with no trace of the initial params.
    ema = optax.ema(decay, debias=True)
    ema_state = ema.init(history[0])
    for params in history[1:]:
        averaged, ema_state = ema.update(params, ema_state)
    assert_trees_close(state.ema_params, averaged)


def test_after_one_update_the_debiased_ema_is_the_params():
    for decay in (0.0, 0.5, 0.999):
        assert float(train.ema_step_size(decay, jnp.int32(1), True)) == 1.0  # exactly
        late = float(train.ema_step_size(decay, jnp.int32(100_000), True))
        assert late == pytest.approx(1 - decay, rel=1e-4)
    assert float(train.ema_step_size(0.999, jnp.int32(1), False)) == pytest.approx(1e-3)


@pytest.mark.parametrize("rate_budget", [0.0, 50.0])
def test_vib_step_applies_adam_to_the_gradient_of_vib_loss(toy_data, rate_budget):
    images, labels = toy_data
    config = toy_config()
    with config.sweep.unlocked():
        config.sweep.rate_budget = (rate_budget,)
    task = vib_task(config, images, labels)
    model = vib_classifier.model_from_config(config, 10)
    optimizer = train.make_optimizer(config, NUM_EXAMPLES // BATCH)
    state = task.init(jax.random.key(4))
    ids = jnp.arange(BATCH, dtype=jnp.int32)
    noise_key, beta = jax.random.key(5), 0.5
    hparams = vib_hparams(beta=beta, rate_budget=rate_budget)
    step = train.make_train_step(task.update, 0.9, train.Collectives())
    new_state, metrics = step(
        state, train.Batch(images[:BATCH], labels[:BATCH], ids), noise_key, hparams
    )

    def reference_loss(params):
        mean, stddev = model.apply(params, images[:BATCH], method=model.encode)
        z = train.sample_latents(jax.random.fold_in(noise_key, 0), ids, mean, stddev, 2)
        logits = model.apply(params, z, method=model.decode)
        rate = losses.kl_divergence(mean, stddev)
        return losses.vib_loss(logits, labels[:BATCH], rate, beta, rate_budget=rate_budget)[0]

    loss, grads = jax.value_and_grad(reference_loss)(state.params)
    updates, _ = optimizer.update(grads, optimizer.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state.params, expected
    )
    # The hinge frees the rate below the budget: with C = 50 nats (above this rate) no penalty is
    # left.
    assert (float(metrics["penalty"]) == 0.0) == (rate_budget > float(metrics["rate"]))


def test_noise_of_an_example_does_not_depend_on_how_the_batch_is_split():
    mean = jax.random.normal(jax.random.key(0), (8, 3))
    stddev = jnp.full((8, 3), 0.5)
    ids = jnp.arange(100, 108, dtype=jnp.int32)
    whole = train.sample_latents(jax.random.key(1), ids, mean, stddev, 5)
    halves = [
        train.sample_latents(jax.random.key(1), ids[s], mean[s], stddev[s], 5)
        for s in (slice(0, 4), slice(4, 8))
    ]
    assert whole.shape == (5, 8, 3)
    np.testing.assert_array_equal(whole, jnp.concatenate(halves, axis=1))
    assert not np.allclose(whole[:, 0], whole[:, 1])  # examples get different noise


def test_member_keys_depend_on_the_seed_and_the_values_away_from_the_defaults():
    data = lambda key: np.asarray(jax.random.key_data(key))
    defaults = {"beta": 0.0, "rate_budget": 0.0}
    a = train.member_keys(0, {"beta": 1e-3, "rate_budget": 0.0}, defaults)
    # A default value folds nothing in: the keys of the old engine, which knew beta alone.
    only_beta = jax.random.fold_in(
        jax.random.split(jax.random.key(0), 4)[2], np.float32(1e-3).view(np.uint32)
    )
    np.testing.assert_array_equal(data(a.noise), data(only_beta))
    other_beta = train.member_keys(0, {"beta": 1e-2, "rate_budget": 0.0}, defaults)
    other_budget = train.member_keys(0, {"beta": 1e-3, "rate_budget": 5.0}, defaults)
    other_seed = train.member_keys(1, {"beta": 1e-3, "rate_budget": 0.0}, defaults)
    for other in (other_beta, other_budget, other_seed):
        assert not np.array_equal(data(a.noise), data(other.noise))
    # Which hyperparameter takes a value matters, not only the values in the names' order.
    defaults = {"beta": 1.0, "mmd_weight": 0.0, "rate_budget": 0.0}
    halves = [defaults | {name: 0.5} for name in defaults]  # one hyperparameter at 0.5 each
    noises = [data(train.member_keys(0, h, defaults).noise).tobytes() for h in halves]
    assert len(set(noises)) == 3
    np.testing.assert_array_equal(
        data(a.init), data(other_beta.init)
    )  # same seed: same init and order
    np.testing.assert_array_equal(data(a.shuffle), data(other_budget.shuffle))
    assert not np.array_equal(data(a.init), data(other_seed.init))
    assert not np.array_equal(data(a.shuffle), data(other_seed.shuffle))


def test_a_member_has_the_same_keys_whichever_other_lists_the_sweep_has():
    alone = toy_config()
    alone.sweep.beta = (1e-3,)
    wider = toy_config(seeds=(0, 1))
    wider.sweep.beta = (1e-2, 1e-3)
    with wider.sweep.unlocked():
        wider.sweep.rate_budget = (0.0, 10.0)
    members, keys, hparams = sweep.member_inputs(wider)
    m = next(
        i
        for i, member in enumerate(members)
        if (member["seed"], member["beta"], member["rate_budget"]) == (0, 1e-3, 0.0)
    )
    _, alone_keys, _ = sweep.member_inputs(alone)
    for wide_key, alone_key in zip(keys, alone_keys):
        np.testing.assert_array_equal(
            jax.random.key_data(wide_key[m]), jax.random.key_data(alone_key[0])
        )
    assert float(hparams["rate_budget"][m]) == 0.0 and len(members) == 8


@pytest.fixture(scope="module")
def run_sweep(toy_data):
    """`run_sweep(seeds, betas, members_at_once, epochs)` -> (stacked states, last epoch's metrics),
    through the driver's own builder."""
    images, labels = toy_data
    mesh = parallel.make_mesh(1)

    def run(seeds, betas, members_at_once=0, epochs=2):
        config = toy_config(seeds=tuple(seeds), members_at_once=members_at_once)
        config.sweep.beta = tuple(betas)
        setup = sweep.build_setup(config, mesh, images, labels)
        states = setup.states
        for epoch in range(1, epochs + 1):
            states, metrics = setup.run_epoch(states, epoch)
        return states, metrics

    return run


SEEDS, BETAS = (0, 1, 2), (0.0, 1e-1)


@pytest.fixture(scope="module")
def single_runs(run_sweep):
    """Each (seed, beta) trained alone."""
    return {(seed, beta): run_sweep([seed], [beta]) for seed in SEEDS for beta in BETAS}


@pytest.mark.parametrize("members_at_once", [1, 2, 6])  # one at a time, groups of 2, all vmapped
def test_sweep_members_equal_single_runs(run_sweep, single_runs, members_at_once):
    swept, swept_metrics = run_sweep(SEEDS, BETAS, members_at_once)
    members = [(s, b) for s in SEEDS for b in BETAS]  # seeds outermost
    for m, (seed, beta) in enumerate(members):
        single, single_metrics = single_runs[seed, beta]
        member = jax.tree_util.tree_map(lambda leaf: leaf[m], swept)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b[0], rtol=2e-5, atol=2e-6), member, single
        )
        assert float(swept_metrics["loss"][m]) == pytest.approx(
            float(single_metrics["loss"][0]), rel=1e-5
        )
    # Seeds and betas matter: seeds give other inits, and a larger beta gives a smaller rate.
    assert not np.allclose(
        swept.params["params"]["encoder"]["hidden_0"]["kernel"][0],
        swept.params["params"]["encoder"]["hidden_0"]["kernel"][2],
    )
    assert swept_metrics["rate"][1] < swept_metrics["rate"][0]


def test_evaluate_matches_a_direct_computation_with_padding(toy_data):
    images, labels = toy_data
    config = toy_config()
    task = vib_task(config, images, labels)
    model = vib_classifier.model_from_config(config, 10)
    params = task.init(jax.random.key(9)).params
    chunks = train.chunk_split(
        images[:50], labels[:50], chunk_size=16, num_classes=10
    )  # 4 chunks, 14 padded
    assert chunks.images.shape == (4, 16, INPUT_DIM) and float(chunks.weights.sum()) == 50
    evaluate = train.make_evaluate(task.evaluate, task.summarize, train.Collectives())
    metrics = jax.jit(evaluate)(params, chunks, jax.random.key(10), {})

    mean, stddev = model.apply(params, images[:50], method=model.encode)
    z = train.sample_latents(jax.random.key(10), jnp.arange(50, dtype=jnp.int32), mean, stddev, 3)
    logits = np.asarray(model.apply(params, z, method=model.decode))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = np.asarray(labels[:50])
    assert float(metrics["error_avg"]) == pytest.approx(np.mean(probs.mean(0).argmax(-1) != y))
    assert float(metrics["error_1"]) == pytest.approx(np.mean(logits[0].argmax(-1) != y))
    mean_logits = np.asarray(model.apply(params, mean[None], method=model.decode)[0])
    assert float(metrics["error_mean"]) == pytest.approx(np.mean(mean_logits.argmax(-1) != y))
    cross_entropy = -np.log(
        np.take_along_axis(probs, np.broadcast_to(y, (3, 50))[..., None], -1)
    ).mean()
    assert float(metrics["cross_entropy"]) == pytest.approx(cross_entropy, rel=1e-4)
    rate = float(losses.kl_divergence(mean, stddev).mean())
    assert float(metrics["rate"]) == pytest.approx(rate, rel=1e-5)
    frequencies = np.bincount(y, minlength=10) / 50
    label_entropy = -np.sum(frequencies[frequencies > 0] * np.log(frequencies[frequencies > 0]))
    assert float(metrics["izy_bound_bits"]) == pytest.approx(
        (label_entropy - cross_entropy) / math.log(2), rel=1e-4
    )
    assert float(metrics["izx_bound_bits"]) == pytest.approx(rate / math.log(2), rel=1e-5)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_the_monte_carlo_rate_in_training_estimates_the_closed_form_kl(toy_data, covariance):
    """The official JAX notebook's rate, log q(z|x) - log r(z) on the training samples: its batch
    mean is within 3 standard errors of the closed-form KL of the same posteriors."""
    images, labels = toy_data
    num_samples = 4000
    config = toy_config(
        rate_estimator="monte_carlo", train_samples=num_samples, covariance=covariance
    )
    task = vib_task(config, images, labels)
    model = vib_classifier.model_from_config(config, 10)
    state = task.init(jax.random.key(4))
    batch = train.Batch(images[:BATCH], labels[:BATCH], jnp.arange(BATCH, dtype=jnp.int32))
    step = train.make_train_step(task.update, 0.9, train.Collectives())
    _, metrics = step(state, batch, jax.random.key(5), vib_hparams(beta=1e-3))
    mean, scale = model.apply(state.params, batch.images, method=model.encode)
    assert scale.shape == ((BATCH, 4, 4) if covariance == "full" else (BATCH, 4))
    z = losses.reparameterize(jax.random.key(6), mean, scale, num_samples)
    # The estimator's spread: the batch mean of log q - log r, one posterior sample at a time.
    per_sample = np.asarray(
        jax.vmap(lambda zs: losses.monte_carlo_rate(zs[None], mean, scale))(z), np.float64
    )
    standard_error = per_sample.mean(1).std() / np.sqrt(num_samples)
    closed_form = float(jnp.mean(losses.kl_to_standard_normal(mean, scale)))
    assert abs(float(metrics["rate"]) - closed_form) < 3 * standard_error, (
        float(metrics["rate"]),
        closed_form,
        standard_error,
    )


def test_a_member_at_dropout_zero_trains_as_without_dropout(toy_data):
    """Drawing dropout masks (because another member drops units) changes nothing at rate 0: the
    posterior noise keeps its keys."""
    images, labels = toy_data
    batch = train.Batch(images[:BATCH], labels[:BATCH], jnp.arange(BATCH, dtype=jnp.int32))
    results = []
    for swept in ((0.0,), (0.0, 0.3)):
        config = toy_config()
        with config.sweep.unlocked():
            config.sweep.dropout = swept
        task = vib_task(config, images, labels)
        state = task.init(jax.random.key(4))
        results.append(
            task.update(state, batch, jax.random.key(5), vib_hparams(), train.Collectives())
        )
    (plain_state, plain_metrics), (masked_state, masked_metrics) = results
    assert float(plain_metrics["loss"]) == float(masked_metrics["loss"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, plain_state.params, masked_state.params)
    config = toy_config()
    with config.sweep.unlocked():
        config.sweep.dropout = (0.3,)
    task = vib_task(config, images, labels)
    _, dropped = task.update(
        task.init(jax.random.key(4)),
        batch,
        jax.random.key(5),
        vib_hparams(dropout=0.3),
        train.Collectives(),
    )
    assert float(dropped["loss"]) != float(plain_metrics["loss"])


def test_evaluate_averages_per_example_rows_of_any_shape_over_real_examples():
    """A per-example metric `[B, C]` (one-hot rows) averages to a `[C]` distribution; padding
    weighs nothing."""
    labels = jnp.array([0, 2, 2, 1, 2], jnp.int32)
    chunks = train.chunk_split(jnp.zeros((5, 3)), labels, chunk_size=2, num_classes=3)
    per_example = lambda params, batch, key, hparams: {
        "one_hot": jax.nn.one_hot(batch.labels, 3) + 1.0  # padding rows are one_hot(0) + 1 too
    }
    summarize = lambda means, chunks: {f"class_{c}": means["one_hot"][c] for c in range(3)}
    evaluate = train.make_evaluate(per_example, summarize, train.Collectives())
    metrics = jax.jit(evaluate)(None, chunks, jax.random.key(0), {})
    np.testing.assert_allclose([metrics[f"class_{c}"] for c in range(3)], [1.2, 1.2, 1.6])
    keep_rows = train.make_evaluate(per_example, lambda means, chunks: means, train.Collectives())
    with pytest.raises(ValueError, match=r"summarize must return scalars only.*one_hot"):
        keep_rows(None, chunks, jax.random.key(0), {})


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_make_optimizer_is_the_configured_optimizer(name):
    config = toy_config(optimizer=name, learning_rate=0.5)
    params, grads = jnp.array([1.0, -2.0]), jnp.array([0.2, -4.0])
    optimizer = train.make_optimizer(config, steps_per_epoch=10)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # SGD steps by lr * gradient; Adam's first step is lr * sign(gradient) (its debiased moments).
    expected = 0.5 * grads if name == "sgd" else 0.5 * jnp.sign(grads)
    np.testing.assert_allclose(updates, -expected, rtol=1e-5)
    generator = train.make_optimizer(config, 10, learning_rate=0.1)
    np.testing.assert_allclose(
        generator.update(grads, generator.init(params), params)[0], -expected / 5, rtol=1e-5
    )
