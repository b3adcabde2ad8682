"""Learned marginals r(z) and the VDB's dual update of beta (issue 11's first members): the
mixture density against scipy, its Monte-Carlo rate against the closed form, the dual recursion
against numpy, and both through the classifier task."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings

from experiments.configs import smoke
from vib_jax import losses, models, sweep, tasks, train
from vib_jax.tasks import vib_classifier


def test_mixture_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=3).astype(np.float32)
    means = rng.normal(size=(3, 2)).astype(np.float32)
    stddevs = rng.lognormal(sigma=0.5, size=(3, 2)).astype(np.float32)
    z = rng.normal(scale=2.0, size=(5, 4, 2)).astype(np.float32)
    weights = np.exp(logits) / np.exp(logits).sum()
    want = np.log(
        sum(
            w * scipy.stats.multivariate_normal(m, np.diag(s**2)).pdf(z)
            for w, m, s in zip(weights, means, stddevs)
        )
    )
    got = losses.mixture_log_prob(z, logits, means, stddevs)
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"logits \[M\], means \[M, K\] and stddevs \[M, K\]"):
        losses.mixture_log_prob(z, logits[:2], means, stddevs)
    with pytest.raises(ValueError, match=r"z \[..., K\] must have the means' K = 2"):
        losses.mixture_log_prob(z[..., :1], logits, means, stddevs)


def broadcast_mixture_log_prob(z, logits, means, stddevs):
    """The mixture's log-density as one [..., M, K] broadcast, differentiated by JAX: the
    reference for `losses.mixture_log_prob`'s hand-written gradient."""
    per_component = losses.gaussian_log_prob(z[..., None, :], means, stddevs)
    return jax.scipy.special.logsumexp(per_component + jax.nn.log_softmax(logits), axis=-1)


def mixture_value_and_gradients(log_prob, z, logits, means, stddevs):
    """A scalar of the log-densities with unequal cotangents (sin), and its gradients with respect
    to all four arguments."""
    scalar = lambda *args: jnp.sum(jnp.sin(log_prob(*args)))
    return jax.value_and_grad(scalar, argnums=(0, 1, 2, 3))(z, logits, means, stddevs)


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (1e-2, 0.0), (1e-3, 0.0), (1e-3, 5.0)])
def test_the_mixture_gradient_matches_differentiating_the_broadcast(scale, shift):
    # Points near the components, whose stddevs go down to 1e-3 of the points' norms: where a
    # gradient expanded into matrix products (|z|^2 - 2 z.mu + |mu|^2) loses its digits; and
    # components in two groups 10 apart, away from the means' average (the points' and means'
    # gradients cancel by that distance over the stddevs: documented limits below 1e-3).
    keys = jax.random.split(jax.random.key(0), 4)
    means = (
        jax.random.normal(keys[0], (40, 8)) + shift * jnp.where(jnp.arange(40) % 2, 1, -1)[:, None]
    )
    stddevs = scale * jnp.exp(0.3 * jax.random.normal(keys[1], (40, 8)))
    nearest = jax.random.randint(keys[2], (3, 64), 0, 40)
    z = means[nearest] + stddevs[nearest] * jax.random.normal(keys[3], (3, 64, 8))
    logits = jax.random.normal(keys[1], (40,))
    got_value, got = mixture_value_and_gradients(losses.mixture_log_prob, z, logits, means, stddevs)
    want_value, want = mixture_value_and_gradients(
        broadcast_mixture_log_prob, z, logits, means, stddevs
    )
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
    for name, g, w in zip(("z", "logits", "means", "stddevs"), got, want):
        error = float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w)))
        assert error < 2e-3, (name, error)


