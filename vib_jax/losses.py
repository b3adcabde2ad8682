"""The mathematics of the variational information bottleneck, as pure functions of arrays.

Everything here is in nats and composes with `jax.jit`, `jax.grad`, `jax.vmap` and `jax.shard_map`.
Shapes follow the project convention: batch-major `[B, ...]`, a Monte-Carlo axis (when present)
leads as `[S, B, ...]`, and the latent or event axis is the last one.

Argument checks that depend only on shapes (or on Python numbers) raise `ValueError` even under
`jit`; checks on values are skipped when the value is a tracer (e.g. a beta that is vmapped over in
a sweep).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

LN2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------
# Argument checks (shape-only checks work under jit; value checks skip tracers).


def concrete_or_none(value) -> np.ndarray | None:
    """Returns `value` as a numpy array, or None when it is a tracer (its value is unknown)."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_nonnegative(name: str, value) -> None:
    """Raises ValueError naming `name` unless every element of `value` is >= 0 (skipped for a
    tracer)."""
    concrete = concrete_or_none(value)
    if concrete is not None and not np.all(concrete >= 0):
        raise ValueError(f"{name} must be >= 0 (a float in [0, inf)), got {value!r}.")


def check_positive_int(name: str, value) -> None:
    """Raises ValueError naming `name` unless `value` is a Python or numpy integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def check_classes(name: str, classes, num_classes: int) -> None:
    """Raises ValueError naming `name` unless `classes` are integers in [0, `num_classes`)
    (skipped for a tracer): out of range, a gather reads NaN, or wraps -1 round to the last
    class."""
    concrete = concrete_or_none(classes)
    if concrete is None:
        return
    if not np.issubdtype(concrete.dtype, np.integer) or np.any(
        (concrete < 0) | (concrete >= num_classes)
    ):
        raise ValueError(f"{name} must be integer classes in [0, {num_classes}), got {concrete!r}.")


def _check_same_shape(**arrays) -> None:
    shapes = {name: jnp.shape(array) for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"Expected arrays of the same shape, got {listed}.")


# --------------------------------------------------------------------------------------------------
# Sampling and Gaussian densities.


def is_cholesky_factor(mean: jax.Array, scale: jax.Array) -> bool:
    """Whether `scale` is a Cholesky factor `[..., K, K]` (full covariance) rather than stddevs
    `[..., K]` (diagonal) for means `[..., K]`: the one rule the functions taking either use."""
    return jnp.ndim(scale) == jnp.ndim(mean) + 1


def _check_cholesky_shape(mean: jax.Array, scale_tril: jax.Array) -> None:
    expected = (*jnp.shape(mean), jnp.shape(mean)[-1])
    if jnp.shape(scale_tril) != expected:
        raise ValueError(
            f"scale_tril must have shape [..., K, K]={expected} to match mean "
            f"{jnp.shape(mean)}, got {jnp.shape(scale_tril)}."
        )


def reparameterize(
    rng: jax.Array, mean: jax.Array, scale: jax.Array, num_samples: int = 1
) -> jax.Array:
    """Samples z ~ N(mean, Sigma) by the reparameterisation z = mean + L eps.

    Args:
      rng: a `jax.random` key.
      mean: `[..., K]` posterior means.
      scale: `[..., K]` standard deviations (Sigma = diag(scale^2)), or a lower-triangular
        Cholesky factor L `[..., K, K]` with positive diagonal (Sigma = L L^T).
      num_samples: S >= 1, the number of Monte-Carlo samples.

    Returns:
      `[S, ..., K]` samples; gradients flow to `mean` and `scale` (pathwise estimator).
    """
    check_positive_int("num_samples", num_samples)
    full = is_cholesky_factor(mean, scale)
    if full:
        _check_cholesky_shape(mean, scale)
    else:
        _check_same_shape(mean=mean, scale=scale)
    eps = jax.random.normal(rng, (num_samples, *jnp.shape(mean)), dtype=jnp.result_type(mean))
    if full:
        return mean + jnp.einsum("...ij,s...j->s...i", scale, eps)
    return mean + scale * eps


def full_gaussian_log_prob(x: jax.Array, mean: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """log N(x; mean, L L^T) in nats, for a lower-triangular L with positive diagonal.

    Args:
      x: `[S, ..., K]` points (a leading sample axis, e.g. from `reparameterize`).
      mean: `[..., K]` means.
      scale_tril: `[..., K, K]` Cholesky factors L.

    Returns:
      `[S, ...]` log-densities: -|L^-1 (x - mean)|^2 / 2 - sum_i log L_ii - K log(2 pi) / 2.
    """
    _check_cholesky_shape(mean, scale_tril)
    residual = jnp.moveaxis(x - mean, 0, -1)  # [..., K, S]
    standardized = jax.lax.linalg.triangular_solve(scale_tril, residual, left_side=True, lower=True)
    log_det = jnp.sum(jnp.log(jnp.diagonal(scale_tril, axis1=-2, axis2=-1)), axis=-1)
    quadratic = jnp.moveaxis(jnp.sum(jnp.square(standardized), axis=-2), -1, 0)
    return -0.5 * quadratic - log_det - jnp.shape(mean)[-1] * _HALF_LOG_2PI


def gaussian_log_prob(x: jax.Array, mean: jax.Array, stddev: jax.Array) -> jax.Array:
    """log N(x; mean, diag(stddev^2)), summed over the last axis, in nats.

    Serves both as a posterior/marginal density of latents and as the Gaussian log-likelihood of
    data under a decoder (the beta-VAE with Gaussian outputs). Arguments broadcast against each
    other.

    Args:
      x: `[..., D]` points.
      mean: `[..., D]` means (broadcastable to `x`).
      stddev: `[..., D]` positive standard deviations (broadcastable to `x`).

    Returns:
      `[...]` log-densities.
    """
    standardized = (x - mean) / stddev
    return jnp.sum(-0.5 * jnp.square(standardized) - jnp.log(stddev) - _HALF_LOG_2PI, axis=-1)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
    """log N(z; 0, I) summed over the last axis, in nats: `[..., K] -> [...]`. The default marginal
    r(z)."""
    return jnp.sum(-0.5 * jnp.square(z) - _HALF_LOG_2PI, axis=-1)


def mixture_log_prob(
    z: jax.Array, logits: jax.Array, means: jax.Array, stddevs: jax.Array
) -> jax.Array:
    """log r(z) of a mixture of diagonal Gaussians, sum_m softmax(logits)_m N(z; means_m,
    diag(stddevs_m^2)), in nats (a learned marginal r(z); its KL from q(z|x) has no closed form:
    use `monte_carlo_rate`).

    The value is exact to float32 rounding (`_mixture_log_prob_forward`); the gradient is written
    by hand, mostly matrix products (`_mixture_log_prob_backward`), 5x faster than differentiating
    the [N, M, K] broadcast (benchmarks/RESULTS.md). Reverse mode only (`jax.grad`, `jax.vjp`):
    a `jax.custom_vjp`.

    Args:
      z: `[..., K]` points.
      logits: `[M]` unnormalised log mixture weights.
      means: `[M, K]` component means.
      stddevs: `[M, K]` positive component standard deviations.

    Returns:
      `[...]` log-densities.
    """
    if jnp.shape(means) != jnp.shape(stddevs) or jnp.shape(means)[:1] != jnp.shape(logits):
        raise ValueError(
            "logits [M], means [M, K] and stddevs [M, K] must agree, got "
            f"{jnp.shape(logits)}, {jnp.shape(means)}, {jnp.shape(stddevs)}."
        )
    if jnp.shape(z)[-1:] != jnp.shape(means)[1:]:
        raise ValueError(
            f"z [..., K] must have the means' K = {jnp.shape(means)[1]} latents, got z of shape "
            f"{jnp.shape(z)}."
        )
    points = jnp.reshape(z, (-1, jnp.shape(z)[-1]))
    log_prob = _mixture_log_prob_flat(points, jax.nn.log_softmax(logits), means, stddevs)
    return jnp.reshape(log_prob, jnp.shape(z)[:-1])


@jax.custom_vjp
def _mixture_log_prob_flat(
    z: jax.Array, log_weights: jax.Array, means: jax.Array, stddevs: jax.Array
) -> jax.Array:
    """`mixture_log_prob` of points `[N, K]` with normalised log weights `[M]`: `[N]` nats."""
    return _mixture_log_prob_forward(z, log_weights, means, stddevs)[0]


def _mixture_log_prob_forward(z, log_weights, means, stddevs):
    """The mixture's log-density `[N]` and what its gradient needs: the components' posterior
    probabilities (responsibilities) `[N, M]` and the inputs.

    Each component's log-density comes from the standardised differences (z - means_m) / stddevs_m,
    one [N, M, K] broadcast, fused by XLA into its sum: exact where the expansion
    |z|^2 - 2 z.mu + |mu|^2 over a matrix product would lose all digits (stddevs << |z|).
    """
    inverse_stddevs = 1.0 / stddevs
    log_normalizers = log_weights - jnp.sum(jnp.log(stddevs) + _HALF_LOG_2PI, axis=-1)  # [M]
    standardized = (z[:, None, :] - means) * inverse_stddevs  # [N, M, K]
    log_joint = log_normalizers - 0.5 * jnp.sum(jnp.square(standardized), axis=-1)  # [N, M]
    log_prob = jax.scipy.special.logsumexp(log_joint, axis=-1)
    responsibilities = jnp.exp(log_joint - log_prob[:, None])
    return log_prob, (z, means, inverse_stddevs, responsibilities)


def _mixture_log_prob_backward(residuals, cotangent):
    """The gradient of `_mixture_log_prob_flat` from the responsibilities, mostly matrix products.

    With G[n, m] = cotangent[n] * responsibility[n, m], precisions P = 1 / stddevs^2, and the
    points and means shifted by the means' average (no change in exact arithmetic, smaller terms):
      d/dz           = G (means P) - z (G P)                                 [N, K]
      d/dmeans       = P (G^T z - means sum_n G)                             [M, K]
      d/dstddevs     = (sum_n G (z_n - means)^2 P - sum_n G) / stddevs       [M, K]
      d/dlog_weights = sum_n G                                               [M]
    The stddevs' sum of squared distances stays a broadcast: expanded into products it cancels
    (relative errors of 2-190% at stddevs 1e-3 in our tests). The points' and means' gradients
    cancel too, by |means - their average| / |z - means| (N = 100, M = 500, K = 50, their largest
    error over the largest entry, against differentiating the broadcast): 1e-4 at stddevs 1e-3
    with the means 5 from their average, 2e-3 at 1e-4, 2e-2 at 1e-5. Written as broadcasts they
    are exact, but 4x slower on CPU: a marginal whose stddevs fall below 1e-3 needs them.
    Products and sum run at the highest precision, since the products' terms partly cancel (not
    TF32 on GPUs).
    """
    z, means, inverse_stddevs, responsibilities = residuals
    center = jnp.mean(means, axis=0)
    z, means = z - center, means - center
    weights = cotangent[:, None] * responsibilities  # G [N, M]
    total = jnp.sum(weights, axis=0)  # [M]
    precision = jnp.square(inverse_stddevs)
    matmul = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    weighted_z = matmul(weights.T, z)  # [M, K]
    z_gradient = matmul(weights, means * precision) - z * matmul(weights, precision)
    means_gradient = precision * (weighted_z - means * total[:, None])
    squared_distances = jnp.einsum(
        "nm,nmk->mk",
        weights,
        jnp.square(z[:, None, :] - means),
        precision=jax.lax.Precision.HIGHEST,
    )
    stddevs_gradient = inverse_stddevs * (squared_distances * precision - total[:, None])
    return z_gradient, total, means_gradient, stddevs_gradient


_mixture_log_prob_flat.defvjp(_mixture_log_prob_forward, _mixture_log_prob_backward)


def kl_divergence(
    mean: jax.Array,
    stddev: jax.Array,
    prior_mean: jax.Array | float = 0.0,
    prior_stddev: jax.Array | float = 1.0,
) -> jax.Array:
    """Closed-form KL( N(mean, stddev^2) || N(prior_mean, prior_stddev^2) ) of diagonal Gaussians.

    Per latent dimension, with u = log(stddev / prior_stddev) and
    d = (mean - prior_mean) / prior_stddev, KL = (expm1(2u) - 2u + d^2) / 2. Working with u keeps it
    finite and accurate for stddev from 1e-8 to 1e3 (no ratio of squares that over- or underflows)
    and exact to rounding when q is close to the prior.

    Args:
      mean: `[..., K]` posterior means.
      stddev: `[..., K]` posterior standard deviations (> 0).
      prior_mean: prior means, broadcastable to `[..., K]`.
      prior_stddev: prior standard deviations (> 0), broadcastable to `[..., K]`.

    Returns:
      `[...]` KL divergences in nats, summed over the latent axis: one value per example.
    """
    _check_same_shape(mean=mean, stddev=stddev)
    log_ratio = jnp.log(stddev) - jnp.log(prior_stddev)
    scale_term = jnp.maximum(
        jnp.expm1(2.0 * log_ratio) - 2.0 * log_ratio, 0.0
    )  # >= 0; clamps rounding
    location_term = jnp.square((mean - prior_mean) / prior_stddev)
    return 0.5 * jnp.sum(scale_term + location_term, axis=-1)


def kl_divergence_full(mean: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """Closed-form KL( N(mean, L L^T) || N(0, I) ) for a full-covariance Gaussian, in nats.

    KL = (|L|_F^2 + |mean|^2 - K) / 2 - sum_i log L_ii: the trace of the covariance is the squared
    Frobenius norm of its Cholesky factor, and its log-determinant twice the sum of log L_ii.
    Written per diagonal entry as `kl_divergence` is (accurate near the prior), plus the strictly
    lower entries' squares: for a diagonal L it equals `kl_divergence(mean, diag(L))`.

    Args:
      mean: `[..., K]` posterior means.
      scale_tril: `[..., K, K]` lower-triangular Cholesky factors with positive diagonal (zero
        above it, as everywhere a Cholesky factor is taken).

    Returns:
      `[...]` KL divergences: one value per example.
    """
    _check_cholesky_shape(mean, scale_tril)
    log_diagonal = jnp.log(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))
    # The diagonal's L_ii^2 - 1 - 2 log L_ii as `kl_divergence` writes it (expm1): exact near the
    # prior, where the trace less K would cancel (a relative error of 50% at L = 1.0001 I).
    diagonal = jnp.maximum(jnp.expm1(2.0 * log_diagonal) - 2.0 * log_diagonal, 0.0)
    below = jnp.sum(jnp.square(jnp.tril(scale_tril, -1)), axis=(-2, -1))
    location = jnp.sum(jnp.square(mean), axis=-1)
    return 0.5 * (jnp.sum(diagonal, axis=-1) + below + location)


def kl_to_standard_normal(mean: jax.Array, scale: jax.Array) -> jax.Array:
    """KL( q || N(0, I) ) in nats, `[...]`, for q given by stddevs `[..., K]` (`kl_divergence`) or a
    Cholesky factor `[..., K, K]` (`kl_divergence_full`): the rate of either posterior."""
    if is_cholesky_factor(mean, scale):
        return kl_divergence_full(mean, scale)
    return kl_divergence(mean, scale)


def monte_carlo_rate(
    z: jax.Array,
    mean: jax.Array,
    scale: jax.Array,
    marginal_log_prob: Callable[[jax.Array], jax.Array] = standard_normal_log_prob,
) -> jax.Array:
    """Monte-Carlo estimate of the rate KL(q(z|x) || r(z)) = E_q[log q(z|x) - log r(z)], in nats.

    For marginals r(z) with no closed-form KL (e.g. a learned mixture), and the recipe of the
    official JAX notebook. Unbiased for each example.

    Args:
      z: `[S, B, K]` samples from q(z|x) (e.g. from `reparameterize`).
      mean: `[B, K]` posterior means.
      scale: `[B, K]` posterior standard deviations, or Cholesky factors `[B, K, K]`.
      marginal_log_prob: maps `[S, B, K]` latents to `[S, B]` log r(z).

    Returns:
      `[B]` estimates, the average over the S samples.
    """
    if jnp.shape(z)[1:] != jnp.shape(mean):
        raise ValueError(
            f"z must be [S, *mean.shape] = [S, {', '.join(map(str, jnp.shape(mean)))}] samples, "
            f"got {jnp.shape(z)}."
        )
    if is_cholesky_factor(mean, scale):
        log_posterior = full_gaussian_log_prob(z, mean, scale)
    else:
        log_posterior = gaussian_log_prob(z, mean, scale)
    return jnp.mean(log_posterior - marginal_log_prob(z), axis=0)


MMD_KERNELS = ("gaussian", "inverse_multiquadric")


def kernel_matrix(x: jax.Array, y: jax.Array, kernel: str, scale: float = 1.0) -> jax.Array:
    """`[N, M]` kernel values between the rows of `x` `[N, K]` and `y` `[M, K]`.

    With c = 2 K scale^2 (the mean squared distance of two N(0, scale^2 I) draws):
    "gaussian" exp(-|x - y|^2 / c) and "inverse_multiquadric" c / (c + |x - y|^2) (Tolstikhin et
    al. 2018's choice for a Gaussian prior, with heavier tails).
    """
    if kernel not in MMD_KERNELS:
        raise ValueError(f"kernel must be one of {MMD_KERNELS}, got {kernel!r}.")
    if jnp.ndim(x) != 2 or jnp.ndim(y) != 2 or jnp.shape(x)[1] != jnp.shape(y)[1]:
        raise ValueError(
            f"x and y must be [N, K] and [M, K] with one K, got {jnp.shape(x)} and {jnp.shape(y)}."
        )
    concrete_scale = concrete_or_none(scale)
    if concrete_scale is not None and not np.all(concrete_scale > 0):
        raise ValueError(f"scale must be > 0 (the kernel's width), got {scale!r}.")
    c = 2.0 * jnp.shape(x)[-1] * scale**2
    squared = jnp.sum(jnp.square(x[:, None, :] - y[None, :, :]), axis=-1)
    return jnp.exp(-squared / c) if kernel == "gaussian" else c / (c + squared)


def mmd_squared(x: jax.Array, y: jax.Array, kernel: str = "gaussian", scale: float = 1.0):
    """The unbiased estimate of MMD^2(P, Q) from samples `x` `[N, K]` ~ P and `y` `[M, K]` ~ Q
    (Gretton et al. 2012, the U-statistic: the diagonal terms k(x_i, x_i) are left out), in the
    kernel's units; 0 in expectation when P = Q, and may then be slightly negative.

    InfoVAE / MMD-VAE (Zhao, Song & Ermon) use it between the aggregate posterior's samples (the
    batch's z) and prior samples.
    """
    n, m = jnp.shape(x)[0], jnp.shape(y)[0]
    if n < 2 or m < 2:
        raise ValueError(f"x and y need >= 2 rows each, got {n} and {m}.")
    within_x = kernel_matrix(x, x, kernel, scale)
    within_y = kernel_matrix(y, y, kernel, scale)
    between = kernel_matrix(x, y, kernel, scale)
    off_diagonal = lambda k, size: (jnp.sum(k) - jnp.trace(k)) / (size * (size - 1))
    return off_diagonal(within_x, n) + off_diagonal(within_y, m) - 2.0 * jnp.mean(between)


# --------------------------------------------------------------------------------------------------
# Likelihoods of the decoder.


def categorical_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(logits)[label] in nats.

    Args:
      logits: `[..., C]`, e.g. `[S, B, C]` for S posterior samples.
      labels: int labels broadcastable to `logits.shape[:-1]`, e.g. `[B]`.

    Returns:
      `logits.shape[:-1]` cross-entropies.
    """
    check_classes("labels", labels, jnp.shape(logits)[-1])
    labels = jnp.broadcast_to(labels, jnp.shape(logits)[:-1]).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def smoothed_cross_entropy(
    logits: jax.Array, labels: jax.Array, smoothing: jax.Array | float
) -> jax.Array:
    """Cross-entropy against the label smoothed towards uniform (Szegedy et al. 2016), in nats:
    `(1 - smoothing) * CE(label) + smoothing * mean_k(-log p_k)`.

    Args:
      logits: `[..., C]`.
      labels: int labels broadcastable to `logits.shape[:-1]`.
      smoothing: epsilon in [0, 1] (a scalar; may be traced). 0 gives `categorical_cross_entropy`
        exactly.

    Returns:
      `logits.shape[:-1]` values.
    """
    check_nonnegative("smoothing", smoothing)
    concrete = concrete_or_none(smoothing)
    if concrete is not None and not np.all(concrete <= 1):
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing!r}.")
    uniform = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return (1.0 - smoothing) * categorical_cross_entropy(logits, labels) + smoothing * uniform


