"""Reference, property and robustness tests of vib_jax.losses."""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from vib_jax import losses


def numpy_gaussian_kl(mean, stddev, prior_mean, prior_stddev):
    """KL(N(m, s^2) || N(pm, ps^2)) summed over the last axis, in float64 numpy (textbook form)."""
    mean, stddev, prior_mean, prior_stddev = (
        np.asarray(a, np.float64) for a in (mean, stddev, prior_mean, prior_stddev)
    )
    per_dim = (
        np.log(prior_stddev / stddev)
        + (stddev**2 + (mean - prior_mean) ** 2) / (2 * prior_stddev**2)
        - 0.5
    )
    return per_dim.sum(-1)


# ----------------------------------------------------------------------------------------------- KL


def test_kl_matches_numpy_on_random_inputs():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(32, 8)).astype(np.float32)
    stddev = rng.lognormal(sigma=1.0, size=(32, 8)).astype(np.float32)
    prior_mean = rng.normal(size=(8,)).astype(np.float32)
    prior_stddev = rng.lognormal(sigma=0.5, size=(8,)).astype(np.float32)
    got = losses.kl_divergence(mean, stddev, prior_mean, prior_stddev)
    want = numpy_gaussian_kl(mean, stddev, prior_mean, prior_stddev)
    assert got.shape == (32,)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_kl_default_prior_is_standard_normal():
    mean = jnp.array([[0.5, -1.0, 2.0]])
    stddev = jnp.array([[0.3, 1.0, 2.5]])
    want = numpy_gaussian_kl(mean, stddev, 0.0, 1.0)
    np.testing.assert_allclose(losses.kl_divergence(mean, stddev), want, rtol=1e-6)


def test_kl_is_zero_when_posterior_equals_prior():
    prior_mean = jnp.array([0.3, -2.0, 5.0])
    prior_stddev = jnp.array([0.01, 1.0, 40.0])
    kl = losses.kl_divergence(
        jnp.tile(prior_mean, (4, 1)), jnp.tile(prior_stddev, (4, 1)), prior_mean, prior_stddev
    )
    np.testing.assert_array_equal(kl, np.zeros(4))


@pytest.mark.parametrize("stddev", [1e-8, 1e-4, 0.999, 1.0, 1.001, 1e3])
def test_kl_is_exact_across_the_stddev_range(stddev):
    mean = jnp.full((1, 4), 0.25, jnp.float32)
    s = jnp.full((1, 4), stddev, jnp.float32)
    got = losses.kl_divergence(mean, s)
    want = numpy_gaussian_kl(
        np.float32(0.25) * np.ones((1, 4)), np.float32(stddev) * np.ones((1, 4)), 0.0, 1.0
    )
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    grads = jax.grad(lambda m, sd: losses.kl_divergence(m, sd).sum(), argnums=(0, 1))(mean, s)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_kl_near_the_prior_has_no_cancellation_error():
    # (s^2 - 1 - 2 log s) / 2 ~ (s - 1)^2 for s near 1; the naive float32 formula loses every digit
    # here.
    stddev = jnp.array([[1.0 + 1e-3]], jnp.float32)
    got = float(losses.kl_divergence(jnp.zeros((1, 1)), stddev)[0])
    want = float(numpy_gaussian_kl(0.0, np.float64(np.float32(1.0 + 1e-3)), 0.0, 1.0))
    assert got == pytest.approx(want, rel=1e-3)


finite_means = arrays(np.float32, (3, 5), elements=st.floats(-100, 100, width=32))
positive_stddevs = arrays(
    np.float32, (3, 5), elements=st.floats(float(np.float32(1e-8)), 1e3, width=32)
)


@settings(max_examples=60, deadline=None)
@given(
    mean=finite_means,
    stddev=positive_stddevs,
    prior_mean=finite_means,
    prior_stddev=positive_stddevs,
)
def test_kl_is_nonnegative_and_finite(mean, stddev, prior_mean, prior_stddev):
    kl = np.asarray(losses.kl_divergence(mean, stddev, prior_mean, prior_stddev))
    assert np.all(np.isfinite(kl))
    assert np.all(kl >= 0.0)


