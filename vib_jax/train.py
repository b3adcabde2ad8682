"""The engine's pure functions: any task's step made an epoch, its evaluation reduced over a split.

A task (`vib_jax.tasks`) supplies `update(state, batch, key, hparams, collectives) -> (state,
metrics)` and a per-example `evaluate`. This module wraps them: `make_train_step` adds the step's
noise key, the step count and the EMA of the params; `make_train_epoch` runs a whole epoch with
`jax.lax.scan`; `make_evaluate` reduces per-example metrics over a split with padding weights. None
of them knows whether it is vmapped over sweep members, sharded across devices or jitted:
`vib_jax.parallel` applies those transformations, and hands the functions a `Collectives` for the
device axis (or for none).

Randomness: a member's keys are functions of its seed and its swept hyperparameters only
(`member_keys`); the noise of each example is drawn from `fold_in(fold_in(noise_key, step),
example_id)` (`per_example_keys`), so it does not depend on how a batch is split across devices.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable, Mapping, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from vib_jax import losses

Params = Any
Hparams = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training. A pytree of arrays: stack it to sweep, replicate it
    to shard.

    Attributes:
      step: scalar int32, the number of updates applied.
      params: every network's params (a task with several networks keys them by name).
      opt_state: the optimizer state(s) of the params (one optimizer or a dict of them).
      ema_params: Polyak (exponential moving) average of `params`, used for evaluation; the engine
        updates it after every step.
      variables: the task's other state, updated by its own rule rather than an optimizer (e.g. the
        dual variable of a constrained objective); `()` when it has none.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    ema_params: Params
    variables: Any = ()


def init_state(params: Params, optimizer: optax.GradientTransformation, variables: Any = ()):
    """A fresh state: step 0, the optimizer's initial state, EMA params equal to the params."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=params,
        variables=variables,
    )


LR_SCHEDULES = ("staircase", "iwae")
OPTIMIZERS = ("adam", "sgd")


def learning_rate_schedule(
    learning_rate: float, decay_rate: float, decay_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
    """The VIB paper's schedule: `learning_rate * decay_rate ** floor(step / (decay_epochs *
    steps_per_epoch))`."""
    return optax.exponential_decay(
        init_value=learning_rate,
        transition_steps=decay_epochs * steps_per_epoch,
        decay_rate=decay_rate,
        staircase=True,
    )


def iwae_schedule(
    learning_rate: float, steps_per_epoch: int, num_stages: int = 8
) -> optax.Schedule:
    """Burda et al. (2016)'s schedule: stage i = 0..7 runs 3^i epochs at `learning_rate * 10^(-i/7)`
    (3,280 epochs in all), then the last rate stays."""
    boundaries, epochs = {}, 0
    for stage in range(num_stages - 1):
        epochs += 3**stage
        boundaries[epochs * steps_per_epoch] = 10.0 ** (-1.0 / 7.0)
    return optax.piecewise_constant_schedule(learning_rate, boundaries)


def make_schedule(
    config, steps_per_epoch: int, learning_rate: float | None = None
) -> optax.Schedule:
    """The learning-rate schedule `config.lr_schedule` names (one of `LR_SCHEDULES`), starting at
    `learning_rate` (default: `config.learning_rate`)."""
    initial = config.learning_rate if learning_rate is None else learning_rate
    if config.lr_schedule == "iwae":
        return iwae_schedule(initial, steps_per_epoch)
    return learning_rate_schedule(
        initial, config.lr_decay_rate, config.lr_decay_epochs, steps_per_epoch
    )


def make_optimizer(
    config, steps_per_epoch: int, learning_rate: float | None = None
) -> optax.GradientTransformation:
    """`config.optimizer` with the config's schedule: Adam with its b1, b2 and eps (the VIB paper:
    lr 1e-4, b1 = 0.5, b2 = 0.999), or plain SGD. `learning_rate` overrides the config's initial
    rate (e.g. for a second network)."""
    schedule = make_schedule(config, steps_per_epoch, learning_rate)
    if config.optimizer == "sgd":
        return optax.sgd(schedule)
    return optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)


