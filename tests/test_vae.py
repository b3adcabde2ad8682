"""Tests of the beta-VAE task (vib_jax.tasks.vae): binarisation, interpolation, the chunked
importance-sampled NLL against a direct computation, and an end-to-end run on real MNIST."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from experiments.configs import vae as vae_config
from vib_jax import data, losses, models, sweep, train
from vib_jax.tasks import vae


def test_binarize_is_per_example_and_follows_the_grey_levels():
    grey = jnp.tile(jnp.linspace(0.0, 1.0, 8), (2000, 1))
    ids = jnp.arange(2000, dtype=jnp.int32)
    pixels = vae.binarize(jax.random.key(0), ids, grey)
    assert set(np.unique(pixels)) <= {0.0, 1.0}
    np.testing.assert_allclose(
        pixels.mean(0), np.linspace(0.0, 1.0, 8), atol=4 * 0.5 / math.sqrt(2000)
    )
    halves = jnp.concatenate(
        [
            vae.binarize(jax.random.key(0), ids[:700], grey[:700]),
            vae.binarize(jax.random.key(0), ids[700:], grey[700:]),
        ]
    )
    np.testing.assert_array_equal(pixels, halves)  # the same whatever the batch it is in


def test_interpolation_linear_and_spherical():
    z0, z1 = jnp.array([3.0, 0.0, 0.0]), jnp.array([0.0, 3.0, 0.0])
    for spherical in (False, True):
        path = vae.interpolate(z0, z1, 5, spherical)
        np.testing.assert_allclose(path[0], z0, atol=1e-6)
        np.testing.assert_allclose(path[-1], z1, atol=1e-6)
    np.testing.assert_allclose(vae.interpolate(z0, z1, 5, False)[2], [1.5, 1.5, 0.0], atol=1e-6)
    parallel = vae.interpolate(z0, 2 * z0, 3, True)  # no great circle: the line
    np.testing.assert_allclose(
        parallel, [[3.0, 0.0, 0.0], [4.5, 0.0, 0.0], [6.0, 0.0, 0.0]], rtol=1e-6
    )
    norms = jnp.linalg.norm(vae.interpolate(z0, z1, 5, True), axis=-1)
    np.testing.assert_allclose(norms, 3.0, rtol=1e-5)  # slerp keeps the norm; the line dips to 2.12
    assert float(jnp.linalg.norm(vae.interpolate(z0, z1, 5, False)[2])) == pytest.approx(
        3 / math.sqrt(2)
    )


def small_config(**overrides):
    config = vae_config.get_config()
    config.latent_dim, config.hidden_dims = 3, (16,)
    config.nll_samples, config.nll_chunk_size = 60, 20
    for name, value in overrides.items():
        config[name] = value
    return config


def test_chunked_nll_is_the_log_mean_exp_of_every_chunks_weights():
    images = jax.random.uniform(jax.random.key(0), (5, 784), minval=-1.0, maxval=1.0)
    labels = jnp.zeros(5, jnp.int32)
    config = small_config()
    task = vae.build(config, sweep.data_info(config, images, labels))
    params = task.init(jax.random.key(1)).params
    batch = train.Batch(images, labels, jnp.arange(5, dtype=jnp.int32))
    key = jax.random.key(2)
    nll = task.final_evaluate(params, batch, key, {"beta": 1.0})["nll"]

    # The same 3 chunks of 20 samples, drawn directly, and one log-mean-exp over all 60.
    model = vae.model_from_config(config, 784)
    x = vae.binarize(
        jax.random.key(vae._EVAL_BINARIZATION_KEY), batch.example_ids, data.to_unit_interval(images)
    )
    mean, stddev = model.apply(params, x, method=model.encode)
    weights = []
    for chunk in range(3):
        z = train.sample_latents(
            jax.random.fold_in(jax.random.split(key)[1], chunk),
            batch.example_ids,
            mean,
            stddev,
            20,
        )
        log_px = losses.bernoulli_log_likelihood(model.apply(params, z, method=model.decode), x)
        weights.append(
            log_px + losses.standard_normal_log_prob(z) - losses.gaussian_log_prob(z, mean, stddev)
        )
    expected = -losses.importance_weighted_bound(jnp.concatenate(weights))
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    elbo = task.evaluate(params, batch, key, {"beta": 1.0})["elbo"]
    assert np.all(
        np.asarray(nll) < -np.asarray(elbo) + 1.0
    )  # the IS estimate is (nearly) above the ELBO


def test_the_iwae_objective_is_the_log_mean_exp_of_the_importance_weights():
    """The IWAE's training loss (k = 5): -mean_x log (1/k) sum_s p(x, z_s) / q(z_s | x) on the
    step's own binarisation and samples, rebuilt with scipy's logsumexp."""
    images = jax.random.uniform(jax.random.key(0), (6, 784), minval=-1.0, maxval=1.0)
    labels = jnp.zeros(6, jnp.int32)
    config = small_config(objective="iwae", train_samples=5, batch_size=6)
    task = vae.build(config, sweep.data_info(config, images, labels))
    state = task.init(jax.random.key(1))
    batch = train.Batch(images, labels, jnp.arange(6, dtype=jnp.int32))
    key = jax.random.key(2)
    hparams = {name: spec.default for name, spec in vae.HYPERPARAMETERS.items()}
    _, metrics = task.update(state, batch, key, hparams, train.Collectives())
    params = state.params

    model = vae.model_from_config(config, 784)
    binarize_key, noise_key = jax.random.split(key)
    x = vae.model_inputs(images, batch.example_ids, binarize_key, "bernoulli")
    mean, stddev = model.apply(params, x, method=model.encode)
    z = train.sample_latents(noise_key, batch.example_ids, mean, stddev, 5)
    logits = np.asarray(model.apply(params, z, method=model.decode), np.float64)
    target = np.asarray(x, np.float64)
    log_px = np.sum(target * logits - np.logaddexp(0.0, logits), axis=-1)
    z, mean, stddev = (np.asarray(a, np.float64) for a in (z, mean, stddev))
    log_joint = log_px + scipy.stats.norm.logpdf(z).sum(-1)
    log_weights = log_joint - scipy.stats.norm.logpdf(z, mean, stddev).sum(-1)  # [5, 6]
    bound = np.mean(scipy.special.logsumexp(log_weights, axis=0) - math.log(5))
    assert float(metrics["loss"]) == pytest.approx(-bound, rel=1e-5)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("train_samples", 0, "train_samples must be an integer >= 1"),
        ("nll_chunk_size", 7, "nll_chunk_size must divide"),
        ("likelihood", "poisson", "likelihood must be one of"),
        ("objective", "vimco", "objective must be one of"),
        ("activation", "gelu", "activation must be one of"),
        ("marginal", "flow", "marginal must be one of"),
    ],
)
def test_bad_config_entries_are_named(name, value, message):
    with pytest.raises(ValueError, match=message):
        vae.validate_config(small_config(**{name: value}))


@pytest.mark.real_data
@pytest.mark.usefixtures("real_mnist")
@pytest.mark.parametrize(
    "objective, samples",
    [("elbo", 1), pytest.param("iwae", 5, marks=pytest.mark.slow)],  # IWAE: ~25 s more
)
def test_a_short_run_on_real_mnist_learns(tmp_path, objective, samples):
    config = vae_config.get_config()
    config.progress, config.objective, config.train_samples = False, objective, samples
    config.train_subset, config.test_subset, config.train_eval_size = 10_000, 1000, 1000
    config.num_epochs, config.eval_every_epochs, config.checkpoint_every_epochs = 6, 6, 6
    config.nll_samples, config.nll_chunk_size, config.ema_decay = 200, 100, 0.9
    (row,) = sweep.train_and_evaluate(config, str(tmp_path / "vae"))
    # An untrained model scores ~540 nats; the best model that ignores z (pixel marginals) ~206.
    assert row["test_nll_nats"] < 196.0, row
    assert row["test_rate_nats"] > 2.0, row  # the latent carries information
    assert row["test_nll_nats"] <= -row["test_elbo_nats"] + 0.5, row  # NLL is below -ELBO
    for figure in (
        "rate_distortion.png",
        "reconstructions.png",
        "samples.png",
        "interpolation.png",
    ):
        with open(tmp_path / "vae" / figure, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_final_evaluation_is_the_same_vmapped_under_shard_map_and_member_by_member():
    """Two seeds vmapped together run under shard_map (as every sweep on a GPU does); one at a time
    they run without it. The NLL's scan must give the same numbers either way."""
    from vib_jax import parallel

    images = jax.random.uniform(jax.random.key(0), (40, 784), minval=-1.0, maxval=1.0)
    labels = jnp.zeros(40, jnp.int32)
    mesh = parallel.make_mesh(1)
    chunks = parallel.replicate(train.chunk_split(images, labels, 10, 10), mesh)
    results = []
    for at_once in (2, 1):
        config = small_config(
            seeds=(0, 1), members_at_once=at_once, batch_size=20, eval_chunk_size=10
        )
        setup = sweep.build_setup(config, mesh, images, labels)
        results.append(setup.final_evaluate(setup.states.ema_params, chunks))
    vmapped, one_by_one = results
    assert vmapped["nll"].shape == (2,) and np.all(np.isfinite(vmapped["nll"]))
    for name in ("nll", "elbo", "rate", "distortion"):
        np.testing.assert_allclose(vmapped[name], one_by_one[name], rtol=1e-5)
    assert not np.allclose(vmapped["nll"][0], vmapped["nll"][1])  # two seeds, two inits