def test_kl_matches_monte_carlo_within_three_standard_errors():
    num_samples = 100_000
    mean = jnp.array([[0.5, -1.0, 0.0, 2.0], [0.0, 0.1, -0.3, 0.7]])
    stddev = jnp.array([[0.5, 1.5, 0.2, 1.0], [1.2, 0.8, 0.6, 0.3]])
    z = losses.reparameterize(jax.random.key(0), mean, stddev, num_samples)
    per_sample = losses.gaussian_log_prob(z, mean, stddev) - losses.standard_normal_log_prob(
        z
    )  # [S, B]
    estimate = per_sample.mean(0)
    standard_error = per_sample.std(0) / math.sqrt(num_samples)
    closed_form = losses.kl_divergence(mean, stddev)
    assert np.all(np.abs(estimate - closed_form) < 3 * standard_error)
    np.testing.assert_allclose(losses.monte_carlo_rate(z, mean, stddev), estimate, rtol=1e-5)


def test_monte_carlo_rate_refuses_samples_without_their_sample_axis():
    mean, stddev = jnp.zeros((4, 3)), jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"^z must be \[S, \*mean.shape\] = \[S, 4, 3\]"):
        losses.monte_carlo_rate(jnp.zeros((4, 3)), mean, stddev)  # gave a scalar, not [B]


@pytest.mark.parametrize("labels", [[0, 10], [-1, 0]])
def test_cross_entropy_refuses_labels_outside_the_classes(labels):
    # 10 gave NaN and -1 the last class's cross-entropy.
    with pytest.raises(ValueError, match=r"^labels must be integer classes in \[0, 10\)"):
        losses.categorical_cross_entropy(jnp.zeros((2, 10)), jnp.asarray(labels))


def test_monte_carlo_rate_uses_the_given_marginal():
    num_samples = 100_000
    mean, stddev = jnp.array([[1.0, -0.5]]), jnp.array([[0.7, 0.4]])
    prior_mean, prior_stddev = jnp.array([0.5, 0.5]), jnp.array([2.0, 0.5])
    z = losses.reparameterize(jax.random.key(1), mean, stddev, num_samples)
    rate = losses.monte_carlo_rate(
        z, mean, stddev, lambda v: losses.gaussian_log_prob(v, prior_mean, prior_stddev)
    )
    per_sample = losses.gaussian_log_prob(z, mean, stddev) - losses.gaussian_log_prob(
        z, prior_mean, prior_stddev
    )
    standard_error = per_sample.std(0) / math.sqrt(num_samples)
    assert np.all(
        np.abs(rate - losses.kl_divergence(mean, stddev, prior_mean, prior_stddev))
        < 3 * standard_error
    )


def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(2)
    x, mean = rng.normal(size=(2, 6, 3))
    stddev = rng.lognormal(size=(6, 3))
    want = scipy.stats.norm.logpdf(x, mean, stddev).sum(-1)
    np.testing.assert_allclose(losses.gaussian_log_prob(x, mean, stddev), want, rtol=1e-5)
    np.testing.assert_allclose(
        losses.standard_normal_log_prob(x), scipy.stats.norm.logpdf(x).sum(-1), rtol=1e-5
    )


# ----------------------------------------------------------------------------------------- sampling


def test_reparameterize_shape_and_moments():
    mean = jnp.array([[1.0, -2.0, 0.0]])
    stddev = jnp.array([[0.5, 2.0, 1e-3]])
    z = losses.reparameterize(jax.random.key(0), mean, stddev, 50_000)
    assert z.shape == (50_000, 1, 3)
    standard_error = stddev / math.sqrt(50_000)
    assert np.all(np.abs(z.mean(0) - mean) < 4 * standard_error)
    np.testing.assert_allclose(z.std(0), stddev, rtol=0.02)


def test_reparameterize_pathwise_gradient_of_second_moment():
    # d/dmean E[z^2] = 2 mean and d/dstddev E[z^2] = 2 stddev, since E[z^2] = mean^2 + stddev^2.
    mean, stddev = jnp.array([0.7, -1.3]), jnp.array([0.4, 1.1])
    num_samples = 200_000

    def second_moment(m, s):
        return jnp.sum(
            jnp.mean(losses.reparameterize(jax.random.key(3), m, s, num_samples) ** 2, axis=0)
        )

    grad_mean, grad_stddev = jax.grad(second_moment, argnums=(0, 1))(mean, stddev)
    # Per-sample gradients are 2z and 2*eps*z: their standard deviations bound the estimator's
    # error.
    tolerance = 5 * 2 * (jnp.abs(mean) + 2 * stddev) / math.sqrt(num_samples)
    assert np.all(np.abs(grad_mean - 2 * mean) < tolerance)
    assert np.all(np.abs(grad_stddev - 2 * stddev) < tolerance)


