"""The beta-sweep driver: train several betas at once, evaluate, checkpoint, resume and write the results.

`validate_config` checks every user-facing value and `check_workdir` checks that a workdir can be used, both
before any data is loaded or file written; `train_and_evaluate` then runs the sweep as one compiled
program per epoch (over all betas: `parallel.members_at_once` says how many at once; sharded over devices)
and writes into the workdir:

- `config.json`: the run's config (a later run in the same workdir must match it to resume);
- `metrics.jsonl`: one record per epoch and beta (losses in nats, information in bits, errors in [0, 1]);
- `results.csv` and `results.md`: the final table, one row per beta (errors in %, information in bits);
- `checkpoints/`: orbax checkpoints every `checkpoint_every_epochs` epochs and at the end.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from tqdm.auto import tqdm

from vib_jax import checkpoints, data, metrics, models, parallel, train

NUM_CLASSES = 10
# Config entries a resumed run may change: they do not alter the numbers it produces.
RESUMABLE_CHANGES = frozenset({"num_epochs", "checkpoint_every_epochs", "num_devices", "betas_at_once", "progress"})


def _require(condition: bool, name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first config entry out of its allowed range. Cheap: no I/O."""
    betas = tuple(config.betas)
    _require(len(betas) > 0, "betas", "a non-empty list of floats >= 0", betas)
    _require(all(math.isfinite(b) and b >= 0 for b in betas), "betas", "finite and >= 0", betas)
    _require(len(set(betas)) == len(betas), "betas", "free of duplicates", betas)
    data.validate_dataset(config.dataset)
    for name in ("num_epochs", "latent_dim", "train_samples", "eval_samples", "batch_size", "lr_decay_epochs",
                 "eval_every_epochs", "eval_chunk_size", "checkpoint_every_epochs"):
        _require(int(config[name]) == config[name] and config[name] >= 1, name, "an integer >= 1", config[name])
    for name in ("train_subset", "test_subset", "train_eval_size", "num_devices"):
        _require(int(config[name]) == config[name] and config[name] >= 0, name, "an integer >= 0 (0: all)", config[name])
    _require(int(config.betas_at_once) == config.betas_at_once and config.betas_at_once >= 0, "betas_at_once",
             "an integer >= 0 (0: all on GPU/TPU, one at a time on CPU)", config.betas_at_once)
    _require(all(int(w) == w and w >= 1 for w in config.hidden_dims), "hidden_dims", "integers >= 1", config.hidden_dims)
    _require(config.learning_rate > 0, "learning_rate", "> 0", config.learning_rate)
    _require(0 < config.lr_decay_rate <= 1, "lr_decay_rate", "in (0, 1]", config.lr_decay_rate)
    _require(0 <= config.ema_decay < 1, "ema_decay", "in [0, 1)", config.ema_decay)
    for name in ("adam_b1", "adam_b2"):
        _require(0 <= config[name] < 1, name, "in [0, 1)", config[name])
    if config.train_subset:
        _require(config.batch_size <= config.train_subset, "batch_size", f"<= train_subset={config.train_subset}",
                 config.batch_size)


