"""Training and evaluation of the VIB classifier as pure functions, ready to be transformed.

`make_train_step` builds one pure step `(state, batch, noise_key, beta) -> (state, metrics)`;
`make_train_epoch` runs a whole epoch of it with `jax.lax.scan`; `make_evaluate` computes a split's
errors and information-plane bounds. None of them knows whether it is vmapped over a sweep of betas,
sharded across devices (they take an optional `axis_name` to average gradients over) or jitted:
`vib_jax.parallel` applies those transformations.

Randomness: the posterior noise of each example is drawn from `fold_in(fold_in(noise_key, step), example_id)`,
so it depends on which example is seen at which step, not on how a batch is split across devices.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from vib_jax import losses, models

Params = Any


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training. A pytree of arrays: stack it to sweep, replicate it to shard.

    Attributes:
      step: scalar int32, the number of optimizer updates applied.
      params: the model's params.
      opt_state: the optimizer's state.
      ema_params: Polyak (exponential moving) average of `params`, used for evaluation.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    ema_params: Params


class Batch(NamedTuple):
    """A training batch: images `[B, D]` float32, labels `[B]` int32, and each example's index `[B]` int32."""

    images: jax.Array
    labels: jax.Array
    example_ids: jax.Array


def learning_rate_schedule(
    learning_rate: float, decay_rate: float, decay_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
    """The paper's schedule: `learning_rate * decay_rate ** floor(step / (decay_epochs * steps_per_epoch))`."""
    return optax.exponential_decay(
        init_value=learning_rate,
        transition_steps=decay_epochs * steps_per_epoch,
        decay_rate=decay_rate,
        staircase=True,
    )


def make_optimizer(schedule: optax.Schedule, b1: float, b2: float) -> optax.GradientTransformation:
    """Adam with the given learning-rate schedule (the paper: b1=0.5, b2=0.999)."""
    return optax.adam(schedule, b1=b1, b2=b2)


def create_train_state(
    model: models.VIBClassifier, optimizer: optax.GradientTransformation, init_key: jax.Array, input_dim: int
) -> TrainState:
    """A fresh state: params from `init_key`, zero optimizer moments, EMA params equal to the params."""
    params_key, dummy_noise_key = jax.random.split(init_key)
    params = model.init(params_key, jnp.zeros((1, input_dim), jnp.float32), dummy_noise_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), ema_params=params)


def stack_states(state: TrainState, num_members: int) -> TrainState:
    """Copies one state `num_members` times along a new leading sweep axis: every beta starts alike."""
    return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (num_members, *jnp.shape(leaf))), state)


def member_noise_key(noise_key: jax.Array, beta: jax.Array) -> jax.Array:
    """The noise stream of the sweep member with this beta: a function of the seed and beta's value only.

    Keying by the float32 bits of beta makes a beta's run the same whether it trains alone or inside a
    sweep, wherever it stands in the list of betas.
    """
    beta_bits = jax.lax.bitcast_convert_type(jnp.asarray(beta, jnp.float32), jnp.uint32)
    return jax.random.fold_in(noise_key, beta_bits)


def sample_latents(
    key: jax.Array, example_ids: jax.Array, mean: jax.Array, stddev: jax.Array, num_samples: int
) -> jax.Array:
    """Posterior samples `[S, B, K]` with each example's noise drawn from `fold_in(key, example_id)`.

    Args:
      key: the step's key.
      example_ids: `[B]` int32 indices of the examples in their split.
      mean, stddev: `[B, K]` posterior moments.
      num_samples: S.
    """
    example_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_ids)
    per_example = jax.vmap(losses.reparameterize, in_axes=(0, 0, 0, None), out_axes=1)
    return per_example(example_keys, mean, stddev, num_samples)


