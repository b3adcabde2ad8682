"""Reference and closed-form tests of vib_jax.uncertainty."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vib_jax import uncertainty


def constant_confidence_predictor(groups, rng):
    """Two-class predictions in groups of (count, confidence, accuracy): each group always predicts
    class 0 with that confidence, and class 0 is right for exactly that fraction of its examples."""
    probs, labels = [], []
    for count, confidence, accuracy in groups:
        probs.append(np.tile([confidence, 1.0 - confidence], (count, 1)))
        num_right = round(count * accuracy)
        labels.append(rng.permutation(np.r_[np.zeros(num_right), np.ones(count - num_right)]))
    return np.concatenate(probs), np.concatenate(labels).astype(np.int32)


# ---------------------------------------------------------------------------------------------- ECE


def test_ece_of_a_calibrated_predictor_is_near_zero():
    # Labels drawn from the predicted probabilities. Each bin's accuracy then has sampling sd at
    # most sqrt(0.25 / n_bin), so E[ECE] <= sqrt(0.25 * num_bins / N) = 0.0043 here; 0.01 is
    # more than twice that.
    rng = np.random.default_rng(0)
    num_examples, num_classes = 200_000, 4
    probs = rng.dirichlet(np.full(num_classes, 0.5), size=num_examples)
    labels = (rng.uniform(size=(num_examples, 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
    labels = np.minimum(labels, num_classes - 1)
    assert uncertainty.expected_calibration_error(probs, labels) < 0.01
    # The same predictions against labels that ignore them are far from calibrated.
    shuffled = rng.permutation(labels)
    assert uncertainty.expected_calibration_error(probs, shuffled) > 0.2


def test_ece_of_an_overconfident_predictor_is_its_closed_form():
    rng = np.random.default_rng(1)
    probs, labels = constant_confidence_predictor([(1000, 0.9, 0.6)], rng)
    assert uncertainty.expected_calibration_error(probs, labels) == pytest.approx(0.3, abs=1e-6)


def test_ece_weights_each_bin_by_its_count():
    # 300 examples at confidence 0.9 with accuracy 0.6 (gap 0.3) and 100 at 0.7 with accuracy 0.7
    # (gap 0): ECE = 0.75 * 0.3.
    rng = np.random.default_rng(2)
    probs, labels = constant_confidence_predictor([(300, 0.9, 0.6), (100, 0.7, 0.7)], rng)
    assert uncertainty.expected_calibration_error(probs, labels) == pytest.approx(0.225, abs=1e-6)
    bins = uncertainty.reliability_bins(probs, labels, num_bins=10)
    np.testing.assert_array_equal(bins["count"], [0] * 6 + [100, 0, 300, 0])
    np.testing.assert_allclose(bins["confidence"][[6, 8]], [0.7, 0.9])
    np.testing.assert_allclose(bins["accuracy"][[6, 8]], [0.7, 0.6])
    assert np.all(np.isnan(bins["accuracy"][bins["count"] == 0]))
    np.testing.assert_allclose(bins["edges"], np.linspace(0, 1, 11))


def test_reliability_bins_are_right_closed():
    # A confidence on an edge belongs to the bin that the edge closes: 0.5 to (0.25, 0.5].
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]])
    bins = uncertainty.reliability_bins(probs, np.array([0, 0, 1]), num_bins=4)
    np.testing.assert_array_equal(bins["count"], [0, 1, 1, 1])


@settings(deadline=None, max_examples=30)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(0, 40), min_size=1, max_size=4).filter(lambda sizes: sum(sizes) > 0),
)
def test_pooled_bins_are_the_bins_of_all_predictions_together(seed, sizes):
    """Pooling the bins of several seeds' predictions gives the bins of their concatenation."""
    rng = np.random.default_rng(seed)
    parts = [(rng.dirichlet(np.full(4, 0.5), size=n), rng.integers(0, 4, size=n)) for n in sizes]
    parts = [(p, y) for p, y in parts if len(y)]  # a seed with no predictions has no bins
    pooled = uncertainty.pooled_reliability_bins(
        [uncertainty.reliability_bins(p, y, num_bins=5) for p, y in parts]
    )
    together = uncertainty.reliability_bins(
        np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts]), num_bins=5
    )
    np.testing.assert_array_equal(pooled["count"], together["count"])
    for name in ("confidence", "accuracy"):  # NaN in the same empty bins
        np.testing.assert_allclose(pooled[name], together[name], rtol=1e-12)


