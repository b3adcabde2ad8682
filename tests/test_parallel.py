"""8 simulated CPU devices give the same training and evaluation as 1 device.

JAX fixes its device count when it starts, so the check runs in a fresh process started with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (this module itself runs in the test process).
"""
import json
import os
import subprocess
import sys
import textwrap


CHECK = textwrap.dedent(
    """
    import json, math
    import jax, jax.numpy as jnp, numpy as np, optax
    from vib_jax import models, parallel, train

    assert jax.device_count() == 8, jax.devices()
    images = jax.random.normal(jax.random.key(0), (256, 20))
    labels = jnp.argmax(images @ jax.random.normal(jax.random.key(1), (20, 10)), -1).astype(jnp.int32)
    model = models.VIBClassifier(latent_dim=6, hidden_dims=(32,))
    optimizer = optax.sgd(0.05)  # unlike Adam, SGD's update scales with the gradient: a scale bug shows
    betas = jnp.array([1e-3, 1e-1])
    initial = train.stack_states(train.create_train_state(model, optimizer, jax.random.key(2), 20), 2)
    noise_keys = jax.vmap(train.member_noise_key, in_axes=(None, 0))(jax.random.key(3), betas)
    chunks = train.chunk_split(images[:200], labels[:200], 40, 10)

    def run(num_devices, betas_at_once):
        mesh = parallel.make_mesh(num_devices)
        def make_epoch(axis_name):
            return train.make_train_epoch(train.make_train_step(
                model, optimizer, ema_decay=0.9, num_samples=3, label_entropy=math.log(10), axis_name=axis_name))

        run_epoch = parallel.compile_sweep_epoch(make_epoch, mesh, 256, 32, betas_at_once)
        run_eval = parallel.compile_sweep_evaluate(lambda axis_name: train.make_evaluate(model, 4, axis_name), mesh,
                                                   betas_at_once)
        fresh = jax.tree_util.tree_map(jnp.copy, initial)  # run_epoch donates the states it is given
        states, args = parallel.replicate((fresh, (images, labels, noise_keys, betas, chunks)), mesh)
        images_, labels_, keys_, betas_, chunks_ = args
        for epoch in range(3):
            states, metrics = run_epoch(states, images_, labels_, jax.random.fold_in(jax.random.key(4), epoch),
                                        keys_, betas_)
        evaluation = run_eval(states.ema_params, chunks_, jax.random.key(5))
        return jax.device_get((states, metrics, evaluation))

    leaves = lambda tree: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]
    largest_difference = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b)))
    relative = lambda a, b: float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))
    reports = {}
    for betas_at_once in (1, 2):  # the betas one after another, and vmapped together
        one, eight = run(1, betas_at_once), run(8, betas_at_once)
        reports[betas_at_once] = dict(
            param_diff=largest_difference(one[0].params, eight[0].params),
            param_scale=max(float(np.max(np.abs(a))) for a in leaves(one[0].params)),
            metric_diff={k: relative(one[1][k], eight[1][k]) for k in one[1]},
            eval_diff={k: relative(one[2][k], eight[2][k]) for k in one[2]},
            moved=largest_difference(one[0].params, initial.params),
            steps=int(one[0].step[0]))
    print(json.dumps(reports))
    """
)


def test_eight_devices_equal_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(reports) == {"1", "2"}
    for report in reports.values():
        assert report["steps"] == 24
        assert report["moved"] > 1e-3  # training did change the params
        # Differences are relative to max(1, |value|): reductions are split differently across devices.
        assert report["param_diff"] < 1e-5 * max(1.0, report["param_scale"]), reports
        assert all(diff < 1e-5 for diff in report["metric_diff"].values()), reports
        assert all(diff < 1e-5 for diff in report["eval_diff"].values()), reports
