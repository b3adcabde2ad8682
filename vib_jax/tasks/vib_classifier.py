"""The VIB classifier (Alemi et al. 2017) and its deterministic baseline, as a task.

Objective: E[-log q(y|z)] + beta * max(E[KL(q(z|x) || N(0, I))] - C, 0), with the closed-form KL on
the batch and S posterior samples per example (`losses.vib_loss`). C = 0 (the default) is the plain
penalty beta * rate, since the closed-form KL is never negative; C > 0 is the hinge ("information
budget"). With `config.deterministic`, the encoder outputs z = mean and there is no rate: an
ordinary classifier, one member at beta = 0.

Config entries read here: latent_dim, hidden_dims, deterministic, train_samples, eval_samples.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from vib_jax import losses, models, plots, tasks, train
from vib_jax.tasks import DataInfo, Hyperparameter, Task, TrainedRun

HYPERPARAMETERS = {
    "beta": Hyperparameter(0.0, ">= 0", lambda v: v >= 0, "weight of the rate, per nat"),
    "rate_budget": Hyperparameter(
        0.0, ">= 0", lambda v: v >= 0, "C (nats): the rate is free up to C, then costs beta per nat"
    ),
}
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


def resolve_sweep(config, sweep: dict) -> dict:
    """The deterministic baseline has no rate term, so it is one member at beta = 0 (whatever the
    betas); a sweep of its other hyperparameters would train copies of one model: refused."""
    if not config.deterministic:
        return sweep
    others = sorted(name for name in sweep if name != "beta")
    if others:
        raise ValueError(f"deterministic has no rate, so sweep.{others[0]} does not apply to it.")
    return {"beta": (0.0,)}


def model_from_config(config, num_classes: int) -> models.VIBClassifier:
    """The classifier the config describes."""
    return models.VIBClassifier(
        config.latent_dim, num_classes, tuple(config.hidden_dims), not config.deterministic
    )


def posterior_and_logits(model, params, batch: train.Batch, key, num_samples: int):
    """`(mean, stddev, logits)`: the posterior `[B, K]` of each image and the logits `[S, B, C]` of
    S samples, each example's noise from `fold_in(key, example_id)`."""
    mean, stddev = model.apply(params, batch.images, method=model.encode)
    z = train.sample_latents(key, batch.example_ids, mean, stddev, num_samples)
    return mean, stddev, model.apply(params, z, method=model.decode)


def rate(model, mean, stddev) -> jax.Array:
    """`[B]` KL(q(z|x) || N(0, I)) in nats; zero for the deterministic encoder."""
    return losses.kl_divergence(mean, stddev) if model.stochastic else jnp.zeros(mean.shape[:1])


def build(config, data: DataInfo) -> Task:
    """The VIB classifier's task functions for this config."""
    model = model_from_config(config, data.num_classes)
    optimizer = train.make_optimizer(config, data.steps_per_epoch)
    train_samples = config.train_samples if model.stochastic else 1

    def init(key):
        params_key, dummy_noise_key = jax.random.split(key)
        dummy_images = jnp.zeros((1, data.input_dim), jnp.float32)
        return train.init_state(model.init(params_key, dummy_images, dummy_noise_key), optimizer)

    def loss_fn(params, batch, key, hparams, collectives):
        del collectives  # every term is a per-example mean
        mean, stddev, logits = posterior_and_logits(model, params, batch, key, train_samples)
        return losses.vib_loss(
            logits,
            batch.labels,
            rate(model, mean, stddev),
            hparams["beta"],
            rate_budget=hparams["rate_budget"],
            label_entropy=data.label_entropy,
        )

    def evaluate(params, batch, key, hparams):
        del hparams
        mean, stddev, logits = posterior_and_logits(model, params, batch, key, config.eval_samples)
        mean_logits = model.apply(params, mean[None], method=model.decode)[0]
        averaged_probs = jnp.mean(jax.nn.softmax(logits), axis=0)
        labels = batch.labels
        return {
            "error_avg": jnp.argmax(averaged_probs, -1) != labels,
            "error_1": jnp.argmax(logits[0], -1) != labels,
            "error_mean": jnp.argmax(mean_logits, -1) != labels,
            "cross_entropy": jnp.mean(losses.categorical_cross_entropy(logits, labels), axis=0),
            "rate": rate(model, mean, stddev),
        }

    return Task(
        init=init,
        update=train.gradient_update(loss_fn, optimizer),
        evaluate=evaluate,
        summarize=summarize,
        result_columns=RESULT_COLUMNS,
        result_row=result_row,
        progress=lambda test: f"{100 * float(test['error_avg']):.2f}%",
        figures=figures,
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


def figures(run: TrainedRun) -> list[str]:
    """Test error against beta, the information plane (the paper's Fig. 1) and learning curves."""
    path = lambda name: os.path.join(run.workdir, name)
    return [
        plots.test_error_vs_beta(run.rows, list(HYPERPARAMETERS), path("test_error_vs_beta.png")),
        plots.information_plane(run.rows, path("information_plane.png")),
        plots.learning_curves(
            run.records, "test/error_avg", "test error (%)", path("learning_curves.png"), scale=100
        ),
    ]
