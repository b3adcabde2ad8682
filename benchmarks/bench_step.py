r"""Speed of training steps against their matrix-product roofline: the VIB classifier (one model, an
8-beta sweep the platform's way and all vmapped, 12 samples, 5 seeds), the VAE and the InfoGAN (one
model, 5 seeds each).

  python -m benchmarks.bench_step            # 5 repeats of a 100-step epoch per case
  python -m benchmarks.bench_step --quick    # smoke run: 2 repeats of a 5-step epoch
  python -m benchmarks.bench_step --cases=a,f  # some of the cases
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.bench_step --num_devices=2

Every case trains through the library's own path, the driver's `vib_jax.sweep.build_setup` (task,
members, states, the compiled epoch over a mesh of `--num_devices` devices), with the config of
`experiments/configs/default.py` (the paper's VIB: encoder 784-1024-1024-2K with K=256, batch 100,
Adam), `experiments/configs/vae.py` (Burda et al.'s VAE) or `experiments/configs/infogan.py` (Chen
et al.'s MNIST InfoGAN), on random data of MNIST's shape (no dataset needed). An epoch of
`--steps_per_epoch` steps is compiled and run once to warm up, then
timed `--repeats` times, alternating with the roofline's epoch (below); the reported step time is
the median epoch time over the steps per epoch.

The FLOPs of a step (matrix products only) are counted in `benchmarks/step_cost.py`: 1.27 GFLOP for
one VIB model with S = 1, 0.22 for one VAE, times the number of members for a sweep.

The roofline is the speed of exactly these products (same shapes, forward and backward) as plain
float32 `@` of random arrays, jitted together, scanned over the same number of steps, mapped over
the members as the sweep is (`vib_jax.parallel.map_over_members`, the same number at once, each
member with its own operands, as training gathers each member's batch), and sharded over the same
mesh; achieved/roofline says how close the training program comes to its matrix products alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from benchmarks import step_cost
from experiments.configs import default, infogan, vae
from vib_jax import data, parallel, sweep

_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 100, "Training steps per timed epoch.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed epochs per case (the median is reported).")
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", 1, "Devices of the data-parallel mesh (must divide 100)."
)
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: sets steps_per_epoch=5 and repeats=2.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the data and the roofline's operands.")
_CASES = flags.DEFINE_list("cases", [], "Letters of the cases to run (default: all).")


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmarked configuration: its task's config, how many betas and seeds the sweep trains,
    how many members at once (vmapped; 0: the platform's default,
    `vib_jax.parallel.members_at_once`), and posterior samples per example."""

    name: str
    get_config: Callable
    num_betas: int = 1
    num_seeds: int = 1
    train_samples: int = 1
    members_at_once: int = 0

    @property
    def num_members(self) -> int:
        return self.num_betas * self.num_seeds

    def config(self):
        config = self.get_config()
        if "beta" in config.sweep:  # the InfoGAN has no beta and no posterior samples
            config.sweep.beta = tuple(float(b) for b in 1e-3 * 0.1 ** np.arange(self.num_betas))
            config.train_samples = self.train_samples
        config.seeds = tuple(range(self.num_seeds))
        config.members_at_once = self.members_at_once
        return config

    def matmuls(self, batch_size: int) -> tuple[step_cost.Matmul, ...]:
        """One member's products on a batch of `batch_size`."""
        config = self.config()
        if config.task == "vae":
            return step_cost.vae_step_matmuls(config, batch_size, data.NUM_PIXELS)
        if config.task == "infogan":
            return step_cost.infogan_step_matmuls(config, batch_size)
        return step_cost.vib_step_matmuls(config, batch_size, data.NUM_PIXELS, data.NUM_CLASSES)


def vae_with_mixture_marginal():
    """The VAE with a learned marginal r(z): a mixture of 500 diagonal Gaussians."""
    config = vae.get_config()
    config.marginal = "mixture"
    return config


def vae_with_vampprior():
    """The VAE with the VampPrior of 500 pseudo-inputs."""
    config = vae.get_config()
    config.marginal = "vamp"
    return config


CASES = (
    Case("(a) one model", default.get_config),
    Case("(b) 8-beta sweep", default.get_config, num_betas=8),
    Case("(c) 12 train samples", default.get_config, train_samples=12),
    Case("(d) 8-beta sweep, all vmapped", default.get_config, num_betas=8, members_at_once=8),
    Case("(e) 5-seed sweep", default.get_config, num_seeds=5),
    Case("(f) VAE, one model", vae.get_config),
    Case("(g) VAE, 5-seed sweep", vae.get_config, num_seeds=5),
    Case("(h) InfoGAN, one model", infogan.get_config),
    Case("(i) InfoGAN, 5-seed sweep", infogan.get_config, num_seeds=5),
    Case("(j) VAE, mixture marginal", vae_with_mixture_marginal),
    Case("(k) VAE, VampPrior", vae_with_vampprior),
)