def softmax_entropy(logits: jax.Array) -> jax.Array:
    """H(softmax(logits)) in nats, `[..., C] -> [...]`: what the confidence penalty (Pereyra et al.
    2017) rewards."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | logits) of independent Bernoullis, summed over the last axis, in nats.

    Written with log-sigmoids so that it is finite for logits of any size; x may be binary or a
    probability in [0, 1] (the usual continuous relaxation for grey-scale images).

    Args:
      logits: `[..., D]` decoder logits (broadcastable to `x`).
      x: `[..., D]` data in [0, 1].

    Returns:
      `[...]` log-likelihoods.
    """
    return jnp.sum(
        x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits), axis=-1
    )


# --------------------------------------------------------------------------------------------------
# Objectives.


def information_bounds(
    cross_entropy: jax.Array, rate: jax.Array, label_entropy: float
) -> tuple[jax.Array, jax.Array]:
    """The information-plane bounds in bits: I(Z;X) <= rate and I(Z;Y) >= H(Y) - cross-entropy.

    Args:
      cross_entropy: mean E[-log q(y|z)] in nats.
      rate: mean KL(q(z|x) || r(z)) in nats.
      label_entropy: H(Y) in nats.

    Returns:
      `(izx_upper_bits, izy_lower_bits)`.
    """
    return rate / LN2, (label_entropy - cross_entropy) / LN2