class Batch(NamedTuple):
    """A batch: images `[B, D]` float32 in [-1, 1], labels `[B]` int32, each example's index
    `[B]`."""

    images: jax.Array
    labels: jax.Array
    example_ids: jax.Array


@dataclasses.dataclass(frozen=True)
class Collectives:
    """Reductions over the whole batch, whatever the devices it is split across.

    Under `jax.shard_map` with the batch split over `axis_name`, `mean` and `sum` reduce over the
    devices and `gather` concatenates every device's rows; with `axis_name=None` (one device, no
    shard_map) each is the identity. A task uses them where a quantity needs the global batch, e.g.
    an MMD between the batch's latents and prior samples: `collectives.gather(z)`.
    """

    axis_name: str | None = None

    def mean(self, tree):
        """The mean over devices of per-device values (means of equal-sized parts: the batch
        mean)."""
        return tree if self.axis_name is None else jax.lax.pmean(tree, self.axis_name)

    def batch_mean(self, x: jax.Array) -> jax.Array:
        """The mean over the whole batch of per-example values `[B_local, ...]` -> `[...]`."""
        return self.mean(jnp.mean(x, axis=0))

    def sum(self, tree):
        """The sum over devices."""
        return tree if self.axis_name is None else jax.lax.psum(tree, self.axis_name)

    def gather(self, x: jax.Array) -> jax.Array:
        """`[B_local, ...]` -> `[B, ...]`: every device's rows, in device order (the global
        batch)."""
        if self.axis_name is None:
            return x
        return jax.lax.all_gather(x, self.axis_name, axis=0, tiled=True)


Update = Callable[[TrainState, Batch, jax.Array, Hparams, Collectives], tuple[TrainState, Metrics]]
LossFn = Callable[[Params, Batch, jax.Array, Hparams, Collectives], tuple[jax.Array, Metrics]]


