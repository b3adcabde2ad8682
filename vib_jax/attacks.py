"""Adversarial attacks on classifiers, as pure functions of arrays: FGSM, PGD (L-inf and L2) and the
targeted Carlini-Wagner L2 attack.

The attacked model is any function `predict_log_probs(images [B, D], key) -> [B, C]` that returns
the log of its predictive distribution. For a stochastic classifier (VIB) that is the log of the
softmax averaged over S posterior samples (`vib_log_predictive`), so every attack differentiates the
expected prediction: the expectation over transformation (EOT) of Athalye et al. (2018), which
defeats the gradient masking that a single noisy sample would give. A deterministic classifier is
the case S = 1. Each attack step draws fresh samples, from `fold_in(key, step)`.

Pixel units: images are float32 in [PIXEL_MIN, PIXEL_MAX] = [-1, 1] (`vib_jax.data`'s
`2 * byte / 255 - 1`), but perturbation sizes (epsilon, step sizes, `perturbation_sizes`) are given
in [0, 1] pixel units, as in the literature: a size e in [0, 1] units is
`to_model_units(e) = PIXEL_SCALE * e` in the images' units. The functions are jittable and
vmappable (e.g. over epsilon); argument checks that need a value are skipped for tracers.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vib_jax import losses, train
from vib_jax.data import PIXEL_MAX, PIXEL_MIN

# Model units per [0, 1] pixel unit: the width of the images' range.
PIXEL_SCALE = PIXEL_MAX - PIXEL_MIN
NORMS = ("linf", "l2")
# `perturbation_sizes` counts a pixel in L0 when it moved by more than half a grey level, in [0, 1]
# pixel units: the smallest change that can survive quantisation to bytes.
L0_TOLERANCE = 0.5 / 255
# CW's tanh change of variables maps the pixel range onto (-1, 1) scaled by this factor before the
# arctanh, so that pixels at the ends of the range start at a finite variable (Carlini and Wagner's
# own 0.999999).
_TANH_SHRINK = 1.0 - 1e-6
_TINY_NORM = 1e-12  # Floor of the gradient norms that L2 steps divide by.

LogProbsFn = Callable[[jax.Array, jax.Array], jax.Array]


def to_model_units(size: jax.Array | float) -> jax.Array | float:
    """A perturbation size (epsilon, step size, norm) in [0, 1] pixel units -> the images' units."""
    return PIXEL_SCALE * size


def _check_positive(name: str, value) -> None:
    concrete = losses.concrete_or_none(value)
    if concrete is not None and not np.all(concrete > 0):
        raise ValueError(f"{name} must be > 0 (a float in (0, inf)), got {value!r}.")


def _check_classes(name: str, classes, predict_log_probs: LogProbsFn, images, key) -> None:
    """Raises ValueError naming `name` unless `classes` are integers in [0, C), C the number of
    classes of `predict_log_probs` (its output's width, found by tracing it, not running it).
    Skipped for a tracer, which the attacks cannot check: a label out of range gives FGSM and PGD
    a NaN loss and no step (a negative one wraps round to class C - 1), and a CW target out of
    range is never reached."""
    if losses.concrete_or_none(classes) is not None:
        num_classes = jax.eval_shape(predict_log_probs, images, key).shape[-1]
        losses.check_classes(name, classes, num_classes)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")


def _clip_to_pixel_range(images: jax.Array) -> jax.Array:
    return jnp.clip(images, PIXEL_MIN, PIXEL_MAX)


def _l2_norm(x: jax.Array) -> jax.Array:
    """`[B, D] -> [B, 1]` Euclidean norms, kept 2-d to scale the rows of `x`."""
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------------------
# The attacked model and its loss.


def log_mean_softmax(logits: jax.Array) -> jax.Array:
    """log((1/S) sum_s softmax(logits_s)): the log of the predictive distribution averaged over S
    samples, computed in log space (`losses.log_mean_exp` of the log-softmaxes), so it is finite
    for logits of any size.

    Args:
      logits: `[S, B, C]` logits of S posterior samples.

    Returns:
      `[B, C]` log-probabilities (each row's exponentials sum to 1).
    """
    return losses.log_mean_exp(jax.nn.log_softmax(logits, axis=-1), axis=0)


