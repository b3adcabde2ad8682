"""Tests of vib_jax.tasks (loading a task, checking swept hyperparameters) and of the VIB classifier
task's own config handling."""

import pytest

from experiments.configs import default
from vib_jax import sweep, tasks
from vib_jax.tasks import vae, vib_classifier

DEFAULTS = {name: spec.default for name, spec in vib_classifier.HYPERPARAMETERS.items()}


def test_load_finds_package_tasks_and_dotted_paths():
    assert tasks.load("vae") is vae
    assert tasks.load("vib_classifier") is vib_classifier
    assert tasks.load("tests.gather_task").HYPERPARAMETERS["weight"].default == 1.0
    assert tasks.available() == ["infogan", "vae", "vib_classifier"]
    for bad in ("gan", "vib_jax.tasks.gan", "no_such_package.task"):
        with pytest.raises(ValueError, match=r"task must be one of \['infogan', 'vae', 'vib_"):
            tasks.load(bad)


@pytest.mark.parametrize(
    "sweep_values, message",
    [
        ({"beta": ()}, "sweep.beta must be a non-empty list"),
        ({"beta": (1e-3, -1.0)}, r"sweep.beta values must be finite and >= 0, got \[-1.0\]"),
        ({"beta": (float("inf"),)}, "sweep.beta values must be finite"),
        ({"rate_budget": (-2.0,)}, "sweep.rate_budget values must be finite and >= 0"),
        ({"beta": (0.1, 0.1)}, "sweep.beta must be free of duplicates"),
        ({"dropout": (0.5, 1.0)}, r"sweep.dropout values must be finite and in \[0, 1\)"),
        ({"label_smoothing": (-0.1,)}, r"sweep.label_smoothing values must be finite and in"),
        (
            {"confidence_penalty": (-1.0,)},
            "sweep.confidence_penalty values must be finite and >= 0",
        ),
        (
            {"beta_max": (0.5,), "beta_step_size": (0.0, 1e-3)},
            r"every member needs sweep.beta_step_size > 0 with it",
        ),
        (
            {"beta_max": (0.5,), "beta_step_size": (1e-3,), "beta": (1e-3, 1.0)},
            "beta_max must be >= every member's starting beta, got beta_max 0.5 below beta 1.0",
        ),
        (
            {"lambda": (1.0,)},
            "sweep.lambda is not a hyperparameter of this task; "
            "it has beta: weight of the rate, per nat; beta_max: the dual update's cap",
        ),
    ],
)
def test_bad_sweeps_are_named(sweep_values, message):
    with pytest.raises(ValueError, match=message):
        tasks.check_hyperparameters(vib_classifier, sweep_values)


def test_members_are_seeds_times_the_product_of_the_lists():
    config = default.get_config()
    config.seeds = (3, 4)
    config.sweep.beta = (1e-3, 1e-2)
    with config.sweep.unlocked():
        config.sweep.rate_budget = (5.0,)
    members = sweep.sweep_members(config)
    assert members == [
        DEFAULTS | {"seed": s, "beta": b, "rate_budget": 5.0} for s in (3, 4) for b in (1e-3, 1e-2)
    ]
    config.sweep = {"beta": (1e-3,)}
    assert sweep.sweep_members(config) == [DEFAULTS | {"seed": s, "beta": 1e-3} for s in (3, 4)]


def test_the_deterministic_baseline_is_one_member_at_beta_zero():
    config = default.get_config()
    config.deterministic, config.seeds = True, (0, 1)
    config.sweep.beta = (1e-3, 1e-2)
    assert [m["beta"] for m in sweep.sweep_members(config)] == [0.0, 0.0]
    assert sweep.config_record(config)["sweep"] == {"beta": [0.0]}


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("latent_dim", 0, "latent_dim must be an integer >= 1"),
        ("eval_samples", -1, "eval_samples must be an integer >= 1"),
        ("hidden_dims", (1024, 0), "hidden_dims must be integers >= 1"),
    ],
)
def test_vib_config_entries_are_checked(name, value, message):
    config = default.get_config()
    config[name] = value
    with pytest.raises(ValueError, match=message):
        sweep.validate_config(config)
