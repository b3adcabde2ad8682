"""Shape, parameter-count and transformation tests of vib_jax.models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vib_jax import losses, models


def paper_param_count(k):
    return 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 2 * k + 2 * k + k * 10 + 10


@pytest.fixture(scope="module")
def paper_model_and_params():
    model = models.VIBClassifier()
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)), jax.random.key(1))
    return model, params


def test_paper_model_parameter_count(paper_model_and_params):
    _, params = paper_model_and_params
    assert models.count_params(params) == paper_param_count(256)


def test_output_shapes_with_monte_carlo_samples(paper_model_and_params):
    model, params = paper_model_and_params
    images = jax.random.uniform(jax.random.key(2), (5, 28, 28, 1), minval=-1, maxval=1)
    out = model.apply(params, images, jax.random.key(3), num_samples=12)
    assert out.logits.shape == (12, 5, 10)
    assert out.mean.shape == out.scale.shape == (5, 256)
    assert np.all(out.scale > 0)
    # Different samples give different logits; the same key gives the same ones.
    assert not np.allclose(out.logits[0], out.logits[1])
    again = model.apply(params, images, jax.random.key(3), num_samples=12)
    np.testing.assert_array_equal(out.logits, again.logits)


def test_stddev_is_softplus_of_pre_activation_minus_five():
    encoder = models.GaussianEncoder(latent_dim=3, hidden_dims=())
    params = encoder.init(jax.random.key(0), jnp.zeros((1, 2)))
    params = jax.tree_util.tree_map(jnp.zeros_like, params)  # pre-activations are all 0
    mean, stddev = encoder.apply(params, jnp.ones((4, 2)))
    np.testing.assert_allclose(mean, np.zeros((4, 3)))
    np.testing.assert_allclose(stddev, np.full((4, 3), np.log1p(np.exp(-5.0))), rtol=1e-6)


def test_decoder_is_applied_to_each_sample_with_shared_params():
    model = models.VIBClassifier(latent_dim=4, hidden_dims=(8,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 6)), jax.random.key(1))
    z = jax.random.normal(jax.random.key(2), (3, 2, 4))
    logits = model.apply(params, z, method=model.decode)
    dense = params["params"]["decoder"]["logits"]
    np.testing.assert_allclose(logits, z @ dense["kernel"] + dense["bias"], rtol=1e-5, atol=1e-6)


def test_deterministic_baseline_has_no_noise():
    model = models.VIBClassifier(stochastic=False, latent_dim=16, hidden_dims=(32,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)), jax.random.key(1))
    assert models.count_params(params) == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    out = model.apply(params, jnp.ones((2, 784)), jax.random.key(2), num_samples=4)
    np.testing.assert_array_equal(out.scale, np.zeros((2, 16)))
    np.testing.assert_allclose(out.logits, np.broadcast_to(out.logits[0], out.logits.shape))


def test_jit_grad_and_vmap_compose():
    model = models.VIBClassifier(latent_dim=8, hidden_dims=(16,))
    images = jax.random.normal(jax.random.key(0), (6, 20))
    labels = jnp.arange(6) % 10
    params = model.init(jax.random.key(1), images, jax.random.key(2))

    def loss(params, beta, rng):
        out = model.apply(params, images, rng, num_samples=3)
        return losses.vib_loss(out.logits, labels, losses.kl_divergence(out.mean, out.scale), beta)[
            0
        ]

    grads = jax.jit(jax.grad(loss))(params, 1e-3, jax.random.key(3))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))

    # vmap over a leading axis of stacked params and betas equals a loop over them.
    stacked = jax.tree_util.tree_map(lambda p: jnp.stack([p, 2 * p]), params)
    betas = jnp.array([0.0, 0.5])
    swept = jax.jit(jax.vmap(loss, in_axes=(0, 0, None)))(stacked, betas, jax.random.key(4))
    members = [jax.tree_util.tree_map(lambda p, i=i: p[i], stacked) for i in range(2)]
    looped = [loss(p, b, jax.random.key(4)) for p, b in zip(members, betas)]
    np.testing.assert_allclose(swept, looped, rtol=1e-5)