def vib_log_predictive(model: nn.Module, params: Any, num_samples: int) -> LogProbsFn:
    """The attacked function of a `VIBClassifier`: `(images [B, D], key) -> [B, C]`, the
    `log_mean_softmax` of the logits of `num_samples` posterior samples.

    Example i's noise is drawn from `fold_in(key, i)` (`train.sample_latents` with ids 0..B-1). A
    deterministic encoder (`stochastic=False`) has a zero scale: use `num_samples=1`.

    Args:
      model: a `VIBClassifier`.
      params: its params (one member's: index stacked params first).
      num_samples: S >= 1, the posterior samples the softmax is averaged over.
    """
    losses.check_positive_int("num_samples", num_samples)

    def log_predictive(images: jax.Array, key: jax.Array) -> jax.Array:
        mean, scale = model.apply(params, images, method=model.encode)
        example_ids = jnp.arange(jnp.shape(images)[0], dtype=jnp.int32)
        z = train.sample_latents(key, example_ids, mean, scale, num_samples)
        return log_mean_softmax(model.apply(params, z, method=model.decode))

    return log_predictive


def cross_entropy_gradient(
    predict_log_probs: LogProbsFn, images: jax.Array, labels: jax.Array, key: jax.Array
) -> jax.Array:
    """`[B, D]` the gradient of each example's cross-entropy -log p(label | image) with respect to
    its image, p being `predict_log_probs(images, key)` (for a VIB, the softmax averaged over its
    samples: the EOT gradient)."""

    labels = jnp.asarray(labels)

    def total_cross_entropy(x: jax.Array) -> jax.Array:
        log_probs = predict_log_probs(x, key)
        return -jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    return jax.grad(total_cross_entropy)(images)


# --------------------------------------------------------------------------------------------------
# Attacks.


def fgsm(
    predict_log_probs: LogProbsFn,
    images: jax.Array,
    labels: jax.Array,
    epsilon: jax.Array | float,
    key: jax.Array,
) -> jax.Array:
    """The fast gradient sign method (Goodfellow et al. 2015), an untargeted L-inf attack: one step
    of `to_model_units(epsilon)` along the sign of the gradient that increases the cross-entropy of
    the true label, clipped to the pixel range.

    Args:
      predict_log_probs: the attacked model, `(images [B, D], key) -> [B, C]` log-probabilities.
      images: `[B, D]` in [PIXEL_MIN, PIXEL_MAX].
      labels: `[B]` int true labels.
      epsilon: >= 0, the L-inf size in [0, 1] pixel units (a scalar; may be traced).
      key: the model's noise key.

    Returns:
      `[B, D]` adversarial images.
    """
    losses.check_nonnegative("epsilon", epsilon)
    _check_classes("labels", labels, predict_log_probs, images, key)
    gradient = cross_entropy_gradient(predict_log_probs, images, labels, key)
    return _clip_to_pixel_range(images + to_model_units(epsilon) * jnp.sign(gradient))


def project_to_ball(
    perturbed: jax.Array, images: jax.Array, epsilon: jax.Array | float, norm: str
) -> jax.Array:
    """The nearest point to `perturbed` (`[B, D]`) in the `norm` ball of radius
    `to_model_units(epsilon)` around each of `images`, then clipped to the pixel range.

    The clipping only shrinks each pixel's change, so the result stays in the ball (up to float32
    rounding).
    """
    radius = to_model_units(epsilon)
    delta = perturbed - images
    if norm == "linf":
        delta = jnp.clip(delta, -radius, radius)
    else:
        delta = delta * jnp.minimum(1.0, radius / jnp.maximum(_l2_norm(delta), _TINY_NORM))
    return _clip_to_pixel_range(images + delta)


def _random_start(key: jax.Array, images: jax.Array, epsilon, norm: str) -> jax.Array:
    """A point drawn uniformly from each image's `norm` ball, clipped to the pixel range."""
    radius = to_model_units(epsilon)
    if norm == "linf":
        delta = jax.random.uniform(key, images.shape, images.dtype, -1.0, 1.0) * radius
    else:
        direction_key, radius_key = jax.random.split(key)
        direction = jax.random.normal(direction_key, images.shape, images.dtype)
        direction = direction / jnp.maximum(_l2_norm(direction), _TINY_NORM)
        # The radius of a uniform point in a D-ball has the CDF (r / radius)^D.
        fraction = jax.random.uniform(radius_key, (images.shape[0], 1), images.dtype)
        delta = direction * radius * fraction ** (1.0 / images.shape[-1])
    return _clip_to_pixel_range(images + delta)