def resolved_betas(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """The sweep's betas; the deterministic baseline has no rate term, so it is one run at beta = 0."""
    return (0.0,) if config.deterministic else tuple(float(b) for b in config.betas)


def config_record(config: ml_collections.ConfigDict) -> dict:
    """The config as JSON-able values (tuples as lists), with the betas actually swept."""
    record = json.loads(config.to_json())
    record["betas"] = list(resolved_betas(config))
    return record


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses a workdir holding a run of another config, or one already past `num_epochs`. Touches nothing."""
    saved = checkpoints.saved_epochs(os.path.join(workdir, "checkpoints"))
    if saved and saved[-1] > config.num_epochs:
        raise ValueError(f"num_epochs={config.num_epochs} is below the epoch {saved[-1]} already checkpointed in "
                         f"workdir {workdir!r}. Use a new --workdir, or num_epochs >= {saved[-1]}.")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as handle:
        previous = json.load(handle)
    current = config_record(config)
    differences = sorted(k for k in set(previous) | set(current)
                         if k not in RESUMABLE_CHANGES and previous.get(k) != current.get(k))
    if differences:
        listed = ", ".join(f"{k}: {previous.get(k)!r} there, {current.get(k)!r} now" for k in differences)
        raise ValueError(f"workdir {workdir!r} holds a run with another config ({listed}). "
                         "Use a new --workdir, or the same flags to resume that run.")


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Every check that can fail a run before it starts: the config, the data, the workdir. Writes nothing.

    Raises:
      ValueError: a config entry out of range, or a workdir holding a run of another config.
      FileNotFoundError: the dataset is not prepared (the message gives the command that prepares it).
    """
    validate_config(config)
    data.check_prepared(config.dataset)
    check_workdir(config, workdir)


def _load(config: ml_collections.ConfigDict) -> tuple[data.Split, data.Split]:
    train_split = data.load_split(config.dataset, "train", subset_size=config.train_subset or None)
    test_split = data.load_split(config.dataset, "test", subset_size=config.test_subset or None)
    return train_split, test_split


def _first(split: data.Split, size: int) -> data.Split:
    return data.Split(split.images[:size], split.labels[:size]) if size else split


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains one model per beta of `config` (all at once), writes the workdir's files, returns the results rows."""
    preflight(config, workdir)
    betas = resolved_betas(config)
    writer = jax.process_index() == 0

    train_split, test_split = _load(config)
    num_train, input_dim = train_split.images.shape
    steps_per_epoch = num_train // config.batch_size
    num_devices = parallel.choose_num_devices(config.num_devices, (config.batch_size, config.eval_chunk_size))
    mesh = parallel.make_mesh(num_devices)
    logging.info("Sweep over betas %s on %d device(s), %d at once, %d steps per epoch.", betas, num_devices,
                 parallel.members_at_once(config.betas_at_once, mesh, len(betas)), steps_per_epoch)

    model = models.VIBClassifier(config.latent_dim, NUM_CLASSES, tuple(config.hidden_dims), not config.deterministic)
    schedule = train.learning_rate_schedule(config.learning_rate, config.lr_decay_rate, config.lr_decay_epochs,
                                            steps_per_epoch)
    optimizer = train.make_optimizer(schedule, config.adam_b1, config.adam_b2)
    train_chunks = train.chunk_split(*_first(train_split, config.train_eval_size), config.eval_chunk_size, NUM_CLASSES)
    test_chunks = train.chunk_split(*test_split, config.eval_chunk_size, NUM_CLASSES)
    step_for_axis = functools.partial(
        train.make_train_step, model, optimizer, ema_decay=config.ema_decay,
        num_samples=1 if config.deterministic else config.train_samples,
        label_entropy=float(train_chunks.label_entropy),
        rate_budget=config.rate_budget if config.rate_budget >= 0 else None)
    run_epoch = parallel.compile_sweep_epoch(lambda axis_name: train.make_train_epoch(step_for_axis(axis_name=axis_name)),
                                             mesh, num_train, config.batch_size, config.betas_at_once)
    run_evaluate = parallel.compile_sweep_evaluate(
        lambda axis_name: train.make_evaluate(model, config.eval_samples, axis_name), mesh, config.betas_at_once)

    init_key, shuffle_key, noise_key, eval_key = jax.random.split(jax.random.key(config.seed), 4)
    beta_array = jnp.asarray(betas, jnp.float32)
    noise_keys = jax.vmap(train.member_noise_key, in_axes=(None, 0))(noise_key, beta_array)
    states = train.stack_states(train.create_train_state(model, optimizer, init_key, input_dim), len(betas))
    states, images, labels, noise_keys, beta_array, train_chunks, test_chunks = parallel.replicate(
        (states, train_split.images, train_split.labels, noise_keys, beta_array, train_chunks, test_chunks), mesh)

    os.makedirs(workdir, exist_ok=True)
    manager = checkpoints.checkpoint_manager(os.path.join(workdir, "checkpoints"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    restored = checkpoints.restore_latest(manager, states)
    start_epoch, train_seconds = 0, 0.0
    if restored is not None:
        start_epoch, states, meta = restored
        train_seconds = meta["train_seconds"]
        logging.info("Resuming from the checkpoint of epoch %d in %s.", start_epoch, workdir)
    if writer:
        metrics.write_text(os.path.join(workdir, "config.json"), json.dumps(config_record(config), indent=2))
        metrics.truncate_jsonl(metrics_path, start_epoch)

    started = time.perf_counter()
    run_epoch = run_epoch.lower(states, images, labels, shuffle_key, noise_keys, beta_array).compile()
    logging.info("Compiled the epoch program in %.1f s.", time.perf_counter() - started)
    progress = tqdm(range(start_epoch + 1, config.num_epochs + 1), initial=start_epoch, total=config.num_epochs,
                    desc="epochs", unit="epoch", disable=not (config.progress and writer))
    test_metrics = None  # the newest test evaluation, reused for the results when it is the last epoch's
    for epoch in progress:
        started = time.perf_counter()
        states, batch_metrics = run_epoch(states, images, labels, jax.random.fold_in(shuffle_key, epoch), noise_keys,
                                          beta_array)
        batch_metrics = jax.device_get(batch_metrics)
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        groups = {"train_batches": batch_metrics}
        if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
            groups["train"] = jax.device_get(run_evaluate(states.ema_params, train_chunks, eval_key))
            groups["test"] = test_metrics = jax.device_get(run_evaluate(states.ema_params, test_chunks, eval_key))
            progress.set_postfix(test_error=" ".join(f"{100 * e:.2f}%" for e in groups["test"]["error_avg"]))
        if writer:
            learning_rate = float(schedule(epoch * steps_per_epoch - 1))
            metrics.append_jsonl(metrics_path, metrics.epoch_records(epoch, betas, learning_rate, epoch_seconds,
                                                                     **groups))
        if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
            checkpoints.save(manager, epoch, states, {"train_seconds": train_seconds})
    progress.close()

    full_train = train.chunk_split(*train_split, config.eval_chunk_size, NUM_CLASSES)
    final_train = jax.device_get(run_evaluate(states.ema_params, parallel.replicate(full_train, mesh), eval_key))
    if test_metrics is None:  # resumed at the final epoch: nothing was evaluated in this process
        test_metrics = jax.device_get(run_evaluate(states.ema_params, test_chunks, eval_key))
    rows = metrics.result_rows(betas, config.num_epochs, final_train, test_metrics, train_seconds)
    if writer:
        metrics.write_csv(os.path.join(workdir, "results.csv"), rows)
        metrics.write_text(os.path.join(workdir, "results.md"), metrics.markdown_table(rows) + "\n")
    return rows
