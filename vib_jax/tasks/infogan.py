"""InfoGAN (Chen et al. 2016) on MNIST as a task: a GAN whose generator also maximises a
variational lower bound L_I on the mutual information between some of its latent codes and its
images, read back by a recognition network Q that shares the discriminator's body.

Latents per generated image: noise ~ Uniform[-1, 1]^`noise_dim`, a categorical code
c ~ Uniform{0..`categorical_dim`-1} and `continuous_dim` codes ~ Uniform[-1, 1] (the paper's MNIST
set-up: 62, 10 and 2; the official code's uniform noise). Objectives:

- discriminator and Q: `-log D(x) - log(1 - D(G(z, c))) - lambda L_I`;
- generator: the non-saturating `-log D(G(z, c)) - lambda L_I`;

with L_I = `info_weight` * (log Q(c | x) + log C) + `continuous_info_weight` * (log N(c_cont;
Q's means, 1) + K_c log 2) on a generated batch (`losses.categorical_information_bound`,
`losses.uniform_code_information_bound`; Q's continuous stddev fixed at 1 as the official code's
`fix_std`; so the continuous part is at most K_c (log 2 - log(2 pi) / 2), -0.33 bits per code: a
training signal, not a number to compare with K_c bits). Adam with b1 = 0.5; the discriminator at
`learning_rate`, the generator at `generator_learning_rate` (the official code: 2e-4 and 1e-3).
`player_updates` says how the players step: "simultaneous" (one gradient of the sum of both
losses on one batch of latents, each loss seeing the other player's params as constants) or
"alternating" (the official code: a D and Q step, then a G step against the updated D and Q on
fresh latents; one more generator pass per step). Batch norm trains on the statistics of the
global batch (over every device), so 8 devices train as 1; its running averages, used in
evaluation, are the generator's batch's for G and the data's for D and Q (the generated batch's
are not kept).

Evaluation (the evaluated params: set `ema_decay = 0`, as the config does, for the trained weights
with their own running averages), per example of a real split: D's probability that the image is
data; Q's categorical code of the image, against its label, whose best one-to-one matching gives
the code's error as a classifier (the paper: ~5% on MNIST); and one generated image per example id
(latents from the evaluation key), on which D's probability and L_I are measured, in bits (its
categorical part is at most H(c) = log2 C). The generated images are alike for both splits: their
metrics describe the generator, whichever split's rows they sit in.

Config entries read here: categorical_dim, continuous_dim, noise_dim, hidden_dim, channels,
q_hidden_dim, generator_learning_rate, player_updates.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from vib_jax import data, losses, metrics, models, plots, tasks, train
from vib_jax.tasks import DataInfo, Hyperparameter, Task, TrainedRun

HYPERPARAMETERS = {
    "info_weight": Hyperparameter(
        1.0, ">= 0", lambda v: v >= 0, "lambda: weight of the categorical code's L_I"
    ),
    "continuous_info_weight": Hyperparameter(
        1.0, ">= 0", lambda v: v >= 0, "weight of the continuous codes' L_I"
    ),
}
RESULT_COLUMNS = (
    "test_code_error",
    "test_info_categorical_bits",
    "code_entropy_bits",
    "test_info_continuous_bits",
    "test_real_probability",
    "test_fake_probability",
    "train_code_error",
)
# How the players step: both on one gradient of their summed losses, or D and Q then G on fresh
# latents (the official code).
PLAYER_UPDATES = ("simultaneous", "alternating")
# The per-example metric holding one-hot rows of (code, label) pairs: its mean is their joint
# distribution, which `summarize` turns into the code's error.
_JOINT = "code_label_joint"


def validate_config(config) -> None:
    """Raises ValueError naming the first of the task's config entries out of its range."""
    tasks.check_positive_ints(
        config, ("categorical_dim", "noise_dim", "hidden_dim", "q_hidden_dim")
    )
    tasks.check_widths(config, "channels")
    if len(config.channels) != 2:
        raise ValueError(f"channels must be two widths, got {config.channels!r}.")
    if not (tasks.is_int(config.continuous_dim) and config.continuous_dim >= 0):
        raise ValueError(f"continuous_dim must be an integer >= 0, got {config.continuous_dim!r}.")
    if config.player_updates not in PLAYER_UPDATES:
        raise ValueError(
            f"player_updates must be one of {PLAYER_UPDATES}, got {config.player_updates!r}."
        )
    rate = config.generator_learning_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(
            f"generator_learning_rate must be > 0, got {config.generator_learning_rate!r}."
        )


