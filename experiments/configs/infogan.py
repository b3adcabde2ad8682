"""InfoGAN on MNIST (Chen et al. 2016, Sec. 7.1 and Appendix C.1, with the official code's
hyperparameters): noise of 62, one categorical code of 10 and two continuous codes, lambda = 1,
Adam b1 = 0.5 with lr 2e-4 (discriminator and Q) and 1e-3 (generator), constant. Both players
update at once; `--config.player_updates=alternating` steps them in turn as the official code
does (see `vib_jax.tasks.infogan`).

The official code trains 50 "epochs" of 100 updates of 128 images (5,000 updates); we use batches
of 100 (600 updates per MNIST epoch). `--seeds=0:5` trains five seeds in one program.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.task = "infogan"
    # Classifier entries.
    del config.latent_dim, config.hidden_dims, config.deterministic, config.covariance
    del config.rate_estimator, config.marginal, config.marginal_components
    del config.train_samples, config.eval_samples
    config.noise_dim = 62
    config.categorical_dim = 10
    config.continuous_dim = 2
    # The discriminator's convolutions and dense layer, Q's hidden layer (the generator mirrors).
    config.channels = (64, 128)
    config.hidden_dim = 1024
    config.q_hidden_dim = 128
    config.sweep = ml_collections.ConfigDict({"info_weight": (1.0,)})
    config.learning_rate = 2e-4  # the discriminator's and Q's
    config.generator_learning_rate = 1e-3
    config.lr_decay_rate = 1.0
    config.adam_b1 = 0.5
    config.player_updates = "simultaneous"
    # No EMA (the official code has none): the evaluated weights are the trained ones, with the
    # batch-norm averages gathered under them.
    config.ema_decay = 0.0
    config.num_epochs = 10
    config.checkpoint_every_epochs = 1  # an epoch of five seeds takes ~20 minutes on 2 CPU cores
    return config