def test_reparameterize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        losses.reparameterize(jax.random.key(0), jnp.zeros((2, 3)), jnp.ones((2, 3)), 0)
    with pytest.raises(ValueError, match="num_samples"):
        losses.reparameterize(jax.random.key(0), jnp.zeros((2, 3)), jnp.ones((2, 3)), 2.0)
    with pytest.raises(ValueError, match=r"mean \(2, 3\), scale \(2, 4\)"):
        losses.reparameterize(jax.random.key(0), jnp.zeros((2, 3)), jnp.ones((2, 4)), 1)
    with pytest.raises(ValueError, match=r"scale_tril must have shape \[..., K, K\]=\(2, 3, 3\)"):
        losses.reparameterize(jax.random.key(0), jnp.zeros((2, 3)), jnp.ones((2, 3, 4)), 1)


# ----------------------------------------------------------------------------------------- vib_loss


def numpy_cross_entropy(logits, labels):
    logits = np.asarray(logits, np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, np.broadcast_to(labels, logits.shape[:-1])[..., None], -1)[
        ..., 0
    ]
    return log_z - picked


def test_vib_loss_with_beta_zero_is_cross_entropy():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 8, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=8)
    rate = rng.uniform(0, 50, size=8).astype(np.float32)
    loss, metrics = losses.vib_loss(logits, labels, rate, beta=0.0)
    np.testing.assert_allclose(loss, numpy_cross_entropy(logits, labels).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["cross_entropy"], loss, rtol=1e-7)
    np.testing.assert_allclose(metrics["rate"], rate.mean(), rtol=1e-6)


def test_vib_loss_metrics_against_hand_computed_values():
    # Two samples of two examples, three classes.
    logits = np.log(
        np.array(
            [
                [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],
                [[0.5, 0.4, 0.1], [0.1, 0.6, 0.3]],
            ]
        )
    )
    labels = np.array([0, 2])
    rate = np.array([2.0, 4.0])
    beta = 0.1
    loss, metrics = losses.vib_loss(logits, labels, rate, beta)
    cross_entropy = -(math.log(0.7) + math.log(0.6) + math.log(0.5) + math.log(0.3)) / 4
    assert float(metrics["cross_entropy"]) == pytest.approx(cross_entropy, rel=1e-6)
    assert float(metrics["rate"]) == pytest.approx(3.0)
    assert float(loss) == pytest.approx(cross_entropy + 0.3, rel=1e-6)
    assert float(metrics["izx_bound_bits"]) == pytest.approx(3.0 / math.log(2), rel=1e-6)
    assert float(metrics["izy_bound_bits"]) == pytest.approx(
        (math.log(3) - cross_entropy) / math.log(2), rel=1e-6
    )
    # Averaged softmax: example 0 -> [0.6, 0.3, 0.1] right; example 1 -> [0.1, 0.45, 0.45] argmax 1,
    # wrong.
    assert float(metrics["error"]) == pytest.approx(0.5)
    _, with_entropy = losses.vib_loss(logits, labels, rate, beta, label_entropy=1.0)
    assert float(with_entropy["izy_bound_bits"]) == pytest.approx(
        (1.0 - cross_entropy) / math.log(2), rel=1e-6
    )


def test_hinge_penalty_is_free_below_the_budget_and_linear_above():
    logits = jnp.zeros((1, 4, 10))
    labels = jnp.zeros(4, jnp.int32)

    def penalty(rate, budget):
        return losses.vib_loss(logits, labels, rate, 2.0, rate_budget=budget)[1]["penalty"]

    rate = jnp.array([1.0, 2.0, 3.0, 6.0])  # mean 3
    assert float(penalty(rate, 5.0)) == 0.0
    assert float(penalty(rate, 1.0)) == pytest.approx(2.0 * 2.0)
    assert float(penalty(rate, None)) == pytest.approx(2.0 * 3.0)
    below = jax.grad(lambda r: losses.vib_loss(logits, labels, r, 2.0, rate_budget=5.0)[0])(rate)
    above = jax.grad(lambda r: losses.vib_loss(logits, labels, r, 2.0, rate_budget=1.0)[0])(rate)
    np.testing.assert_array_equal(below, np.zeros(4))
    np.testing.assert_allclose(above, np.full(4, 2.0 / 4))


