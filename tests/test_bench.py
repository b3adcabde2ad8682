"""Tests of the benchmark's bookkeeping: its FLOP count and its interleaved timing."""
import jax.numpy as jnp
import pytest

from benchmarks import step_cost


@pytest.mark.parametrize("train_samples", [1, 12])
def test_step_flops_match_the_closed_form(train_samples):
    b, d, h, k, c = 100, 784, 1024, 256, 10
    forward = 2 * b * (d * h + h * h + h * 2 * k) + 2 * train_samples * b * k * c
    assert step_cost.step_flops(b, train_samples) == 3 * forward - 2 * b * d * h
    if train_samples == 1:
        assert step_cost.step_flops(b, 1) / 1e9 == pytest.approx(1.27, abs=0.005)  # the figure in RESULTS.md


def test_interleaved_medians_alternate_the_programs_and_take_medians():
    calls = []

    def program(name):
        def run_epoch(repeat):
            calls.append((name, repeat))
            return jnp.zeros(())
        return run_epoch

    medians = step_cost.interleaved_medians([program("train"), program("roofline")], repeats=3)
    assert calls == [("train", 0), ("roofline", 0), ("train", 1), ("roofline", 1), ("train", 2), ("roofline", 2)]
    assert len(medians) == 2 and all(seconds >= 0 for seconds in medians)
