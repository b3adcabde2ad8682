"""Tests of vib_jax.runs: a workdir written by a short real-data run loads back, and its per-example
quantities agree with what the run itself reported."""

import json
import math
import os

import numpy as np
import pytest

from experiments.configs import smoke
from experiments.configs import vae as vae_config
from vib_jax import runs, sweep
from vib_jax.tasks import vib_classifier

pytestmark = [pytest.mark.real_data, pytest.mark.usefixtures("real_mnist")]


@pytest.fixture(scope="module")
def vib_run(tmp_path_factory):
    config = smoke.get_config()
    config.progress, config.seeds = False, (0, 1)
    config.train_subset, config.test_subset, config.train_eval_size = 1000, 500, 500
    config.num_epochs, config.checkpoint_every_epochs, config.ema_decay = 2, 1, 0.5
    config.sweep.beta = (1e-3,)
    workdir = str(tmp_path_factory.mktemp("vib"))
    return workdir, config, sweep.train_and_evaluate(config, workdir)


def test_a_trained_sweep_round_trips(vib_run):
    workdir, config, rows = vib_run
    run = runs.load(workdir)
    assert run.epoch == 2 and run.config.task == "vib_classifier"
    defaults = {name: spec.default for name, spec in vib_classifier.HYPERPARAMETERS.items()}
    assert run.members == [defaults | {"seed": s, "beta": 1e-3} for s in (0, 1)]
    assert run.config.to_dict() == json.load(open(f"{workdir}/config.json"))
    assert [r["test_error_avg"] for r in run.results] == pytest.approx(
        [r["test_error_avg"] for r in rows]
    )
    assert len(run.records) == 2 * 2 and run.records_frame().shape[0] == 4
    assert list(run.results_frame()["seed"]) == [0, 1]

    images, labels = run.split("test", subset_size=500)
    mean, stddev = run.posterior(images)
    assert mean.shape == stddev.shape == (2, 500, config.latent_dim)
    # The rate of the loaded params is the run's own I(Z;X) bound on the test set, member by member.
    rate_bits = np.asarray(run.rate(images).mean(axis=1)) / math.log(2)
    np.testing.assert_allclose(rate_bits, [r["test_izx_bits"] for r in rows], rtol=1e-4)
    probs = run.predictive(images, num_samples=12)
    assert probs.shape == (2, 500, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    errors = 100 * np.mean(np.argmax(probs, -1) != np.asarray(labels), axis=1)
    np.testing.assert_allclose(errors, [r["test_error_avg"] for r in rows], atol=1.5)  # other noise


def test_a_vae_run_loads_and_encodes_what_it_was_trained_on(tmp_path):
    config = vae_config.get_config()
    config.progress, config.num_epochs, config.checkpoint_every_epochs = False, 1, 1
    config.train_subset, config.test_subset, config.train_eval_size = 1000, 200, 200
    config.nll_samples, config.nll_chunk_size = 10, 10
    (row,) = sweep.train_and_evaluate(config, str(tmp_path))
    run = runs.load(str(tmp_path))
    images, _ = run.split("test", subset_size=200)
    rate_nats = float(run.rate(images).mean())
    assert rate_nats == pytest.approx(row["test_rate_nats"], rel=1e-4)  # binarised as in evaluation
    with pytest.raises(ValueError, match="predictive needs a classifier task"):
        run.predictive(images)
    # The figures come back from the workdir alone, the same files as the run wrote.
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    for path in tmp_path.glob("*.png"):
        path.unlink()
    rewritten = run.write_figures()
    assert written and sorted(os.path.basename(p) for p in rewritten) == written
    assert all(os.path.getsize(p) > 0 for p in rewritten)


def test_bad_workdirs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs.load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="has no config.json"):
        runs.load(str(tmp_path))
    (tmp_path / "config.json").write_text(
        json.dumps(smoke.get_config().to_dict() | {"sweep": {"beta": [1e-3]}})
    )
    with pytest.raises(ValueError, match="has no checkpoint yet"):
        runs.load(str(tmp_path))