def test_the_mixture_gradient_maps_over_members():
    # A sweep vmaps the gradient over members, each with its own components.
    keys = jax.random.split(jax.random.key(1), 3)
    z = jax.random.normal(keys[0], (4, 10, 3))
    means = jax.random.normal(keys[1], (4, 6, 3))
    stddevs = jnp.exp(0.5 * jax.random.normal(keys[2], (4, 6, 3)))
    logits = jnp.zeros((4, 6))
    gradient = lambda f: jax.vmap(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=(0, 1, 2, 3)))
    got = gradient(losses.mixture_log_prob)(z, logits, means, stddevs)
    want = gradient(broadcast_mixture_log_prob)(z, logits, means, stddevs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


# Each new shape compiles (~6 s an example, ~45 s in all): on demand, beside the suite's fixed-shape
# gradient checks at three scales.
@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(
    batch_shape=st.lists(st.integers(1, 4), max_size=2),
    num_components=st.integers(1, 6),
    latent_dim=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_the_mixture_log_prob_and_its_gradient_for_any_shapes(
    batch_shape, num_components, latent_dim, seed
):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=num_components).astype(np.float32)
    means = rng.normal(size=(num_components, latent_dim)).astype(np.float32)
    stddevs = rng.lognormal(sigma=0.5, size=(num_components, latent_dim)).astype(np.float32)
    z = rng.normal(scale=1.5, size=(*batch_shape, latent_dim)).astype(np.float32)
    log_weights = logits - np.logaddexp.reduce(logits.astype(np.float64))
    per_component = scipy.stats.norm.logpdf(z[..., None, :].astype(np.float64), means, stddevs).sum(
        -1
    )
    want = np.logaddexp.reduce(per_component + log_weights, axis=-1)
    got = losses.mixture_log_prob(z, logits, means, stddevs)
    assert got.shape == tuple(batch_shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    _, got_gradients = mixture_value_and_gradients(
        losses.mixture_log_prob, z, logits, means, stddevs
    )
    _, want_gradients = mixture_value_and_gradients(
        broadcast_mixture_log_prob, z, logits, means, stddevs
    )
    for g, w in zip(got_gradients, want_gradients):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_the_rate_to_a_one_component_mixture_is_the_closed_form_kl():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(3, 4)).astype(np.float32)
    stddev = rng.lognormal(sigma=0.3, size=(3, 4)).astype(np.float32)
    prior_mean = rng.normal(size=(1, 4)).astype(np.float32)
    prior_stddev = rng.lognormal(sigma=0.3, size=(1, 4)).astype(np.float32)
    n = 100_000
    z = losses.reparameterize(jax.random.key(0), mean, stddev, n)
    marginal = lambda latents: losses.mixture_log_prob(
        latents, jnp.zeros(1), prior_mean, prior_stddev
    )
    per_sample = losses.gaussian_log_prob(z, mean, stddev) - marginal(z)
    standard_error = np.std(np.asarray(per_sample, np.float64), axis=0) / np.sqrt(n)
    estimate = losses.monte_carlo_rate(z, mean, stddev, marginal)
    closed_form = losses.kl_divergence(mean, stddev, prior_mean[0], prior_stddev[0])
    assert np.all(np.abs(estimate - closed_form) < 3 * standard_error)


def test_the_mixture_marginal_starts_near_the_standard_normal():
    marginal = models.MixtureMarginal(num_components=5, latent_dim=3)
    z = jax.random.normal(jax.random.key(0), (100, 3))
    params = marginal.init(jax.random.key(1), z)
    stddevs = jax.nn.softplus(params["params"]["pre_stddevs"])
    np.testing.assert_allclose(stddevs, 1.0, rtol=1e-4)
    assert marginal.apply(params, z).shape == (100,)


@settings(max_examples=30, deadline=None)
@given(
    rates=st.lists(st.floats(0, 50), min_size=1, max_size=30),
    target=st.floats(0, 30),
    step=st.floats(0, 1),
    beta=st.floats(0, 2),
    beta_max=st.one_of(st.just(np.inf), st.floats(0.1, 3)),
)
def test_the_dual_update_of_beta_follows_its_recursion_and_is_never_negative(
    rates, target, step, beta, beta_max
):
    got, want = jnp.float32(beta), np.float64(beta)
    for rate in rates:
        got = losses.dual_beta_step(
            got, jnp.float32(rate), jnp.float32(target), jnp.float32(step), jnp.float32(beta_max)
        )
        want = min(max(0.0, want + step * (rate - target)), beta_max)
        assert 0.0 <= float(got) <= np.float32(beta_max)
    assert float(got) == pytest.approx(want, rel=1e-4, abs=1e-4)


def toy_task(marginal="standard_normal", **sweep_values):
    """The classifier task (Monte-Carlo rate) of a small learnable problem, and a batch of it."""
    images = jax.random.normal(jax.random.key(0), (64, 12))
    labels = jnp.argmax(images @ jax.random.normal(jax.random.key(1), (12, 10)), -1)
    config = smoke.get_config()
    config.latent_dim, config.hidden_dims, config.batch_size = 4, (16,), 16
    config.rate_estimator, config.marginal = "monte_carlo", marginal
    with config.sweep.unlocked():
        for name, values in sweep_values.items():
            config.sweep[name] = values
    task = vib_classifier.build(config, sweep.data_info(config, images, labels))
    batch = train.Batch(images[:16], labels[:16].astype(jnp.int32), jnp.arange(16))
    return config, task, batch


def test_the_classifier_with_the_dual_update_moves_beta_by_the_rate_above_the_target():
    _, task, batch = toy_task(beta_step_size=(0.01,), target_rate=(5.0,))
    state = task.init(jax.random.key(2))
    defaults = {n: h.default for n, h in vib_classifier.HYPERPARAMETERS.items()}
    hparams = {
        name: jnp.float32(value)
        for name, value in (
            defaults | {"beta": 0.1, "beta_step_size": 0.01, "target_rate": 5.0}
        ).items()
    }
    step = jax.jit(train.make_train_step(task.update, 0.9, train.Collectives()))
    beta = 0.1
    capped = hparams | {"beta_max": jnp.float32(0.1001)}
    capped_state = state
    for _ in range(5):
        state, metrics = step(state, batch, jax.random.key(3), hparams)
        assert float(metrics["beta"]) == pytest.approx(beta, rel=1e-5)  # the beta of that step
        beta = max(0.0, beta + 0.01 * (float(metrics["rate"]) - 5.0))
        capped_state, capped_metrics = step(capped_state, batch, jax.random.key(3), capped)
        assert 0.0 <= float(capped_metrics["beta"]) <= np.float32(0.1001)
    assert float(hparams["beta"] + state.variables["beta_offset"]) == pytest.approx(beta, rel=1e-5)
    assert beta > 0.1001  # the rate is above the target, so the uncapped beta grew past the cap
    capped_beta = capped["beta"] + capped_state.variables["beta_offset"]
    assert float(capped_beta) == pytest.approx(0.1001, rel=1e-5)


def test_a_warmed_up_dual_beta_never_trains_above_its_cap():
    """The warm-up ramps the beta the dual update starts from; the offset the update keeps must
    not carry beta past beta_max as the ramp grows (8 warm-up steps of 0.0125 each)."""
    _, task, batch = toy_task(
        beta_step_size=(0.01,), target_rate=(5.0,), beta_max=(0.1001,), beta_warmup_epochs=(2.0,)
    )
    state = task.init(jax.random.key(2))
    defaults = {n: h.default for n, h in vib_classifier.HYPERPARAMETERS.items()}
    chosen = {"beta": 0.1, "beta_step_size": 0.01, "target_rate": 5.0, "beta_max": 0.1001}
    hparams = {
        name: jnp.float32(value)
        for name, value in (defaults | chosen | {"beta_warmup_epochs": 2.0}).items()
    }
    step = jax.jit(train.make_train_step(task.update, 0.9, train.Collectives()))
    betas = []
    for _ in range(8):
        state, metrics = step(state, batch, jax.random.key(3), hparams)
        betas.append(float(metrics["beta"]))
    assert max(betas) <= np.float32(0.1001)
    assert betas[-1] == pytest.approx(0.1001, rel=1e-5)  # the rate is above target: at the cap


def test_a_negative_monte_carlo_rate_is_charged_unless_a_budget_is_swept():
    """With posteriors N(0, 1.2^2) the rate to N(0, I) is 0.15 nats (K = 4), and its 1-sample
    estimate on a batch of 16 falls below 0 for about one key in six. The plain penalty then
    still charges beta * rate (its gradient pushes the rate down as anywhere else); only a swept
    budget C turns it into the hinge beta * max(rate - C, 0)."""
    stddev_pre = 5.0 + np.log(np.expm1(1.2))  # softplus(pre - 5) = 1.2

    def loss_and_rate(task):
        """`(key, hparams) -> (loss, cross-entropy, rate)` of a step from posteriors N(0, 1.2^2)."""
        state = task.init(jax.random.key(2))
        encoder = state.params["params"]["encoder"] | {
            "mean_and_stddev": {
                "kernel": jnp.zeros((16, 8)),
                "bias": jnp.concatenate([jnp.zeros(4), jnp.full(4, stddev_pre)]),
            }
        }
        state = state.replace(params={"params": state.params["params"] | {"encoder": encoder}})

        @jax.jit
        def step(key, hparams):
            _, metrics = task.update(state, batch, key, hparams, train.Collectives())
            return metrics["loss"], metrics["cross_entropy"], metrics["rate"]

        return lambda key, hparams: [float(value) for value in step(key, hparams)]

    _, plain, batch = toy_task()
    _, hinged, _ = toy_task(rate_budget=(0.0, 1.0))
    defaults = {n: jnp.float32(h.default) for n, h in vib_classifier.HYPERPARAMETERS.items()}
    hparams = defaults | {"beta": jnp.float32(2.0)}
    plain_step, hinged_step = loss_and_rate(plain), loss_and_rate(hinged)
    for seed in range(40):
        loss, cross_entropy, rate = plain_step(jax.random.key(seed), hparams)
        if rate < 0:
            break
    assert rate < 0
    assert loss == pytest.approx(cross_entropy + 2.0 * rate, rel=1e-5)
    loss, cross_entropy, rate_again = hinged_step(jax.random.key(seed), hparams)
    assert rate_again == pytest.approx(rate, rel=1e-5)
    assert loss == pytest.approx(cross_entropy, rel=1e-5)  # max(rate - 0, 0) = 0


def test_beta_warms_up_linearly_over_its_epochs_then_holds():
    # 64 examples in batches of 16: 4 steps per epoch, so 2 warm-up epochs are 8 steps.
    _, task, batch = toy_task(beta_warmup_epochs=(2.0,))
    state = task.init(jax.random.key(2))
    defaults = {n: h.default for n, h in vib_classifier.HYPERPARAMETERS.items()}
    hparams = {
        name: jnp.float32(value)
        for name, value in (defaults | {"beta": 0.1, "beta_warmup_epochs": 2.0}).items()
    }
    step = jax.jit(train.make_train_step(task.update, 0.9, train.Collectives()))
    for t in range(10):
        state, metrics = step(state, batch, jax.random.key(3), hparams)
        want = 0.1 * min(1.0, (t + 1) / 8)
        assert float(metrics["beta"]) == pytest.approx(want, rel=1e-6)
        trained = metrics["cross_entropy"] + want * metrics["rate"]
        assert float(metrics["loss"]) == pytest.approx(float(trained), rel=1e-5)


def test_the_classifier_with_a_learned_mixture_marginal_trains_its_marginal():
    config, task, batch = toy_task(marginal="mixture")
    state = task.init(jax.random.key(2))
    assert state.params["params"]["marginal"]["means"].shape == (config.marginal_components, 4)
    hparams = {n: jnp.float32(h.default) for n, h in vib_classifier.HYPERPARAMETERS.items()}
    new_state, metrics = task.update(
        state, batch, jax.random.key(3), hparams | {"beta": jnp.float32(1.0)}, train.Collectives()
    )
    moved = (
        new_state.params["params"]["marginal"]["means"]
        - state.params["params"]["marginal"]["means"]
    )
    assert float(np.abs(moved).max()) > 0
    # The rate it trained on: log q(z|x) - log r(z) on its samples, with scipy's densities.
    model = task.model
    mean, stddev = model.apply(state.params, batch.images, method=model.encode)
    z = np.asarray(
        train.sample_latents(
            jax.random.key(3), batch.example_ids, mean, stddev, config.train_samples
        ),
        np.float64,
    )
    marginal = jax.tree_util.tree_map(np.asarray, state.params["params"]["marginal"])
    log_weights = marginal["logits"] - scipy.special.logsumexp(marginal["logits"])
    stddevs = np.log1p(np.exp(marginal["pre_stddevs"]))
    per_component = scipy.stats.norm.logpdf(z[..., None, :], marginal["means"], stddevs)
    log_r = scipy.special.logsumexp(log_weights + per_component.sum(-1), axis=-1)
    log_q = scipy.stats.norm.logpdf(z, np.asarray(mean), np.asarray(stddev)).sum(-1)
    assert float(metrics["rate"]) == pytest.approx(np.mean(log_q - log_r), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"marginal": "mixture"}, "rate_estimator must be 'monte_carlo' with marginal='mixture'"),
        ({"marginal": "vamp"}, "marginal must be one of"),
        (
            {"marginal": "mixture", "rate_estimator": "monte_carlo", "marginal_components": 0},
            "marginal_components must be an integer >= 1",
        ),
        ({"deterministic": True, "covariance": "full"}, "covariance='full' needs a stochastic"),
    ],
)
def test_bad_marginal_and_encoder_entries_are_named(entries, message):
    config = smoke.get_config()
    for name, value in entries.items():
        config[name] = value
    with pytest.raises(ValueError, match=message):
        sweep.validate_config(config)
    assert tasks.uses_dual_beta(config) is False


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.usefixtures("real_mnist")
def test_a_vae_with_the_dual_update_holds_its_rate_near_the_target(tmp_path):
    """The VDB constraint on the beta-VAE, swept over two targets in one program: beta adapts
    and each member's rate ends near its I_c (160 steps of alpha_beta = 0.05: 5.3 and 12.8 nats
    for I_c = 5 and 15 when written); the run draws rate and beta against epochs."""
    from experiments.configs import vae

    config = vae.get_config()
    config.progress, config.num_epochs, config.eval_every_epochs = False, 8, 2
    config.train_subset, config.test_subset, config.train_eval_size = 2000, 500, 500
    config.nll_samples, config.nll_chunk_size, config.checkpoint_every_epochs = 20, 20, 8
    config.latent_dim, config.hidden_dims = 8, (64,)
    with config.sweep.unlocked():
        config.sweep.beta_step_size, config.sweep.target_rate = (0.05,), (5.0, 15.0)
    workdir = tmp_path / "vdb"
    rows = sweep.train_and_evaluate(config, str(workdir))
    for row in rows:
        assert abs(row["train_rate_nats"] - row["target_rate"]) < 0.25 * row["target_rate"], row
    assert (workdir / "dual_beta_beta.png").exists() and (workdir / "dual_beta_rate.png").exists()


