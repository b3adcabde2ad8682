"""Tests of the InfoGAN: its bounds and losses against closed forms, the code-to-label matching
against scipy, the layers against JAX's own, the task's checks, and (slow) a few hundred steps on
real MNIST."""

import functools
import itertools
import math
import os

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.configs import infogan as infogan_config
from vib_jax import losses, models, sweep, tasks, train
from vib_jax.tasks import infogan


def test_a_q_head_that_reads_the_code_back_has_l_i_equal_to_h_c():
    codes = jnp.arange(10) % 10
    certain = 50.0 * jax.nn.one_hot(codes, 10)
    bound = losses.categorical_information_bound(certain, codes)
    np.testing.assert_allclose(bound / losses.LN2, math.log2(10), atol=1e-6)
    # A Q head that knows nothing (uniform) has L_I = 0; a wrong certain one is far below 0.
    np.testing.assert_allclose(
        losses.categorical_information_bound(jnp.zeros((4, 10)), codes[:4]), 0
    )
    assert np.all(losses.categorical_information_bound(certain, (codes + 1) % 10) < -40)


def test_continuous_bound_is_the_gaussian_log_density_plus_the_uniform_entropy():
    rng = np.random.default_rng(0)
    means, codes = rng.normal(size=(5, 2)), rng.uniform(-1, 1, (5, 2))
    for stddev in (1.0, 0.3):
        expected = scipy.stats.norm.logpdf(codes, means, stddev).sum(-1) + 2 * math.log(2)
        got = losses.uniform_code_information_bound(jnp.asarray(means), jnp.asarray(codes), stddev)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_gan_losses_are_the_cross_entropies_of_d():
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    d = lambda logits: 1 / (1 + np.exp(-np.asarray(logits)))
    np.testing.assert_allclose(
        losses.discriminator_loss(real, fake), -np.log(d(real)) - np.log(1 - d(fake)), rtol=1e-5
    )
    np.testing.assert_allclose(losses.generator_loss(fake), -np.log(d(fake)), rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 7), st.integers(1, 7)),
        # XLA on CPU flushes subnormals to zero, so a mass of 1e-45 would read as 0.
        elements=st.floats(0, 1, width=32, allow_subnormal=False),
    )
)
def test_best_matching_mass_equals_the_hungarian_algorithm(joint):
    rows, columns = scipy.optimize.linear_sum_assignment(joint, maximize=True)
    expected = joint[rows, columns].sum()
    np.testing.assert_allclose(losses.best_matching_mass(jnp.asarray(joint)), expected, rtol=1e-5)


def test_a_permuted_clustering_is_perfectly_matched():
    permutation = np.random.default_rng(1).permutation(10)
    joint = np.eye(10)[permutation] / 10
    np.testing.assert_allclose(losses.best_matching_mass(jnp.asarray(joint)), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="joint's smaller side"):
        losses.best_matching_mass(jnp.ones((17, 17)))
    counts = (1000 * joint).astype(np.int32)  # a table of counts: its carry was an int before
    assert float(losses.best_matching_mass(jnp.asarray(counts))) == 1000.0


def test_transposed_conv_2x_is_a_4x4_stride_2_transposed_convolution():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 4, 3, 7)), jnp.float32)
    expected = jax.lax.conv_transpose(x, kernel, (2, 2), [(1, 3), (1, 3)])
    # Output row 2i + a takes input rows i (kernel row 1 - a) and i + 1 (kernel row 3 - a):
    # taps[d, a] is the kernel row for window row d and phase a; the sub-pixel kernel is
    # [2, 2, C, (a_row, a_column, F)].
    taps = np.array([[1, 0], [3, 2]])
    sub_pixel = kernel[taps[:, None, :, None], taps[None, :, None, :]]  # [2, 2, 2, 2, C, F]
    sub_pixel = sub_pixel.transpose(0, 1, 4, 2, 3, 5).reshape(2, 2, 3, 4 * 7)
    layer = models.TransposedConv2x(7, use_bias=False)
    params = {"params": {"Conv_0": {"kernel": sub_pixel}}}
    np.testing.assert_allclose(layer.apply(params, x), expected, atol=1e-5)


