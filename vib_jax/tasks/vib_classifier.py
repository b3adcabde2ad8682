"""The VIB classifier (Alemi et al. 2017) and the baselines of its Table 1, as a task.

Objective: E[-log q(y|z)] + beta * E[KL(q(z|x) || r(z))], with S posterior samples per example
(`losses.vib_loss`) and r(z) = N(0, I) or a learned mixture; with a swept `rate_budget` C, the
hinge ("information budget") beta * max(rate - C, 0) on the batch-mean rate. The rate is the
closed-form KL (`rate_estimator="closed_form"`, the official TF demo) or log q(z|x) - log r(z) on
the training samples ("monte_carlo", the official JAX notebook). The posterior is diagonal, or
full-covariance (`covariance="full"`, the paper's K = 2 experiment). With `config.deterministic`,
the encoder outputs z = mean and there is no rate: an ordinary classifier, one member at beta = 0;
Table 1's baselines are that classifier with hidden-layer dropout, label smoothing or the
confidence penalty (hyperparameters, so sweepable).

Config entries read here: latent_dim, hidden_dims, deterministic, covariance, rate_estimator,
train_samples, eval_samples.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from vib_jax import losses, models, plots, tasks, train
from vib_jax.tasks import DataInfo, Hyperparameter, Task, TrainedRun

HYPERPARAMETERS = {
    "beta": Hyperparameter(0.0, ">= 0", lambda v: v >= 0, "weight of the rate, per nat"),
    "rate_budget": tasks.RATE_BUDGET,
    "dropout": Hyperparameter(
        0.0, "in [0, 1)", lambda v: 0 <= v < 1, "dropout rate of the encoder's hidden layers"
    ),
    "label_smoothing": Hyperparameter(
        0.0, "in [0, 1)", lambda v: 0 <= v < 1, "epsilon of the smoothed labels"
    ),
    "confidence_penalty": Hyperparameter(
        0.0, ">= 0", lambda v: v >= 0, "weight of -H(q(y|z)) in the loss (Pereyra et al. 2017)"
    ),
} | tasks.BETA_SCHEDULE_HYPERPARAMETERS
RATE_ESTIMATORS = ("closed_form", "monte_carlo")
MARGINALS = ("standard_normal", "mixture")
RATE_HYPERPARAMETERS = ("beta", "rate_budget", *tasks.BETA_SCHEDULE_HYPERPARAMETERS)
RESULT_COLUMNS = tuple(
    f"{split}_{name}"
    for split, names in (
        ("test", ("error_avg", "error_1", "error_mean")),
        ("train", ("error_avg", "error_1", "error_mean", "izx_bits", "izy_bits")),
        ("test", ("izx_bits", "izy_bits")),
    )
    for name in names
)


def validate_config(config) -> None:
    """Raises ValueError naming the first of the task's config entries out of its range."""
    tasks.check_positive_ints(config, ("latent_dim", "train_samples", "eval_samples"))
    tasks.check_widths(config)
    models.check_covariance(config.covariance)
    if config.rate_estimator not in RATE_ESTIMATORS:
        raise ValueError(
            f"rate_estimator must be one of {RATE_ESTIMATORS}, got {config.rate_estimator!r}."
        )
    if config.marginal not in MARGINALS:
        raise ValueError(f"marginal must be one of {MARGINALS}, got {config.marginal!r}.")
    stochastic_options = {
        "covariance": "diagonal",
        "rate_estimator": "closed_form",
        "marginal": "standard_normal",
    }
    for name, default in stochastic_options.items():
        if config.deterministic and config[name] != default:
            raise ValueError(
                f"{name}={config[name]!r} needs a stochastic encoder; deterministic has none "
                f"(use {name}={default!r})."
            )
    if config.marginal == "mixture":
        tasks.check_positive_ints(config, ("marginal_components",))
        if config.rate_estimator != "monte_carlo":
            raise ValueError(
                "rate_estimator must be 'monte_carlo' with marginal='mixture' (a KL to a mixture "
                f"has no closed form), got {config.rate_estimator!r}."
            )


def resolve_sweep(config, sweep: dict) -> dict:
    """The deterministic baseline has no rate, so it is one member at beta = 0 (whatever the
    betas); a sweep of the rate's other hyperparameters would train copies of one model: refused.
    Its regularisers (dropout, label smoothing, confidence penalty) may be swept."""
    if not config.deterministic:
        return sweep
    moot = sorted(name for name in sweep if name in RATE_HYPERPARAMETERS and name != "beta")
    if moot:
        raise ValueError(f"deterministic has no rate, so sweep.{moot[0]} does not apply to it.")
    return dict(sorted((sweep | {"beta": (0.0,)}).items()))


def model_from_config(config, num_classes: int) -> models.VIBClassifier:
    """The classifier the config describes."""
    return models.VIBClassifier(
        config.latent_dim,
        num_classes,
        tuple(config.hidden_dims),
        not config.deterministic,
        config.covariance,
        config.marginal_components if config.marginal == "mixture" else 0,
    )


