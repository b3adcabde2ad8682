"""Reference and property tests of the full-covariance Gaussian (the paper's K = 2 encoder) and of
the output regularisers of Table 1's baselines (label smoothing, confidence penalty, dropout)."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings

from vib_jax import losses, models
from vib_jax.tasks import vib_classifier


def random_cholesky(rng, batch, k):
    """`[B, K, K]` float32 lower-triangular factors with positive diagonal, of varied scales."""
    factor = np.tril(rng.normal(size=(batch, k, k)))
    diagonal = rng.lognormal(sigma=0.7, size=(batch, k))
    factor[:, np.arange(k), np.arange(k)] = diagonal
    return factor.astype(np.float32)


def numpy_full_kl(mean, scale_tril):
    """KL(N(m, L L^T) || N(0, I)) from the covariance itself, in float64 numpy (textbook form)."""
    mean, scale_tril = np.asarray(mean, np.float64), np.asarray(scale_tril, np.float64)
    covariance = scale_tril @ np.swapaxes(scale_tril, -1, -2)
    _, log_det = np.linalg.slogdet(covariance)
    trace = np.trace(covariance, axis1=-2, axis2=-1)
    return 0.5 * (trace + np.sum(mean**2, -1) - mean.shape[-1] - log_det)


def test_full_log_prob_matches_scipy_multivariate_normal():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(6, 3)).astype(np.float32)
    scale_tril = random_cholesky(rng, 6, 3)
    z = rng.normal(scale=2.0, size=(4, 6, 3)).astype(np.float32)
    got = losses.full_gaussian_log_prob(z, mean, scale_tril)
    assert got.shape == (4, 6)
    for b in range(6):
        dist = scipy.stats.multivariate_normal(mean[b], scale_tril[b] @ scale_tril[b].T)
        np.testing.assert_allclose(got[:, b], dist.logpdf(z[:, b]), rtol=1e-5, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_full_kl_matches_the_covariance_formula(k, seed):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(5, k)).astype(np.float32)
    scale_tril = random_cholesky(rng, 5, k)
    got = losses.kl_divergence_full(mean, scale_tril)
    np.testing.assert_allclose(got, numpy_full_kl(mean, scale_tril), rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(got) >= -1e-5)


@pytest.mark.parametrize("offset", [1e-3, 1e-4])
def test_the_full_kl_is_accurate_near_the_prior(offset):
    # L = (1 + offset) I and a zero mean: KL = K (x^2 - 1 - 2 log x) / 2, about K offset^2, where
    # the trace less K cancels in float32 (-50% at offset 1e-4 when written that way).
    k = 8
    scale_tril = (1.0 + offset) * jnp.eye(k)[None]
    got = float(losses.kl_divergence_full(jnp.zeros((1, k)), scale_tril)[0])
    x = np.float64(np.float32(1.0 + offset))
    want = k * (x**2 - 1.0 - 2.0 * np.log(x)) / 2.0
    assert got == pytest.approx(want, rel=1e-3)


def test_the_full_kl_reads_the_lower_triangle_only():
    rng = np.random.default_rng(4)
    mean = rng.normal(size=(3, 3)).astype(np.float32)
    scale_tril = random_cholesky(rng, 3, 3)
    noisy = scale_tril + np.triu(np.ones((3, 3), np.float32), 1)  # ignored above the diagonal
    np.testing.assert_array_equal(
        losses.kl_divergence_full(mean, noisy), losses.kl_divergence_full(mean, scale_tril)
    )


def test_a_diagonal_factor_gives_the_diagonal_formulas():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(7, 4)).astype(np.float32)
    stddev = rng.lognormal(size=(7, 4)).astype(np.float32)
    diagonal = jax.vmap(jnp.diag)(stddev)
    np.testing.assert_allclose(
        losses.kl_divergence_full(mean, diagonal), losses.kl_divergence(mean, stddev), rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.kl_to_standard_normal(mean, diagonal), losses.kl_divergence(mean, stddev), rtol=1e-5
    )
    key = jax.random.key(3)
    z = losses.reparameterize(key, mean, diagonal, 5)
    np.testing.assert_allclose(z, losses.reparameterize(key, mean, stddev, 5), rtol=1e-6)
    np.testing.assert_allclose(
        losses.full_gaussian_log_prob(z, mean, diagonal),
        losses.gaussian_log_prob(z, mean, stddev),
        rtol=1e-5,
    )


def test_full_covariance_samples_have_the_mean_and_covariance_within_three_standard_errors():
    mean = np.array([[0.5, -1.0]], np.float32)
    scale_tril = np.array([[[1.5, 0.0], [-0.8, 0.4]]], np.float32)
    covariance = (scale_tril[0] @ scale_tril[0].T).astype(np.float64)
    n = 200_000
    z = np.asarray(losses.reparameterize(jax.random.key(0), mean, scale_tril, n), np.float64)[:, 0]
    standard_error = np.sqrt(np.diag(covariance) / n)
    assert np.all(np.abs(z.mean(0) - mean[0]) < 3 * standard_error)
    centred = z - mean[0]
    for i in range(2):
        for j in range(2):
            products = centred[:, i] * centred[:, j]
            se = products.std() / np.sqrt(n)
            assert abs(products.mean() - covariance[i, j]) < 3 * se, (i, j)


def test_monte_carlo_rate_of_a_full_posterior_matches_its_closed_form_kl():
    rng = np.random.default_rng(2)
    mean = rng.normal(size=(3, 2)).astype(np.float32)
    scale_tril = random_cholesky(rng, 3, 2)
    n = 100_000
    z = losses.reparameterize(jax.random.key(1), mean, scale_tril, n)
    per_sample = losses.full_gaussian_log_prob(
        z, mean, scale_tril
    ) - losses.standard_normal_log_prob(z)
    standard_error = np.std(np.asarray(per_sample, np.float64), axis=0) / np.sqrt(n)
    estimate = losses.monte_carlo_rate(z, mean, scale_tril)
    assert np.all(
        np.abs(estimate - losses.kl_divergence_full(mean, scale_tril)) < 3 * standard_error
    )


def test_full_covariance_shapes_are_checked():
    with pytest.raises(ValueError, match=r"scale_tril must have shape \[..., K, K\]"):
        losses.kl_divergence_full(jnp.zeros((4, 2)), jnp.zeros((4, 2, 3)))


def test_full_covariance_encoder_outputs_lower_triangular_factors_that_start_small():
    encoder = models.GaussianEncoder(latent_dim=3, hidden_dims=(16,), covariance="full")
    x = jax.random.normal(jax.random.key(0), (5, 10))
    params = encoder.init(jax.random.key(1), x)
    mean, scale_tril = encoder.apply(params, x)
    assert mean.shape == (5, 3) and scale_tril.shape == (5, 3, 3)
    np.testing.assert_array_equal(scale_tril, np.tril(scale_tril))
    diagonal = np.diagonal(scale_tril, axis1=-2, axis2=-1)
    assert np.all(diagonal > 0) and np.all(np.abs(scale_tril) < 0.1)  # softplus(-5) ~ 7e-3
    # L = U diag(stddev): the diagonal holds the stddevs; below it, U times its column stddev.
    below = scale_tril[:, 1, 0] / diagonal[:, 0]
    assert np.all(np.isfinite(below)) and np.any(np.abs(below) > 1e-3)
    with pytest.raises(ValueError, match="covariance must be one of"):
        models.check_covariance("banded")


# ------------------------------------------------------------------------------ output regularisers


def test_the_covariance_of_a_factor_is_l_l_transposed_and_of_stddevs_diagonal():
    rng = np.random.default_rng(4)
    factor = random_cholesky(rng, 3, 2)
    mean = jnp.zeros((3, 2))
    np.testing.assert_allclose(
        vib_classifier.covariance(mean, jnp.asarray(factor)),
        np.einsum("bij,bkj->bik", factor, factor),
        rtol=1e-6,
    )
    stddevs = rng.lognormal(size=(3, 2)).astype(np.float32)
    diagonal = np.zeros((3, 2, 2), np.float32)
    diagonal[:, [0, 1], [0, 1]] = stddevs**2
    np.testing.assert_allclose(vib_classifier.covariance(mean, jnp.asarray(stddevs)), diagonal)


def test_the_decoder_entropy_grid_is_indexed_rows_by_z2_and_columns_by_z1():
    """A decoder whose logits are (3 z1, 0, ..., 0): the entropy changes along z1 alone, so
    H[i, j] must be that of z1[j] in every row i (a transposed grid fails)."""
    model = models.VIBClassifier(latent_dim=2, hidden_dims=(8,), covariance="full")
    params = model.init(jax.random.key(0), jnp.zeros((1, 5)), jax.random.key(1))
    kernel = np.zeros((2, 10), np.float32)
    kernel[0, 0] = 3.0
    params["params"]["decoder"]["logits"] = {"kernel": kernel, "bias": np.zeros(10, np.float32)}
    z1, z2, entropy = vib_classifier.decoder_entropy_grid(model, params, extent=2.0, size=7)
    logits = np.zeros((7, 10))
    logits[:, 0] = 3.0 * z1
    expected = scipy.stats.entropy(scipy.special.softmax(logits, axis=-1), axis=-1, base=2)
    np.testing.assert_allclose(entropy, np.tile(expected, (7, 1)), rtol=1e-5)
    np.testing.assert_allclose(z1, np.linspace(-2.0, 2.0, 7), atol=1e-6)
    np.testing.assert_allclose(z2, z1)


@settings(max_examples=40, deadline=None)
@given(smoothing=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_smoothed_cross_entropy_is_the_cross_entropy_against_the_smoothed_target(smoothing, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(2, 6, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=6)
    target = (1 - smoothing) * np.eye(10)[labels] + smoothing / 10  # [B, C], sums to 1
    log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    want = -np.sum(target * log_probs, axis=-1)
    got = losses.smoothed_cross_entropy(logits, labels, smoothing)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_smoothing_above_one_is_refused():
    # 1.5 would weigh the label's cross-entropy by -0.5: a reward for wrong answers.
    with pytest.raises(ValueError, match=r"^smoothing must be in \[0, 1\]"):
        losses.smoothed_cross_entropy(jnp.zeros((2, 10)), jnp.zeros(2, jnp.int32), 1.5)


def test_zero_smoothing_is_the_plain_cross_entropy_to_the_bit():
    logits = jax.random.normal(jax.random.key(0), (3, 5, 10))
    labels = jnp.arange(5) % 10
    np.testing.assert_array_equal(
        losses.smoothed_cross_entropy(logits, labels, 0.0),
        losses.categorical_cross_entropy(logits, labels),
    )


def test_softmax_entropy_matches_scipy():
    logits = np.random.default_rng(0).normal(scale=4.0, size=(7, 10)).astype(np.float32)
    want = scipy.stats.entropy(scipy.special.softmax(logits.astype(np.float64), axis=-1), axis=-1)
    np.testing.assert_allclose(losses.softmax_entropy(logits), want, rtol=1e-5, atol=1e-6)


def test_vib_loss_with_the_baselines_regularisers_against_numpy():
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=2.0, size=(3, 8, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=8)
    rate = rng.uniform(0, 20, size=8).astype(np.float32)
    beta, smoothing, weight = 1e-2, 0.1, 1.0
    loss, metrics = losses.vib_loss(
        logits, labels, rate, beta, label_smoothing=smoothing, confidence_penalty=weight
    )
    log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    target = (1 - smoothing) * np.eye(10)[labels] + smoothing / 10
    smoothed = -np.sum(target * log_probs, -1).mean()
    entropy = -np.sum(np.exp(log_probs) * log_probs, -1).mean()
    assert float(loss) == pytest.approx(smoothed - weight * entropy + beta * rate.mean(), rel=1e-5)
    plain = -np.take_along_axis(log_probs, labels[None, :, None], -1).mean()
    assert float(metrics["cross_entropy"]) == pytest.approx(plain, rel=1e-5)  # unregularised


def test_per_example_dropout_keeps_one_minus_rate_and_the_mean_and_ignores_the_batch():
    rate, width = 0.3, 4096
    x = jnp.ones((6, width))
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(0), jnp.arange(6))
    dropped = models.per_example_dropout(x, rate, keys, layer=0)
    kept = np.asarray(dropped > 0)
    n = kept.size
    se = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 3 * se
    np.testing.assert_allclose(np.asarray(dropped)[kept], 1 / (1 - rate), rtol=1e-6)
    # An example's mask depends on its key alone, not on the rest of the batch.
    np.testing.assert_array_equal(
        models.per_example_dropout(x[2:4], rate, keys[2:4], 0), dropped[2:4]
    )
    assert not np.array_equal(models.per_example_dropout(x, rate, keys, 1), dropped)  # per layer
    np.testing.assert_array_equal(models.per_example_dropout(x, 0.0, keys, 0), x)
