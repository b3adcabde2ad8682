"""The beta-VAE on dynamically binarised MNIST, with Burda et al. (2016)'s architecture and
schedule.

One stochastic layer of 50 units and two deterministic tanh layers of 200 in the encoder and the
decoder (Table 1's "1 stochastic layer" row: VAE 86.76, IWAE k = 50 84.78 nats); Adam(b1 = 0.9,
b2 = 0.999, eps = 1e-4), lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (3,280 epochs). We use batches
of 100 where they used 20 (five times fewer steps per epoch). `--config.objective=iwae
--train_samples=50` trains IWAE; `--latent_dim=2` gives the 2-D latent figure.
"""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.task = "vae"
    # Classifier entries.
    del config.deterministic, config.covariance, config.rate_estimator
    # r(z): "standard_normal", or learned: a "mixture" of `marginal_components` Gaussians, or
    # "vamp", the VampPrior with `marginal_components` pseudo-inputs (Tomczak & Welling: 500).
    config.marginal = "standard_normal"
    config.marginal_components = 500
    config.latent_dim = 50
    config.hidden_dims = (200, 200)
    config.activation = "tanh"
    config.stddev_shift = 0.0  # softplus(pre): q(z|x) starts with stddev ~0.7
    config.likelihood = "bernoulli"  # or "gaussian" (grey levels, learned stddev per pixel)
    config.objective = "elbo"  # or "iwae" (k = train_samples)
    # InfoVAE / MMD-VAE: `--sweep=mmd_weight=...` adds lambda * MMD^2(q(z), p(z)) over the global
    # batch with this kernel ("gaussian" or "inverse_multiquadric"); with --beta=0, the MMD-VAE.
    config.mmd_kernel = "gaussian"
    config.sweep.beta = (1.0,)
    config.train_samples = 1
    config.eval_samples = 1
    config.nll_samples = 5000  # importance samples of the final test NLL
    config.nll_chunk_size = 500
    config.learning_rate = 1e-3
    config.lr_schedule = "iwae"
    config.adam_b1 = 0.9
    config.adam_eps = 1e-4
    config.ema_decay = 0.999
    config.num_epochs = 3280
    config.eval_every_epochs = 20
    config.eval_chunk_size = 100  # x 500 importance samples x 784 pixels per NLL chunk: 157 MB
    config.checkpoint_every_epochs = 20
    return config
