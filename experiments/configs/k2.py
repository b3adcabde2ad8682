"""The paper's Sec. 4.1.3 (Fig. 2): a 2-D bottleneck with a full-covariance Gaussian encoder.

The encoder predicts the mean and a Cholesky factor of the covariance (`covariance="full"`);
evaluation reports the 12-sample (`test_error_avg`) and 1-sample (`test_error_1`) errors the paper
prints for beta = 1e-3, 1e-1 and 1, and `posteriors_k2.png` draws the test posteriors as ellipses.
Otherwise the TF recipe of `default.py`.
"""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.latent_dim = 2
    config.covariance = "full"
    config.sweep.beta = (1e-3, 1e-1, 1.0)
    return config
