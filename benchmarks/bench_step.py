r"""Speed of the VIB training step: one model, an 8-beta sweep (the platform's way, and all vmapped), 12 samples.

  python -m benchmarks.bench_step            # 5 repeats of a 100-step epoch per case
  python -m benchmarks.bench_step --quick    # smoke run: 2 repeats of a 5-step epoch
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.bench_step --num_devices=2

Every case trains the paper's model (encoder 784-1024-1024-2K with K=256, softmax decoder, batch 100,
Adam) through the library's own path, as `vib_jax.sweep.train_and_evaluate` builds it:
`train.make_train_step` -> `train.make_train_epoch` -> `parallel.compile_sweep_epoch` over a mesh of
`--num_devices` devices, on random data of MNIST's shape (no dataset needed). An epoch of
`--steps_per_epoch` steps is compiled and run once to warm up, then timed `--repeats` times, alternating
with the roofline's epoch (below); the reported step time is the median epoch time over the steps per epoch.

The FLOPs of a step (matrix products only) are counted in `benchmarks/step_cost.py`: 1.27 GFLOP for one
model with S = 1, times the number of betas for a sweep.

The roofline is the speed of exactly these products (same shapes, forward and backward) as plain float32
`@` of random arrays, jitted together, scanned over the same number of steps, mapped over the betas as the
sweep is (`vib_jax.parallel.map_over_members`, the same number at once, the images shared by all betas),
and sharded over the same mesh; achieved/roofline says how close the training program comes to its matrix
products alone.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, PartitionSpec as P

from benchmarks.step_cost import (ADAM_B1, ADAM_B2, BATCH_SIZE, EMA_DECAY, HIDDEN_DIMS, INPUT_DIM, LATENT_DIM,
                                   LEARNING_RATE, LR_DECAY_EPOCHS, LR_DECAY_RATE, MNIST_STEPS_PER_EPOCH,
                                   NUM_CLASSES, interleaved_medians, step_flops, step_matmuls)
from vib_jax import models, parallel, train

_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 100, "Training steps per timed epoch.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed epochs per case (the median is reported).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 1, "Devices of the data-parallel mesh (must divide 100).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: sets steps_per_epoch=5 and repeats=2.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the data, the initial params and the noise.")


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmarked configuration: how many betas the sweep trains, how many of them at once (vmapped;
    0: the platform's default, `vib_jax.parallel.members_at_once`), and posterior samples per example."""

    name: str
    num_betas: int
    train_samples: int
    betas_at_once: int = 0


CASES = (
    Case("(a) one model", num_betas=1, train_samples=1),
    Case("(b) 8-beta sweep", num_betas=8, train_samples=1),
    Case("(c) 12 train samples", num_betas=1, train_samples=12),
    Case("(d) 8-beta sweep, all vmapped", num_betas=8, train_samples=1, betas_at_once=8),
)


@dataclasses.dataclass(frozen=True)
class Result:
    """The timings of one case: median seconds per step of training and of its matrix products alone, and how
    many betas trained at once."""

    case: Case
    at_once: int
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


