"""Tests of the benchmark's bookkeeping: its FLOP counts and its interleaved timing."""

import jax.numpy as jnp
import pytest

from benchmarks import step_cost
from experiments.configs import default, vae


@pytest.mark.parametrize("train_samples", [1, 12])
def test_vib_step_flops_match_the_closed_form(train_samples):
    b, d, h, k, c = 100, 784, 1024, 256, 10
    config = default.get_config()
    config.train_samples = train_samples
    forward = 2 * b * (d * h + h * h + h * 2 * k) + 2 * train_samples * b * k * c
    flops = step_cost.flops(step_cost.vib_step_matmuls(config, b, d, c))
    assert flops == 3 * forward - 2 * b * d * h
    if train_samples == 1:
        assert flops / 1e9 == pytest.approx(1.27, abs=0.005)  # the figure in RESULTS.md


def test_vae_step_flops_match_the_closed_form():
    b, d, h, k = 100, 784, 200, 50
    forward = 2 * b * (d * h + h * h + h * 2 * k) + 2 * b * (k * h + h * h + h * d)
    flops = step_cost.flops(step_cost.vae_step_matmuls(vae.get_config(), b, d))
    assert flops == 3 * forward - 2 * b * d * h
    assert flops / 1e9 == pytest.approx(0.22, abs=0.005)  # the figure in the module doc


def test_interleaved_medians_alternate_the_programs_and_take_medians():
    calls = []

    def program(name):
        def run_epoch(repeat):
            calls.append((name, repeat))
            return jnp.zeros(())

        return run_epoch

    medians = step_cost.interleaved_medians([program("train"), program("roofline")], repeats=3)
    assert calls == [
        ("train", 0),
        ("roofline", 0),
        ("train", 1),
        ("roofline", 1),
        ("train", 2),
        ("roofline", 2),
    ]
    assert len(medians) == 2 and all(seconds >= 0 for seconds in medians)
