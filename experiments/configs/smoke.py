"""A small, fast run for CPU smoke tests: the paper's model shape on a subset of the data."""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.train_subset = 5000
    config.test_subset = 1000
    config.latent_dim = 32
    config.hidden_dims = (256, 256)
    config.learning_rate = 1e-3
    config.num_epochs = 4
    config.train_eval_size = 1000
    config.eval_chunk_size = 500
    config.checkpoint_every_epochs = 2
    config.ema_decay = (
        0.99  # a few hundred steps: the paper's 0.999 would still average in the initial params
    )
    return config
