r"""Trains VIB classifiers for one beta or a sweep of betas at once, and writes results, checkpoints and figures.

  python -m experiments.sweep_beta --beta=1e-3 --workdir=workdirs/beta1e-3
  python -m experiments.sweep_beta --betas=1e-8:1:9 --num_epochs=25 --workdir=workdirs/sweep
  python -m experiments.sweep_beta --config=experiments/configs/smoke.py --workdir=/tmp/smoke
  python -m experiments.sweep_beta --config.batch_size=200 ...   # any config entry

`--betas` takes a comma-separated list (1e-4,1e-3,1e-2) or a log-spaced range LOW:HIGH:COUNT (1e-8:1:9).
Running again with the same --workdir resumes from the last checkpoint.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from vib_jax import metrics, plots, sweep

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/sweep_beta", "Where results, checkpoints and figures go.")
_BETA = flags.DEFINE_float("beta", None, "One beta (overrides the config's betas).")
_BETAS = flags.DEFINE_string("betas", None, "Several betas: '1e-4,1e-3' or a log-spaced range 'LOW:HIGH:COUNT'.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
# Shortcuts for config entries; `--config.NAME=VALUE` sets any entry.
_SHORTCUTS = {
    "dataset": flags.DEFINE_string("dataset", None, "Dataset: mnist or fashion_mnist."),
    "num_epochs": flags.DEFINE_integer("num_epochs", None, "Number of training epochs."),
    "latent_dim": flags.DEFINE_integer("latent_dim", None, "Bottleneck size K."),
    "train_samples": flags.DEFINE_integer("train_samples", None, "Posterior samples per example in training."),
    "eval_samples": flags.DEFINE_integer("eval_samples", None, "Posterior samples averaged in evaluation."),
    "seed": flags.DEFINE_integer("seed", None, "Random seed."),
    "deterministic": flags.DEFINE_bool("deterministic", None, "Train the no-bottleneck baseline instead."),
    "num_devices": flags.DEFINE_integer("num_devices", None, "Devices to use; 0: all that fit the batch."),
    "betas_at_once": flags.DEFINE_integer(
        "betas_at_once", None, "Betas trained at once (vmapped); the groups run one after another. "
        "0: all of them on GPU/TPU, one at a time on CPU."),
}


def parse_betas(text: str) -> tuple[float, ...]:
    """'1e-4,1e-3' -> (1e-4, 1e-3); 'LOW:HIGH:COUNT' -> COUNT log-spaced values from LOW to HIGH."""
    try:
        if ":" in text:
            low, high, count = text.split(":")
            low, high, count = float(low), float(high), int(count)
            if not (low > 0 and high >= low and count >= 1):
                raise ValueError
            return tuple(float(b) for b in np.geomspace(low, high, count))
        betas = tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"--betas must be a list like '1e-4,1e-3' or a range 'LOW:HIGH:COUNT' with "
                         f"0 < LOW <= HIGH and COUNT >= 1, got {text!r}.") from None
    if not betas:
        raise ValueError(f"--betas must name at least one beta, got {text!r}.")
    return betas


def config_from_flags():
    """The config file's values, overridden by the command line's flags. Raises ValueError on bad values."""
    config = _CONFIG.value
    if _BETA.present and _BETAS.present:
        raise ValueError("Give --beta or --betas, not both.")
    if _BETA.value is not None:
        if not (math.isfinite(_BETA.value) and _BETA.value >= 0):
            raise ValueError(f"--beta must be a finite float >= 0, got {_BETA.value}.")
        config.betas = (_BETA.value,)
    if _BETAS.value is not None:
        config.betas = parse_betas(_BETAS.value)
    for name, flag in _SHORTCUTS.items():
        if flag.value is not None:
            config[name] = flag.value
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
        sweep.preflight(config, _WORKDIR.value)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    rows = sweep.train_and_evaluate(config, _WORKDIR.value)
    if jax.process_index() == 0:
        figures = plots.sweep_figures(_WORKDIR.value)
        print(metrics.markdown_table(rows))
        logging.info("Wrote %s", ", ".join(figures))


if __name__ == "__main__":
    app.run(main)