def information_penalty(
    rate: jax.Array, beta: jax.Array | float, rate_budget: jax.Array | float | None = None
) -> jax.Array:
    """The IB penalty on the mean rate (nats): beta * rate, or the hinge
    beta * max(rate - budget, 0).

    The hinge form makes the rate free up to `rate_budget` nats and costs beta per nat above it
    (its gradient is 0 below the budget). It is not the Variational Discriminator Bottleneck's
    constraint, whose Lagrangian beta * (rate - I_c) costs beta per nat at every rate and moves
    beta by dual ascent (`dual_beta_step`). It acts on the batch-mean rate, the estimate of the
    population quantity E_x KL that bounds I(Z;X).
    """
    if rate_budget is None:
        return beta * rate
    return beta * jnp.maximum(rate - rate_budget, 0.0)


def dual_beta_step(
    beta: jax.Array,
    rate: jax.Array,
    target_rate: jax.Array,
    step_size: jax.Array,
    beta_max: jax.Array | float = jnp.inf,
) -> jax.Array:
    """One dual-ascent step of the Variational Discriminator Bottleneck (Peng et al. 2019):
    `clip(beta + step_size * (rate - target_rate), 0, beta_max)`. Beta grows while the
    (batch-mean) rate is above the target I_c and shrinks below it, never below 0 nor above
    `beta_max` (no cap by default); the constraint E[KL] <= I_c holds at the fixed point. Scalars;
    rate and target in nats, step size in beta per nat."""
    return jnp.clip(beta + step_size * (rate - target_rate), 0.0, beta_max)


