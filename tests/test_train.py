"""Tests of vib_jax.train: schedule, EMA, noise, the sweep's equivalence to single runs, evaluation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vib_jax import losses, models, parallel, train

INPUT_DIM, NUM_EXAMPLES, BATCH = 12, 96, 16


@pytest.fixture(scope="module")
def toy_problem():
    """A small learnable classification problem: labels are the argmax of a fixed linear map of x."""
    images = jax.random.normal(jax.random.key(0), (NUM_EXAMPLES, INPUT_DIM))
    labels = jnp.argmax(images @ jax.random.normal(jax.random.key(1), (INPUT_DIM, 10)), axis=-1).astype(jnp.int32)
    model = models.VIBClassifier(latent_dim=4, hidden_dims=(16,))
    optimizer = optax.adam(3e-3, b1=0.5)
    return images, labels, model, optimizer


def make_step(model, optimizer, **kwargs):
    options = dict(ema_decay=0.9, num_samples=2, label_entropy=math.log(10)) | kwargs
    return train.make_train_step(model, optimizer, **options)


def test_learning_rate_schedule_is_the_papers_staircase():
    schedule = train.learning_rate_schedule(1e-4, 0.97, decay_epochs=2, steps_per_epoch=600)
    for step, expected in [(0, 1e-4), (1199, 1e-4), (1200, 0.97e-4), (2399, 0.97e-4), (2400, 0.97**2 * 1e-4),
                           (120_000 - 1, 0.97**99 * 1e-4)]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_ema_follows_its_recursion_from_the_initial_params(toy_problem):
    images, labels, model, optimizer = toy_problem
    decay = 0.9
    step = jax.jit(make_step(model, optimizer, ema_decay=decay))
    state = train.create_train_state(model, optimizer, jax.random.key(2), INPUT_DIM)
    expected = state.params
    batch = train.Batch(images[:BATCH], labels[:BATCH], jnp.arange(BATCH, dtype=jnp.int32))
    for _ in range(4):
        state, _ = step(state, batch, jax.random.key(3), 1e-3)
        expected = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, expected, state.params)
    assert int(state.step) == 4
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.ema_params, expected)
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), state.ema_params, state.params)
    assert any(jax.tree_util.tree_leaves(changed))  # the average lags the params


def test_train_step_applies_adam_to_the_gradient_of_vib_loss(toy_problem):
    images, labels, model, optimizer = toy_problem
    state = train.create_train_state(model, optimizer, jax.random.key(4), INPUT_DIM)
    ids = jnp.arange(BATCH, dtype=jnp.int32)
    noise_key, beta = jax.random.key(5), 0.5
    new_state, metrics = make_step(model, optimizer)(state, train.Batch(images[:BATCH], labels[:BATCH], ids),
                                                     noise_key, beta)

    def reference_loss(params):
        out_mean, out_stddev = model.apply(params, images[:BATCH], method=model.encode)
        z = train.sample_latents(jax.random.fold_in(noise_key, 0), ids, out_mean, out_stddev, 2)
        logits = model.apply(params, z, method=model.decode)
        return losses.vib_loss(logits, labels[:BATCH], losses.kl_divergence(out_mean, out_stddev), beta)[0]

    loss, grads = jax.value_and_grad(reference_loss)(state.params)
    updates, _ = optimizer.update(grads, optimizer.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state.params, expected)


def test_noise_of_an_example_does_not_depend_on_how_the_batch_is_split():
    mean = jax.random.normal(jax.random.key(0), (8, 3))
    stddev = jnp.full((8, 3), 0.5)
    ids = jnp.arange(100, 108, dtype=jnp.int32)
    whole = train.sample_latents(jax.random.key(1), ids, mean, stddev, 5)
    halves = [train.sample_latents(jax.random.key(1), ids[s], mean[s], stddev[s], 5) for s in (slice(0, 4), slice(4, 8))]
    assert whole.shape == (5, 8, 3)
    np.testing.assert_array_equal(whole, jnp.concatenate(halves, axis=1))
    assert not np.allclose(whole[:, 0], whole[:, 1])  # examples get different noise


def test_member_noise_key_depends_on_the_beta_value_only():
    key = jax.random.key(0)
    swept = jax.vmap(train.member_noise_key, in_axes=(None, 0))(key, jnp.array([1e-3, 1e-2]))
    alone = train.member_noise_key(key, 1e-2)
    np.testing.assert_array_equal(jax.random.key_data(swept[1]), jax.random.key_data(alone))
    assert not np.array_equal(jax.random.key_data(swept[0]), jax.random.key_data(swept[1]))


@pytest.fixture(scope="module")
def run_sweep(toy_problem):
    """`run_sweep(betas, epochs, betas_at_once)` -> (stacked states, last epoch's metrics)."""
    images, labels, model, optimizer = toy_problem
    mesh = parallel.make_mesh(1)
    make_epoch = lambda axis_name: train.make_train_epoch(make_step(model, optimizer, axis_name=axis_name))
    initial = train.create_train_state(model, optimizer, jax.random.key(6), INPUT_DIM)

    def run(betas, epochs=2, betas_at_once=0):
        run_epoch = parallel.compile_sweep_epoch(make_epoch, mesh, NUM_EXAMPLES, BATCH, betas_at_once)
        betas = jnp.asarray(betas, jnp.float32)
        noise_keys = jax.vmap(train.member_noise_key, in_axes=(None, 0))(jax.random.key(7), betas)
        states = train.stack_states(initial, len(betas))
        for epoch in range(epochs):
            states, metrics = run_epoch(states, images, labels, jax.random.fold_in(jax.random.key(8), epoch),
                                        noise_keys, betas)
        return states, metrics

    return run


@pytest.mark.parametrize("betas_at_once", [1, 2, 3])  # one at a time, groups of 2 and 1, all vmapped
def test_sweep_members_equal_single_runs(run_sweep, betas_at_once):
    betas = [0.0, 1e-3, 1e-1]
    swept, swept_metrics = run_sweep(betas, betas_at_once=betas_at_once)
    for m, beta in enumerate(betas):
        single, single_metrics = run_sweep([beta])
        member = jax.tree_util.tree_map(lambda leaf: leaf[m], swept)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b[0], rtol=2e-5, atol=2e-6), member, single)
        assert float(swept_metrics["loss"][m]) == pytest.approx(float(single_metrics["loss"][0]), rel=1e-5)
    # Betas matter: the members differ, and a larger beta gives a smaller rate.
    assert swept_metrics["rate"][2] < swept_metrics["rate"][0]


