"""Reporting: per-epoch records, the results table (errors in %, information in bits) and their files."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

RESULT_COLUMNS = (
    "beta",
    "epochs",
    "test_error_avg",
    "test_error_1",
    "test_error_mean",
    "train_error_avg",
    "train_error_1",
    "train_error_mean",
    "train_izx_bits",
    "train_izy_bits",
    "test_izx_bits",
    "test_izy_bits",
    "train_seconds",
)


def member_records(prefix: str, metrics: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
    """Splits sweep metrics `{name: [M]}` into M dicts `{prefix/name: float}`, one per sweep member."""
    names = sorted(metrics)
    num_members = len(np.atleast_1d(metrics[names[0]]))
    return [{f"{prefix}/{name}": float(np.atleast_1d(metrics[name])[m]) for name in names} for m in range(num_members)]


def epoch_records(epoch: int, betas: Sequence[float], learning_rate: float, seconds: float, **groups) -> list[dict]:
    """One JSON-able record per beta for an epoch: its metrics groups (e.g. train_batches=, test=) flattened."""
    per_group = [member_records(prefix, metrics) for prefix, metrics in groups.items()]
    records = []
    for m, beta in enumerate(betas):
        record = {"epoch": epoch, "beta": float(beta), "learning_rate": learning_rate, "epoch_seconds": seconds}
        for group in per_group:
            record |= group[m]
        records.append(record)
    return records


def result_rows(
    betas: Sequence[float], epochs: int, train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], seconds: float
) -> list[dict]:
    """The results table: one row per beta, errors in percent, information bounds in bits."""
    rows = []
    for m, beta in enumerate(betas):
        row = {"beta": float(beta), "epochs": epochs, "train_seconds": round(seconds, 1)}
        for split, metrics in (("train", train), ("test", test)):
            for kind in ("avg", "1", "mean"):
                row[f"{split}_error_{kind}"] = 100.0 * float(np.atleast_1d(metrics[f"error_{kind}"])[m])
            row[f"{split}_izx_bits"] = float(np.atleast_1d(metrics["izx_bound_bits"])[m])
            row[f"{split}_izy_bits"] = float(np.atleast_1d(metrics["izy_bound_bits"])[m])
        rows.append(row)
    return rows


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] = RESULT_COLUMNS) -> str:
    """Rows as a Markdown table; errors are in %, information in bits (as the column names say)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically: an old file is replaced only once the new one is complete."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as handle:
        handle.write(text)
    os.replace(temporary, path)


def write_csv(path: str, rows: Sequence[Mapping], columns: Sequence[str] = RESULT_COLUMNS) -> None:
    """Writes `rows` as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_csv(path: str) -> list[dict[str, float]]:
    """Reads a results CSV written by `write_csv`, with numbers as floats."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def append_jsonl(path: str, records: Iterable[Mapping]) -> None:
    with open(path, "a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_jsonl(path: str, last_epoch: int) -> None:
    """Keeps only the records of epochs <= `last_epoch` (what a resumed run has not yet redone)."""
    kept = [r for r in read_jsonl(path) if r["epoch"] <= last_epoch]
    if os.path.exists(path):
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

