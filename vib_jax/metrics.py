"""Reporting: per-epoch records, results tables (per member, and mean ± sd over seeds), their
files."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np


def member_records(prefix: str, metrics: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
    """Splits sweep metrics `{name: [M]}` into M dicts `{prefix/name: float}`, one per sweep
    member."""
    names = sorted(metrics)
    num_members = len(np.atleast_1d(metrics[names[0]]))
    return [
        {f"{prefix}/{name}": float(np.atleast_1d(metrics[name])[m]) for name in names}
        for m in range(num_members)
    ]


def epoch_records(
    epoch: int,
    members: Sequence[Mapping[str, float]],
    learning_rate: float,
    seconds: float,
    **groups,
) -> list[dict]:
    """One JSON-able record per member for an epoch: the member's seed and hyperparameters, then its
    metrics groups (e.g. train_batches=, test=) flattened."""
    per_group = [member_records(prefix, metrics) for prefix, metrics in groups.items()]
    records = []
    for m, member in enumerate(members):
        record = {
            "epoch": epoch,
            **member,
            "learning_rate": learning_rate,
            "epoch_seconds": seconds,
        }
        for group in per_group:
            record |= group[m]
        records.append(record)
    return records


def varying_keys(records: Sequence[Mapping], keys: Iterable[str] | None = None) -> list[str]:
    """The keys (all of the first record's, or `keys`, in order) whose value is not the same in
    every record: the hyperparameters that tell a sweep's members apart."""
    candidates = list(records[0]) if keys is None and records else list(keys or [])
    return [k for k in candidates if len({r[k] for r in records}) > 1]


def seed_summary(
    rows: Sequence[Mapping], group_columns: Sequence[str], value_columns: Sequence[str]
) -> list[dict]:
    """Mean and standard deviation (n - 1 in the denominator; 0 for one seed) of each value column
    over the rows that share the group columns' values (the seeds of one set of hyperparameters).

    Returns one dict per group, in order of first appearance: the group's values, `seeds` (n), and
    `COLUMN_mean`, `COLUMN_std` per value column.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in group_columns), []).append(row)
    summary = []
    for key, members in groups.items():
        entry = dict(zip(group_columns, key)) | {"seeds": len(members)}
        for column in value_columns:
            values = np.array([float(m[column]) for m in members])
            entry[f"{column}_mean"] = float(values.mean())
            entry[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown_summary(
    summary: Sequence[Mapping], group_columns: Sequence[str], value_columns: Sequence[str]
) -> str:
    """`seed_summary`'s rows as a Markdown table of `mean ± std` cells."""
    cells = [
        {c: row[c] for c in (*group_columns, "seeds")}
        | {c: f"{_format(row[f'{c}_mean'])} ± {_format(row[f'{c}_std'])}" for c in value_columns}
        for row in summary
    ]
    return markdown_table(cells, (*group_columns, "seeds", *value_columns))


def _format(value) -> str:
    if isinstance(value, float):
        return (
            f"{value:.3g}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.2f}"
        )
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Rows as a Markdown table of the given columns (units as the column names say)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically: an old file is replaced only once the new one is
    complete."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as handle:
        handle.write(text)
    os.replace(temporary, path)


def write_csv(path: str, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """Writes `rows` as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def append_jsonl(path: str, records: Iterable[Mapping]) -> None:
    """Appends `records`, one JSON object per line, in one write."""
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file (none if it does not exist). A last line with no newline
    is a write cut off by a killed process, not a record: it is left out."""
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        lines = handle.readlines()
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    return [json.loads(line) for line in lines if line.strip()]


def truncate_jsonl(path: str, last_epoch: int) -> None:
    """Keeps only the records of epochs <= `last_epoch` (what a resumed run has not yet redone)."""
    kept = [r for r in read_jsonl(path) if r["epoch"] <= last_epoch]
    if os.path.exists(path):
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