class GeneratorLatents(NamedTuple):
    """One generated image's latents per row: noise `[B, N]`, categorical codes `[B]` int32,
    continuous codes `[B, K_c]`."""

    noise: jax.Array
    codes: jax.Array
    continuous: jax.Array


def sample_generator_latents(
    key: jax.Array, example_ids: jax.Array, noise_dim: int, num_codes: int, continuous_dim: int
) -> GeneratorLatents:
    """The generator's latents for `[B]` example ids, each row's from `fold_in(key, example_id)`
    (the same on any device): noise and continuous codes ~ Uniform[-1, 1], codes ~
    Uniform{0..C-1}."""

    def draw(example_key):
        noise_key, code_key, continuous_key = jax.random.split(example_key, 3)
        return GeneratorLatents(
            jax.random.uniform(noise_key, (noise_dim,), minval=-1.0, maxval=1.0),
            jax.random.randint(code_key, (), 0, num_codes),
            jax.random.uniform(continuous_key, (continuous_dim,), minval=-1.0, maxval=1.0),
        )

    return jax.vmap(draw)(train.per_example_keys(key, example_ids))


def generator_inputs(latents: GeneratorLatents, num_codes: int) -> jax.Array:
    """`[B, N + C + K_c]`: noise, the one-hot code and the continuous codes side by side."""
    one_hot = jax.nn.one_hot(latents.codes, num_codes)
    return jnp.concatenate([latents.noise, one_hot, latents.continuous], axis=-1)


