"""Uncertainty metrics of a classifier's predictive distribution: calibration (ECE and the
reliability diagram's bins), proper scoring rules (NLL, Brier), per-example uncertainty scores
(predictive entropy, maximum softmax probability) and out-of-distribution detection (AUROC, AUPR,
FPR at 95% TPR).

Everything takes predictive probabilities `probs [N, C]` (e.g. `vib_jax.runs.Run.predictive`, the
softmax averaged over posterior samples) as numpy or JAX arrays and computes on the host in float64
numpy; the results are numpy arrays or Python floats. Logarithms are natural (nats).
scikit-learn, which the OOD metrics use, is imported only when they are called.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The true positive rate at which `ood_metrics` reports the false positive rate.
OOD_TPR = 0.95
# How far from 1 a row of predictive probabilities may sum (float32 averages of softmaxes are
# within 1e-6).
_SUM_TOLERANCE = 1e-4


def _as_probs_and_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """`probs [N, C]` as float64 and `labels [N]` as int64, after checking that N >= 1, each row
    of `probs` is a distribution (not logits or log-probabilities) and each label a class."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape [N, C] with N >= 1, got {probs.shape}.")
    valid = np.all(probs >= 0, axis=-1) & (np.abs(probs.sum(axis=-1) - 1.0) <= _SUM_TOLERANCE)
    if not valid.all():
        first = int(np.argmin(valid))
        raise ValueError(
            "probs must be probabilities: finite rows >= 0 that sum to 1 (not logits or "
            f"log-probs); row {first} is {probs[first].tolist()}."
        )
    if labels.shape != probs.shape[:1]:
        raise ValueError(
            f"labels must have shape [N]={probs.shape[:1]} to match probs, got {labels.shape}."
        )
    num_classes = probs.shape[1]
    if not np.issubdtype(labels.dtype, np.integer) or np.any(
        (labels < 0) | (labels >= num_classes)
    ):
        raise ValueError(f"labels must be integer classes in [0, {num_classes}).")
    return probs, labels.astype(np.int64)


def max_softmax(probs) -> np.ndarray:
    """`[N, C] -> [N]` the confidence of each prediction: its largest class probability.

    For OOD detection, where a higher score means more out-of-distribution, use `-max_softmax`.
    """
    return np.max(np.asarray(probs, np.float64), axis=-1)


def predictive_entropy(probs) -> np.ndarray:
    """`[N, C] -> [N]` H(p) = -sum_c p_c log p_c in nats (0 log 0 = 0): log C for a uniform
    prediction, 0 for a one-hot one. Higher means more uncertain (an OOD score as it stands)."""
    probs = np.asarray(probs, np.float64)
    safe = np.where(probs > 0, probs, 1.0)
    return -np.sum(probs * np.log(safe), axis=-1)


def negative_log_likelihood(probs, labels) -> float:
    """The mean of -log p(label) over the N examples, in nats (`probs [N, C]`, `labels [N]` int).

    Infinite when a label has probability 0 (no clipping hides it)."""
    probs, labels = _as_probs_and_labels(probs, labels)
    label_probs = np.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(label_probs)))


def brier_score(probs, labels) -> float:
    """The mean over the N examples of sum_c (p_c - [c = label])^2 (Brier 1950, in its multi-class
    form): 0 for a confident right prediction, 2 for a confident wrong one."""
    probs, labels = _as_probs_and_labels(probs, labels)
    one_hot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum(np.square(probs - one_hot), axis=-1)))


def reliability_bins(probs, labels, num_bins: int = 15) -> dict[str, np.ndarray]:
    """The reliability diagram (Guo et al. 2017): predictions grouped by confidence (`max_softmax`)
    into `num_bins` equal-width bins ((m - 1) / M, m / M] of [0, 1].

    Args:
      probs: `[N, C]` predictive probabilities.
      labels: `[N]` int true labels.
      num_bins: M >= 1.

    Returns:
      `{"edges": [M + 1], "confidence": [M] mean confidence, "accuracy": [M] fraction of argmax
      predictions that are right, "count": [M] int}`; confidence and accuracy are NaN in empty bins.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}.")
    probs, labels = _as_probs_and_labels(probs, labels)
    confidence = max_softmax(probs)
    correct = np.argmax(probs, axis=-1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # Right-closed bins: side="left" puts a confidence equal to an edge in the bin it closes.
    bin_index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(bin_index, minlength=num_bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(bin_index, confidence, num_bins) / count
        accuracy = np.bincount(bin_index, correct, num_bins) / count
    return dict(edges=edges, confidence=mean_confidence, accuracy=accuracy, count=count)


def pooled_reliability_bins(bins: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`reliability_bins` of several models on the same edges (the seeds of one setting) as one:
    counts summed, confidence and accuracy averaged with the counts as weights, which is what
    `reliability_bins` gives for all their predictions together."""
    if not bins:
        raise ValueError("bins must hold at least one model's reliability bins.")
    edges = bins[0]["edges"]
    if any(not np.array_equal(b["edges"], edges) for b in bins):
        raise ValueError("reliability bins to pool must share their edges.")
    count = np.sum([b["count"] for b in bins], axis=0)

    def weighted(name):
        total = np.sum([np.where(b["count"] > 0, b[name] * b["count"], 0.0) for b in bins], axis=0)
        with np.errstate(invalid="ignore"):
            return total / count

    return dict(
        edges=edges, confidence=weighted("confidence"), accuracy=weighted("accuracy"), count=count
    )


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): sum over the `reliability_bins` of
    (count / N) * |accuracy - confidence|, in [0, 1]; 0 for a calibrated predictor (up to the
    sampling noise of the bins' accuracies).

    Args:
      probs: `[N, C]` predictive probabilities.
      labels: `[N]` int true labels.
      num_bins: M >= 1 equal-width confidence bins.
    """
    bins = reliability_bins(probs, labels, num_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] * gaps) / np.sum(bins["count"]))


def ood_metrics(in_scores, out_scores) -> dict[str, float]:
    """How well a score separates out-of-distribution inputs from in-distribution ones.

    Convention: a higher score means more out-of-distribution (e.g. `predictive_entropy`, or
    `-max_softmax`), and out-of-distribution is the positive class.

    Args:
      in_scores: `[N_in]` scores of in-distribution inputs.
      out_scores: `[N_out]` scores of out-of-distribution inputs.

    Returns:
      `{"auroc", "aupr", "fpr_at_95_tpr"}`: the area under the ROC curve (1: perfect, 0.5: chance),
      the average precision (area under the precision-recall curve), and the fraction of
      in-distribution inputs flagged at the highest threshold that still flags `OOD_TPR` of the
      out-of-distribution ones (0: perfect).
    """
    from sklearn import metrics

    in_scores = np.asarray(in_scores, np.float64)
    out_scores = np.asarray(out_scores, np.float64)
    for name, scores in (("in_scores", in_scores), ("out_scores", out_scores)):
        if scores.ndim != 1 or scores.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-d array, got shape {scores.shape}.")
    is_out = np.concatenate([np.zeros(in_scores.size, bool), np.ones(out_scores.size, bool)])
    scores = np.concatenate([in_scores, out_scores])
    false_positive_rate, true_positive_rate, _ = metrics.roc_curve(
        is_out, scores, drop_intermediate=False
    )
    reaches_tpr = np.searchsorted(true_positive_rate, OOD_TPR, side="left")
    return dict(
        auroc=float(metrics.roc_auc_score(is_out, scores)),
        aupr=float(metrics.average_precision_score(is_out, scores)),
        fpr_at_95_tpr=float(false_positive_rate[reaches_tpr]),
    )
