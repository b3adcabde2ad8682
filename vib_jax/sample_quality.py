"""What a generative model's latents carry and how good its samples are, measured with a trained
classifier: numpy, scipy and scikit-learn on arrays (no training code).

- `classifier_score`: the "Inception score" of Salimans et al. (2016) with an MNIST classifier in
  place of Inception: exp(E_x KL(p(y|x) || p(y))), from 1 (every sample alike and ambiguous) to C
  (each sample classified with certainty and the classes equally often).
- `frechet_distance`: the Fréchet distance between Gaussians fitted to two sets of features (FID,
  Heusel et al. 2017, in the feature space of the trained classifier rather than Inception's).
- `linear_probe_accuracy`: the test accuracy of a logistic regression fitted to representations of a
  few labelled training images (what the representation makes linearly available about the label).
- `active_units`: how many latent dimensions the encoder uses (Burda et al. 2016's activity
  statistic).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def classifier_score(probs) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of predictive distributions `[N, C]` (rows sum to 1), where
    p(y) is their mean over the N samples; in [1, C]."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {probs.shape}.")
    log_probs = np.log(np.clip(probs, 1e-30, None))
    log_marginal = np.log(np.clip(probs.mean(axis=0), 1e-30, None))
    return float(np.exp(np.mean(np.sum(probs * (log_probs - log_marginal), axis=1))))


def frechet_distance(features_a, features_b) -> float:
    """The Fréchet (2-Wasserstein) distance squared between the Gaussians fitted to features
    `[N_a, D]` and `[N_b, D]`: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in the
    features' squared units; 0 for the same set."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with one D, got {a.shape} and {b.shape}.")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(
            f"features must have N >= 2 rows each (a covariance), got {a.shape} and {b.shape}."
        )
    covariance_a = np.atleast_2d(np.cov(a, rowvar=False))  # [D, D], also for D = 1
    covariance_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(covariance_a @ covariance_b)
    mean_term = np.sum(np.square(a.mean(axis=0) - b.mean(axis=0)))
    trace_term = np.trace(covariance_a + covariance_b - 2.0 * np.real(root))
    return float(mean_term + trace_term)


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels) -> float:
    """The test accuracy (fraction) of a multinomial logistic regression (L2, C = 1, on features
    standardised with the training set's mean and stddev) fitted to `[N, D]` training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(np.asarray(train_features), np.asarray(train_labels))
    return float(probe.score(np.asarray(test_features), np.asarray(test_labels)))


def active_units(posterior_means, threshold: float = 1e-2) -> int:
    """How many latent dimensions are active (Burda et al. 2016, Sec. 5.2): those whose posterior
    mean E_q(z|x)[z_u] varies over the inputs, Cov_x(E[z_u]) > `threshold` (theirs: 1e-2), for the
    means `[N, K]` of N inputs. A dimension below it carries almost nothing about x: its posterior
    is the same for every input (typically the prior, where its rate is ~0)."""
    means = np.asarray(posterior_means, np.float64)
    if means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(f"posterior_means must be [N, K] with N >= 2, got {means.shape}.")
    return int(np.sum(np.var(means, axis=0) > threshold))
