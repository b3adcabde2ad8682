r"""Speed of the VIB training step: one model, an 8-beta sweep, and 12 training samples.

  python -m benchmarks.bench_step            # 5 repeats of a 100-step epoch per case
  python -m benchmarks.bench_step --quick    # smoke run: 2 repeats of a 5-step epoch
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.bench_step --num_devices=2

Every case trains the paper's model (encoder 784-1024-1024-2K with K=256, softmax decoder, batch 100,
Adam) through the library's own path, as `vib_jax.sweep.train_and_evaluate` builds it:
`train.make_train_step` -> `train.make_train_epoch` -> `parallel.compile_sweep_epoch` over a mesh of
`--num_devices` devices, on random data of MNIST's shape (no dataset needed). An epoch of `--steps_per_epoch` steps is compiled and run once to warm up, then timed
`--repeats` times; the reported step time is the median epoch time over the steps per epoch.

FLOPs of one training step, counting the matrix products only (B = 100 examples, S training samples,
D = 784, H = 1024, K = 256, C = 10), multiplied by the number of betas for a sweep:

  forward   F = 2B(D*H + H*H + H*2K) + 2SBKC
  backward  2F - 2BDH   (both operands' gradients of every product, except the first layer's gradient
                         w.r.t. the images, which training does not need)
  step      3F - 2BDH   (1.27 GFLOP for S = 1)

The roofline is the speed of exactly these products (same shapes, forward and backward) as plain float32
`@` of random arrays, jitted together, scanned over the same number of steps, vmapped over the betas as
the sweep does (the images shared by all betas) and sharded over the same mesh; achieved/roofline says how
close the training program comes to its matrix products alone.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, PartitionSpec as P

from vib_jax import models, parallel, train

_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 100, "Training steps per timed epoch.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed epochs per case (the median is reported).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 1, "Devices of the data-parallel mesh (must divide 100).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: sets steps_per_epoch=5 and repeats=2.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the data, the initial params and the noise.")

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
class Case:
    """A benchmarked configuration: how many betas train at once, and posterior samples per example."""

    name: str
    num_betas: int
    train_samples: int


CASES = (
    Case("(a) one model", num_betas=1, train_samples=1),
    Case("(b) 8-beta sweep", num_betas=8, train_samples=1),
    Case("(c) 12 train samples", num_betas=1, train_samples=12),
)


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


@dataclasses.dataclass(frozen=True)
class Result:
    """The timings of one case: median seconds per step of training and of its matrix products alone."""

    case: Case
    step_seconds: float
    roofline_seconds: float
    compile_seconds: float

    @property
    def flops(self) -> int:
        return step_flops(BATCH_SIZE, self.case.train_samples) * self.case.num_betas

    @property
    def achieved_gflops(self) -> float:
        return self.flops / self.step_seconds / 1e9

    @property
    def roofline_gflops(self) -> float:
        return self.flops / self.roofline_seconds / 1e9


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


def median_seconds_per_step(run_epoch: Callable[[int], jax.Array], steps_per_epoch: int, repeats: int) -> float:
    """Median over `repeats` calls of `run_epoch(repeat)` (which returns an array to wait on), per step."""
    seconds = []
    for repeat in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run_epoch(repeat))
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) / steps_per_epoch


def random_mnist(seed: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 784]` float32 uniform in [-1, 1] (the loader's pixel range) and labels `[N]` int32 in 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (num_examples, INPUT_DIM)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, num_examples, dtype=np.int32)


def time_training(case: Case, mesh: Mesh, steps_per_epoch: int, repeats: int, seed: int) -> tuple[float, float]:
    """Compiles and warms up the case's epoch program, then times it: `(seconds per step, compile seconds)`."""
    num_examples = steps_per_epoch * BATCH_SIZE
    model = models.VIBClassifier(LATENT_DIM, NUM_CLASSES, HIDDEN_DIMS)
    schedule = train.learning_rate_schedule(LEARNING_RATE, LR_DECAY_RATE, LR_DECAY_EPOCHS, steps_per_epoch)
    optimizer = train.make_optimizer(schedule, ADAM_B1, ADAM_B2)
    def make_epoch(axis_name):
        return train.make_train_epoch(train.make_train_step(
            model, optimizer, ema_decay=EMA_DECAY, num_samples=case.train_samples,
            label_entropy=math.log(NUM_CLASSES), axis_name=axis_name))

    run_epoch = parallel.compile_sweep_epoch(make_epoch, mesh, num_examples, BATCH_SIZE)

    init_key, shuffle_key, noise_key = jax.random.split(jax.random.key(seed), 3)
    betas = (1e-3 * 0.1 ** np.arange(case.num_betas)).astype(np.float32)  # 1e-3, 1e-4, ...
    noise_keys = jax.vmap(train.member_noise_key, in_axes=(None, 0))(noise_key, betas)
    states = train.stack_states(train.create_train_state(model, optimizer, init_key, INPUT_DIM), case.num_betas)
    states, images, labels, noise_keys, betas = parallel.replicate(
        (states, *random_mnist(seed, num_examples), noise_keys, betas), mesh)

    started = time.perf_counter()
    run_epoch = run_epoch.lower(states, images, labels, shuffle_key, noise_keys, betas).compile()
    compile_seconds = time.perf_counter() - started

    def one_epoch(epoch: int) -> jax.Array:
        nonlocal states  # the program donates the states it is given
        states, _ = run_epoch(states, images, labels, jax.random.fold_in(shuffle_key, epoch), noise_keys, betas)
        return states.params

    jax.block_until_ready(one_epoch(0))  # warm-up
    return median_seconds_per_step(lambda repeat: one_epoch(repeat + 1), steps_per_epoch, repeats), compile_seconds


