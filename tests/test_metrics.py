"""Tests of vib_jax.metrics: records, tables (per member and over seeds) and their files."""

import csv

import numpy as np
import pytest

from vib_jax import metrics

MEMBERS = [{"seed": 0, "beta": 1e-3}, {"seed": 0, "beta": 1e-2}]


def test_epoch_records_carry_each_members_seed_and_hyperparameters():
    records = metrics.epoch_records(
        3,
        MEMBERS,
        1e-4,
        12.5,
        train_batches={"loss": np.array([0.5, 0.7])},
        test={"error_avg": np.array([0.02, 0.03])},
    )
    assert len(records) == 2
    assert records[1]["beta"] == 1e-2 and records[1]["seed"] == 0 and records[1]["epoch"] == 3
    assert records[1]["epoch_seconds"] == 12.5 and records[1]["learning_rate"] == 1e-4
    assert records[1]["train_batches/loss"] == pytest.approx(0.7)
    assert records[0]["test/error_avg"] == pytest.approx(0.02)


def test_seed_summary_is_mean_and_sample_standard_deviation_per_hyperparameters():
    rows = [
        {"seed": s, "beta": b, "error": e}
        for s, b, e in [(0, 1e-3, 1.37), (1, 1e-3, 1.27), (2, 1e-3, 1.29), (0, 1e-2, 2.0)]
    ]
    summary = metrics.seed_summary(rows, ["beta"], ["error"])
    assert [s["beta"] for s in summary] == [1e-3, 1e-2] and [s["seeds"] for s in summary] == [3, 1]
    assert summary[0]["error_mean"] == pytest.approx(np.mean([1.37, 1.27, 1.29]))
    assert summary[0]["error_std"] == pytest.approx(np.std([1.37, 1.27, 1.29], ddof=1))
    assert summary[1]["error_std"] == 0.0
    table = metrics.markdown_summary(summary, ["beta"], ["error"]).splitlines()
    assert table[0] == "| beta | seeds | error |"
    assert table[2] == "| 0.001 | 3 | 1.31 ± 0.05 |"


def test_csv_round_trip_markdown_and_jsonl_truncation(tmp_path):
    rows = [{"seed": 0, "beta": 0.0, "error": 1.25}, {"seed": 1, "beta": 1e-2, "error": 0.00333}]
    path = str(tmp_path / "results.csv")
    metrics.write_csv(path, rows, ["seed", "beta", "error"])
    with open(path, newline="") as handle:
        read = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    assert read == [{k: float(v) for k, v in row.items()} for row in rows]
    lines = metrics.markdown_table(rows, ["beta", "error"]).splitlines()
    assert (
        lines[0] == "| beta | error |"
        and lines[2] == "| 0.00 | 1.25 |"
        and lines[3] == "| 0.01 | 0.00333 |"
    )
    log = str(tmp_path / "metrics.jsonl")
    metrics.append_jsonl(log, [{"epoch": e, "beta": 0.0} for e in (1, 2, 3, 4)])
    metrics.truncate_jsonl(log, 2)
    assert [r["epoch"] for r in metrics.read_jsonl(log)] == [1, 2]
    with open(log, "a") as handle:  # a write cut off by a kill: no newline
        handle.write('{"epoch": 3, "be')
    assert [r["epoch"] for r in metrics.read_jsonl(log)] == [1, 2]
    metrics.truncate_jsonl(log, 2)
    assert open(log).read().count("\n") == 2 and open(log).read().endswith("}\n")
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_varying_keys_are_those_whose_value_differs_between_records():
    members = [
        {"seed": 0, "beta": 1e-3, "samples": 12},
        {"seed": 1, "beta": 1e-3, "samples": 12},
        {"seed": 0, "beta": 1e-2, "samples": 12},
    ]
    assert metrics.varying_keys(members) == ["seed", "beta"]
    assert metrics.varying_keys(members, ["beta", "samples"]) == ["beta"]
    assert metrics.varying_keys(members[:1]) == []
    assert metrics.varying_keys([]) == []
