"""Tests of vib_jax.sample_quality against independent formulas (experiments/vae_quality.py is
tested in test_runs.py, on its trained runs)."""

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings

from vib_jax import sample_quality


def test_the_classifier_score_is_the_entropy_of_the_mean_less_the_mean_entropy():
    probs = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=500)
    # exp(E KL(p(y|x) || p(y))) = exp(H(E p) - E H(p)): the mutual information of x and y.
    expected = np.exp(
        scipy.stats.entropy(probs.mean(axis=0)) - np.mean(scipy.stats.entropy(probs, axis=1))
    )
    assert sample_quality.classifier_score(probs) == pytest.approx(expected, rel=1e-10)
    certain_and_balanced = np.eye(10)[np.arange(500) % 10]
    assert sample_quality.classifier_score(certain_and_balanced) == pytest.approx(10.0)
    assert sample_quality.classifier_score(np.tile(probs[:1], (500, 1))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"probs must be \[N, C\]"):
        sample_quality.classifier_score(probs[0])


def test_the_frechet_distance_of_a_scaled_copy_has_its_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6))
    b = 2.0 * a + np.arange(6.0)
    # S_b = 4 S_a commutes with S_a: tr(S_a + 4 S_a - 2 (4 S_a^2)^(1/2)) = tr(S_a).
    expected = np.sum(np.square(a.mean(0) - b.mean(0))) + np.trace(np.cov(a, rowvar=False))
    assert sample_quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert sample_quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one D"):
        sample_quality.frechet_distance(a, b[:, :5])


def test_the_frechet_distance_of_covariances_that_do_not_commute_has_the_2x2_closed_form():
    """S_a = diag(1, 9) and S_b the same rotated by 45 degrees: for 2 x 2 matrices,
    tr((S_a S_b)^(1/2)) = sqrt(tr(S_a S_b) + 2 sqrt(det(S_a S_b))) (the root's eigenvalues l1, l2
    have l1 + l2 = sqrt(l1^2 + l2^2 + 2 l1 l2)). sqrtm(S_a) sqrtm(S_b) in place of the root gives
    another value (4.5 against 4.01 with the means 0.5 apart in each feature)."""
    rng = np.random.default_rng(3)
    white = rng.normal(size=(5000, 2))
    white = (white - white.mean(0)) @ np.linalg.inv(
        np.linalg.cholesky(np.cov(white, rowvar=False))
    ).T
    rotation = np.array([[1.0, -1.0], [1.0, 1.0]]) / np.sqrt(2.0)
    a = white @ np.diag([1.0, 3.0])  # covariance exactly diag(1, 9)
    b = white @ np.diag([1.0, 3.0]) @ rotation.T + 0.5
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    product = cov_a @ cov_b
    root_trace = np.sqrt(np.trace(product) + 2.0 * np.sqrt(np.linalg.det(product)))
    expected = 2 * 0.5**2 + np.trace(cov_a + cov_b) - 2.0 * root_trace
    assert expected == pytest.approx(0.5 + 20.0 - 2.0 * np.sqrt(50.0 + 2.0 * 9.0), rel=1e-9)
    assert sample_quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(1, 5), shift=st.floats(-3, 3))
def test_the_frechet_distance_is_symmetric_nonnegative_and_sees_a_shift(seed, dim, shift):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(200, dim)), rng.normal(size=(300, dim)) * 1.5
    forward = sample_quality.frechet_distance(a, b)
    assert forward == pytest.approx(sample_quality.frechet_distance(b, a), rel=1e-6, abs=1e-9)
    assert forward >= -1e-9
    # A shift of every feature moves only the mean term, by exactly its squared length.
    moved = sample_quality.frechet_distance(a, a + shift)
    assert moved == pytest.approx(dim * shift**2, rel=1e-6, abs=1e-6)


def test_the_linear_probe_reads_separable_classes_and_not_random_labels():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=6.0, size=(10, 8))
    labels = rng.integers(0, 10, size=3000)
    features = centres[labels] + rng.normal(size=(3000, 8))
    accuracy = sample_quality.linear_probe_accuracy(
        features[:1000], labels[:1000], features[1000:], labels[1000:]
    )
    assert accuracy > 0.97
    shuffled = rng.permutation(labels[:1000])
    chance = sample_quality.linear_probe_accuracy(
        features[:1000], shuffled, features[1000:], labels[1000:]
    )
    assert chance < 0.2


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-100, 100))
def test_active_units_count_the_dimensions_whose_means_vary(seed, shift):
    """Stddevs 1, 0.5, 0.2 and 0.05 over 20,000 inputs: variances 1, 0.25, 0.04 (active) and
    0.0025 (not), whatever the dimensions' common offset."""
    rng = np.random.default_rng(seed)
    means = rng.normal(shift, [1.0, 0.5, 0.2, 0.05], size=(20000, 4))
    assert sample_quality.active_units(means) == 3
    assert sample_quality.active_units(means, threshold=0.1) == 2
    assert sample_quality.active_units(np.full((10, 4), shift)) == 0


def test_active_units_need_two_inputs():
    with pytest.raises(ValueError, match=r"posterior_means must be \[N, K\] with N >= 2"):
        sample_quality.active_units(np.zeros((1, 3)))


def test_the_frechet_distance_of_fewer_than_two_rows_raises():
    rows = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match="^features must have N >= 2"):
        sample_quality.frechet_distance(rows[:1], rows)