def time_matmuls(case: Case, mesh: Mesh, steps_per_epoch: int, repeats: int, seed: int) -> float:
    """Seconds per step of the case's matrix products alone: the roofline (see the module doc).

    Each device runs the products of its share of the batch. Adding the step's scalar to every left operand
    makes each step's products differ, so the compiler cannot hoist them out of the scan.
    """
    num_devices = mesh.devices.size
    matmuls = step_matmuls(BATCH_SIZE // num_devices, case.train_samples)
    swept = case.num_betas > 1
    rng = np.random.default_rng(seed)

    def operand(shape, shared):
        return rng.standard_normal(shape if shared or not swept else (case.num_betas, *shape), np.float32)

    operands = [(operand((p.m, p.k), p.shared_lhs), operand((p.k, p.n), False)) for p in matmuls]

    def products(operands, shift):
        return sum(jnp.sum((lhs + shift) @ rhs) for lhs, rhs in operands)

    if swept:
        products = jax.vmap(products, in_axes=([(None if p.shared_lhs else 0, 0) for p in matmuls], None))

    def epoch(operands, shifts):
        return jax.lax.scan(lambda total, shift: (total + jnp.sum(products(operands, shift)), None), 0.0, shifts)[0]

    sharded = jax.jit(parallel.data_parallel(epoch, mesh, in_specs=(P(), P()), out_specs=P(),
                                             num_members=case.num_betas))
    operands = parallel.replicate(operands, mesh)
    shifts = parallel.replicate(np.linspace(0.0, 1.0, steps_per_epoch, dtype=np.float32), mesh)
    jax.block_until_ready(sharded(operands, shifts))  # compile and warm up
    return median_seconds_per_step(lambda _: sharded(operands, shifts), steps_per_epoch, repeats)


def case_summary(result: Result) -> str:
    """One case's numbers as a line of text."""
    case, seconds = result.case, result.step_seconds
    throughput = f"{BATCH_SIZE / seconds:,.0f} examples/s"
    if case.num_betas > 1:
        throughput = f"{case.num_betas * BATCH_SIZE / seconds:,.0f} model-examples/s ({throughput})"
    return (f"{case.name}: {1e3 * seconds:.2f} ms/step, {throughput}, {result.achieved_gflops:.1f} GFLOP/s "
            f"of {result.flops / 1e9:.2f} GFLOP/step; roofline {result.roofline_gflops:.1f} GFLOP/s, "
            f"achieved/roofline {result.achieved_gflops / result.roofline_gflops:.2f}; "
            f"{MNIST_STEPS_PER_EPOCH}-step MNIST epoch {MNIST_STEPS_PER_EPOCH * seconds:.1f} s "
            f"(compiled in {result.compile_seconds:.1f} s)")


def markdown_table(results: list[Result]) -> str:
    """The results as a Markdown table, one row per case."""
    lines = ["| case | betas | train samples | ms/step | examples/s | model-examples/s | GFLOP/step | GFLOP/s "
             f"| roofline GFLOP/s | achieved/roofline | {MNIST_STEPS_PER_EPOCH}-step epoch (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        examples_per_second = BATCH_SIZE / r.step_seconds
        lines.append(
            f"| {r.case.name} | {r.case.num_betas} | {r.case.train_samples} | {1e3 * r.step_seconds:.2f} "
            f"| {examples_per_second:,.0f} | {r.case.num_betas * examples_per_second:,.0f} | {r.flops / 1e9:.2f} "
            f"| {r.achieved_gflops:.1f} | {r.roofline_gflops:.1f} | {r.achieved_gflops / r.roofline_gflops:.2f} "
            f"| {MNIST_STEPS_PER_EPOCH * r.step_seconds:.1f} |")
    return "\n".join(lines)


def sweep_cost_line(results: list[Result]) -> str:
    """The sweep's step time over the single model's, against the target for this platform."""
    single, sweep = results[:2]  # in the order of CASES
    target = 8.5 if jax.default_backend() == "cpu" else 2.0
    return (f"Sweep cost: {sweep.case.num_betas} betas take {sweep.step_seconds / single.step_seconds:.2f}x "
            f"the time of one model (target <= {target}x on {jax.default_backend()}).")


def machine_lines(num_devices: int, steps_per_epoch: int, repeats: int) -> list[str]:
    """Where and how the numbers were taken, to paste with the table."""
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- jax {jax.__version__}, platform {jax.default_backend()}, devices {jax.devices()}",
        f"- os.cpu_count() = {os.cpu_count()}; mesh of {num_devices} device(s)",
        f"- median of {repeats} epochs of {steps_per_epoch} steps, after compilation and one warm-up epoch",
    ]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    steps_per_epoch, repeats = (5, 2) if _QUICK.value else (_STEPS_PER_EPOCH.value, _REPEATS.value)
    if steps_per_epoch < 1 or repeats < 1:
        raise app.UsageError(f"--steps_per_epoch and --repeats must be >= 1, got {steps_per_epoch}, {repeats}.")
    try:
        num_devices = parallel.choose_num_devices(_NUM_DEVICES.value, (BATCH_SIZE,))
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    mesh = parallel.make_mesh(num_devices)

    results = []
    for case in CASES:
        step_seconds, compile_seconds = time_training(case, mesh, steps_per_epoch, repeats, _SEED.value)
        roofline_seconds = time_matmuls(case, mesh, steps_per_epoch, repeats, _SEED.value)
        results.append(Result(case, step_seconds, roofline_seconds, compile_seconds))
        print(case_summary(results[-1]), flush=True)
    print()
    print(sweep_cost_line(results))
    print()
    print(markdown_table(results))
    print()
    print("\n".join(machine_lines(num_devices, steps_per_epoch, repeats)))


if __name__ == "__main__":
    app.run(main)