def test_vib_loss_and_gradients_are_finite_at_extremes():
    key_mean, key_logits = jax.random.split(jax.random.key(5))
    mean = jax.random.normal(key_mean, (6, 16)) * 10
    labels = jnp.arange(6) % 10

    def total_loss(mean, log_stddev, logits, beta):
        stddev = jnp.exp(log_stddev)
        return losses.vib_loss(logits, labels, losses.kl_divergence(mean, stddev), beta)[0]

    for stddev in (1e-8, 1e3):
        for scale in (1e4, -1e4):
            logits = jax.random.normal(key_logits, (4, 6, 10)) * scale
            for beta in (0.0, 1e-3, 1e3):
                args = (mean, jnp.full((6, 16), math.log(stddev)), logits, beta)
                value, grads = jax.value_and_grad(total_loss, argnums=(0, 1, 2))(*args)
                assert np.isfinite(value)
                assert all(np.all(np.isfinite(g)) for g in grads)


def test_vib_loss_composes_with_jit_and_vmap_over_beta():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2, 5, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=5)
    rate = rng.uniform(0, 10, size=5).astype(np.float32)
    betas = jnp.array([0.0, 1e-3, 1.0])
    swept = jax.jit(jax.vmap(lambda b: losses.vib_loss(logits, labels, rate, b)[0]))(betas)
    singles = [losses.vib_loss(logits, labels, rate, float(b))[0] for b in betas]
    np.testing.assert_allclose(swept, singles, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(beta=-1e-3), "beta"),
        (dict(beta=1e-3, rate_budget=-1.0), "rate_budget"),
        (dict(beta=1e-3, labels=np.zeros(4, np.int32)), "labels"),
        (dict(beta=1e-3, rate=np.zeros(3)), "rate"),
        (dict(beta=1e-3, logits=np.zeros((5, 10))), "logits"),
        (dict(beta=np.array([1e-3, 1e-2])), "beta"),
    ],
)
def test_vib_loss_rejects_bad_arguments(kwargs, argument):
    arguments = dict(logits=np.zeros((2, 5, 10)), labels=np.zeros(5, np.int32), rate=np.zeros(5))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        losses.vib_loss(**arguments)


# ----------------------------------------------------------------------------------------- beta-VAE


def test_bernoulli_log_likelihood_matches_scipy_and_is_finite_for_huge_logits():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(4, 12)) * 3
    x = rng.integers(0, 2, size=(4, 12))
    want = scipy.stats.bernoulli.logpmf(x, scipy.special.expit(logits)).sum(-1)
    np.testing.assert_allclose(losses.bernoulli_log_likelihood(logits, x), want, rtol=1e-5)
    extreme = losses.bernoulli_log_likelihood(jnp.array([1e4, -1e4]), jnp.array([1.0, 1.0]))
    assert float(extreme) == pytest.approx(-1e4, rel=1e-6)


def test_beta_vae_loss_is_distortion_plus_beta_rate():
    log_likelihood = jnp.array([[-100.0, -80.0], [-90.0, -70.0]])
    rate = jnp.array([10.0, 20.0])
    loss, metrics = losses.beta_vae_loss(log_likelihood, rate, beta=4.0)
    assert float(metrics["distortion"]) == pytest.approx(85.0)
    assert float(metrics["rate"]) == pytest.approx(15.0)
    assert float(loss) == pytest.approx(85.0 + 60.0)
    assert float(metrics["elbo"]) == pytest.approx(-100.0)
    with pytest.raises(ValueError, match="beta"):
        losses.beta_vae_loss(log_likelihood, rate, beta=-1.0)
    with pytest.raises(ValueError, match="rate"):
        losses.beta_vae_loss(log_likelihood, jnp.zeros(3), beta=1.0)


# --------------------------------------------------------------------------------------------------
# The ELBO and the importance-weighted bound on a linear-Gaussian model, where log p(x) is known:
# z ~ N(0, I_K), x | z ~ N(W z + b, s^2 I_D), so p(x) = N(b, W W^T + s^2 I). W has orthogonal
# columns, which makes the exact posterior diagonal: N(P W^T (x - b) / s^2, P),
# P = diag(1 / (1 + |w_k|^2 / s^2)).

