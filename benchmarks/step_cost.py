"""What one training step of the paper's model costs: its matrix products and their FLOPs; and a timer.

FLOPs of one training step, counting the matrix products only (B = 100 examples, S training samples,
D = 784, H = 1024, K = 256, C = 10), multiplied by the number of betas for a sweep:

  forward   F = 2B(D*H + H*H + H*2K) + 2SBKC
  backward  2F - 2BDH   (both operands' gradients of every product, except the first layer's gradient
                         w.r.t. the images, which training does not need)
  step      3F - 2BDH   (1.27 GFLOP for S = 1)
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Sequence

import jax

# The paper's MNIST model and optimiser (experiments/configs/default.py).
INPUT_DIM = 784
NUM_CLASSES = 10
LATENT_DIM = 256
HIDDEN_DIMS = (1024, 1024)
BATCH_SIZE = 100
LEARNING_RATE, LR_DECAY_RATE, LR_DECAY_EPOCHS = 1e-4, 0.97, 2
ADAM_B1, ADAM_B2, EMA_DECAY = 0.5, 0.999, 0.999
MNIST_STEPS_PER_EPOCH = 600  # 60,000 training images / batch 100


@dataclasses.dataclass(frozen=True)
class Matmul:
    """One matrix product `[m, k] @ [k, n]`; `shared_lhs`: its left operand (the images) is common to all betas."""

    m: int
    k: int
    n: int
    shared_lhs: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def step_matmuls(batch_size: int, train_samples: int) -> tuple[Matmul, ...]:
    """The matrix products of one training step of one model, forward and backward (see the module doc).

    Each dense layer `x [rows, fan_in] @ w [fan_in, fan_out]` has its forward product, its weight gradient
    `x^T @ dy` and, except for the first layer, its input gradient `dy @ w^T`. The decoder's rows are the
    S * B latent samples.
    """
    widths = (INPUT_DIM, *HIDDEN_DIMS, 2 * LATENT_DIM)
    layers = [(batch_size, fan_in, fan_out) for fan_in, fan_out in zip(widths[:-1], widths[1:])]
    layers.append((train_samples * batch_size, LATENT_DIM, NUM_CLASSES))
    products = []
    for index, (rows, fan_in, fan_out) in enumerate(layers):
        first = index == 0
        products += [Matmul(rows, fan_in, fan_out, first), Matmul(fan_in, rows, fan_out, first)]
        if not first:
            products.append(Matmul(rows, fan_out, fan_in))
    return tuple(products)


def step_flops(batch_size: int, train_samples: int) -> int:
    """Matrix-product FLOPs of one training step of one model: 3F - 2BDH (the module doc's formula)."""
    return sum(product.flops for product in step_matmuls(batch_size, train_samples))


def interleaved_medians(epochs: Sequence[Callable[[int], jax.Array]], repeats: int) -> list[float]:
    """Median seconds of each of `epochs`, timed in turn for `repeats` rounds.

    Each `epochs[i](repeat)` runs one timed epoch and returns an array to wait on. Alternating the
    programs, rather than timing one after the other, makes a slow spell of a shared machine slow them all
    alike, so that their ratio (achieved/roofline) holds even when the absolute times drift.
    """
    seconds = [[] for _ in epochs]
    for repeat in range(repeats):
        for run_epoch, times in zip(epochs, seconds):
            started = time.perf_counter()
            jax.block_until_ready(run_epoch(repeat))
            times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in seconds]
