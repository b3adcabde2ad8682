"""Tests of vib_jax.metrics: records, results rows, tables and their files."""
import numpy as np
import pytest

from vib_jax import metrics


def sweep_metrics(errors, izx, izy):
    return {"error_avg": np.array(errors), "error_1": np.array(errors) + 0.01, "error_mean": np.array(errors) - 0.01,
            "izx_bound_bits": np.array(izx), "izy_bound_bits": np.array(izy)}


def test_epoch_records_split_sweep_metrics_per_beta():
    records = metrics.epoch_records(3, [1e-3, 1e-2], 1e-4, 12.5, train_batches={"loss": np.array([0.5, 0.7])},
                                    test=sweep_metrics([0.02, 0.03], [40.0, 10.0], [3.2, 3.1]))
    assert len(records) == 2
    assert records[1]["beta"] == 1e-2 and records[1]["epoch"] == 3 and records[1]["epoch_seconds"] == 12.5
    assert records[1]["train_batches/loss"] == pytest.approx(0.7)
    assert records[0]["test/izx_bound_bits"] == pytest.approx(40.0)


def test_result_rows_are_in_percent_and_bits():
    rows = metrics.result_rows([1e-3], 200, sweep_metrics([0.01], [30.0], [3.2]), sweep_metrics([0.0125], [31.0], [3.1]),
                               seconds=123.45)
    row = rows[0]
    assert row["test_error_avg"] == pytest.approx(1.25) and row["test_error_1"] == pytest.approx(2.25)
    assert row["train_izx_bits"] == pytest.approx(30.0) and row["test_izy_bits"] == pytest.approx(3.1)
    assert row["epochs"] == 200 and row["train_seconds"] == pytest.approx(123.5)
    table = metrics.markdown_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| beta | epochs | test_error_avg")
    assert "| 0.001 | 200 | 1.25 |" in lines[2]


def test_csv_round_trip_and_jsonl_truncation(tmp_path):
    rows = metrics.result_rows([0.0, 1e-2], 5, sweep_metrics([0.1, 0.2], [1.0, 2.0], [3.0, 2.5]),
                               sweep_metrics([0.1, 0.2], [1.0, 2.0], [3.0, 2.5]), 1.0)
    path = str(tmp_path / "results.csv")
    metrics.write_csv(path, rows)
    assert metrics.read_csv(path) == [{k: float(v) for k, v in row.items()} for row in rows]
    log = str(tmp_path / "metrics.jsonl")
    metrics.append_jsonl(log, [{"epoch": e, "beta": 0.0} for e in (1, 2, 3, 4)])
    metrics.truncate_jsonl(log, 2)
    assert [r["epoch"] for r in metrics.read_jsonl(log)] == [1, 2]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
