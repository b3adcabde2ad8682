"""Figures of a sweep, drawn from its results files (no training imports): matplotlib PNGs."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vib_jax import metrics  # noqa: E402


def _beta_axis_values(rows: Sequence[dict]) -> list[float]:
    """Betas for a log axis: a beta of 0 (deterministic or unpenalised) is drawn at a tenth of the smallest."""
    positive = [r["beta"] for r in rows if r["beta"] > 0]
    floor = min(positive) / 10 if positive else 1.0
    return [r["beta"] if r["beta"] > 0 else floor for r in rows]


def _log_scale_if_wide(axis, values: Sequence[float]) -> None:
    """A log x-axis when the positive values span more than a decade (readable ticks otherwise: linear)."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) > 10 * min(positive):
        axis.set_xscale("log")


def test_error_vs_beta(rows: Sequence[dict], path: str) -> str:
    """Test error (%) against beta (log axis), for 12-sample averaging, one sample and z = mean."""
    rows = sorted(rows, key=lambda r: r["beta"])
    betas = _beta_axis_values(rows)
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for key, label in (("test_error_avg", "softmax averaged over samples"), ("test_error_1", "one sample"),
                       ("test_error_mean", "z = mean")):
        axes.plot(betas, [r[key] for r in rows], marker="o", label=label)
    axes.set(xscale="log", xlabel=r"$\beta$", ylabel="test error (%)", title="VIB: test error against beta")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def information_plane(rows: Sequence[dict], path: str) -> str:
    """The information plane (the paper's Fig. 1): I(Z;Y) lower bound against I(Z;X) upper bound, in bits.

    One point per beta, coloured by log10 beta, for the training split and the test split.
    """
    rows = sorted(rows, key=lambda r: r["beta"])
    betas = _beta_axis_values(rows)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, split in zip(axes, ("train", "test")):
        izx = [r[f"{split}_izx_bits"] for r in rows]
        izy = [r[f"{split}_izy_bits"] for r in rows]
        axis.plot(izx, izy, color="grey", alpha=0.5, zorder=1)
        points = axis.scatter(izx, izy, c=betas, cmap="viridis", norm=matplotlib.colors.LogNorm(), zorder=2)
        _log_scale_if_wide(axis, izx)
        axis.set(xlabel="I(Z;X) upper bound: rate (bits)", title=f"information plane, {split}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("I(Z;Y) lower bound: H(Y) - CE (bits)")
    figure.colorbar(points, ax=axes, label=r"$\beta$")
    figure.savefig(path, dpi=120, bbox_inches="tight")  # the colorbar spans both axes: no tight_layout
    plt.close(figure)
    return path


def learning_curves(records: Sequence[dict], path: str) -> str:
    """Test error (12-sample average, %) against epoch, one line per beta, from metrics.jsonl records."""
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for beta in sorted({r["beta"] for r in records}):
        points = [(r["epoch"], 100 * r["test/error_avg"]) for r in records if r["beta"] == beta and "test/error_avg" in r]
        if points:
            axes.plot(*zip(*points), label=f"beta={beta:g}")
    axes.set(xlabel="epoch", ylabel="test error (%)", yscale="log", title="VIB: test error during training")
    axes.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter())  # 1, 10 rather than 10^0, 10^1
    axes.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def sweep_figures(workdir: str) -> list[str]:
    """Draws every figure of the sweep in `workdir` from its results.csv and metrics.jsonl; returns the paths."""
    rows = metrics.read_csv(os.path.join(workdir, "results.csv"))
    records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [
        test_error_vs_beta(rows, os.path.join(workdir, "test_error_vs_beta.png")),
        information_plane(rows, os.path.join(workdir, "information_plane.png")),
        learning_curves(records, os.path.join(workdir, "learning_curves.png")),
    ]