@pytest.mark.parametrize("strides,padding", [((2, 2), "SAME"), ((1, 1), ((0, 1), (0, 1)))])
def test_matmul_kernel_gradient_equals_jax_gradient(strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 8, 8, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 4, 4, 5)), jnp.float32)
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv, x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, strides, padding, dimension_numbers=numbers)))

    ours = jax.grad(loss, (1, 2))(models.conv_with_matmul_kernel_gradient, x, kernel)
    theirs = jax.grad(loss, (1, 2))(jax.lax.conv_general_dilated, x, kernel)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no dilation"):
        models.conv_with_matmul_kernel_gradient(x, kernel, strides, padding, rhs_dilation=(2, 2))


def small_config():
    config = infogan_config.get_config()
    config.channels, config.hidden_dim, config.q_hidden_dim = (4, 8), 16, 8
    config.noise_dim, config.batch_size = 6, 8
    return config


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("categorical_dim", 0, "categorical_dim must be an integer >= 1"),
        ("continuous_dim", -1, "continuous_dim must be an integer >= 0"),
        ("noise_dim", 0, "noise_dim must be an integer >= 1"),
        ("channels", (4,), "channels must be two widths"),
        ("generator_learning_rate", 0.0, "generator_learning_rate must be > 0"),
        ("player_updates", "both", "player_updates must be one of"),
    ],
)
def test_bad_infogan_config_is_named(name, value, message):
    config = small_config()
    config[name] = value
    with pytest.raises(ValueError, match=message):
        sweep.validate_config(config)


def test_info_weights_are_checked():
    config = small_config()
    config.sweep.info_weight = (-1.0,)
    with pytest.raises(ValueError, match="sweep.info_weight values must be finite and >= 0"):
        sweep.validate_config(config)


def test_latents_of_an_example_do_not_depend_on_its_batch():
    key = jax.random.key(3)
    whole = infogan.sample_generator_latents(key, jnp.arange(6), 5, 10, 2)
    part = infogan.sample_generator_latents(key, jnp.arange(3, 6), 5, 10, 2)
    for a, b in zip(whole, part):
        np.testing.assert_array_equal(a[3:], b)
    assert np.all(np.abs(whole.noise) <= 1) and set(np.asarray(whole.codes)) <= set(range(10))


def test_latents_have_the_priors_that_h_c_assumes():
    """L_I's H(c) = log C and the continuous bound's K log 2 assume c ~ Uniform{0..C-1} and
    Uniform[-1, 1] noise and codes: chi-square and Kolmogorov-Smirnov tests over 20,000 ids."""
    latents = infogan.sample_generator_latents(jax.random.key(5), jnp.arange(20000), 3, 10, 2)
    frequencies = np.bincount(np.asarray(latents.codes), minlength=10)
    assert len(frequencies) == 10 and scipy.stats.chisquare(frequencies).pvalue > 1e-3
    uniform = scipy.stats.uniform(loc=-1.0, scale=2.0).cdf
    for values in (latents.noise, latents.continuous):
        for column in np.asarray(values).T:
            assert scipy.stats.kstest(column, uniform).pvalue > 1e-3


@pytest.mark.slow
def test_an_epoch_on_mnist_moves_the_code_error_well_below_chance(tmp_path):
    """600 steps (~5 min on 2 CPU cores). A code unrelated to the digits errs on ~89% of them
    (the largest class is 11%; with 2,000 test digits the standard error is < 1%): a broken L_I,
    Q head or matching stays there. The 3-epoch probe of README was at 75% after its first
    epoch."""
    from vib_jax import data

    config = infogan_config.get_config()
    config.test_subset, config.train_eval_size = 2000, 2000
    config.num_epochs, config.eval_chunk_size, config.progress = 1, 500, False
    data.check_prepared(config.dataset)
    rows = sweep.train_and_evaluate(config, str(tmp_path))
    assert rows[0]["test_code_error"] < 82, rows
    assert rows[0]["test_info_categorical_bits"] > 3.0, rows  # of log2 10 = 3.32


