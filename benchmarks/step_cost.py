"""What one training step costs: its matrix products and their FLOPs (the VIB classifier, the VAE);
and a timer.

FLOPs of one training step, counting the matrix products only (B = 100 examples, S training samples,
D = 784, H = 1024, K = 256, C = 10), multiplied by the number of members for a sweep:

  forward   F = 2B(D*H + H*H + H*2K) + 2SBKC
  backward  2F - 2BDH   (both operands' gradients of every product, except the first layer's
                         gradient w.r.t. the images, which training does not need)
  step      3F - 2BDH   (1.27 GFLOP for S = 1)

The VAE (Burda et al.'s 784-200-200-(2x50) encoder and 50-200-200-784 decoder) is counted alike, its
decoder's first layer with an input gradient (the encoder is trained through it): 0.22 GFLOP for
B = 100, S = 1. The InfoGAN's convolutions count as their im2col products (`infogan_step_matmuls`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Matmul:
    """One matrix product `[m, k] @ [k, n]`."""

    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def dense_matmuls(rows: int, widths: Sequence[int], input_gradient: bool):
    """The products of an MLP `widths[0] -> ... -> widths[-1]` on `rows` inputs, forward and
    backward.

    Each dense layer `x [rows, fan_in] @ w [fan_in, fan_out]` has its forward product, its weight
    gradient `x^T @ dy` and its input gradient `dy @ w^T`, except the first layer when the inputs
    need no gradient (images).
    """
    products = []
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        products += [Matmul(rows, fan_in, fan_out), Matmul(fan_in, rows, fan_out)]
        if index or input_gradient:
            products.append(Matmul(rows, fan_out, fan_in))
    return products


def vib_step_matmuls(
    config, batch_size: int, input_dim: int, num_classes: int
) -> tuple[Matmul, ...]:
    """One step of the VIB classifier of `config` (see the module doc): the encoder on B images
    (each member's own copy: training gathers every member's batch, also where members share their
    order), the softmax decoder on the S * B latent samples, and a learned marginal's products
    (`marginal_matmuls`). The deterministic baseline's head is the mean alone, on one sample. A
    full-covariance encoder (batched products of its Cholesky factors) is not counted: refused."""
    if config.covariance != "diagonal":
        raise ValueError(
            "vib_step_matmuls counts the diagonal encoder only, got "
            f"covariance={config.covariance!r}."
        )
    k = config.latent_dim
    encoder = (input_dim, *config.hidden_dims, k if config.deterministic else 2 * k)
    num_latents = batch_size * (1 if config.deterministic else config.train_samples)
    return tuple(
        dense_matmuls(batch_size, encoder, input_gradient=False)
        + dense_matmuls(num_latents, (k, num_classes), input_gradient=True)
        + marginal_matmuls(config, num_latents, encoder)
    )


def vae_step_matmuls(config, batch_size: int, input_dim: int) -> tuple[Matmul, ...]:
    """One step of the VAE of `config`: the encoder on B (binarised, so per-member) images, the
    decoder (the encoder's widths reversed) on the S * B latent samples, and a learned marginal's
    products (`marginal_matmuls`)."""
    encoder = (input_dim, *config.hidden_dims, 2 * config.latent_dim)
    decoder = (config.latent_dim, *reversed(config.hidden_dims), input_dim)
    num_latents = config.train_samples * batch_size
    return tuple(
        dense_matmuls(batch_size, encoder, input_gradient=False)
        + dense_matmuls(num_latents, decoder, input_gradient=True)
        + marginal_matmuls(config, num_latents, encoder)
    )


def marginal_matmuls(config, num_latents: int, encoder: Sequence[int]) -> list[Matmul]:
    """A learned marginal r(z) of M = `config.marginal_components` components on N = `num_latents`
    latents: the three products of `losses.mixture_log_prob`'s gradient (`[M, N] @ [N, K]` and
    twice `[N, M] @ [M, K]`; its forward is a broadcast, no product), and for the VampPrior the
    encoder on the M pseudo-inputs, which are trained (their input gradient counts). None for
    N(0, I)."""
    if config.marginal == "standard_normal":
        return []
    m, k = config.marginal_components, config.latent_dim
    products = [Matmul(m, num_latents, k), Matmul(num_latents, m, k), Matmul(num_latents, m, k)]
    if config.marginal == "vamp":
        products += dense_matmuls(m, encoder, input_gradient=True)
    return products


def layer_matmuls(
    rows: int, fan_in: int, fan_out: int, weight_gradient: bool, input_gradient: bool
) -> list[Matmul]:
    """One layer `[rows, fan_in] @ [fan_in, fan_out]`'s forward product, and its weight gradient
    `x^T @ dy` and input gradient `dy @ w^T` where asked for. A convolution counts as its im2col
    product: rows = B x output pixels, fan_in = kernel pixels x input channels."""
    products = [Matmul(rows, fan_in, fan_out)]
    if weight_gradient:
        products.append(Matmul(fan_in, rows, fan_out))
    if input_gradient:
        products.append(Matmul(rows, fan_out, fan_in))
    return products


def infogan_layers(config, batch_size: int, image_side: int = 28):
    """The generator's and the discriminator's (with Q's) layers as `(rows, fan_in, fan_out)`
    products of their forward pass on `batch_size` images, convolutions in im2col form (the
    generator's transposed convolutions in their sub-pixel form, `models.TransposedConv2x`)."""
    b, side, hidden = batch_size, image_side // 4, config.hidden_dim
    narrow, wide = config.channels  # D's; G mirrors them
    latents = config.noise_dim + config.categorical_dim + config.continuous_dim
    generator = [  # (rows, fan_in, fan_out); transposed convolutions in their sub-pixel form
        (b, latents, hidden),
        (b, hidden, side * side * wide),
        (b * side * side, 4 * wide, 4 * narrow),
        (b * 4 * side * side, 4 * narrow, 4),
    ]
    discriminator = [
        (b * 4 * side * side, 16, narrow),
        (b * side * side, 16 * narrow, wide),
        (b, side * side * wide, hidden),
        (b, hidden, 1),
        (b, hidden, config.q_hidden_dim),
        (b, config.q_hidden_dim, config.categorical_dim + config.continuous_dim),
    ]
    return generator, discriminator


def infogan_step_matmuls(config, batch_size: int) -> tuple[Matmul, ...]:
    """One step of the InfoGAN of `config` (`vib_jax.tasks.infogan`): the generator forward and
    backward; the discriminator on the data (its weight gradients and the inner input gradients)
    and on the generated batch, whose forward pass serves both players (stop_gradient is the
    identity there, and XLA computes it once) and is back-propagated twice: for D's weights, and
    through D to G's images. Players stepping in turn (`player_updates="alternating"`) add G's
    step on fresh latents: one more forward pass of the generator and of the discriminator on
    its images (the backward passes are the same products, split between the two steps)."""
    generator, discriminator = infogan_layers(config, batch_size)
    products = []
    for index, layer in enumerate(generator):
        products += layer_matmuls(*layer, weight_gradient=True, input_gradient=index > 0)
    for index, layer in enumerate(discriminator):
        first = index == 0
        products += layer_matmuls(*layer, weight_gradient=True, input_gradient=not first)  # data
        products += layer_matmuls(*layer, weight_gradient=True, input_gradient=not first)
        products.append(Matmul(layer[0], layer[2], layer[1]))  # the generator's backward
    if config.player_updates == "alternating":
        for layer in generator + discriminator:
            products += layer_matmuls(*layer, weight_gradient=False, input_gradient=False)
    return tuple(products)


def flops(matmuls: Sequence[Matmul]) -> int:
    """The FLOPs of the products."""
    return sum(product.flops for product in matmuls)


def interleaved_medians(epochs: Sequence[Callable[[int], jax.Array]], repeats: int) -> list[float]:
    """Median seconds of each of `epochs`, timed in turn for `repeats` rounds.

    Each `epochs[i](repeat)` runs one timed epoch and returns an array to wait on. Alternating the
    programs, rather than timing one after the other, makes a slow spell of a shared machine slow
    them all alike, so that their ratio (achieved/roofline) holds even when the absolute times
    drift.
    """
    seconds = [[] for _ in epochs]
    for repeat in range(repeats):
        for run_epoch, times in zip(epochs, seconds):
            started = time.perf_counter()
            jax.block_until_ready(run_epoch(repeat))
            times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in seconds]