def random_mnist(seed: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 784]` float32 uniform in [-1, 1] (the loader's pixel range) and labels `[N]` int32 in 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (num_examples, INPUT_DIM)).astype(np.float32)
    return images, rng.integers(0, NUM_CLASSES, num_examples, dtype=np.int32)


def prepare_training(case: Case, mesh: Mesh, steps_per_epoch: int,
                     seed: int) -> tuple[Callable[[int], jax.Array], float]:
    """Compiles and warms up the case's epoch program: `(run_epoch(repeat) -> params to wait on, compile seconds)`."""
    num_examples = steps_per_epoch * BATCH_SIZE
    model = models.VIBClassifier(LATENT_DIM, NUM_CLASSES, HIDDEN_DIMS)
    schedule = train.learning_rate_schedule(LEARNING_RATE, LR_DECAY_RATE, LR_DECAY_EPOCHS, steps_per_epoch)
    optimizer = train.make_optimizer(schedule, ADAM_B1, ADAM_B2)
    def make_epoch(axis_name):
        return train.make_train_epoch(train.make_train_step(
            model, optimizer, ema_decay=EMA_DECAY, num_samples=case.train_samples,
            label_entropy=math.log(NUM_CLASSES), axis_name=axis_name))

    run_epoch = parallel.compile_sweep_epoch(make_epoch, mesh, num_examples, BATCH_SIZE, case.betas_at_once)

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
    return lambda repeat: one_epoch(repeat + 1), compile_seconds


def prepare_matmuls(case: Case, mesh: Mesh, steps_per_epoch: int, seed: int) -> Callable[[int], jax.Array]:
    """Compiles and warms up an epoch of the case's matrix products alone, the roofline (see the module doc):
    returns `run_epoch(repeat) -> array to wait on`.

    Each device runs the products of its share of the batch. Adding the step's scalar to every left operand
    makes each step's products differ, so the compiler cannot hoist them out of the scan.
    """
    num_devices = mesh.devices.size
    matmuls = step_matmuls(BATCH_SIZE // num_devices, case.train_samples)
    at_once = parallel.members_at_once(case.betas_at_once, mesh, case.num_betas)
    rng = np.random.default_rng(seed)
    random = lambda *shape: rng.standard_normal(shape, np.float32)
    # Each product's left operand is shared by all betas (the images) or one per beta; its right one is per beta.
    shared = [random(p.m, p.k) if p.shared_lhs else None for p in matmuls]
    own = [(None if p.shared_lhs else random(case.num_betas, p.m, p.k), random(case.num_betas, p.k, p.n))
           for p in matmuls]

    def member_epoch(own, shared, shifts):
        def products(shift):
            return sum(jnp.sum(((shared_lhs if lhs is None else lhs) + shift) @ rhs)
                       for (lhs, rhs), shared_lhs in zip(own, shared))

        return jax.lax.scan(lambda total, shift: (total + products(shift), None), 0.0, shifts)[0]

    # Members are mapped outside the scan over steps, as in training, in the same groups.
    epoch = parallel.map_over_members(member_epoch, (0, None, None), at_once)
    sharded = jax.jit(parallel.data_parallel(epoch, mesh, in_specs=(P(), P(), P()), out_specs=P(), at_once=at_once),
                      compiler_options=parallel.compiler_options(mesh))
    operands = parallel.replicate((own, shared), mesh)
    shifts = parallel.replicate(np.linspace(0.0, 1.0, steps_per_epoch, dtype=np.float32), mesh)
    jax.block_until_ready(sharded(*operands, shifts))  # compile and warm up
    return lambda _: sharded(*operands, shifts)


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
    lines = ["| case | betas | at once | train samples | ms/step | examples/s | model-examples/s | GFLOP/step "
             f"| GFLOP/s | roofline GFLOP/s | achieved/roofline | {MNIST_STEPS_PER_EPOCH}-step epoch (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        examples_per_second = BATCH_SIZE / r.step_seconds
        lines.append(
            f"| {r.case.name} | {r.case.num_betas} | {r.at_once} | {r.case.train_samples} | {1e3 * r.step_seconds:.2f} "
            f"| {examples_per_second:,.0f} | {r.case.num_betas * examples_per_second:,.0f} | {r.flops / 1e9:.2f} "
            f"| {r.achieved_gflops:.1f} | {r.roofline_gflops:.1f} | {r.achieved_gflops / r.roofline_gflops:.2f} "
            f"| {MNIST_STEPS_PER_EPOCH * r.step_seconds:.1f} |")
    return "\n".join(lines)


def sweep_cost_line(results: list[Result]) -> str:
    """The sweeps' step times over the single model's, against the target for this platform."""
    single, sweep, _, vmapped = results  # in the order of CASES
    target = 8.5 if jax.default_backend() == "cpu" else 2.0
    return (f"Sweep cost: {sweep.case.num_betas} betas take {sweep.step_seconds / single.step_seconds:.2f}x "
            f"the time of one model (target <= {target}x on {jax.default_backend()}); all vmapped at once, "
            f"{vmapped.step_seconds / single.step_seconds:.2f}x.")


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
        run_training, compile_seconds = prepare_training(case, mesh, steps_per_epoch, _SEED.value)
        run_matmuls = prepare_matmuls(case, mesh, steps_per_epoch, _SEED.value)
        epoch_seconds, roofline_seconds = interleaved_medians((run_training, run_matmuls), repeats)
        at_once = parallel.members_at_once(case.betas_at_once, mesh, case.num_betas)
        results.append(Result(case, at_once, epoch_seconds / steps_per_epoch, roofline_seconds / steps_per_epoch,
                              compile_seconds))
        print(case_summary(results[-1]), flush=True)
    print()
    print(sweep_cost_line(results))
    print()
    print(markdown_table(results))
    print()
    print("\n".join(machine_lines(num_devices, steps_per_epoch, repeats)))


if __name__ == "__main__":
    app.run(main)