def test_the_gaussian_likelihood_trains_with_a_bounded_density():
    images = jnp.concatenate(  # a border pixel that is black in every image
        [
            -jnp.ones((64, 1)),
            jax.random.uniform(jax.random.key(0), (64, 783), minval=-1.0, maxval=1.0),
        ],
        axis=1,
    )
    labels = jnp.zeros(64, jnp.int32)
    config = small_config(likelihood="gaussian", batch_size=16)
    task = vae.build(config, sweep.data_info(config, images, labels))
    state = task.init(jax.random.key(1))
    step = jax.jit(train.make_train_step(task.update, 0.9, train.Collectives()))
    batch = train.Batch(images[:16], labels[:16], jnp.arange(16, dtype=jnp.int32))
    for _ in range(20):
        state, metrics = step(state, batch, jax.random.key(2), {"beta": jnp.float32(1.0)})
    assert np.isfinite(float(metrics["loss"]))
    model = vae.model_from_config(config, 784)
    stddev = model.apply(state.params, method=model.pixel_stddev)
    assert stddev.shape == (784,) and float(stddev.min()) >= models.MIN_PIXEL_STDDEV

    # The distortion is -log N(grey levels in [0, 1] | decoded means, the learned stddevs),
    # averaged over the posterior samples: scipy's density on the evaluation's own samples.
    key = jax.random.key(3)
    distortion = task.evaluate(state.params, batch, key, {"beta": 1.0})["distortion"]
    grey = (np.asarray(batch.images, np.float64) + 1.0) / 2.0
    mean, scale = model.apply(state.params, jnp.asarray(grey), method=model.encode)
    z = train.sample_latents(
        jax.random.split(key)[0], batch.example_ids, mean, scale, config.eval_samples
    )
    decoded = np.asarray(model.apply(state.params, z, method=model.decode), np.float64)
    log_px = scipy.stats.norm.logpdf(grey, decoded, np.asarray(stddev, np.float64)).sum(-1)
    np.testing.assert_allclose(distortion, -log_px.mean(0), rtol=1e-5)