@dataclasses.dataclass(frozen=True)
class Result:
    """The timings of one case: median seconds per step of training and of its matrix products
    alone, and how many members trained at once."""

    case: Case
    batch_size: int
    at_once: int
    step_seconds: float
    roofline_seconds: float
    compile_seconds: float

    @property
    def flops(self) -> int:
        return step_cost.flops(self.case.matmuls(self.batch_size)) * self.case.num_members

    @property
    def achieved_gflops(self) -> float:
        return self.flops / self.step_seconds / 1e9

    @property
    def roofline_gflops(self) -> float:
        return self.flops / self.roofline_seconds / 1e9

    @property
    def roofline_fraction(self) -> float:
        """achieved/roofline: the matrix products' time alone over the training step's."""
        return self.roofline_seconds / self.step_seconds

    @property
    def mnist_epoch_seconds(self) -> float:
        """Seconds of a whole MNIST epoch (60,000 images) of steps at this speed."""
        return 60_000 // self.batch_size * self.step_seconds


def random_mnist(seed: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 784]` float32 uniform in [-1, 1] (the loader's pixel range), labels `[N]` in
    0..9."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (num_examples, data.NUM_PIXELS)).astype(np.float32)
    return images, rng.integers(0, data.NUM_CLASSES, num_examples, dtype=np.int32)


def prepare_training(case: Case, mesh: Mesh, steps_per_epoch: int, seed: int):
    """Builds, compiles and warms up the case's epoch program through the driver's builder:
    `(run_epoch(repeat) -> params to wait on, compile seconds)`."""
    config = case.config()
    images, labels = random_mnist(seed, steps_per_epoch * config.batch_size)
    setup = sweep.build_setup(config, mesh, jnp.asarray(images), jnp.asarray(labels))
    states = setup.states

    def one_epoch(epoch: int) -> jax.Array:
        nonlocal states  # the program donates the states it is given
        states, _ = setup.run_epoch(states, epoch)
        return states.params

    jax.block_until_ready(one_epoch(0))  # warm-up
    return lambda repeat: one_epoch(repeat + 1), setup.compile_seconds


def prepare_matmuls(case: Case, at_once: int, mesh: Mesh, steps_per_epoch: int, seed: int):
    """Compiles and warms up an epoch of the case's matrix products alone, the roofline (see the
    module doc): returns `run_epoch(repeat) -> array to wait on`.

    Each device runs the products of its share of the batch. Adding the step's scalar to every left
    operand makes each step's products differ, so the compiler cannot hoist them out of the scan.
    """
    matmuls = case.matmuls(case.config().batch_size // mesh.devices.size)
    rng = np.random.default_rng(seed)
    random = lambda *shape: rng.standard_normal(shape, np.float32)
    # Every operand is the member's own, as in training (which gathers each member's batch).
    own = [
        (random(case.num_members, p.m, p.k), random(case.num_members, p.k, p.n)) for p in matmuls
    ]

    def member_epoch(own, shifts):
        def products(shift):
            return sum(jnp.sum((lhs + shift) @ rhs) for lhs, rhs in own)

        return jax.lax.scan(lambda total, shift: (total + products(shift), None), 0.0, shifts)[0]

    # Members are mapped outside the scan over steps, as in training, in the same groups.
    epoch = parallel.map_over_members(member_epoch, (0, None), at_once)
    sharded = jax.jit(
        parallel.data_parallel(epoch, mesh, (P(), P()), P(), at_once),
        compiler_options=parallel.compiler_options(mesh),
    )
    operands = parallel.replicate((own,), mesh)
    shifts = parallel.replicate(np.linspace(0.0, 1.0, steps_per_epoch, dtype=np.float32), mesh)
    jax.block_until_ready(sharded(*operands, shifts))  # compile and warm up
    return lambda _: sharded(*operands, shifts)


def case_summary(result: Result) -> str:
    """One case's numbers as a line of text."""
    case, seconds = result.case, result.step_seconds
    throughput = f"{result.batch_size / seconds:,.0f} examples/s"
    if case.num_members > 1:
        throughput = (
            f"{case.num_members * result.batch_size / seconds:,.0f} model-examples/s ({throughput})"
        )
    return (
        f"{case.name}: {1e3 * seconds:.2f} ms/step, {throughput}, {result.achieved_gflops:.1f} "
        f"GFLOP/s of {result.flops / 1e9:.2f} GFLOP/step; roofline {result.roofline_gflops:.1f} "
        f"GFLOP/s, achieved/roofline {result.roofline_fraction:.2f}; MNIST epoch "
        f"{result.mnist_epoch_seconds:.1f} s (compiled in {result.compile_seconds:.1f} s)"
    )


def markdown_table(results: list[Result]) -> str:
    """The results as a Markdown table, one row per case."""
    lines = [
        "| case | members | at once | train samples | ms/step | examples/s | model-examples/s "
        "| GFLOP/step | GFLOP/s | roofline GFLOP/s | achieved/roofline | MNIST epoch (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        examples_per_second = r.batch_size / r.step_seconds
        lines.append(
            f"| {r.case.name} | {r.case.num_members} | {r.at_once} | {r.case.train_samples} "
            f"| {1e3 * r.step_seconds:.2f} | {examples_per_second:,.0f} "
            f"| {r.case.num_members * examples_per_second:,.0f} | {r.flops / 1e9:.2f} "
            f"| {r.achieved_gflops:.1f} | {r.roofline_gflops:.1f} | {r.roofline_fraction:.2f} "
            f"| {r.mnist_epoch_seconds:.1f} |"
        )
    return "\n".join(lines)


def sweep_cost_lines(results: list[Result]) -> list[str]:
    """Each sweep's step time over its one model's, against the target for this platform."""
    cpu = jax.default_backend() == "cpu"
    singles = {
        (r.case.get_config, r.case.train_samples): r for r in results if r.case.num_members == 1
    }
    lines = []
    for r in results:
        single = singles.get((r.case.get_config, r.case.train_samples))
        if r.case.num_members == 1 or single is None:
            continue
        target = (1.1 * r.case.num_members if r.case.num_seeds > 1 else 8.5) if cpu else 2.0
        lines.append(
            f"{r.case.name}: {r.step_seconds / single.step_seconds:.2f}x the time of "
            f"{single.case.name} (target <= {target:g}x on {jax.default_backend()})"
        )
    return lines


def machine_lines(num_devices: int, steps_per_epoch: int, repeats: int) -> list[str]:
    """Where and how the numbers were taken, to paste with the table."""
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- jax {jax.__version__}, platform {jax.default_backend()}, devices {jax.devices()}",
        f"- os.cpu_count() = {os.cpu_count()}; mesh of {num_devices} device(s)",
        (
            f"- median of {repeats} epochs of {steps_per_epoch} steps, after compilation and one "
            "warm-up epoch"
        ),
    ]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    steps_per_epoch, repeats = (5, 2) if _QUICK.value else (_STEPS_PER_EPOCH.value, _REPEATS.value)
    if steps_per_epoch < 1 or repeats < 1:
        raise app.UsageError(
            f"--steps_per_epoch and --repeats must be >= 1, got {steps_per_epoch}, {repeats}."
        )
    letters = [case.name[1] for case in CASES]
    unknown = sorted(set(_CASES.value) - set(letters))
    if unknown:
        raise app.UsageError(f"--cases must be letters among {letters}, got {unknown}.")
    try:
        num_devices = parallel.choose_num_devices(
            _NUM_DEVICES.value, (default.get_config().batch_size,)
        )
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    mesh = parallel.make_mesh(num_devices)

    results = []
    for case in CASES:
        if _CASES.value and case.name[1] not in _CASES.value:
            continue
        run_training, compile_seconds = prepare_training(case, mesh, steps_per_epoch, _SEED.value)
        at_once = parallel.members_at_once(case.members_at_once, mesh, case.num_members)
        run_matmuls = prepare_matmuls(case, at_once, mesh, steps_per_epoch, _SEED.value)
        epoch_seconds, roofline_seconds = step_cost.interleaved_medians(
            (run_training, run_matmuls), repeats
        )
        batch_size = case.config().batch_size
        results.append(
            Result(
                case,
                batch_size,
                at_once,
                epoch_seconds / steps_per_epoch,
                roofline_seconds / steps_per_epoch,
                compile_seconds,
            )
        )
        print(case_summary(results[-1]), flush=True)
    print("\n" + "\n".join(sweep_cost_lines(results)) + "\n")
    print(markdown_table(results) + "\n")
    print("\n".join(machine_lines(num_devices, steps_per_epoch, repeats)))


if __name__ == "__main__":
    app.run(main)