def reference_gradients(model, variables, images, latents, weights):
    """Each player's gradient of its own loss, written out from the paper: D and Q's of
    -log D(x) - log(1 - D(G)) - L_I with G fixed, G's of -log D(G) - L_I with D and Q fixed.
    `weights`: (lambda of the categorical code, of the continuous codes)."""
    inputs = infogan.generator_inputs(latents, 10)

    def run(params, x, method):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            True,
            method=method,
            mutable=["batch_stats"],
        )
        return out

    def information(outputs):
        categorical, continuous = infogan.code_information_bounds(outputs, latents)
        return jnp.mean(weights[0] * categorical + weights[1] * continuous)

    def d_loss(d_params, fake):
        params = variables["params"] | {"discriminator": d_params}
        real_out = run(params, images, model.discriminate)
        fake_out = run(params, fake, model.discriminate)
        gan = jnp.mean(losses.discriminator_loss(real_out.logits, fake_out.logits))
        return gan - information(fake_out)

    def g_loss(g_params):
        params = variables["params"] | {"generator": g_params}
        fake_out = run(params, run(params, inputs, model.generate), model.discriminate)
        return jnp.mean(losses.generator_loss(fake_out.logits)) - information(fake_out)

    params = variables["params"]
    fake = run(params, inputs, model.generate)
    return {
        "discriminator": jax.grad(d_loss)(params["discriminator"], fake),
        "generator": jax.grad(g_loss)(params["generator"]),
    }


def assert_steps_are_minus(gradients, old, new):
    """Every weight of each player moved by minus its gradient (SGD at lr 1)."""
    for player, gradient in gradients.items():
        steps = jax.tree_util.tree_map(lambda a, b: a - b, old[player], new[player])
        for step, grad in zip(
            jax.tree_util.tree_leaves(steps), jax.tree_util.tree_leaves(gradient)
        ):
            np.testing.assert_allclose(step, grad, rtol=1e-4, atol=1e-6)
            assert np.any(step != 0)


def statistics_after(model, variables, passes):
    """The batch-norm averages after training-mode forward passes of `variables["params"]` over
    `passes`, a list of `(inputs, method)`: G's for `model.generate`, D's for None."""
    stats = variables["batch_stats"]
    for inputs, method in passes:
        _, updated = model.apply(
            {"params": variables["params"], "batch_stats": stats},
            inputs,
            True,
            method=method or model.discriminate,
            mutable=["batch_stats"],
        )
        stats = updated["batch_stats"]
    return stats


