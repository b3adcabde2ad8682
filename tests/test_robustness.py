"""Tests of experiments/robustness.py: bad input fails before any work; the whole entrypoint on
two small trained workdirs (slow)."""

import csv
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import robustness
from experiments.configs import smoke
from vib_jax import runs, sweep

pytestmark = [pytest.mark.real_data, pytest.mark.usefixtures("real_mnist")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-beta VIB sweep and the deterministic baseline, 1 epoch on a real-MNIST subset."""
    root = tmp_path_factory.mktemp("robustness")
    for name, deterministic in (("vib", False), ("det", True)):
        config = smoke.get_config()
        config.progress, config.num_epochs, config.deterministic = False, 1, deterministic
        config.train_subset, config.test_subset, config.train_eval_size = 1000, 500, 500
        config.sweep.beta = (1e-3, 1e-1)
        sweep.train_and_evaluate(config, str(root / name))
    return root


def test_the_entrypoints_flags_do_not_collide():
    """absl flags are process-wide: the entrypoints must be importable together (as tests do)."""
    for module in ("experiments.sweep_beta", "experiments.table1"):
        importlib.import_module(module)  # a DuplicateFlagError if a name were defined twice
    names = set(robustness.flags.FLAGS)
    assert {"workdirs", "predictive_samples", "seeds_per_arm", "workdir", "eval_samples"} <= names


@pytest.mark.parametrize(
    "values, message",
    [
        (["0", "-0.1"], "--linf_epsilons must be a non-empty list of numbers >= 0"),
        (["abc"], "--linf_epsilons must be numbers"),
    ],
)
def test_bad_epsilons_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        robustness.parse_epsilons("linf_epsilons", values)


def test_the_summary_means_each_setting_over_its_seeds():
    rows = [
        dict(model="vib", seed=s, beta=b, attack="pgd_linf", epsilon=0.1, accuracy=a, seconds=1.0)
        for s, b, a in ((0, 1e-3, 40.0), (1, 1e-3, 50.0), (0, 1e-1, 70.0), (1, 1e-1, 72.0))
    ]
    table = robustness.seed_summary_table("robustness", rows).splitlines()
    assert table[0] == "| model | beta | seeds | accuracy | seconds |"
    assert table[2:] == [
        "| vib | 0.001 | 2 | 45.00 ± 7.07 | 1.00 ± 0.00 |",
        "| vib | 0.10 | 2 | 71.00 ± 1.41 | 1.00 ± 0.00 |",
    ]


def test_the_member_table_keeps_a_measure_that_every_row_shares():
    rows = [
        dict(model="vib", seed=s, beta=1e-3, reached=1.0, success=1.0, accuracy=0.0, l0_mean=l0)
        | dict(l2_mean=1.5, linf_mean=0.4)
        for s, l0 in ((0, 80.0), (1, 90.0))
    ]
    header = robustness.member_table("carlini_wagner", rows).splitlines()[0]
    assert header == (
        "| model | seed | reached | success | accuracy | l0_mean | l2_mean | linf_mean |"
    )


def test_workdirs_without_a_checkpoint_of_two_datasets_or_one_name_are_refused(trained, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(trained / "vib", empty, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ValueError, match="has no checkpoint yet"):
        robustness.load_checked([str(trained / "det"), str(empty)])
    fashion = tmp_path / "fashion"
    shutil.copytree(trained / "vib", fashion)
    with open(fashion / "config.json") as handle:
        config = json.load(handle)
    with open(fashion / "config.json", "w") as handle:
        json.dump(config | {"dataset": "fashion_mnist"}, handle)
    with pytest.raises(ValueError, match="--workdirs must be trained on one dataset"):
        robustness.load_checked([str(trained / "vib"), str(fashion)])
    # Two models of one name would be pooled as seeds of one setting.
    shutil.copytree(trained / "det", tmp_path / "other" / "vib")
    with pytest.raises(ValueError, match=r"--workdirs must end in different folder names"):
        robustness.load_checked([str(trained / "vib"), str(tmp_path / "other" / "vib")])
    # A run still training (checkpoints, no results.csv of them) is not attacked.
    training = tmp_path / "training"
    shutil.copytree(trained / "vib", training, ignore=shutil.ignore_patterns("results.csv"))
    with pytest.raises(ValueError, match="--workdirs: .*training has not finished"):
        robustness.load_checked([str(trained / "det"), str(training)])


def test_a_member_with_non_finite_params_is_refused_before_any_attack(trained):
    run = runs.load(str(trained / "vib"))
    robustness.check_finite(run)  # both members trained normally
    leaves, tree = jax.tree_util.tree_flatten(run.ema_params)
    leaves[0] = np.asarray(leaves[0]).copy()
    leaves[0][1].flat[0] = np.nan  # the second member (beta = 0.1) diverged
    diverged = dataclasses.replace(run, ema_params=jax.tree_util.tree_unflatten(tree, leaves))
    with pytest.raises(ValueError, match=r"non-finite params .*'beta': 0\.1"):
        robustness.check_finite(diverged)


def test_an_output_folder_that_is_a_training_workdir_is_refused(trained, tmp_path):
    kept = (trained / "vib" / "results.md").read_text()
    command = [sys.executable, "-m", "experiments.robustness", f"--workdirs={trained / 'det'}"]
    result = subprocess.run(
        [*command, f"--output={trained / 'vib'}"], capture_output=True, text=True, cwd=os.getcwd()
    )
    assert result.returncode != 0 and "is a training workdir" in result.stderr
    assert (trained / "vib" / "results.md").read_text() == kept


@pytest.mark.slow
def test_the_entrypoint_writes_every_table_and_figure(trained, tmp_path):
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "experiments.robustness",
        f"--workdirs={trained / 'vib'},{trained / 'det'}",
        f"--output={output}",
        "--num_images=100",
        "--pgd_steps=3",
        "--cw_steps=10",
        "--attack_samples=2",
        "--linf_epsilons=0,0.1",
        "--l2_epsilons=0,1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("robustness", "carlini_wagner", "calibration", "ood"):
        assert (output / f"{name}.csv").exists()
    for figure in (
        "accuracy_fgsm",
        "accuracy_pgd_linf",
        "accuracy_pgd_l2",
        "cw_sizes",
        "cw_zeros_to_one",
        "reliability",
    ):
        assert os.path.getsize(output / f"{figure}.png") > 5_000
    summary = (output / "summary.md").read_text()
    assert summary.count("| det |") == 3 * 2 + 1 + 1 + 3 * 2  # attacks x eps, CW, ECE, OOD
    with open(output / "robustness.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 3 * 2  # 3 members x 3 attacks x 2 epsilons
    # At epsilon 0 every attack leaves the deterministic model its clean accuracy.
    run = runs.load(str(trained / "det"))
    images, labels = run.split("test", subset_size=100)
    clean = 100 * float(np.mean(np.argmax(run.predictive(images, 1)[0], -1) == labels))
    for row in rows:
        if row["model"] == "det" and float(row["epsilon"]) == 0:
            assert float(row["accuracy"]) == pytest.approx(clean)
    with open(output / "ood.csv") as handle:
        ood = list(csv.DictReader(handle))
    assert {r["score"] for r in ood if r["model"] == "det"} == {"entropy", "max_softmax"}
    assert {r["score"] for r in ood if r["model"] == "vib"} == {"rate", "entropy", "max_softmax"}
    with open(output / "carlini_wagner.csv") as handle:
        cw = list(csv.DictReader(handle))
    # A fresh verdict only removes successes; a deterministic model's verdict is the attack's own.
    assert all(float(r["success"]) <= float(r["reached"]) for r in cw)
    assert all(r["success"] == r["reached"] for r in cw if r["model"] == "det")
    assert any(float(r["success"]) > 0 for r in cw if r["model"] == "det")