def gradient_update(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Update:
    """The common task update: one optimizer step on the gradient of a scalar loss.

    `loss_fn(params, batch, key, hparams, collectives) -> (loss, metrics)` returns the mean over the
    batch it sees. With the batch split over devices, this averages the loss and metrics over them
    before differentiating: the params are replicated, so the gradient of the average is the whole
    batch's gradient on every device (the transpose of the replication sums the devices' parts), and
    no gradient needs a collective of its own.
    """

    def averaged_loss(params, batch, key, hparams, collectives):
        return collectives.mean(loss_fn(params, batch, key, hparams, collectives))

    def update(state: TrainState, batch, key, hparams, collectives):
        grads, metrics = jax.grad(averaged_loss, has_aux=True)(
            state.params, batch, key, hparams, collectives
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(
            params=optax.apply_updates(state.params, updates), opt_state=opt_state
        ), metrics

    return update


def ema_step_size(ema_decay: float, num_updates: jax.Array, debias: bool) -> jax.Array:
    """The weight of the newest params in the EMA after `num_updates` >= 1 updates (scalar).

    Plain: `1 - ema_decay`. Zero-debiased (`tf.train.ExponentialMovingAverage(zero_debias=True)`,
    `optax.ema(debias=True)`): the average of the params `p_1..p_t` with weights proportional to
    `ema_decay^(t - i)`, i.e. `m_t / (1 - ema_decay^t)` with `m_t` the plain average started at 0.
    Kept directly (no extra state), it moves by `(1 - ema_decay) / (1 - ema_decay^t)`: 1 at the
    first update, `1 - ema_decay` after many. So a short run's EMA holds no trace of the initial
    params.
    """
    if not debias:
        return jnp.asarray(1.0 - ema_decay, jnp.float32)
    log_decay = math.log(ema_decay) if ema_decay > 0 else -math.inf  # in float64, then rounded
    step_size = (1.0 - ema_decay) / -jnp.expm1(num_updates.astype(jnp.float32) * log_decay)
    return jnp.minimum(step_size, 1.0)  # float32 rounds t = 1 to 1 + 1e-7: no negative weight


def make_train_step(
    update: Update, ema_decay: float, collectives: Collectives, ema_debias: bool = True
) -> Callable:
    """Builds `train_step(state, batch, noise_key, hparams) -> (state, metrics)` from a task's
    update.

    The update gets the step's key `fold_in(noise_key, state.step)`; the engine then counts the step
    and moves the EMA params towards the new params by `ema_step_size` (zero-debiased unless
    `ema_debias` is False; `ema_decay = 0` keeps the EMA equal to the params).
    """

    def train_step(state: TrainState, batch: Batch, noise_key: jax.Array, hparams: Hparams):
        step_key = jax.random.fold_in(noise_key, state.step)
        new_state, metrics = update(state, batch, step_key, hparams, collectives)
        num_updates = state.step + 1
        ema_params = optax.incremental_update(
            new_state.params,
            state.ema_params,
            step_size=ema_step_size(ema_decay, num_updates, ema_debias),
        )
        return new_state.replace(step=num_updates, ema_params=ema_params), metrics

    return train_step


def make_train_epoch(train_step: Callable) -> Callable:
    """Builds `train_epoch(state, images, labels, batch_indices, noise_key, hparams) ->
    (state, metrics)`.

    One `jax.lax.scan` over the rows of `batch_indices` (`[num_batches, B]` int32 indices into
    `images` `[N, D]` and `labels` `[N]`): the whole epoch is one program, with no return to the
    host. Metrics are the averages over the epoch's steps.
    """

    def train_epoch(state, images, labels, batch_indices, noise_key, hparams):
        def body(state, indices):
            batch = Batch(images[indices], labels[indices], indices)
            return train_step(state, batch, noise_key, hparams)

        state, step_metrics = jax.lax.scan(body, state, batch_indices)
        return state, jax.tree_util.tree_map(jnp.mean, step_metrics)

    return train_epoch


def per_example_keys(key: jax.Array, example_ids: jax.Array) -> jax.Array:
    """`[B]` keys `fold_in(key, example_id)`: an example's noise whichever device or chunk it is
    in."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_ids)


def sample_latents(
    key: jax.Array, example_ids: jax.Array, mean: jax.Array, scale: jax.Array, num_samples: int
) -> jax.Array:
    """Posterior samples `[S, B, K]` with each example's noise drawn from
    `fold_in(key, example_id)`.

    Args:
      key: the step's key.
      example_ids: `[B]` int32 indices of the examples in their split.
      mean: `[B, K]` posterior means.
      scale: `[B, K]` posterior stddevs, or Cholesky factors `[B, K, K]` (full covariance).
      num_samples: S.
    """
    per_example = jax.vmap(losses.reparameterize, in_axes=(0, 0, 0, None), out_axes=1)
    return per_example(per_example_keys(key, example_ids), mean, scale, num_samples)


class MemberKeys(NamedTuple):
    """A sweep member's keys, each a function of its seed (and, for `noise`, its swept hparams).

    init: its initial params; shuffle: its data order (folded with the epoch); noise: its training
    noise (folded with the step, then the example); eval: its evaluation noise.
    """

    init: jax.Array
    shuffle: jax.Array
    noise: jax.Array
    eval: jax.Array


# The engine before tasks knew beta alone and folded its value only into the noise key. Beta keeps
# that key, so every beta sweep recorded since draws the noise it drew.
_FOLDED_BY_VALUE_ONLY = "beta"


def member_keys(
    seed: int, hparams: Mapping[str, float], defaults: Mapping[str, float]
) -> MemberKeys:
    """The keys of the member with this seed and these hyperparameters (`defaults`: the task's).

    Each hyperparameter that differs from its default is folded into the noise key, in the order
    of the names: the CRC-32 of its name (but for beta's, `_FOLDED_BY_VALUE_ONLY`), then the
    float32 bits of its value. So a member's run depends on its values alone: it is the same alone
    or inside any sweep, wherever it stands in the lists, whichever other lists the sweep has; and
    two members that differ in a hyperparameter, or in which one takes a value, draw independent
    noise.
    """
    init, shuffle, noise, evaluation = jax.random.split(jax.random.key(seed), 4)
    for name in sorted(n for n in hparams if hparams[n] != defaults[n]):
        if name != _FOLDED_BY_VALUE_ONLY:
            noise = jax.random.fold_in(noise, zlib.crc32(name.encode()))
        value = jnp.asarray(hparams[name], jnp.float32)
        noise = jax.random.fold_in(noise, jax.lax.bitcast_convert_type(value, jnp.uint32))
    return MemberKeys(init, shuffle, noise, evaluation)


def stack(trees) -> Any:
    """Stacks equally-shaped pytrees along a new leading sweep axis."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


class EvalChunks(NamedTuple):
    """A split cut into equal chunks for evaluation, padded at the end.

    images `[C, M, D]`, labels `[C, M]`, example_ids `[C, M]`, weights `[C, M]` (1 real, 0 padding),
    and label_entropy (scalar, nats), the entropy of the split's empirical label distribution.
    """

    images: jax.Array
    labels: jax.Array
    example_ids: jax.Array
    weights: jax.Array
    label_entropy: jax.Array


def label_entropy(labels: jax.Array, num_classes: int) -> jax.Array:
    """The entropy (nats) of the empirical distribution of `labels` `[N]` int in
    [0, num_classes)."""
    frequencies = jnp.bincount(labels, length=num_classes) / labels.shape[0]
    return -jnp.sum(jax.scipy.special.xlogy(frequencies, frequencies))


def chunk_split(
    images: jax.Array, labels: jax.Array, chunk_size: int, num_classes: int
) -> EvalChunks:
    """Pads a split `[N, D]`, `[N]` to a multiple of `chunk_size` and reshapes it into
    `EvalChunks`."""
    num_examples = images.shape[0]
    num_chunks = -(-num_examples // chunk_size)
    padding = num_chunks * chunk_size - num_examples

    def pad_and_chunk(array):
        padded = jnp.pad(array, [(0, padding)] + [(0, 0)] * (array.ndim - 1))
        return padded.reshape(num_chunks, chunk_size, *array.shape[1:])

    example_ids = jnp.arange(num_examples, dtype=jnp.int32)
    weights = jnp.ones(num_examples, jnp.float32)
    chunks = map(pad_and_chunk, (images, labels, example_ids, weights))
    return EvalChunks(*chunks, label_entropy(labels, num_classes))


def make_evaluate(
    per_example: Callable[[Params, Batch, jax.Array, Hparams], Metrics],
    summarize: Callable[[Metrics, EvalChunks], Metrics],
    collectives: Collectives,
) -> Callable:
    """Builds `evaluate(params, chunks: EvalChunks, key, hparams) -> metrics` for one split.

    `per_example(params, batch, key, hparams)` returns metrics of shape `[B, ...]` (e.g. `[B]`, or
    one-hot rows `[B, C]` whose mean is a distribution); their means over the split's real
    examples (padding weighs 0), of shape `[...]`, go through `summarize(means, chunks)`, which
    may add derived metrics (e.g. bounds in bits) and must return scalars only. Chunks run one
    after another (`jax.lax.map`); with the chunks split over devices, the sums are added over
    them.
    """

    def chunk_sums(params, chunk, key, hparams):
        images, labels, example_ids, weights = chunk
        values = per_example(params, Batch(images, labels, example_ids), key, hparams)
        sums = {name: jnp.tensordot(weights, value, axes=1) for name, value in values.items()}
        return sums | {"count": jnp.sum(weights)}

    def evaluate(params, chunks: EvalChunks, key, hparams):
        data = (chunks.images, chunks.labels, chunks.example_ids, chunks.weights)
        per_chunk = jax.lax.map(lambda chunk: chunk_sums(params, chunk, key, hparams), data)
        totals = collectives.sum(
            jax.tree_util.tree_map(lambda sums: jnp.sum(sums, axis=0), per_chunk)
        )
        means = {name: value / totals["count"] for name, value in totals.items() if name != "count"}
        summary = summarize(means, chunks)
        shaped = {name: jnp.shape(value) for name, value in summary.items() if jnp.ndim(value)}
        if shaped:
            raise ValueError(f"summarize must return scalars only, got shapes {shaped}.")
        return summary

    return evaluate