def test_evaluate_matches_a_direct_computation_with_padding(toy_problem):
    images, labels, model, optimizer = toy_problem
    params = train.create_train_state(model, optimizer, jax.random.key(9), INPUT_DIM).params
    chunks = train.chunk_split(images[:50], labels[:50], chunk_size=16, num_classes=10)  # 4 chunks, 14 padded
    assert chunks.images.shape == (4, 16, INPUT_DIM) and float(chunks.weights.sum()) == 50
    metrics = jax.jit(train.make_evaluate(model, num_samples=3))(params, chunks, jax.random.key(10))

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
    cross_entropy = -np.log(np.take_along_axis(probs, np.broadcast_to(y, (3, 50))[..., None], -1)).mean()
    assert float(metrics["cross_entropy"]) == pytest.approx(cross_entropy, rel=1e-4)
    rate = float(losses.kl_divergence(mean, stddev).mean())
    assert float(metrics["rate"]) == pytest.approx(rate, rel=1e-5)
    frequencies = np.bincount(y, minlength=10) / 50
    label_entropy = -np.sum(frequencies[frequencies > 0] * np.log(frequencies[frequencies > 0]))
    assert float(metrics["izy_bound_bits"]) == pytest.approx((label_entropy - cross_entropy) / math.log(2), rel=1e-4)
    assert float(metrics["izx_bound_bits"]) == pytest.approx(rate / math.log(2), rel=1e-5)


def test_one_device_runs_shard_map_only_for_a_vmapped_sweep():
    mesh = parallel.make_mesh(1)
    assert not parallel.uses_shard_map(mesh, at_once=1)
    assert parallel.uses_shard_map(mesh, at_once=8)


def test_members_at_once():
    mesh = parallel.make_mesh(1)  # a CPU device in the tests
    assert parallel.members_at_once(0, mesh, num_members=8) == 1  # CPU: one at a time
    assert parallel.members_at_once(3, mesh, num_members=8) == 3
    assert parallel.members_at_once(20, mesh, num_members=8) == 8
    with pytest.raises(ValueError, match="betas_at_once"):
        parallel.members_at_once(-1, mesh, num_members=8)


@pytest.mark.parametrize("at_once", [1, 2, 3, 4])
def test_map_over_members_maps_the_swept_arguments_only(at_once):
    fn = lambda x, shared, y: {"sum": x @ shared + y, "first": x[0]}
    xs, ys = jnp.arange(12.0).reshape(4, 3), jnp.arange(4.0)
    shared = jnp.array([1.0, 10.0, 100.0])
    out = jax.jit(parallel.map_over_members(fn, (0, None, 0), at_once))(xs, shared, ys)
    np.testing.assert_allclose(out["sum"], np.asarray(xs) @ np.asarray(shared) + np.asarray(ys))
    np.testing.assert_allclose(out["first"], xs[:, 0])
    single = parallel.map_over_members(fn, (0, None, 0), at_once)(xs[:1], shared, ys[:1])
    assert single["sum"].shape == (1,) and float(single["sum"][0]) == 0 * 1 + 1 * 10 + 2 * 100


def test_choose_num_devices():
    assert parallel.choose_num_devices(0, (100, 1000), available=8) == 5  # 5 divides both; 6, 7, 8 do not
    assert parallel.choose_num_devices(0, (128, 1000), available=8) == 8
    assert parallel.choose_num_devices(2, (100,), available=8) == 2
    with pytest.raises(ValueError, match="num_devices"):
        parallel.choose_num_devices(3, (100,), available=8)
    with pytest.raises(ValueError, match="num_devices"):
        parallel.choose_num_devices(9, (100,), available=8)