def pgd(
    predict_log_probs: LogProbsFn,
    images: jax.Array,
    labels: jax.Array,
    epsilon: jax.Array | float,
    key: jax.Array,
    *,
    norm: str = "linf",
    num_steps: int,
    step_size: jax.Array | float | None = None,
    random_start: bool = True,
) -> jax.Array:
    """Projected gradient descent (Madry et al. 2018), an untargeted attack: gradient ascent on the
    cross-entropy of the true label inside the `norm` ball of radius epsilon around each image.

    Each step moves by `step_size` along the gradient's sign (L-inf) or its unit direction (L2),
    then `project_to_ball` projects onto the ball and the pixel range. Step t's model noise is
    drawn from `fold_in(key, t)` (EOT: fresh posterior samples each step).

    Args:
      predict_log_probs: the attacked model, `(images [B, D], key) -> [B, C]` log-probabilities.
      images: `[B, D]` in [PIXEL_MIN, PIXEL_MAX].
      labels: `[B]` int true labels.
      epsilon: >= 0, the ball's radius in [0, 1] pixel units (a scalar; may be traced).
      key: the attack's key (its random start and the model's noise).
      norm: "linf" or "l2".
      num_steps: >= 1, the number of gradient steps.
      step_size: the size of a step in [0, 1] pixel units; default `2.5 * epsilon / num_steps`.
      random_start: start from a uniform point of the ball (else from the images).

    Returns:
      `[B, D]` adversarial images, in the ball and the pixel range (up to float32 rounding).
    """
    losses.check_nonnegative("epsilon", epsilon)
    _check_norm(norm)
    losses.check_positive_int("num_steps", num_steps)
    if step_size is None:
        step_size = 2.5 * epsilon / num_steps
    losses.check_nonnegative("step_size", step_size)
    _check_classes("labels", labels, predict_log_probs, images, key)
    start_key, noise_key = jax.random.split(key)
    start = _random_start(start_key, images, epsilon, norm) if random_start else images
    step_length = to_model_units(step_size)

    def step(t, perturbed):
        gradient = cross_entropy_gradient(
            predict_log_probs, perturbed, labels, jax.random.fold_in(noise_key, t)
        )
        if norm == "linf":
            direction = jnp.sign(gradient)
        else:
            direction = gradient / jnp.maximum(_l2_norm(gradient), _TINY_NORM)
        return project_to_ball(perturbed + step_length * direction, images, epsilon, norm)

    return jax.lax.fori_loop(0, num_steps, step, start)


def _to_tanh_space(images: jax.Array) -> jax.Array:
    unit = (images - PIXEL_MIN) / PIXEL_SCALE
    return jnp.arctanh((2.0 * unit - 1.0) * _TANH_SHRINK)


def _from_tanh_space(w: jax.Array) -> jax.Array:
    return PIXEL_MIN + PIXEL_SCALE * (jnp.tanh(w) + 1.0) / 2.0