def posterior_and_latents(model, params, batch: train.Batch, key, num_samples: int, dropout=None):
    """`(mean, scale, z)`: the posterior of each image (mean `[B, K]`, scale `[B, K]` or
    `[B, K, K]`) and S samples `[S, B, K]`, each example's noise from `fold_in(key, example_id)`.
    With `dropout` (a rate), the hidden layers drop units, each example's mask from its own key
    (derived from a second key split from `key`, so the posterior noise is the same either way)."""
    dropout_args = ()
    if dropout is not None:
        dropout_key = jax.random.split(key)[1]
        dropout_args = (dropout, train.per_example_keys(dropout_key, batch.example_ids))
    mean, scale = model.apply(params, batch.images, *dropout_args, method=model.encode)
    z = train.sample_latents(key, batch.example_ids, mean, scale, num_samples)
    return mean, scale, z


def rate(model, params, mean, scale, z) -> jax.Array:
    """`[B]` KL(q(z|x) || r(z)) in nats: in closed form for r = N(0, I), by Monte Carlo on the
    samples `z` `[S, B, K]` for a learned marginal; zero for the deterministic encoder."""
    if not model.stochastic:
        return jnp.zeros(mean.shape[:1])
    if model.marginal_components:
        return monte_carlo_rate(model, params, mean, scale, z)
    return losses.kl_to_standard_normal(mean, scale)


def monte_carlo_rate(model, params, mean, scale, z) -> jax.Array:
    """`[B]` log q(z|x) - log r(z) averaged over the samples `z` `[S, B, K]`, for the model's
    marginal r (N(0, I) or its learned mixture)."""
    marginal = lambda latents: model.apply(params, latents, method=model.marginal_log_prob)
    return losses.monte_carlo_rate(z, mean, scale, marginal)


def build(config, data: DataInfo) -> Task:
    """The VIB classifier's task functions for this config."""
    model = model_from_config(config, data.num_classes)
    optimizer = train.make_optimizer(config, data.steps_per_epoch)
    train_samples = config.train_samples if model.stochastic else 1
    monte_carlo = model.stochastic and config.rate_estimator == "monte_carlo"
    dropout = tasks.swept_above_zero(config, "dropout")  # else no masks are drawn
    # Else the plain penalty: a Monte-Carlo batch-mean rate below 0 still has its gradient.
    hinged = tasks.swept_above_zero(config, "rate_budget")

    def init(key):
        params_key, dummy_noise_key = jax.random.split(key)
        dummy_images = jnp.zeros((1, data.input_dim), jnp.float32)
        params = model.init(params_key, dummy_images, dummy_noise_key)
        return train.init_state(params, optimizer, tasks.dual_beta_variables(config))

    def loss_fn(params, batch, key, hparams, collectives):
        mean, scale, z = posterior_and_latents(
            model, params, batch, key, train_samples, hparams["dropout"] if dropout else None
        )
        logits = model.apply(params, z, method=model.decode)
        if monte_carlo:
            batch_rate = monte_carlo_rate(model, params, mean, scale, z)
        else:
            batch_rate = rate(model, params, mean, scale, z)
        return losses.vib_loss(
            logits,
            batch.labels,
            batch_rate,
            hparams["beta"],
            rate_budget=hparams["rate_budget"] if hinged else None,
            label_entropy=data.label_entropy,
            label_smoothing=hparams["label_smoothing"],
            confidence_penalty=hparams["confidence_penalty"],
            batch_mean=collectives.batch_mean,  # the hinge acts on the whole batch's mean rate
        )

    def evaluate(params, batch, key, hparams):
        del hparams
        mean, scale, z = posterior_and_latents(model, params, batch, key, config.eval_samples)
        logits = model.apply(params, z, method=model.decode)
        mean_logits = model.apply(params, mean[None], method=model.decode)[0]
        averaged_probs = jnp.mean(jax.nn.softmax(logits), axis=0)
        labels = batch.labels
        return {
            "error_avg": jnp.argmax(averaged_probs, -1) != labels,
            "error_1": jnp.argmax(logits[0], -1) != labels,
            "error_mean": jnp.argmax(mean_logits, -1) != labels,
            "cross_entropy": jnp.mean(losses.categorical_cross_entropy(logits, labels), axis=0),
            "rate": rate(model, params, mean, scale, z),
        }

    return Task(
        init=init,
        update=tasks.with_beta_schedules(
            train.gradient_update(loss_fn, optimizer), config, data.steps_per_epoch
        ),
        evaluate=evaluate,
        summarize=summarize,
        result_columns=RESULT_COLUMNS,
        result_row=result_row,
        progress=lambda test: f"{100 * float(test['error_avg']):.2f}%",
        figures=lambda run: figures(run, model),
        model=model,
    )


