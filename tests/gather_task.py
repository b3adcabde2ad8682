"""A task outside `vib_jax.tasks` (loaded by its dotted path) whose loss needs the whole batch.

The VIB classifier's loss plus `weight * ||mean over the global batch of z||^2`: the squared norm of
a batch mean is not the mean of the devices' squared norms, so a device that saw only its own rows
would get another loss and gradient. `collectives.gather` gives it the global batch. Used by
tests/test_parallel.py to check that 8 devices train as 1.
"""

import dataclasses

import jax.numpy as jnp

from vib_jax import losses, train
from vib_jax.tasks import Hyperparameter, vib_classifier

HYPERPARAMETERS = vib_classifier.HYPERPARAMETERS | {
    "weight": Hyperparameter(1.0, ">= 0", lambda v: v >= 0, "weight of the batch-mean penalty"),
}
validate_config = vib_classifier.validate_config


def build(config, data):
    task = vib_classifier.build(config, data)
    model = vib_classifier.model_from_config(config, data.num_classes)
    optimizer = train.make_optimizer(config, data.steps_per_epoch)

    def loss_fn(params, batch, key, hparams, collectives):
        mean, stddev, z = vib_classifier.posterior_and_latents(model, params, batch, key, 1)
        logits = model.apply(params, z, method=model.decode)
        loss, metrics = losses.vib_loss(
            logits, batch.labels, losses.kl_divergence(mean, stddev), hparams["beta"]
        )
        batch_mean = jnp.mean(collectives.gather(mean), axis=0)
        penalty = hparams["weight"] * jnp.sum(jnp.square(batch_mean))
        return loss + penalty, metrics | {"batch_mean_penalty": penalty}

    return dataclasses.replace(task, update=train.gradient_update(loss_fn, optimizer))
