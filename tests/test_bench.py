"""Tests of the benchmark's bookkeeping: its FLOP counts and its interleaved timing."""

import jax.numpy as jnp
import pytest

from benchmarks import step_cost
from experiments.configs import default, vae


@pytest.mark.parametrize("train_samples", [1, 12])
def test_vib_step_flops_match_the_closed_form(train_samples):
    b, d, h, k, c = 100, 784, 1024, 256, 10
    config = default.get_config()
    config.train_samples = train_samples
    forward = 2 * b * (d * h + h * h + h * 2 * k) + 2 * train_samples * b * k * c
    flops = step_cost.flops(step_cost.vib_step_matmuls(config, b, d, c))
    assert flops == 3 * forward - 2 * b * d * h
    if train_samples == 1:
        assert flops / 1e9 == pytest.approx(1.27, abs=0.005)  # the figure in RESULTS.md


def test_vae_step_flops_match_the_closed_form():
    b, d, h, k = 100, 784, 200, 50
    forward = 2 * b * (d * h + h * h + h * 2 * k) + 2 * b * (k * h + h * h + h * d)
    flops = step_cost.flops(step_cost.vae_step_matmuls(vae.get_config(), b, d))
    assert flops == 3 * forward - 2 * b * d * h
    assert flops / 1e9 == pytest.approx(0.22, abs=0.005)  # the figure in the module doc


@pytest.mark.parametrize("marginal", ["mixture", "vamp"])
def test_a_learned_marginal_adds_its_gradient_products_and_the_vampprior_its_encoder(marginal):
    b, d, h, k, m = 100, 784, 200, 50, 500
    config = vae.get_config()
    base = step_cost.flops(step_cost.vae_step_matmuls(config, b, d))
    config.marginal, config.marginal_components = marginal, m
    added = step_cost.flops(step_cost.vae_step_matmuls(config, b, d)) - base
    mixture_gradient = 3 * 2 * b * m * k
    pseudo_input_encoder = 3 * 2 * m * (d * h + h * h + h * 2 * k)  # forward, both gradients
    want = mixture_gradient + (pseudo_input_encoder if marginal == "vamp" else 0)
    assert added == want


def test_interleaved_medians_alternate_the_programs_and_take_medians():
    calls = []

    def program(name):
        def run_epoch(repeat):
            calls.append((name, repeat))
            return jnp.zeros(())

        return run_epoch

    medians = step_cost.interleaved_medians([program("train"), program("roofline")], repeats=3)
    assert calls == [
        ("train", 0),
        ("roofline", 0),
        ("train", 1),
        ("roofline", 1),
        ("train", 2),
        ("roofline", 2),
    ]
    assert len(medians) == 2 and all(seconds >= 0 for seconds in medians)


def test_infogan_layers_are_the_flops_xla_counts_in_its_forward_passes():
    """The im2col products of the InfoGAN's layers against XLA's own count of the generator's and
    the discriminator's forward passes. XLA leaves out the kernel taps that fall on the zero
    padding, which im2col multiplies: up to 1 - (13/14)^2 = 14% of a 2x2 convolution padded on one
    side of a 7 x 7 map, so the count is between XLA's and XLA's / 0.85 (elementwise work: < 1%)."""
    import jax
    import jax.numpy as jnp

    from experiments.configs import infogan
    from vib_jax import models

    config = infogan.get_config()
    config.hidden_dim, config.channels, config.q_hidden_dim = 96, (16, 32), 24
    model = models.InfoGAN(hidden_dim=96, channels=(16, 32), q_hidden_dim=24)
    latents = jnp.zeros((8, 74))
    variables = jax.eval_shape(model.init, jax.random.key(0), latents)

    def xla_flops(method, inputs):
        apply = lambda v, x: model.apply(v, x, False, method=method)
        return jax.jit(apply).lower(variables, inputs).cost_analysis()["flops"]

    generator, discriminator = step_cost.infogan_layers(config, 8)
    count = lambda layers: sum(2 * r * k * n for r, k, n in layers)
    images = jnp.zeros((8, 784))
    for layers, method, inputs in (
        (generator, model.generate, latents),
        (discriminator, model.discriminate, images),
    ):
        xla = xla_flops(method, inputs)
        assert 0.99 * xla <= count(layers) <= xla / 0.85, (count(layers), xla)