_W = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])  # orthogonal columns, D = 3, K = 2
_B, _S, _X = np.array([0.5, -1.0, 0.0]), 0.7, np.array([1.2, 0.3, -0.4])


def _log_evidence() -> float:
    return float(scipy.stats.multivariate_normal(_B, _W @ _W.T + _S**2 * np.eye(3)).logpdf(_X))


def _exact_posterior() -> tuple[np.ndarray, np.ndarray]:
    variance = 1.0 / (1.0 + np.sum(_W**2, axis=0) / _S**2)
    return variance * (_W.T @ (_X - _B)) / _S**2, np.sqrt(variance)


def _log_weights(key, mean, stddev, num_samples):
    """`[S, 1]` log p(x, z) - log q(z|x) for z ~ q, with the library's densities."""
    z = losses.reparameterize(key, jnp.asarray(mean)[None], jnp.asarray(stddev)[None], num_samples)
    log_px = losses.gaussian_log_prob(jnp.asarray(_X), z @ _W.T + _B, _S)
    return log_px + losses.standard_normal_log_prob(z) - losses.gaussian_log_prob(z, mean, stddev)


def test_elbo_is_the_closed_form_and_equals_log_evidence_at_the_exact_posterior():
    mean, stddev = np.array([0.2, -0.5]), np.array([0.3, 0.8])  # not the posterior
    # E_q log p(x|z) = -D/2 log(2 pi s^2) - (|x - W m - b|^2 + sum_k v_k^2 |w_k|^2) / (2 s^2)
    expected_log_px = -1.5 * np.log(2 * np.pi * _S**2) - (
        np.sum((_X - _W @ mean - _B) ** 2) + np.sum(stddev**2 * np.sum(_W**2, axis=0))
    ) / (2 * _S**2)
    closed_form = expected_log_px - float(
        losses.kl_divergence(jnp.asarray(mean), jnp.asarray(stddev))
    )
    z = losses.reparameterize(
        jax.random.key(0), jnp.asarray(mean)[None], jnp.asarray(stddev)[None], 200_000
    )
    log_px = np.asarray(losses.gaussian_log_prob(jnp.asarray(_X), z @ _W.T + _B, _S))
    _, metrics = losses.beta_vae_loss(
        jnp.asarray(log_px), losses.kl_divergence(mean[None], stddev[None]), 1.0
    )
    standard_error = log_px.std() / np.sqrt(log_px.size)
    assert abs(float(metrics["elbo"]) - closed_form) < 3 * standard_error
    assert closed_form < _log_evidence() - 0.05  # a wrong posterior leaves a gap
    exact_mean, exact_stddev = _exact_posterior()
    weights = _log_weights(jax.random.key(1), exact_mean, exact_stddev, 10)
    np.testing.assert_allclose(
        weights, _log_evidence(), rtol=1e-5
    )  # every weight is p(x): the bound is tight


def test_importance_weighted_bound_increases_with_k_towards_log_evidence():
    mean, stddev = np.array([0.2, -0.5]), np.array([0.3, 0.8])
    bounds = []
    for k in (1, 10, 100, 5000):
        repeats = jax.random.split(jax.random.key(k), 200)
        per_repeat = jax.vmap(
            lambda key: losses.importance_weighted_bound(_log_weights(key, mean, stddev, k))
        )(repeats)
        bounds.append((float(per_repeat.mean()), float(per_repeat.std() / np.sqrt(200))))
    means = [m for m, _ in bounds]
    assert all(a < b for a, b in zip(means, means[1:])), bounds
    assert means[-1] <= _log_evidence() + 3 * bounds[-1][1]
    assert _log_evidence() - means[-1] < 0.01 < _log_evidence() - means[0], bounds


def test_importance_weighted_bound_with_one_sample_is_the_weight_and_is_stable():
    weights = jnp.array([[-1000.0, 3.0], [-1001.0, 3.0]])
    np.testing.assert_allclose(losses.importance_weighted_bound(weights[:1]), weights[0])
    expected = -1000.0 + np.log((1 + np.exp(-1.0)) / 2)  # no underflow of exp(-1000)
    np.testing.assert_allclose(
        losses.importance_weighted_bound(weights), [expected, 3.0], rtol=1e-6
    )
    with pytest.raises(ValueError, match="log_weights"):
        losses.importance_weighted_bound(jnp.zeros(3))