def make_train_step(
    model: models.VIBClassifier,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float,
    num_samples: int,
    label_entropy: float,
    rate_budget: float | None = None,
    axis_name: str | None = None,
) -> Callable[[TrainState, Batch, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_step(state, batch, noise_key, beta) -> (state, metrics)`.

    The loss is `vib_jax.losses.vib_loss` on `num_samples` posterior samples per example (the rate is the
    closed-form KL to N(0, I); a deterministic model has no rate). With `axis_name`, the loss and metrics
    are averaged over that mapped axis of a `shard_map` whose params are replicated (data parallelism):
    the update equals the one on the whole batch.
    Metrics are those of `vib_loss`, all scalars.
    """

    def loss_fn(params, batch: Batch, step_key, beta):
        mean, stddev = model.apply(params, batch.images, method=model.encode)
        z = sample_latents(step_key, batch.example_ids, mean, stddev, num_samples)
        logits = model.apply(params, z, method=model.decode)
        rate = losses.kl_divergence(mean, stddev) if model.stochastic else jnp.zeros(mean.shape[:1])
        loss, metrics = losses.vib_loss(
            logits, batch.labels, rate, beta, rate_budget=rate_budget, label_entropy=label_entropy
        )
        if axis_name is not None:
            # The mean over devices of the per-device means is the whole batch's mean. The params are
            # replicated, so differentiating it gives the whole batch's gradient on every device (the
            # transpose of the replication sums the devices' contributions): no pmean of gradients.
            loss, metrics = jax.lax.pmean((loss, metrics), axis_name)
        return loss, metrics

    def train_step(state: TrainState, batch: Batch, noise_key: jax.Array, beta: jax.Array):
        step_key = jax.random.fold_in(noise_key, state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, step_key, beta)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = optax.incremental_update(params, state.ema_params, step_size=1.0 - ema_decay)
        return TrainState(state.step + 1, params, opt_state, ema_params), metrics

    return train_step


def make_train_epoch(train_step) -> Callable:
    """Builds `train_epoch(state, images, labels, batch_indices, noise_key, beta) -> (state, metrics)`.

    One `jax.lax.scan` over the rows of `batch_indices` (`[num_batches, B]` int32 indices into `images`
    `[N, D]` and `labels` `[N]`): the whole epoch is one program, with no return to the host. Metrics are
    the averages over the epoch's steps.
    """

    def train_epoch(state, images, labels, batch_indices, noise_key, beta):
        def body(state, indices):
            return train_step(state, Batch(images[indices], labels[indices], indices), noise_key, beta)

        state, step_metrics = jax.lax.scan(body, state, batch_indices)
        return state, jax.tree_util.tree_map(jnp.mean, step_metrics)

    return train_epoch


class EvalChunks(NamedTuple):
    """A split cut into equal chunks for evaluation, padded at the end.

    images `[C, M, D]`, labels `[C, M]`, example_ids `[C, M]`, weights `[C, M]` (1 real, 0 padding), and
    label_entropy (scalar, nats), the entropy of the split's empirical label distribution.
    """

    images: jax.Array
    labels: jax.Array
    example_ids: jax.Array
    weights: jax.Array
    label_entropy: jax.Array


def chunk_split(images: jax.Array, labels: jax.Array, chunk_size: int, num_classes: int) -> EvalChunks:
    """Pads a split `[N, D]`, `[N]` to a multiple of `chunk_size` and reshapes it into `EvalChunks`."""
    num_examples = images.shape[0]
    num_chunks = -(-num_examples // chunk_size)
    padding = num_chunks * chunk_size - num_examples

    def pad_and_chunk(array):
        padded = jnp.pad(array, [(0, padding)] + [(0, 0)] * (array.ndim - 1))
        return padded.reshape(num_chunks, chunk_size, *array.shape[1:])

    example_ids = jnp.arange(num_examples, dtype=jnp.int32)
    weights = jnp.ones(num_examples, jnp.float32)
    label_frequencies = jnp.bincount(labels, length=num_classes) / num_examples
    label_entropy = -jnp.sum(jax.scipy.special.xlogy(label_frequencies, label_frequencies))
    return EvalChunks(*map(pad_and_chunk, (images, labels, example_ids, weights)), label_entropy)


def make_evaluate(model: models.VIBClassifier, num_samples: int, axis_name: str | None = None) -> Callable:
    """Builds `evaluate(params, chunks: EvalChunks, key) -> metrics` for one split.

    Metrics (scalars): `error_avg` (the softmax averaged over `num_samples` posterior samples, the paper's
    number), `error_1` (one sample), `error_mean` (z = mean), `cross_entropy` and `rate` (nats, per
    example, averaged), and the information-plane bounds `izx_bound_bits` and `izy_bound_bits`. With
    `axis_name`, each device evaluates its part of every chunk and the sums are added over that axis.
    """

    def chunk_sums(params, images, labels, example_ids, weights, key):
        mean, stddev = model.apply(params, images, method=model.encode)
        z = sample_latents(key, example_ids, mean, stddev, num_samples)
        logits = model.apply(params, z, method=model.decode)
        mean_logits = model.apply(params, mean[None], method=model.decode)[0]
        averaged_probs = jnp.mean(jax.nn.softmax(logits), axis=0)
        per_example = {
            "error_avg": jnp.argmax(averaged_probs, -1) != labels,
            "error_1": jnp.argmax(logits[0], -1) != labels,
            "error_mean": jnp.argmax(mean_logits, -1) != labels,
            "cross_entropy": jnp.mean(losses.categorical_cross_entropy(logits, labels), axis=0),
            "rate": losses.kl_divergence(mean, stddev) if model.stochastic else jnp.zeros_like(weights),
        }
        sums = {name: jnp.sum(weights * value) for name, value in per_example.items()}
        return sums | {"count": jnp.sum(weights)}

    def evaluate(params, chunks: EvalChunks, key):
        data = (chunks.images, chunks.labels, chunks.example_ids, chunks.weights)
        per_chunk = jax.lax.map(lambda chunk: chunk_sums(params, *chunk, key), data)
        totals = jax.tree_util.tree_map(lambda sums: jnp.sum(sums, axis=0), per_chunk)
        if axis_name is not None:
            totals = jax.lax.psum(totals, axis_name)
        metrics = {name: value / totals["count"] for name, value in totals.items() if name != "count"}
        izx, izy = losses.information_bounds(metrics["cross_entropy"], metrics["rate"], chunks.label_entropy)
        return metrics | {"izx_bound_bits": izx, "izy_bound_bits": izy}

    return evaluate