def player_labels(variables) -> dict:
    """Which optimizer moves each leaf of the InfoGAN's variables: "generator", "discriminator"
    (with Q) or "statistics" (batch-norm averages, set by the forward pass, not by gradients)."""
    params = {
        player: jax.tree_util.tree_map(lambda _, p=player: p, tree)
        for player, tree in variables["params"].items()
    }
    statistics = jax.tree_util.tree_map(lambda _: "statistics", variables["batch_stats"])
    return {"params": params, "batch_stats": statistics}


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The config's optimizer per player: the discriminator (and Q) at `learning_rate`, the
    generator at `generator_learning_rate`; batch statistics untouched."""
    return optax.multi_transform(
        {
            "generator": train.make_optimizer(
                config, steps_per_epoch, config.generator_learning_rate
            ),
            "discriminator": train.make_optimizer(config, steps_per_epoch),
            "statistics": optax.set_to_zero(),
        },
        player_labels,
    )


def player_step(optimizer, player: str, grads, opt_state, variables):
    """`(variables, opt_state)` after the step of one player ("generator" or "discriminator") of
    `make_optimizer`'s optimizer: only that player's params move, and only its optimizer state
    (the other's Adam moments and step count are kept, not decayed by a zero gradient)."""
    updates, stepped = optimizer.update(grads, opt_state, variables)
    params = variables["params"] | {
        player: optax.apply_updates(variables["params"][player], updates["params"][player])
    }
    inner = dict(opt_state.inner_states) | {player: stepped.inner_states[player]}
    return variables | {"params": params}, optax.MultiTransformState(inner)


def code_information_bounds(outputs: models.DiscriminatorOutput, latents: GeneratorLatents):
    """`(categorical, continuous)` L_I per generated image `[B]`, in nats."""
    categorical = losses.categorical_information_bound(outputs.code_logits, latents.codes)
    continuous = losses.uniform_code_information_bound(outputs.continuous_means, latents.continuous)
    return categorical, continuous


def build(config, data_info: DataInfo) -> Task:
    """The InfoGAN's task functions for this config."""
    model = models.InfoGAN(
        config.categorical_dim,
        config.continuous_dim,
        config.noise_dim,
        data.IMAGE_SHAPE,
        config.hidden_dim,
        tuple(config.channels),
        config.q_hidden_dim,
    )
    optimizer = make_optimizer(config, data_info.steps_per_epoch)
    num_codes = config.categorical_dim
    latents_of = lambda key, ids: sample_generator_latents(
        key, ids, config.noise_dim, num_codes, config.continuous_dim
    )

    def init(key):
        latent_width = config.noise_dim + num_codes + config.continuous_dim
        variables = model.init(key, jnp.zeros((2, latent_width), jnp.float32))
        return train.init_state(variables, optimizer)

    def player_losses(variables, batch, latents, hparams, collectives):
        """`(d_loss, g_loss, metrics, batch_stats)` on one batch of data and `latents`: D and Q's
        loss, whose gradient reaches only their params (the generated images are constants), and
        G's, whose gradient reaches only G's (D and Q frozen)."""
        net = model.clone(batch_axis_name=collectives.axis_name)
        params, frozen = variables["params"], jax.lax.stop_gradient(variables["params"])

        def run(params, stats, inputs, method):
            return net.apply(
                {"params": params, "batch_stats": stats},
                inputs,
                True,
                method=method,
                mutable=["batch_stats"],
            )

        fake, stats = run(
            params, variables["batch_stats"], generator_inputs(latents, num_codes), net.generate
        )
        # D's running statistics are the data's: evaluation normalises real digits with them.
        real_out, stats = run(params, stats["batch_stats"], batch.images, net.discriminate)
        fake_out, _ = run(
            params, stats["batch_stats"], jax.lax.stop_gradient(fake), net.discriminate
        )
        # The generator's view: D and Q frozen.
        fake_seen, _ = run(frozen, stats["batch_stats"], fake, net.discriminate)

        def information(outputs):
            categorical, continuous = code_information_bounds(outputs, latents)
            weighted = (
                hparams["info_weight"] * categorical
                + hparams["continuous_info_weight"] * continuous
            )
            return jnp.mean(weighted), jnp.mean(categorical), jnp.mean(continuous)

        d_gan = jnp.mean(losses.discriminator_loss(real_out.logits, fake_out.logits))
        g_gan = jnp.mean(losses.generator_loss(fake_seen.logits))
        d_info, info_categorical, info_continuous = information(fake_out)
        g_info = information(fake_seen)[0]
        metrics = {
            "discriminator_loss": d_gan,
            "generator_loss": g_gan,
            "info_categorical": info_categorical,
            "info_continuous": info_continuous,
            "real_probability": jnp.mean(jax.nn.sigmoid(real_out.logits)),
            "fake_probability": jnp.mean(jax.nn.sigmoid(fake_out.logits)),
        }
        return d_gan - d_info, g_gan - g_info, metrics, stats["batch_stats"]

    def gradients(loss_of, variables, batch, key, hparams, collectives):
        """The device-averaged gradient of `loss_of(d_loss, g_loss)`, on the latents of `key`,
        with respect to every variable; and the averaged metrics and new batch statistics."""
        latents = latents_of(key, batch.example_ids)

        def averaged(variables):
            d_loss, g_loss, metrics, stats = player_losses(
                variables, batch, latents, hparams, collectives
            )
            return collectives.mean((loss_of(d_loss, g_loss), (metrics, stats)))

        return jax.grad(averaged, has_aux=True)(variables)

    def simultaneous_update(state, batch, key, hparams, collectives):
        """One gradient of both players' losses on the same latents, one optimizer step."""
        grads, (metrics, stats) = gradients(
            lambda d, g: d + g, state.params, batch, key, hparams, collectives
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        variables = optax.apply_updates(state.params, updates) | {"batch_stats": stats}
        return state.replace(params=variables, opt_state=opt_state), metrics

    def alternating_update(state, batch, key, hparams, collectives):
        """The official code's step: D and Q step on latents from `split(key)[0]`, then G steps,
        against the updated D and Q, on fresh latents from `split(key)[1]`. Each player's
        optimizer state moves only on its own step."""
        d_key, g_key = jax.random.split(key)
        variables = state.params
        grads, (metrics, stats) = gradients(
            lambda d, g: d, variables, batch, d_key, hparams, collectives
        )
        variables, opt_state = player_step(
            optimizer, "discriminator", grads, state.opt_state, variables | {"batch_stats": stats}
        )
        grads, (g_metrics, stats) = gradients(
            lambda d, g: g, variables, batch, g_key, hparams, collectives
        )
        # D's statistics stay those of its own step's data batch; G's are of its fresh latents.
        statistics = variables["batch_stats"] | {"generator": stats["generator"]}
        variables, opt_state = player_step(
            optimizer, "generator", grads, opt_state, variables | {"batch_stats": statistics}
        )
        metrics = metrics | {"generator_loss": g_metrics["generator_loss"]}
        return state.replace(params=variables, opt_state=opt_state), metrics

    update = {"simultaneous": simultaneous_update, "alternating": alternating_update}[
        config.player_updates
    ]

    def evaluate(variables, batch, key, hparams):
        del hparams
        real_out = model.apply(variables, batch.images, False, method=model.discriminate)
        predicted = jnp.argmax(real_out.code_logits, axis=-1)
        pairs = (
            jax.nn.one_hot(predicted, num_codes)[:, :, None]
            * jax.nn.one_hot(batch.labels, data_info.num_classes)[:, None, :]
        )
        latents = latents_of(key, batch.example_ids)
        fake = model.apply(
            variables, generator_inputs(latents, num_codes), False, method=model.generate
        )
        fake_out = model.apply(variables, fake, False, method=model.discriminate)
        categorical, continuous = code_information_bounds(fake_out, latents)
        return {
            "real_probability": jax.nn.sigmoid(real_out.logits),
            "fake_probability": jax.nn.sigmoid(fake_out.logits),
            "info_categorical": categorical,
            "info_continuous": continuous,
            _JOINT: pairs.reshape(pairs.shape[0], -1),
        }

    def summarize(means, chunks: train.EvalChunks):
        """The code's error after the best matching of codes to labels, and L_I in bits."""
        del chunks
        joint = means[_JOINT].reshape(num_codes, data_info.num_classes)
        scalars = {name: value for name, value in means.items() if name != _JOINT}
        return scalars | {
            "code_error": 1.0 - losses.best_matching_mass(joint),
            "info_categorical_bits": means["info_categorical"] / losses.LN2,
            "info_continuous_bits": means["info_continuous"] / losses.LN2,
        }

    return Task(
        init=init,
        update=update,
        evaluate=evaluate,
        summarize=summarize,
        result_columns=RESULT_COLUMNS,
        result_row=lambda train_metrics, test_metrics: result_row(
            train_metrics, test_metrics, num_codes
        ),
        progress=lambda test: (
            f"code error {100 * float(test['code_error']):.1f}%, "
            f"L_I {float(test['info_categorical_bits']):.2f} bits"
        ),
        figures=lambda run: figures(run, model, data_info.num_classes),
        model=model,
    )


def result_row(train_metrics, test_metrics, num_codes: int) -> dict:
    """One member's results: the code's error in %, L_I and H(c) in bits, D's mean
    probabilities."""
    return {
        "test_code_error": 100.0 * float(test_metrics["code_error"]),
        "test_info_categorical_bits": float(test_metrics["info_categorical_bits"]),
        "code_entropy_bits": math.log2(num_codes),
        "test_info_continuous_bits": float(test_metrics["info_continuous_bits"]),
        "test_real_probability": float(test_metrics["real_probability"]),
        "test_fake_probability": float(test_metrics["fake_probability"]),
        "train_code_error": 100.0 * float(train_metrics["code_error"]),
    }


def code_label_counts(model: models.InfoGAN, variables, images, labels, num_classes: int):
    """`[C, num_classes]` int: how many of `images` `[N, D]` with each label in `labels` `[N]` Q
    reads as each categorical code (its most probable one)."""
    outputs = model.apply(variables, jnp.asarray(images), False, method=model.discriminate)
    predicted = np.asarray(jnp.argmax(outputs.code_logits, axis=-1))
    counts = np.zeros((model.categorical_dim, num_classes), dtype=np.int64)
    np.add.at(counts, (predicted, np.asarray(labels)), 1)
    return counts


def code_to_label(counts: np.ndarray) -> np.ndarray:
    """`[C]` int: the label each categorical code is matched to by the best one-to-one matching
    (scipy's Hungarian algorithm) of `code_label_counts`'s `[C, num_classes]`; -1 for a code left
    unmatched (more codes than labels)."""
    codes, matched = scipy.optimize.linear_sum_assignment(counts, maximize=True)
    mapping = np.full(counts.shape[0], -1)
    mapping[codes] = matched
    return mapping


def code_grids(model: models.InfoGAN, variables, code_order, key: jax.Array, num_columns: int = 10):
    """The paper's Fig. 2 for one model, images `[G, C, num_columns, 28, 28]` in [0, 1]: grid 0
    varies the noise along each row (other codes drawn at random); grid g >= 1 sweeps continuous
    code g - 1 from -2 to 2 along each row (noise fixed, other continuous codes 0). Row i has the
    categorical code `code_order[i]`."""
    num_codes, num_rows = model.categorical_dim, len(code_order)
    codes = jnp.repeat(jnp.asarray(code_order), num_columns)
    ids = jnp.arange(num_rows * num_columns)
    random = sample_generator_latents(key, ids, model.noise_dim, num_codes, model.continuous_dim)
    grids = [random._replace(codes=codes)]
    fixed_noise = jnp.broadcast_to(random.noise[0], random.noise.shape)
    sweep = jnp.tile(jnp.linspace(-2.0, 2.0, num_columns), num_rows)
    for code in range(model.continuous_dim):
        continuous = jnp.zeros_like(random.continuous).at[:, code].set(sweep)
        grids.append(GeneratorLatents(fixed_noise, codes, continuous))
    images = [
        model.apply(variables, generator_inputs(g, num_codes), False, method=model.generate)
        for g in grids
    ]
    grey = data.to_unit_interval(jnp.stack(images))
    return np.asarray(grey).reshape(len(grids), num_rows, num_columns, *data.IMAGE_SHAPE)


def figures(run: TrainedRun, model: models.InfoGAN, num_classes: int) -> list[str]:
    """Per member: the categorical code's rows (ordered by the digit each is matched to) with the
    noise varied, and with each continuous code swept from -2 to 2, and the count of test digits of
    each label Q reads as each code; for the sweep: the code's test error and L_I (bits) against
    epochs."""
    path = lambda name: os.path.join(run.workdir, name)
    names = ["seed", *(k for k in metrics.varying_keys(run.members) if k != "seed")]
    paths = [
        plots.learning_curves(
            run.records,
            "test/code_error",
            "categorical code's test error (%)",
            path("code_error.png"),
            scale=100,
        ),
        plots.learning_curves(
            run.records,
            "train_batches/info_categorical",
            "L_I of the categorical code (bits)",
            path("information.png"),
            scale=1 / losses.LN2,
        ),
    ]
    for m, member in enumerate(run.members):
        variables = run.member_params(m)
        counts = code_label_counts(model, variables, run.test_images, run.test_labels, num_classes)
        mapping = code_to_label(counts)
        order = np.argsort(np.where(mapping < 0, num_classes + np.arange(len(mapping)), mapping))
        rows = [f"c={c}: {mapping[c]}" if mapping[c] >= 0 else f"c={c}" for c in order]
        grids = code_grids(model, variables, order, jax.random.key(member["seed"]))
        name = "_".join(f"{k}{member[k]:g}" for k in names)
        titles = ["noise varied"] + [
            f"continuous code {k + 1} from -2 to 2" for k in range(model.continuous_dim)
        ]
        for g, (grid, title) in enumerate(zip(grids, titles)):
            paths.append(
                plots.image_grid(grid, rows, f"{name}: {title}", path(f"codes_{name}_{g}.png"))
            )
        paths.append(
            plots.count_matrix(
                counts[order],
                rows,
                [str(k) for k in range(num_classes)],
                f"{name}: test digits Q reads as each code",
                path(f"code_labels_{name}.png"),
            )
        )
    return paths
