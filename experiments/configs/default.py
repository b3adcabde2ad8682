"""The paper's recipe (Alemi et al. 2017, Sec. 4.1, and the official demo): VIB on MNIST at
beta = 1e-3."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "vib_classifier"  # a module of vib_jax.tasks, or a dotted module path
    config.dataset = "mnist"
    config.train_subset = 0  # 0: the whole split; N: the first N examples (smoke runs)
    config.test_subset = 0
    # Model: encoder 784-1024-1024-(2K), softmax decoder on z.
    config.latent_dim = 256
    config.hidden_dims = (1024, 1024)
    config.deterministic = False  # True: the no-bottleneck baseline, z = mean and no rate
    config.covariance = "diagonal"  # or "full": a Cholesky factor per example (the paper's K = 2)
    # The rate in the loss: "closed_form" KL (the official TF demo) or "monte_carlo",
    # log q(z|x) - log r(z) on the training samples (the official JAX notebook).
    config.rate_estimator = "closed_form"
    # r(z): "standard_normal", or a learned "mixture" of `marginal_components` diagonal Gaussians
    # (its rate is Monte Carlo: set rate_estimator = "monte_carlo").
    config.marginal = "standard_normal"
    config.marginal_components = 10
    # The sweep: every seed times the product of the lists below, all trained in one program. Any
    # hyperparameter of the task may get a list (vib_classifier: beta, rate_budget, dropout,
    # label_smoothing, confidence_penalty, the VDB's target_rate, beta_step_size and beta_max:
    # with a step size > 0, beta follows the dual update and holds the rate at target_rate, and
    # beta_warmup_epochs).
    config.seeds = (0,)
    config.sweep = ml_collections.ConfigDict({"beta": (1e-3,)})
    config.train_samples = 1
    config.eval_samples = 12
    # Optimisation: Adam(1e-4, 0.5, 0.999), lr * 0.97 every 2 epochs (staircase), Polyak EMA 0.999
    # (zero-debiased).
    config.batch_size = 100
    config.optimizer = "adam"  # or "sgd"
    config.learning_rate = 1e-4
    config.lr_schedule = "staircase"  # or "iwae" (Burda et al.: 3^i epochs at lr * 10^(-i/7))
    config.lr_decay_rate = 0.97
    config.lr_decay_epochs = 2
    config.adam_b1 = 0.5
    config.adam_b2 = 0.999
    config.adam_eps = 1e-8
    config.ema_decay = 0.999
    config.ema_debias = True  # zero-debiased, as the official demo: no trace of the initial params
    config.num_epochs = 200
    # Evaluation (EMA params): the test split every `eval_every_epochs`, and the first
    # `train_eval_size` training examples (0: all); the whole training split at the end.
    config.eval_every_epochs = 1
    config.train_eval_size = 10_000
    config.eval_chunk_size = 1000
    # Bookkeeping.
    config.checkpoint_every_epochs = 5
    config.num_devices = 0  # 0: the most devices (of all processes) dividing batch and eval chunk
    config.members_at_once = (
        0  # members vmapped together, groups in turn; 0: all on GPU/TPU, 1 on CPU
    )
    config.progress = True
    return config