def test_pooling_bins_of_other_edges_or_none_raises():
    probs, labels = np.array([[0.9, 0.1]]), np.array([0])
    with pytest.raises(ValueError, match="share their edges"):
        uncertainty.pooled_reliability_bins(
            [
                uncertainty.reliability_bins(probs, labels, num_bins=4),
                uncertainty.reliability_bins(probs, labels, num_bins=5),
            ]
        )
    with pytest.raises(ValueError, match="at least one"):
        uncertainty.pooled_reliability_bins([])


def test_calibration_accepts_jax_arrays():
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (50, 3)))
    labels = jax.random.randint(jax.random.key(1), (50,), 0, 3)
    got = uncertainty.expected_calibration_error(probs, labels)
    assert got == pytest.approx(
        uncertainty.expected_calibration_error(np.asarray(probs), np.asarray(labels))
    )


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True])
def test_bad_num_bins_raise(num_bins):
    with pytest.raises(ValueError, match="num_bins"):
        uncertainty.expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 1]), num_bins)


def test_mismatched_labels_raise():
    with pytest.raises(ValueError, match="labels"):
        uncertainty.brier_score(np.full((3, 2), 0.5), np.array([0, 1]))


@pytest.mark.parametrize(
    "probs, labels, name",
    [
        # A label of -1 read as the last class gave an NLL and a Brier score of 0.
        ([[0.0, 0.0, 1.0]], [-1], "labels"),
        ([[0.0, 0.0, 1.0]], [3], "labels"),
        ([[0.0, 0.0, 1.0]], [2.0], "labels"),
        ([[-2.0, -1.0, 0.5]], [2], "probs"),  # logits
        ([[-1.1, -1.1, -1.1]], [2], "probs"),  # log-probabilities
        ([[0.2, 0.2, 0.2]], [2], "probs"),  # rows that do not sum to 1
        ([[np.nan, 0.5, 0.5]], [2], "probs"),  # a diverged model's
        (np.zeros((0, 3)), np.zeros(0, int), "probs"),
    ],
)
@pytest.mark.parametrize(
    "metric",
    [
        uncertainty.negative_log_likelihood,
        uncertainty.brier_score,
        uncertainty.expected_calibration_error,
    ],
)
def test_labels_outside_the_classes_and_non_probabilities_raise(metric, probs, labels, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        metric(np.asarray(probs), np.asarray(labels))


def test_float32_averaged_softmaxes_are_accepted():
    logits = np.random.default_rng(0).normal(size=(12, 100, 10)).astype(np.float32)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    probs = softmax.mean(axis=0, dtype=np.float32)  # as `Run.predictive` gives them
    labels = np.arange(100) % 10
    assert uncertainty.brier_score(probs, labels) > 0.0


# ------------------------------------------------------------------------------ NLL, Brier, scores


def random_predictions(seed, num_examples=64, num_classes=5):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(num_classes), size=num_examples)
    return probs, rng.integers(0, num_classes, size=num_examples)


def test_nll_and_brier_match_numpy_loops():
    probs, labels = random_predictions(3)
    nll = np.mean([-math.log(p[y]) for p, y in zip(probs, labels)])
    brier = np.mean(
        [sum((p[c] - (c == y)) ** 2 for c in range(len(p))) for p, y in zip(probs, labels)]
    )
    assert uncertainty.negative_log_likelihood(probs, labels) == pytest.approx(nll, rel=1e-12)
    assert uncertainty.brier_score(probs, labels) == pytest.approx(brier, rel=1e-12)