def bottleneck_loss(
    log_likelihood: jax.Array,
    rate: jax.Array,
    beta: jax.Array | float,
    rate_budget: jax.Array | float | None = None,
    batch_mean: Callable[[jax.Array], jax.Array] = jnp.mean,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The one objective of the family: E[-log p(target | z)] + beta * E[KL(q(z|x) || r(z))].

    The target is the label for the VIB classifier and the input itself for the beta-VAE (y = x).

    Args:
      log_likelihood: `[S, B]` log p(target | z) per posterior sample and example, in nats (e.g.
        `-categorical_cross_entropy` or `bernoulli_log_likelihood`).
      rate: `[B]` per-example rate in nats (`kl_divergence` or `monte_carlo_rate`).
      beta: >= 0, the weight of the information penalty (a scalar; may be traced, e.g. vmapped).
      rate_budget: None for the plain penalty, or C >= 0 nats for the hinge beta * max(rate - C, 0).
      batch_mean: `[B] -> []`, the batch-mean rate the penalty acts on. A caller that sees part of
        a batch split over devices passes the mean over the whole batch: the hinge is not linear,
        so the mean of the parts' hinges is not the hinge of the batch mean.

    Returns:
      `(loss, metrics)`: the scalar loss in nats, and scalars `distortion` (E[-log p(target|z)]),
      `rate` (`batch_mean`'s) and `penalty`, in nats.
    """
    if jnp.ndim(log_likelihood) != 2:
        raise ValueError(f"log_likelihood must have shape [S, B], got {jnp.shape(log_likelihood)}.")
    batch_size = jnp.shape(log_likelihood)[1]
    if jnp.shape(rate) != (batch_size,):
        raise ValueError(
            f"rate must have shape [B]=({batch_size},) to match log_likelihood, "
            f"got {jnp.shape(rate)}."
        )
    if jnp.ndim(beta) != 0:
        raise ValueError(f"beta must be a scalar, got shape {jnp.shape(beta)}.")
    check_nonnegative("beta", beta)
    if rate_budget is not None:
        check_nonnegative("rate_budget", rate_budget)
    distortion = -jnp.mean(log_likelihood)
    mean_rate = batch_mean(rate)
    penalty = information_penalty(mean_rate, beta, rate_budget)
    return distortion + penalty, dict(distortion=distortion, rate=mean_rate, penalty=penalty)


def vib_loss(
    logits: jax.Array,
    labels: jax.Array,
    rate: jax.Array,
    beta: jax.Array | float,
    *,
    rate_budget: jax.Array | float | None = None,
    label_entropy: float | None = None,
    label_smoothing: jax.Array | float = 0.0,
    confidence_penalty: jax.Array | float = 0.0,
    batch_mean: Callable[[jax.Array], jax.Array] = jnp.mean,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The VIB objective: E[-log q(y|z)] + beta * E[KL(q(z|x) || r(z))] (`bottleneck_loss`,
    y = label), with the output regularisers of Table 1's baselines as options.

    Args:
      logits: `[S, B, C]` decoder logits for S posterior samples of each of B examples.
      labels: `[B]` integer labels in [0, C).
      rate: `[B]` per-example KL(q(z|x) || r(z)) in nats (`kl_divergence` or `monte_carlo_rate`).
      beta: >= 0, the weight of the information penalty (a scalar; may be traced, e.g. vmapped).
      rate_budget: None for the plain penalty, or C >= 0 nats for the hinge beta * max(rate - C, 0).
      label_entropy: H(Y) in nats for the I(Z;Y) bound; default log(C), i.e. uniform labels.
      label_smoothing: epsilon in [0, 1): train on `smoothed_cross_entropy` (0: the plain one).
      confidence_penalty: w >= 0: subtract w * E[H(softmax(logits))] (Pereyra et al. 2017).
      batch_mean: `[B] -> []`, the batch-mean rate (`bottleneck_loss`).

    Returns:
      `(loss, metrics)`: the scalar loss in nats, and scalars `loss`, `cross_entropy` (the plain
      one, whatever the regularisers) and `rate` (nats), `penalty` (nats), `izx_bound_bits`
      (I(Z;X) <= rate), `izy_bound_bits` (I(Z;Y) >= H(Y) - CE), and `error`, the error rate of the
      softmax averaged over the S samples.
    """
    if jnp.ndim(logits) != 3:
        raise ValueError(f"logits must have shape [S, B, C], got {jnp.shape(logits)}.")
    _, batch_size, num_classes = jnp.shape(logits)
    if jnp.shape(labels) != (batch_size,):
        raise ValueError(
            f"labels must have shape [B]=({batch_size},) to match logits, got {jnp.shape(labels)}."
        )
    check_nonnegative("confidence_penalty", confidence_penalty)
    if label_entropy is None:
        label_entropy = math.log(num_classes)

    training_distortion = smoothed_cross_entropy(
        logits, labels, label_smoothing
    ) - confidence_penalty * softmax_entropy(logits)
    loss, terms = bottleneck_loss(-training_distortion, rate, beta, rate_budget, batch_mean)
    cross_entropy = jnp.mean(categorical_cross_entropy(logits, labels))
    izx, izy = information_bounds(cross_entropy, terms["rate"], label_entropy)
    mean_probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
    error = jnp.mean(jnp.argmax(mean_probs, axis=-1) != labels)
    metrics = dict(
        loss=loss,
        cross_entropy=cross_entropy,
        rate=terms["rate"],
        penalty=terms["penalty"],
        izx_bound_bits=izx,
        izy_bound_bits=izy,
        error=error,
    )
    return loss, metrics


def beta_vae_loss(
    log_likelihood: jax.Array,
    rate: jax.Array,
    beta: jax.Array | float,
    rate_budget: jax.Array | float | None = None,
    batch_mean: Callable[[jax.Array], jax.Array] = jnp.mean,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The beta-VAE objective, VIB's unsupervised special case (y = x): distortion + beta * rate.

    Args:
      log_likelihood: `[S, B]` log p(x | z) of each example under the decoder, per posterior sample,
        in nats (e.g. `bernoulli_log_likelihood` or `gaussian_log_prob`).
      rate: `[B]` per-example KL(q(z|x) || r(z)) in nats.
      beta: >= 0; beta = 1 gives the negative ELBO.
      rate_budget: None, or C >= 0 nats: the hinge beta * max(rate - C, 0) on the batch-mean rate
        (`information_penalty`).
      batch_mean: `[B] -> []`, the batch-mean rate (`bottleneck_loss`).

    Returns:
      `(loss, metrics)`: the scalar loss in nats, and scalars `loss`, `distortion` (E[-log p(x|z)]),
      `rate`, `elbo` (-(distortion + rate), nats) and `izx_bound_bits` (I(Z;X) <= rate).
    """
    loss, terms = bottleneck_loss(log_likelihood, rate, beta, rate_budget, batch_mean)
    distortion, mean_rate = terms["distortion"], terms["rate"]
    metrics = dict(
        loss=loss,
        distortion=distortion,
        rate=mean_rate,
        elbo=-(distortion + mean_rate),
        izx_bound_bits=mean_rate / LN2,
    )
    return loss, metrics


def log_mean_exp(x: jax.Array, axis: int = 0) -> jax.Array:
    """log(mean(exp(x), axis)), computed stably in log space (`logsumexp(x) - log n`)."""
    return jax.scipy.special.logsumexp(x, axis=axis) - math.log(jnp.shape(x)[axis])


def importance_weighted_bound(log_weights: jax.Array) -> jax.Array:
    """The importance-weighted bound (IWAE; Burda et al. 2016) of each example, in nats.

    With log_weights = log p(x, z_k) - log q(z_k | x) for k = 1..K samples z_k ~ q(z|x), the bound
    log (1/K) sum_k exp(log_weights_k) <= log p(x) is the ELBO for K = 1, increases with K, and
    tends to log p(x) as K grows.

    Args:
      log_weights: `[K, B]` log importance weights.

    Returns:
      `[B]` bounds.
    """
    if jnp.ndim(log_weights) != 2:
        raise ValueError(f"log_weights must have shape [K, B], got {jnp.shape(log_weights)}.")
    return log_mean_exp(log_weights, axis=0)


# --------------------------------------------------------------------------------------------------
# Adversarial objectives and the InfoGAN bound (Goodfellow et al. 2014; Chen et al. 2016).


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """The GAN discriminator's loss `-log D(x) - log(1 - D(G(z)))` per pair, in nats, from logits
    `[B]` of D on data and on generated images (D = sigmoid(logit)); `[B]`."""
    return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """The non-saturating generator loss `-log D(G(z))` (Goodfellow et al. 2014, Sec. 3), in nats,
    from D's logits `[B]` on generated images; `[B]`."""
    return jax.nn.softplus(-fake_logits)


def categorical_information_bound(code_logits: jax.Array, codes: jax.Array) -> jax.Array:
    """InfoGAN's L_I for a uniform categorical code c in {0..C-1}: `log Q(c | x) + log C`, in nats.

    Its mean over c ~ Uniform and x = G(z, c) is a lower bound on I(c; G(z, c)), at most
    H(c) = log C, reached when Q reads every code back with certainty.

    Args:
      code_logits: `[..., C]` logits of Q(c | x).
      codes: int codes broadcastable to `code_logits.shape[:-1]`.

    Returns:
      `code_logits.shape[:-1]` values.
    """
    num_codes = jnp.shape(code_logits)[-1]
    return math.log(num_codes) - categorical_cross_entropy(code_logits, codes)


def uniform_code_information_bound(
    means: jax.Array, codes: jax.Array, stddev: float = 1.0
) -> jax.Array:
    """InfoGAN's L_I for continuous codes c ~ Uniform[-1, 1]^K read back by a factored Gaussian
    Q(c | x) = N(means, stddev^2 I) with a fixed stddev (the official code's `fix_std`):
    `log Q(c | x) + K log 2` in nats (log 2 per dimension is H(c)).

    Args:
      means: `[..., K]` Q's means.
      codes: `[..., K]` the codes.
      stddev: Q's stddev, > 0.

    Returns:
      `means.shape[:-1]` values.
    """
    _check_same_shape(means=means, codes=codes)
    log_q = gaussian_log_prob(codes, means, jnp.full(jnp.shape(means), stddev, jnp.float32))
    return log_q + jnp.shape(means)[-1] * LN2


# The largest smaller side `best_matching_mass` accepts: its table has 2^side entries.
MAX_MATCHING_SIDE = 16


def best_matching_mass(joint: jax.Array) -> jax.Array:
    """The largest total mass of a one-to-one matching of the rows to the columns of `joint`
    `[R, C]` (non-negative, e.g. the joint distribution of a model's clusters and the labels): the
    accuracy of the clusters as a classifier after the best assignment of labels to them (the
    InfoGAN paper's measure of its categorical code). Each row and column is used at most once.

    Exact, by dynamic programming over the subsets of the smaller side (2^min(R, C) entries, at
    most `2^MAX_MATCHING_SIDE`), scanned over the larger side: jit- and vmap-friendly, unlike
    the Hungarian algorithm of `scipy.optimize.linear_sum_assignment`, which it equals.
    """
    if jnp.ndim(joint) != 2:
        raise ValueError(f"joint must have shape [R, C], got {jnp.shape(joint)}.")
    joint = jnp.asarray(joint, jnp.float32)  # counts too: the scan carries float masses
    if joint.shape[0] < joint.shape[1]:
        joint = joint.T  # rows: the larger side, scanned; columns: the subsets
    side = joint.shape[1]
    if side > MAX_MATCHING_SIDE:
        raise ValueError(
            f"joint's smaller side must be <= {MAX_MATCHING_SIDE}, got shape {joint.shape}."
        )
    subsets = jnp.arange(2**side)
    singletons = 1 << jnp.arange(side)
    contains = (subsets[:, None] & singletons) != 0  # [2^side, side]
    without = subsets[:, None] ^ singletons

    def add_row(best, row):
        """best[s]: the largest mass matching the rows so far to exactly the columns in s."""
        taken = jnp.where(contains, best[without] + row, -jnp.inf)
        return jnp.maximum(best, jnp.max(taken, axis=1)), None

    start = jnp.where(subsets == 0, 0.0, -jnp.inf).astype(joint.dtype)
    best, _ = jax.lax.scan(add_row, start, joint)
    return jnp.max(best)