def numpy_mmd_squared(x, y, kernel, scale=1.0):
    """The unbiased MMD^2 by explicit loops over pairs, float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c = 2.0 * x.shape[1] * scale**2

    def k(a, b):
        d = np.sum((a - b) ** 2)
        return np.exp(-d / c) if kernel == "gaussian" else c / (c + d)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["gaussian", "inverse_multiquadric"])
def test_mmd_is_the_unbiased_u_statistic_zero_for_equal_and_positive_for_different(kernel):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(loc=0.5, size=(9, 3))
    got = float(losses.mmd_squared(jnp.asarray(x), jnp.asarray(y), kernel))
    assert got == pytest.approx(numpy_mmd_squared(x, y, kernel), rel=1e-4, abs=1e-6)
    narrow = float(losses.mmd_squared(jnp.asarray(x), jnp.asarray(y), kernel, scale=0.3))
    assert narrow == pytest.approx(numpy_mmd_squared(x, y, kernel, 0.3), rel=1e-4, abs=1e-6)
    assert narrow != pytest.approx(got, rel=1e-2)  # the width matters
    pair = float(losses.mmd_squared(jnp.asarray(x[:2]), jnp.asarray(y[:2]), kernel))
    assert pair == pytest.approx(numpy_mmd_squared(x[:2], y[:2], kernel), rel=1e-4, abs=1e-6)
    # Equal distributions: zero in expectation (within 3 standard errors over 300 draws).
    draws = jax.random.normal(jax.random.key(1), (300, 2, 20, 3))
    same = np.asarray(jax.vmap(lambda d: losses.mmd_squared(d[0], d[1], kernel))(draws))
    assert abs(same.mean()) < 3 * same.std() / np.sqrt(len(same))
    shifted = np.asarray(jax.vmap(lambda d: losses.mmd_squared(d[0], d[1] + 1.0, kernel))(draws))
    assert shifted.mean() > 10 * shifted.std() / np.sqrt(len(shifted)) > 0


def test_mmd_needs_a_known_kernel_and_two_rows():
    with pytest.raises(ValueError, match="kernel must be one of"):
        losses.mmd_squared(jnp.zeros((4, 2)), jnp.zeros((4, 2)), "laplacian")
    with pytest.raises(ValueError, match="x and y need >= 2 rows each"):
        losses.mmd_squared(jnp.zeros((1, 2)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"^scale must be > 0"):
        losses.mmd_squared(jnp.zeros((4, 2)), jnp.ones((4, 2)), scale=0.0)  # NaN on the diagonal
    with pytest.raises(ValueError, match=r"^x and y must be \[N, K\] and \[M, K\] with one K"):
        losses.mmd_squared(jnp.zeros((4, 2)), jnp.ones((4, 1)))  # broadcast silently before


def test_the_vae_adds_lambda_times_the_mmd_to_its_loss():
    from experiments.configs import vae

    config = vae.get_config()
    config.latent_dim, config.hidden_dims, config.batch_size = 4, (16,), 16
    with config.sweep.unlocked():
        config.sweep.mmd_weight = (0.0, 100.0)
    images = jnp.clip(jax.random.normal(jax.random.key(0), (64, 12)), -1, 1)
    labels = jnp.zeros(64, jnp.int32)
    task = tasks.load("vae").build(config, sweep.data_info(config, images, labels))
    state = task.init(jax.random.key(1))
    batch = train.Batch(images[:16], labels[:16], jnp.arange(16))
    defaults = {n: jnp.float32(h.default) for n, h in tasks.load("vae").HYPERPARAMETERS.items()}
    metrics = {}
    for weight in (0.0, 100.0):
        hparams = defaults | {"mmd_weight": jnp.float32(weight)}
        _, metrics[weight] = task.update(
            state, batch, jax.random.key(2), hparams, train.Collectives()
        )
    assert float(metrics[100.0]["mmd"]) == float(metrics[0.0]["mmd"]) != 0.0
    expected = float(metrics[0.0]["loss"]) + 100.0 * float(metrics[0.0]["mmd"])
    assert float(metrics[100.0]["loss"]) == pytest.approx(expected, rel=1e-5)
    config.mmd_kernel = "laplacian"
    with pytest.raises(ValueError, match="mmd_kernel must be one of"):
        sweep.validate_config(config)


def test_the_k2_figure_draws_the_learned_marginals_components(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np

    from vib_jax import tasks

    config = smoke.get_config()
    config.latent_dim, config.hidden_dims = 2, (16,)
    config.rate_estimator, config.marginal, config.marginal_components = "monte_carlo", "mixture", 3
    images = jax.random.normal(jax.random.key(0), (40, 12))
    labels = jnp.arange(40, dtype=jnp.int32) % 10
    task = vib_classifier.build(config, sweep.data_info(config, images, labels))
    params = task.init(jax.random.key(1)).ema_params
    weights, means, stddevs = tasks.marginal_components(task.model, params)
    np.testing.assert_allclose(weights, 1 / 3, rtol=1e-6)  # equal weights at the start
    assert means.shape == stddevs.shape == (3, 2)
    run = tasks.TrainedRun(
        str(tmp_path),
        [{"seed": 0, "beta": 1e-3}],
        [],
        [],
        train.stack([params]),
        np.asarray(images),
        np.asarray(labels),
    )
    path = vib_classifier.marginal_figure(run, task.model, str(tmp_path / "marginal_k2.png"))
    assert plt.imread(path)[..., :3].std() > 0.02


def test_the_vae_charges_the_rate_only_above_its_budget():
    from experiments.configs import vae

    config = vae.get_config()
    config.latent_dim, config.hidden_dims, config.batch_size = 4, (16,), 16
    with config.sweep.unlocked():
        config.sweep.rate_budget = (0.0, 0.5, 1e4)
    images = jnp.clip(jax.random.normal(jax.random.key(0), (64, 12)), -1, 1)
    task = tasks.load("vae").build(
        config, sweep.data_info(config, images, jnp.zeros(64, jnp.int32))
    )
    state = task.init(jax.random.key(1))
    batch = train.Batch(images[:16], jnp.zeros(16, jnp.int32), jnp.arange(16))
    defaults = {n: jnp.float32(h.default) for n, h in tasks.load("vae").HYPERPARAMETERS.items()}
    for budget in (0.0, 0.5, 1e4):
        hparams = defaults | {"beta": jnp.float32(2.0), "rate_budget": jnp.float32(budget)}
        _, metrics = task.update(state, batch, jax.random.key(2), hparams, train.Collectives())
        distortion, rate = float(metrics["distortion"]), float(metrics["rate"])
        assert rate > 0.5  # the untrained encoder's rate is above the middle budget
        expected = distortion + 2.0 * max(rate - budget, 0.0)
        assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    config.objective = "iwae"
    with pytest.raises(ValueError, match="rate_budget .* applies to objective='elbo' only"):
        sweep.validate_config(config)