def test_scoring_rules_at_their_extremes():
    one_hot = np.eye(3)
    labels = np.array([0, 1, 2])
    assert uncertainty.negative_log_likelihood(one_hot, labels) == 0.0
    assert uncertainty.brier_score(one_hot, labels) == 0.0
    assert uncertainty.brier_score(one_hot, (labels + 1) % 3) == 2.0
    assert uncertainty.negative_log_likelihood(one_hot, (labels + 1) % 3) == math.inf
    uniform = np.full((3, 4), 0.25)
    assert uncertainty.negative_log_likelihood(uniform, labels) == pytest.approx(math.log(4))


def test_entropy_and_max_softmax():
    probs = np.array([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(
        uncertainty.predictive_entropy(probs), [math.log(4), 0.0, math.log(2)], atol=1e-15
    )
    np.testing.assert_array_equal(uncertainty.max_softmax(probs), [0.25, 1.0, 0.5])
    random_probs, _ = random_predictions(4)
    want = [-sum(q * math.log(q) for q in p) for p in random_probs]
    np.testing.assert_allclose(uncertainty.predictive_entropy(random_probs), want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- OOD


def test_a_perfectly_separating_score():
    rng = np.random.default_rng(5)
    got = uncertainty.ood_metrics(rng.uniform(0, 1, 500), rng.uniform(2, 3, 300))
    assert got == dict(auroc=1.0, aupr=1.0, fpr_at_95_tpr=0.0)


def test_a_reversed_score_is_perfectly_wrong():
    # Higher must mean more out-of-distribution: the separating score, negated, scores AUROC 0.
    rng = np.random.default_rng(6)
    got = uncertainty.ood_metrics(rng.uniform(2, 3, 500), rng.uniform(0, 1, 300))
    assert got["auroc"] == 0.0
    assert got["fpr_at_95_tpr"] == 1.0


def test_a_random_score_has_chance_auroc():
    # Under the null the Mann-Whitney AUROC has sd sqrt((n + m + 1) / (12 n m)) (~0.0096 here).
    rng = np.random.default_rng(7)
    n_in, n_out = 3000, 2000
    got = uncertainty.ood_metrics(rng.normal(size=n_in), rng.normal(size=n_out))
    standard_error = math.sqrt((n_in + n_out + 1) / (12 * n_in * n_out))
    assert abs(got["auroc"] - 0.5) < 4 * standard_error
    # Average precision of a random score is about the fraction of positives, 0.4 (sd 0.0070
    # over 300 simulated draws of these sizes). At 95% TPR a random score flags 95% of the
    # in-distribution inputs; the sd, from the 5% quantile of 2000 scores and a fraction of 3000,
    # is sqrt(0.95 * 0.05 / 2000 + 0.95 * 0.05 / 3000) = 0.0063 (0.0063 simulated). 4 sd each.
    assert abs(got["aupr"] - n_out / (n_in + n_out)) < 4 * 0.0070
    fpr_sd = math.sqrt(0.95 * 0.05 / n_out + 0.95 * 0.05 / n_in)
    assert abs(got["fpr_at_95_tpr"] - 0.95) < 4 * fpr_sd


def test_ood_metrics_against_hand_counts():
    in_scores = np.arange(100.0)  # 0..99
    out_scores = np.arange(20.0, 220.0, 10.0)  # 20, 30, ..., 210
    got = uncertainty.ood_metrics(in_scores, out_scores)
    # Flagging 19 of the 20 (95%) needs the threshold 30, which flags the 70 in-scores >= 30.
    assert got["fpr_at_95_tpr"] == pytest.approx(0.7)
    # AUROC = P(out > in) + P(out = in) / 2 over all pairs (Mann-Whitney).
    greater = (out_scores[:, None] > in_scores[None, :]).mean()
    ties = (out_scores[:, None] == in_scores[None, :]).mean()
    assert got["auroc"] == pytest.approx(greater + ties / 2)


@pytest.mark.parametrize("name", ["in_scores", "out_scores"])
def test_empty_or_2d_scores_raise(name):
    scores = dict(in_scores=np.zeros(3), out_scores=np.ones(3))
    scores[name] = np.zeros(0)
    with pytest.raises(ValueError, match=name):
        uncertainty.ood_metrics(**scores)
    scores[name] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=name):
        uncertainty.ood_metrics(**scores)