def carlini_wagner_l2(
    predict_log_probs: LogProbsFn,
    images: jax.Array,
    targets: jax.Array,
    key: jax.Array,
    *,
    num_steps: int,
    learning_rate: float,
    c: jax.Array | float,
    confidence: jax.Array | float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """The targeted Carlini-Wagner L2 attack (Carlini and Wagner 2017) at a fixed constant c.

    With the change of variables x' = tanh(w) (mapped onto the pixel range, so x' is always a valid
    image), Adam minimises, per example,

        ||x' - x||_2^2 + c * max(max_{i != t} Z_i - Z_t, -confidence)

    where the distance is in [0, 1] pixel units and Z = `predict_log_probs(x')` are the log of the
    (sample-averaged) predictive probabilities rather than pre-softmax logits: the margin of a
    stochastic classifier's averaged softmax is defined, that of its per-sample logits is not, and a
    deterministic classifier's log-softmax margin equals its logit margin. Of the `num_steps`
    iterates (the point before each update; the first is the image itself, up to float32 rounding)
    at which the target won by at least `confidence` (Z_t - max_{i != t} Z_i >= confidence, judged
    with that step's noise, drawn from `fold_in(key, step)`), the closest in L2 is returned.
    There is no binary search over c: call again with other values of c (scalar or per example) to
    do one.

    Args:
      predict_log_probs: the attacked model, `(images [B, D], key) -> [B, C]` log-probabilities.
      images: `[B, D]` in [PIXEL_MIN, PIXEL_MAX].
      targets: `[B]` int target classes.
      key: the model's noise key.
      num_steps: >= 1 Adam steps.
      learning_rate: > 0, Adam's learning rate in the tanh space (Carlini and Wagner: 0.01).
      c: >= 0, the weight of the margin term (a scalar or `[B]`; may be traced).
      confidence: kappa >= 0, the margin (in nats of log-probability) the target must win by.

    Returns:
      `(adversarial [B, D], success [B] bool)`: the smallest successful adversarial image of each
      example, or the original image where no iterate succeeded.
    """
    losses.check_positive_int("num_steps", num_steps)
    _check_positive("learning_rate", learning_rate)
    losses.check_nonnegative("c", c)
    losses.check_nonnegative("confidence", confidence)
    _check_classes("targets", targets, predict_log_probs, images, key)

    def objective(w, step_key):
        adversarial = _from_tanh_space(w)
        log_probs = predict_log_probs(adversarial, step_key)
        is_target = jax.nn.one_hot(targets, log_probs.shape[-1], dtype=bool)
        target_log_prob = jnp.sum(jnp.where(is_target, log_probs, 0.0), axis=-1)
        best_other = jnp.max(jnp.where(is_target, -jnp.inf, log_probs), axis=-1)
        # A target out of range (traced, so unchecked) is no class: it never wins.
        margin = jnp.where(jnp.any(is_target, axis=-1), target_log_prob - best_other, -jnp.inf)
        squared_distance = jnp.sum(jnp.square((adversarial - images) / PIXEL_SCALE), axis=-1)
        per_example = squared_distance + c * jnp.maximum(-margin, -confidence)
        return jnp.sum(per_example), (adversarial, squared_distance, margin)

    optimizer = optax.adam(learning_rate)

    def step(carry, t):
        w, opt_state, best, best_squared_distance = carry
        gradient, (adversarial, squared_distance, margin) = jax.grad(objective, has_aux=True)(
            w, jax.random.fold_in(key, t)
        )
        improved = (margin >= confidence) & (squared_distance < best_squared_distance)
        best = jnp.where(improved[:, None], adversarial, best)
        best_squared_distance = jnp.where(improved, squared_distance, best_squared_distance)
        updates, opt_state = optimizer.update(gradient, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state, best, best_squared_distance), None

    w = _to_tanh_space(images)
    initial = (w, optimizer.init(w), images, jnp.full(images.shape[:1], jnp.inf, images.dtype))
    (_, _, best, best_squared_distance), _ = jax.lax.scan(step, initial, jnp.arange(num_steps))
    return best, jnp.isfinite(best_squared_distance)


# --------------------------------------------------------------------------------------------------
# Sizes of perturbations.


def perturbation_sizes(
    original: jax.Array, adversarial: jax.Array, l0_tolerance: float = L0_TOLERANCE
) -> dict[str, jax.Array]:
    """Per-example sizes of `adversarial - original` (`[B, D]` each), in [0, 1] pixel units.

    Returns:
      `{"l0": [B] int32, the pixels that moved by more than l0_tolerance ([0, 1] units; default
      half a grey level), "l2": [B], "linf": [B]}`.
    """
    delta = (adversarial - original) / PIXEL_SCALE
    return dict(
        l0=jnp.sum(jnp.abs(delta) > l0_tolerance, axis=-1, dtype=jnp.int32),
        l2=jnp.sqrt(jnp.sum(jnp.square(delta), axis=-1)),
        linf=jnp.max(jnp.abs(delta), axis=-1),
    )