def assert_statistics_are(expected, old, new):
    """Every batch-norm average of `new` is `expected`'s, and moved from `old`'s."""
    for got, want, before in zip(
        jax.tree_util.tree_leaves(new["batch_stats"]),
        jax.tree_util.tree_leaves(expected),
        jax.tree_util.tree_leaves(old["batch_stats"]),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.any(got != before)


@functools.cache
def tiny_variables():
    """`small_config()`'s InfoGAN's initial variables (seed 0), compiled once per test process:
    the optimizer does not change them."""
    task = infogan.build(small_config(), tasks.DataInfo(64, 784, 10, math.log(10), 8))
    return jax.jit(task.init)(jax.random.key(0)).params


def one_step(config, key):
    """A tiny InfoGAN's state before and after one `task.update` on 8 random images, with the
    metrics; and the task, the batch and the hparams (lambda = 0.5 and 2)."""
    task = infogan.build(config, tasks.DataInfo(64, 784, 10, math.log(10), 8))
    state = train.init_state(tiny_variables(), infogan.make_optimizer(config, 8))
    images = jnp.tanh(jax.random.normal(jax.random.key(1), (8, 784)))
    batch = train.Batch(images, jnp.arange(8) % 10, jnp.arange(8))
    hparams = {"info_weight": 0.5, "continuous_info_weight": 2.0}
    new, metrics = jax.jit(lambda *args: task.update(*args, train.Collectives()))(
        state, batch, key, hparams
    )
    return task, batch, hparams, state, new, metrics


def latents_of(key, batch):
    return infogan.sample_generator_latents(key, batch.example_ids, 6, 10, 2)


def test_each_player_follows_the_gradient_of_its_own_loss_alone():
    """With SGD at lr 1, each player's step is minus the gradient of its own loss, the other
    player's params held fixed (`reference_gradients`). Every weight moves; the evaluation reduces
    to scalars."""
    config = small_config()
    config.optimizer, config.learning_rate, config.generator_learning_rate = "sgd", 1.0, 1.0
    key = jax.random.key(2)
    task, batch, hparams, state, new, metrics = one_step(config, key)
    model, variables, images = task.model, state.params, batch.images
    inputs = infogan.generator_inputs(latents_of(key, batch), 10)
    gradients = jax.jit(reference_gradients, static_argnums=0)(
        model, variables, images, latents_of(key, batch), (0.5, 2.0)
    )
    assert_steps_are_minus(gradients, variables["params"], new.params["params"])

    # The batch-norm averages are set by the forward passes, not by the optimizers: G's by its
    # batch, D's (and Q's) by the data's alone.
    expected = statistics_after(model, variables, [(inputs, model.generate), (images, None)])
    assert_statistics_are(expected, variables, new.params)
    assert 0 < metrics["real_probability"] < 1 and metrics["info_categorical"] <= math.log(10)

    evaluation = jax.jit(train.make_evaluate(task.evaluate, task.summarize, train.Collectives()))
    chunks = train.chunk_split(images, batch.labels, 4, 10)
    result = evaluation(new.ema_params, chunks, jax.random.key(4), hparams)
    assert set(result) >= {"code_error", "info_categorical_bits", "real_probability"}
    assert all(np.ndim(value) == 0 for value in result.values())
    assert 0 <= result["code_error"] <= 1 - 1 / 10 + 1e-6  # never worse than one matched code
    # The error left by scipy's Hungarian matching of Q's codes to the labels, counted directly.
    counts = infogan.code_label_counts(model, new.ema_params, images, batch.labels, 10)
    codes, matched = scipy.optimize.linear_sum_assignment(counts, maximize=True)
    matched_error = 1.0 - counts[codes, matched].sum() / counts.sum()
    assert result["code_error"] == pytest.approx(matched_error, abs=1e-6)


def test_alternating_updates_step_d_then_g_against_the_new_d():
    """The official code's step: D and Q by minus their gradient on latents from split(key)[0];
    then G by minus its gradient on fresh latents from split(key)[1], against the D and Q just
    updated (SGD at lr 1)."""
    config = small_config()
    config.player_updates = "alternating"
    config.optimizer, config.learning_rate, config.generator_learning_rate = "sgd", 1.0, 1.0
    key = jax.random.key(2)
    d_key, g_key = jax.random.split(key)
    task, batch, _, state, new, metrics = one_step(config, key)
    model, variables = task.model, state.params
    gradients_of = jax.jit(reference_gradients, static_argnums=0)
    d_gradient = gradients_of(model, variables, batch.images, latents_of(d_key, batch), (0.5, 2.0))
    stepped_d = jax.tree_util.tree_map(
        lambda p, g: p - g, variables["params"]["discriminator"], d_gradient["discriminator"]
    )
    after_d = variables | {"params": variables["params"] | {"discriminator": stepped_d}}
    gradients = {
        "discriminator": d_gradient["discriminator"],
        "generator": gradients_of(
            model, after_d, batch.images, latents_of(g_key, batch), (0.5, 2.0)
        )["generator"],
    }
    assert_steps_are_minus(gradients, variables["params"], new.params["params"])
    # The G step against the old D (or on the D step's latents) would be another step.
    for other in (variables, after_d):
        stale = gradients_of(model, other, batch.images, latents_of(d_key, batch), (0.5, 2.0))
        assert not np.allclose(
            jax.tree_util.tree_leaves(stale["generator"])[0],
            jax.tree_util.tree_leaves(gradients["generator"])[0],
            rtol=1e-3,
        )
    assert 0 < metrics["real_probability"] < 1 and metrics["generator_loss"] > 0
    # D's averages are its step's data batch's; G's moved on both steps' latents.
    inputs = [infogan.generator_inputs(latents_of(k, batch), 10) for k in (d_key, g_key)]
    passes = [(inputs[0], model.generate), (inputs[1], model.generate), (batch.images, None)]
    assert_statistics_are(statistics_after(model, variables, passes), variables, new.params)


def test_a_players_step_moves_its_own_params_and_adam_state_alone():
    """Adam's first step on a gradient of ones moves each weight by -lr (to float32 rounding);
    the other player's params stay, and so does its Adam state (a zero gradient would decay its
    moments and count a step: its first real step would then be 0.94 lr)."""
    config = small_config()
    task = infogan.build(config, tasks.DataInfo(64, 784, 10, math.log(10), 8))
    # The values do not matter, only the structure (zeros: no network to compile).
    shapes = jax.eval_shape(task.init, jax.random.key(0))
    state = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    optimizer = infogan.make_optimizer(config, 64)
    ones = jax.tree_util.tree_map(jnp.ones_like, state.params)
    player_step = jax.jit(infogan.player_step, static_argnums=(0, 1))

    def steps_and_counts(variables, opt_state):
        steps = {
            player: np.concatenate(
                [
                    np.ravel(new - old)
                    for new, old in zip(
                        jax.tree_util.tree_leaves(variables["params"][player]),
                        jax.tree_util.tree_leaves(state.params["params"][player]),
                    )
                ]
            )
            for player in ("discriminator", "generator")
        }
        counts = {
            player: {
                int(c)
                for c in jax.tree_util.tree_leaves(opt_state.inner_states[player])
                if jnp.issubdtype(c.dtype, jnp.integer)
            }
            for player in ("discriminator", "generator")
        }
        return steps, counts

    variables, opt_state = player_step(
        optimizer, "discriminator", ones, state.opt_state, state.params
    )
    steps, counts = steps_and_counts(variables, opt_state)
    np.testing.assert_allclose(steps["discriminator"], -config.learning_rate, rtol=1e-3)
    assert not np.any(steps["generator"]) and counts == {"discriminator": {1}, "generator": {0}}
    variables, opt_state = player_step(optimizer, "generator", ones, opt_state, variables)
    steps, counts = steps_and_counts(variables, opt_state)
    np.testing.assert_allclose(steps["generator"], -config.generator_learning_rate, rtol=1e-3)
    np.testing.assert_allclose(steps["discriminator"], -config.learning_rate, rtol=1e-3)
    assert counts == {"discriminator": {1}, "generator": {1}}


def test_figures_order_the_rows_by_the_matched_digit(tmp_path):
    """The figures of a two-member run of untrained tiny models: PNGs written, and the rows of a
    grid follow the codes as `code_to_label` matches them."""
    import matplotlib.pyplot as plt

    config = small_config()
    config.categorical_dim, config.continuous_dim = 3, 1  # small grids: matplotlib is slow
    task = infogan.build(config, tasks.DataInfo(64, 784, 10, math.log(10), 8))
    states = [jax.jit(task.init)(jax.random.key(seed)) for seed in (0, 1)]
    members = [{"seed": s, "info_weight": 1.0, "continuous_info_weight": 1.0} for s in (0, 1)]
    records = [
        {"epoch": 1, **m, "test/code_error": 0.8, "train_batches/info_categorical": 1.0}
        for m in members
    ]
    images = np.tanh(np.random.default_rng(0).normal(size=(50, 784))).astype(np.float32)
    labels = np.arange(50) % 10
    run = tasks.TrainedRun(
        str(tmp_path),
        members,
        [],
        records,
        train.stack([s.ema_params for s in states]),
        images,
        labels,
    )
    paths = task.figures(run)
    # two curves; per member, noise, the continuous code and the code x label counts
    assert sorted(os.path.basename(p) for p in paths) == [
        "code_error.png",
        "code_labels_seed0.png",
        "code_labels_seed1.png",
        "codes_seed0_0.png",
        "codes_seed0_1.png",
        "codes_seed1_0.png",
        "codes_seed1_1.png",
        "information.png",
    ]
    for path in paths:
        assert plt.imread(path)[..., :3].std() > 0.02
    counts = infogan.code_label_counts(task.model, states[0].ema_params, images, labels, 10)
    assert counts.shape == (3, 10) and counts.sum() == len(images)
    mapping = infogan.code_to_label(counts)
    assert len(set(mapping)) == 3 and set(mapping) <= set(range(10))  # 3 codes, 3 distinct digits
    # each code is matched to a label it holds, and no other matching holds more
    brute_force = max(
        sum(counts[c, d] for c, d in enumerate(digits))
        for digits in itertools.permutations(range(10), 3)
    )
    assert counts[np.arange(3), mapping].sum() == brute_force
    # Row i of a grid is drawn with code order[i]: in the continuous sweeps (noise fixed, the same
    # in every row) reordering the codes reorders the rows alike.
    key = jax.random.key(0)
    in_order = infogan.code_grids(task.model, states[0].ema_params, [0, 1, 2], key, 4)
    reordered = infogan.code_grids(task.model, states[0].ema_params, [2, 0, 1], key, 4)
    np.testing.assert_allclose(reordered[1:], in_order[1:, [2, 0, 1]], atol=1e-6)
    assert not np.allclose(in_order[1:, 0], in_order[1:, 1])  # the code changes the images
