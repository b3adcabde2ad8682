"""Tests of vib_jax.parallel: the device count, members at once, the member map; and 8 simulated CPU
devices giving the same training and evaluation as 1 device, through the driver's own setup builder:
for the VIB classifier (with dropout, and a rate budget whose hinge acts on the global batch's mean
rate; and with beta's dual update and warm-up, whose beta follows the global batch's mean rate),
for a task whose loss needs the whole batch (`tests/gather_task.py`, which uses
`Collectives.gather`), for the VAE with the MMD of the global batch's latents to prior samples
(InfoVAE), and for the InfoGAN, whose batch norm takes the statistics of the global batch (its
players stepping at once, and in turn).

JAX fixes its device count when it starts, so the check runs in a fresh process started with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (this module itself runs in the test process).
"""

import collections
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vib_jax import parallel

CHECK = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from experiments.configs import infogan, smoke, vae
    from vib_jax import parallel, sweep, train

    assert jax.device_count() == 8, jax.devices()
    task_name, variant = sys.argv[1], sys.argv[2]
    pixels = 784 if task_name == "infogan" else 20  # the InfoGAN's convolutions need 28 x 28
    images = jnp.tanh(jax.random.normal(jax.random.key(0), (256, pixels)))  # in [-1, 1]
    weights = jax.random.normal(jax.random.key(1), (pixels, 10))
    labels = jnp.argmax(images @ weights, -1).astype(jnp.int32)
    chunks = train.chunk_split(images[:200], labels[:200], 40, 10)

    def task_config():
        if task_name == "infogan":
            config = infogan.get_config()
            config.channels, config.hidden_dim, config.q_hidden_dim = (4, 8), 16, 8
            config.noise_dim, config.generator_learning_rate = 6, 0.1
            if variant == "alternating":  # two steps in one, each on its own global batch
                config.player_updates = "alternating"
            return config
        config = vae.get_config() if task_name == "vae" else smoke.get_config()
        config.task, config.latent_dim = task_name, 6
        if task_name == "vae":
            config.nll_samples, config.nll_chunk_size = 4, 2
        config.hidden_dims, config.train_samples, config.eval_samples = (32,), 3, 4
        config.sweep.beta = (1e-3,)
        return config

    def run(num_devices, members_at_once):
        config = task_config()
        config.batch_size, config.ema_decay = 32, 0.9
        # SGD: unlike Adam's, its steps scale with the gradient, so a gradient off by the number of
        # devices shows.
        config.optimizer, config.learning_rate = "sgd", 0.1
        if variant == "alternating":
            # At 0.1, its second epoch turned any perturbation of the state, the devices'
            # rounding or 1e-7 of the values on one device, into the same 9e-3 change of the
            # params (commit f0e7edb); at 0.02 the 8 devices stay within 4e-7 of one.
            config.learning_rate, config.generator_learning_rate = 0.02, 0.02
        config.seeds, config.members_at_once = (0, 1), members_at_once
        with config.sweep.unlocked():
            if task_name == "infogan":
                config.sweep.info_weight = (0.5,)  # batch statistics over every device's rows
            elif variant == "beta_schedules":
                # The dual update of beta from the global batch's mean rate (each device's mean
                # would give each device its own beta), capped, under a one-epoch warm-up.
                config.sweep.beta, config.sweep.target_rate = (0.05,), (20.0,)
                config.sweep.beta_step_size, config.sweep.beta_max = (1e-4,), (0.2,)
                config.sweep.beta_warmup_epochs = (1.0,)
            elif task_name == "vib_classifier":
                config.sweep.dropout = (0.3,)  # each example's mask from its own key
                # The hinge acts on the whole batch's mean rate, not on each device's: C = 27 nats
                # lies among the devices' means of 4 examples (the batch mean is ~27 in epoch 1).
                # A hinge on each device's mean moved the loss by 4e-3 and the params by 3e-2.
                config.sweep.beta, config.sweep.rate_budget = (0.1,), (27.0,)
            elif task_name == "vae":
                config.sweep.mmd_weight = (10.0,)  # MMD^2 of the batch gathered over devices
                # A budget the devices' mean rates straddle (the batch mean is ~1.9 nats): a hinge
                # on each device's mean moved the rate by 4.5e-4, 4x the tolerance.
                config.sweep.rate_budget = (1.9,)
            else:
                config.sweep.weight = (2.0,)
        mesh = parallel.make_mesh(num_devices)
        setup = sweep.build_setup(config, mesh, images, labels)
        initial = jax.device_get(setup.states.params)  # the epoch donates the states it is given
        states, first_metrics = setup.run_epoch(setup.states, 1)
        for epoch in range(2, 4):
            states, metrics = setup.run_epoch(states, epoch)
        evaluation = setup.evaluate(states.ema_params, parallel.replicate(chunks, mesh))
        return jax.device_get((states, metrics, evaluation, initial, first_metrics))

    leaves = lambda tree: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]
    largest_difference = lambda a, b: max(
        float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b))
    )
    relative = lambda a, b: float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))
    reports = {}
    # The members one after another, and vmapped together. The models of real tasks are slow to
    # compile: vmapped only (the engine's two paths are the same for every task: the test task
    # and the VAE take both).
    for members_at_once in (2,) if task_name in ("infogan", "vib_classifier") else (1, 2):
        one, eight = run(1, members_at_once), run(8, members_at_once)
        reports[members_at_once] = dict(
            param_diff=largest_difference(one[0].params, eight[0].params),
            param_scale=max(float(np.max(np.abs(a))) for a in leaves(one[0].params)),
            metric_diff={k: relative(one[1][k], eight[1][k]) for k in one[1]},
            eval_diff={k: relative(one[2][k], eight[2][k]) for k in one[2]},
            moved=largest_difference(one[0].params, one[3]),
            steps=int(one[0].step[0]),
            first_metrics={k: float(v[0]) for k, v in one[4].items()},
            last_metrics={k: float(v[0]) for k, v in one[1].items()})
    print(json.dumps(reports))
    """
)


@pytest.mark.parametrize(
    ("task", "variant"),
    [
        ("vib_classifier", ""),
        ("vib_classifier", "beta_schedules"),
        ("tests.gather_task", ""),
        # The VAE's sharded update is the classifier's engine path; its sharded final evaluation
        # is checked in the suite by tests/test_vae.py. ~50 s.
        pytest.param("vae", "", marks=pytest.mark.slow),
        pytest.param("infogan", "", marks=pytest.mark.slow),  # ~1 min, mostly compiling convs
        pytest.param("infogan", "alternating", marks=pytest.mark.slow),
    ],
)
def test_eight_devices_equal_one_device(task, variant):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", CHECK, task, variant],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(reports) == ({"2"} if task in ("infogan", "vib_classifier") else {"1", "2"})
    for report in reports.values():
        assert report["steps"] == 24
        assert report["moved"] > 1e-3  # training did change the params
        # Differences are relative to max(1, |value|): reductions are split differently across
        # devices.
        # The VAE's MMD term (weight 10, lr 0.1) amplifies rounding: 1.6e-5 when written, against
        # 1.6 with a loss that skipped the gather.
        tolerance = 1e-4 if task == "vae" else 1e-5
        assert report["param_diff"] < tolerance * max(1.0, report["param_scale"]), reports
        assert all(diff < tolerance for diff in report["metric_diff"].values()), reports
        assert all(diff < tolerance for diff in report["eval_diff"].values()), reports
        if task == "tests.gather_task":
            assert (
                report["first_metrics"]["batch_mean_penalty"] > 1e-3
            )  # the global-batch term is in play
        if task == "vae":
            assert report["first_metrics"]["mmd"] > 1e-3
        if task == "vib_classifier" and not variant:
            assert report["first_metrics"]["penalty"] > 1e-3  # the hinge is in play
        if variant == "beta_schedules":
            # Epoch 1 ramps beta up from 0.05 / 8 (the mean of the ramp is 0.028); by epoch 3 the
            # dual update has moved it away from 0.05.
            assert report["first_metrics"]["beta"] < 0.04, reports
            assert abs(report["last_metrics"]["beta"] - 0.05) > 1e-3, reports


def test_one_device_runs_shard_map_only_for_a_vmapped_sweep():
    mesh = parallel.make_mesh(1)
    assert not parallel.uses_shard_map(mesh, at_once=1)
    assert parallel.uses_shard_map(mesh, at_once=8)


def test_members_at_once():
    mesh = parallel.make_mesh(1)  # a CPU device in the tests
    assert parallel.members_at_once(0, mesh, num_members=8) == 1  # CPU: one at a time
    assert parallel.members_at_once(3, mesh, num_members=8) == 3
    assert parallel.members_at_once(20, mesh, num_members=8) == 8
    with pytest.raises(ValueError, match="members_at_once"):
        parallel.members_at_once(-1, mesh, num_members=8)


@pytest.mark.parametrize("at_once", [1, 2, 3, 4])
def test_map_over_members_maps_the_swept_arguments_only(at_once):
    fn = lambda x, shared, y: {"sum": x @ shared + y, "first": x[0]}
    xs, ys = jnp.arange(12.0).reshape(4, 3), jnp.arange(4.0)
    shared = jnp.array([1.0, 10.0, 100.0])
    out = jax.jit(parallel.map_over_members(fn, (0, None, 0), at_once))(xs, shared, ys)
    np.testing.assert_allclose(out["sum"], np.asarray(xs) @ np.asarray(shared) + np.asarray(ys))
    np.testing.assert_allclose(out["first"], xs[:, 0])
    single = parallel.map_over_members(fn, (0, None, 0), at_once)(xs[:1], shared, ys[:1])
    assert single["sum"].shape == (1,) and float(single["sum"][0]) == 0 * 1 + 1 * 10 + 2 * 100


def test_choose_num_devices():
    assert (
        parallel.choose_num_devices(0, (100, 1000), available=8) == 5
    )  # 5 divides both; 6, 7, 8 do not
    assert parallel.choose_num_devices(0, (128, 1000), available=8) == 8
    assert parallel.choose_num_devices(2, (100,), available=8) == 2
    with pytest.raises(ValueError, match="num_devices"):
        parallel.choose_num_devices(3, (100,), available=8)
    with pytest.raises(ValueError, match="num_devices"):
        parallel.choose_num_devices(9, (100,), available=8)
    # Two processes of 4 devices: each gives an equal share, so the count is a multiple of 2.
    assert parallel.choose_num_devices(0, (100,), available=8, processes=2) == 4
    assert parallel.choose_num_devices(2, (100,), available=8, processes=2) == 2
    assert parallel.choose_num_devices(0, (80, 400), available=8, processes=2) == 8
    with pytest.raises(ValueError, match="multiple of the 2 process"):
        parallel.choose_num_devices(5, (100,), available=8, processes=2)
    with pytest.raises(ValueError, match="No device count"):
        parallel.choose_num_devices(0, (5,), available=8, processes=2)


def test_every_process_gives_the_mesh_an_equal_share_of_its_devices():
    Device = collections.namedtuple("Device", ["process_index", "id"])
    # Two processes of 4 devices, listed out of order: 4 devices are 2 of each, not process 0's 4.
    devices = [Device(p, 4 * p + i) for p in (1, 0) for i in (3, 2, 1, 0)]
    assert parallel.mesh_devices(devices, 4) == [(0, 0), (0, 1), (1, 4), (1, 5)]
    assert parallel.mesh_devices(devices, 8) == sorted(devices)
    single = [Device(0, i) for i in range(8)]
    assert parallel.mesh_devices(single, 3) == single[:3]  # one process: the first ones