def summarize(means, chunks: train.EvalChunks):
    """Adds the information-plane bounds in bits (I(Z;X) <= rate, I(Z;Y) >= H(Y) - CE)."""
    izx, izy = losses.information_bounds(
        means["cross_entropy"], means["rate"], chunks.label_entropy
    )
    return means | {"izx_bound_bits": izx, "izy_bound_bits": izy}


def result_row(train_metrics, test_metrics) -> dict:
    """One member's results: errors in %, information bounds in bits."""
    row = {}
    for split, metrics in (("train", train_metrics), ("test", test_metrics)):
        for kind in ("avg", "1", "mean"):
            row[f"{split}_error_{kind}"] = 100.0 * float(metrics[f"error_{kind}"])
        row[f"{split}_izx_bits"] = float(metrics["izx_bound_bits"])
        row[f"{split}_izy_bits"] = float(metrics["izy_bound_bits"])
    return row


def covariance(mean: jax.Array, scale: jax.Array) -> jax.Array:
    """`[..., K, K]` covariances of posteriors with means `[..., K]` and stddevs `[..., K]` or
    Cholesky factors `[..., K, K]`."""
    if losses.is_cholesky_factor(mean, scale):
        return scale @ jnp.swapaxes(scale, -1, -2)
    return jnp.square(scale)[..., None] * jnp.eye(scale.shape[-1])


def decoder_entropy_grid(model, params, extent: float, size: int = 120):
    """`(z1 [G], z2 [G], H [G, G])`: the entropy (bits) of q(y|z) over a square grid of 2-D latents
    (`H[i, j]` at `(z1[j], z2[i])`)."""
    axis = jnp.linspace(-extent, extent, size)
    grid = jnp.stack(jnp.meshgrid(axis, axis), axis=-1).reshape(1, -1, 2)
    logits = model.apply(params, grid, method=model.decode)[0]
    entropy = losses.softmax_entropy(logits).reshape(size, size) / losses.LN2
    return np.asarray(axis), np.asarray(axis), np.asarray(entropy)


def posterior_figure(run: TrainedRun, model, path: str, num_images: int = 1000) -> str:
    """The paper's Fig. 2 for a 2-D bottleneck: the 95% ellipses of the first `num_images` test
    posteriors of each member of the first seed, over the entropy of its decoder."""
    images = jnp.asarray(run.test_images[:num_images])
    means, covariances, grids, titles = [], [], [], []
    for m, member in enumerate(run.members):
        if member["seed"] != run.members[0]["seed"]:
            continue
        params = run.member_params(m)
        mean, scale = model.apply(params, images, method=model.encode)
        cov = np.asarray(covariance(mean, scale))
        stddevs = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
        extent = float(np.percentile(np.abs(np.asarray(mean)) + 2.5 * stddevs, 99.5))
        means.append(np.asarray(mean))
        covariances.append(cov)
        grids.append(decoder_entropy_grid(model, params, extent))
        titles.append(f"seed {member['seed']}, beta = {member['beta']:g}")
    labels = run.test_labels[:num_images]
    return plots.posterior_ellipses(
        np.stack(means), np.stack(covariances), labels, titles, path, grids
    )


def marginal_figure(run: TrainedRun, model, path: str, num_images: int = 2000) -> str:
    """A learned marginal in a 2-D bottleneck: each member's mixture components (95% ellipses,
    line width by weight) over the posterior means of the first `num_images` test digits."""
    images = jnp.asarray(run.test_images[:num_images])
    latents, components, titles = [], [], []
    for m, member in enumerate(run.members):
        params = run.member_params(m)
        latents.append(np.asarray(model.apply(params, images, method=model.encode)[0]))
        components.append(tasks.marginal_components(model, params))
        titles.append(f"seed {member['seed']}, beta = {member['beta']:g}")
    labels = run.test_labels[:num_images]
    return plots.latent_scatter(np.stack(latents), labels, titles, path, components)


def figures(run: TrainedRun, model) -> list[str]:
    """Test error against beta, the information plane (the paper's Fig. 1), learning curves, and
    for a stochastic 2-D bottleneck the test posteriors as ellipses (the paper's Fig. 2)."""
    path = lambda name: os.path.join(run.workdir, name)
    paths = [
        plots.test_error_vs_beta(run.rows, list(HYPERPARAMETERS), path("test_error_vs_beta.png")),
        plots.information_plane(run.rows, path("information_plane.png")),
        plots.learning_curves(
            run.records, "test/error_avg", "test error (%)", path("learning_curves.png"), scale=100
        ),
    ]
    if model.latent_dim == 2 and model.stochastic:
        paths.append(posterior_figure(run, model, path("posteriors_k2.png")))
    if model.latent_dim == 2 and model.marginal_components:
        paths.append(marginal_figure(run, model, path("marginal_k2.png")))
    return paths + tasks.dual_beta_figures(run.records, path)