def test_bad_learned_marginal_sizes_are_named():
    with pytest.raises(ValueError, match="marginal_components must be an integer >= 1"):
        vae.validate_config(small_config(marginal="vamp", marginal_components=0))


def test_the_vamp_prior_is_the_mixture_of_the_pseudo_inputs_posteriors():
    import scipy.special
    import scipy.stats

    model = vae.model_from_config(small_config(marginal="vamp", marginal_components=4), 784)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))
    logits = params["params"]["pseudo_input_logits"]
    assert logits.shape == (4, 784)
    pseudo_inputs = jax.nn.sigmoid(logits)
    means, stddevs = model.apply(params, pseudo_inputs, method=model.encode)
    z = np.asarray(jax.random.normal(jax.random.key(1), (6, 3)))
    per_component = scipy.stats.norm.logpdf(
        z[:, None, :], np.asarray(means), np.asarray(stddevs)
    ).sum(-1)
    expected = scipy.special.logsumexp(per_component, axis=1) - math.log(4)
    log_r = model.apply(params, jnp.asarray(z), method=model.marginal_log_prob)
    np.testing.assert_allclose(log_r, expected, rtol=1e-5)


@pytest.mark.parametrize("marginal", ["mixture", "vamp"])
def test_a_learned_marginal_trains_and_its_rate_is_monte_carlo(marginal):
    """One step moves the marginal's params; the evaluation's rate is the mean of
    log q(z|x) - log r(z) over the samples, here checked against a direct computation."""
    images = jax.random.uniform(jax.random.key(0), (8, 784), minval=-1.0, maxval=1.0)
    labels = jnp.zeros(8, jnp.int32)
    config = small_config(marginal=marginal, marginal_components=3, eval_samples=5)
    config.batch_size = 8
    task = vae.build(config, sweep.data_info(config, images, labels))
    state = jax.jit(task.init)(jax.random.key(1))
    batch = train.Batch(images, labels, jnp.arange(8, dtype=jnp.int32))
    hparams = {name: spec.default for name, spec in vae.HYPERPARAMETERS.items()}
    update = jax.jit(lambda *args: task.update(*args, train.Collectives()))
    new, metrics = update(state, batch, jax.random.key(2), hparams)
    name = "mixture" if marginal == "mixture" else "pseudo_input_logits"
    moved = jax.tree_util.tree_map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))),
        state.params["params"][name],
        new.params["params"][name],
    )
    assert min(jax.tree_util.tree_leaves(moved)) > 0
    assert np.isfinite(metrics["loss"])

    key = jax.random.key(3)
    rate = task.evaluate(new.params, batch, key, hparams)["rate"]
    model = vae.model_from_config(config, 784)
    x = vae.evaluation_inputs(images, batch.example_ids, "bernoulli")
    mean, stddev = model.apply(new.params, x, method=model.encode)
    z = train.sample_latents(jax.random.split(key)[0], batch.example_ids, mean, stddev, 5)
    log_r = model.apply(new.params, z, method=model.marginal_log_prob)
    expected = jnp.mean(losses.gaussian_log_prob(z, mean, stddev) - log_r, axis=0)
    np.testing.assert_allclose(rate, expected, rtol=1e-5)


def test_samples_of_a_learned_marginal_follow_its_components():
    """Draws from a 2-component mixture marginal: each lands near the component it was drawn
    from, in proportion to the weights; N(0, I) draws are standard normal."""
    model = vae.model_from_config(small_config(marginal="mixture", marginal_components=2), 784)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))
    mixture = params["params"]["mixture"]
    params["params"]["mixture"] = mixture | {
        "logits": jnp.log(jnp.array([0.8, 0.2])),
        "means": jnp.array([[-20.0, 0.0, 0.0], [20.0, 0.0, 0.0]]),
    }
    z = np.asarray(vae.marginal_samples(model, params, jax.random.key(1), 4000))
    share = np.mean(z[:, 0] < 0)
    assert abs(share - 0.8) < 3 * math.sqrt(0.8 * 0.2 / 4000)
    # Stddevs 1 at init: a sample sd of n draws has the standard error 1 / sqrt(2 n); 4 of them.
    first = z[z[:, 0] < 0]
    np.testing.assert_allclose(np.std(first, axis=0), 1.0, atol=4 / math.sqrt(2 * len(first)))
    standard = vae.model_from_config(small_config(), 784)
    z = np.asarray(vae.marginal_samples(standard, None, jax.random.key(1), 4000))
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
