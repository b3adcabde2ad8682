"""The driver: train every member of a sweep at once, evaluate, checkpoint, resume, write results.

A sweep's members are the product of `config.seeds` and the lists of `config.sweep` (one list per
hyperparameter the task declares, e.g. `config.sweep.beta`); every member has its own seed (its
init, data order and noise) and hyperparameter values, and all of them train in one compiled program
per epoch (`parallel.members_at_once` says how many at once; sharded over devices). The driver knows
no task by name: `config.task` names the module (`vib_jax.tasks`) that supplies the functions.

`preflight` checks every user-facing value and the workdir before any data is loaded or file
written; `train_and_evaluate` then writes into the workdir:

- `config.json`: the run's config (a later run in the same workdir must match it to resume);
- `metrics.jsonl`: one record per epoch and member (its seed and hyperparameters, then metrics);
- `results.csv` and `results.md`: the final table, one row per member; with several seeds also
  `results_summary.csv` and a table of mean ± standard deviation over the seeds in `results.md`;
- `checkpoints/`: orbax checkpoints every `checkpoint_every_epochs` epochs and at the end;
- the task's figures (PNG);
- `.lock`: held by the run training in the workdir, so that a second one is refused.

`results.csv` is written last: a workdir whose `results.csv` is of its newest checkpoint has all of
its outputs (`vib_jax.runs.is_finished`).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from vib_jax import checkpoints, data, metrics, models, parallel, tasks, train

# Config entries a resumed run may change: they do not alter the numbers it produces.
RESUMABLE_CHANGES = frozenset(
    {"num_epochs", "checkpoint_every_epochs", "num_devices", "members_at_once", "progress"}
)
_POSITIVE_INTS = (
    "num_epochs",
    "batch_size",
    "lr_decay_epochs",
    "eval_every_epochs",
    "eval_chunk_size",
    "checkpoint_every_epochs",
)
_NONNEGATIVE_INTS = ("train_subset", "test_subset", "train_eval_size", "num_devices")


def _require(condition: bool, name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first config entry that is missing or out of its allowed range.
    Cheap: no I/O."""
    try:
        _validate_entries(config)
    except (KeyError, AttributeError) as error:
        name = error.args[0] if isinstance(error, KeyError) else str(error)
        raise ValueError(
            f"The config lacks an entry its task {config.get('task')!r} needs ({name}); start from "
            "that task's config file (experiments/configs/)."
        ) from None


def _validate_entries(config: ml_collections.ConfigDict) -> None:
    module = tasks.load(config.task)
    seeds = tuple(config.seeds)
    _require(len(seeds) > 0, "seeds", "a non-empty list of integers >= 0", seeds)
    _require(all(tasks.is_int(s) and s >= 0 for s in seeds), "seeds", "integers >= 0", seeds)
    _require(len(set(seeds)) == len(seeds), "seeds", "free of duplicates", seeds)
    tasks.check_hyperparameters(module, config.sweep.to_dict())
    _require(
        config.dataset in data.KNOWN_DATASETS,
        "dataset",
        f"one of {data.KNOWN_DATASETS}",
        config.dataset,
    )
    tasks.check_positive_ints(config, _POSITIVE_INTS)
    for name in _NONNEGATIVE_INTS:
        _require(
            tasks.is_int(config[name]) and config[name] >= 0,
            name,
            "an integer >= 0 (0: all)",
            config[name],
        )
    _require(
        tasks.is_int(config.members_at_once) and config.members_at_once >= 0,
        "members_at_once",
        "an integer >= 0 (0: all on GPU/TPU, one at a time on CPU)",
        config.members_at_once,
    )
    _require(
        config.optimizer in train.OPTIMIZERS,
        "optimizer",
        f"one of {train.OPTIMIZERS}",
        config.optimizer,
    )
    _require(
        config.lr_schedule in train.LR_SCHEDULES,
        "lr_schedule",
        f"one of {train.LR_SCHEDULES}",
        config.lr_schedule,
    )
    _require(config.learning_rate > 0, "learning_rate", "> 0", config.learning_rate)
    _require(0 < config.lr_decay_rate <= 1, "lr_decay_rate", "in (0, 1]", config.lr_decay_rate)
    _require(0 <= config.ema_decay < 1, "ema_decay", "in [0, 1)", config.ema_decay)
    _require(isinstance(config.ema_debias, bool), "ema_debias", "True or False", config.ema_debias)
    for name in ("adam_b1", "adam_b2"):
        _require(0 <= config[name] < 1, name, "in [0, 1)", config[name])
    _require(config.adam_eps > 0, "adam_eps", "> 0", config.adam_eps)
    if config.train_subset:
        _require(
            config.batch_size <= config.train_subset,
            "batch_size",
            f"<= train_subset={config.train_subset}",
            config.batch_size,
        )
    module.validate_config(config)
    resolved_sweep(config)  # the task may refuse a sweep (e.g. of the deterministic baseline)


def resolved_sweep(config: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
    """The swept values per hyperparameter, as the task resolves them (`{name: (values...)}`)."""
    module = tasks.load(config.task)
    sweep = {name: tuple(float(v) for v in values) for name, values in config.sweep.items()}
    resolve = getattr(module, "resolve_sweep", None)
    return resolve(config, sweep) if resolve else sweep


def sweep_members(config: ml_collections.ConfigDict) -> list[dict[str, float]]:
    """One dict per member, `{"seed": s, **every hyperparameter of the task}`: seeds outermost, then
    the product of the swept lists in the order of their names; unswept hyperparameters keep their
    default."""
    module = tasks.load(config.task)
    sweep = resolved_sweep(config)
    defaults = {name: spec.default for name, spec in module.HYPERPARAMETERS.items()}
    members = []
    for seed in config.seeds:
        for values in itertools.product(*sweep.values()):
            members.append({"seed": int(seed)} | defaults | dict(zip(sweep, values)))
    return members


def config_record(config: ml_collections.ConfigDict) -> dict:
    """The config as JSON-able values (tuples as lists), with the sweep as the task resolves it."""
    record = json.loads(config.to_json())
    record["sweep"] = {name: list(values) for name, values in resolved_sweep(config).items()}
    return record


def check_split_sizes(config: ml_collections.ConfigDict) -> None:
    """Refuses a `train_subset` or `test_subset` above its prepared split's size, and a
    `batch_size` above the training examples. Reads the prepared dataset's small info file."""
    sizes = {
        split: data.prepared_split_length(config.dataset, split) for split in data.KNOWN_SPLITS
    }
    for split, size in sizes.items():
        name = f"{split}_subset"
        if size is not None:
            _require(
                config[name] <= size,
                name,
                f"<= {size}, the size of {config.dataset}'s {split} split (0: all of it)",
                config[name],
            )
    if sizes["train"] is not None:
        examples = config.train_subset or sizes["train"]
        _require(
            config.batch_size <= examples,
            "batch_size",
            f"<= the {examples} training examples",
            config.batch_size,
        )


def _lock_path(workdir: str) -> str:
    return os.path.join(workdir, ".lock")


def _try_lock(handle) -> bool:
    """Takes the exclusive lock of an open file without waiting; False if another holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _in_use_error(workdir: str) -> ValueError:
    return ValueError(
        f"workdir {workdir!r} is in use: another run is training in it (it holds "
        f"{_lock_path(workdir)!r}). Wait for that run to end, or use another --workdir."
    )


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds the workdir's exclusive lock for the block (creating the workdir): two runs writing one
    workdir would interleave their metrics and checkpoints. The operating system drops the lock
    when its process ends, killed or not.

    Raises:
      ValueError: another process holds the lock.
    """
    os.makedirs(workdir, exist_ok=True)
    with open(_lock_path(workdir), "a") as handle:
        if not _try_lock(handle):
            raise _in_use_error(workdir)
        yield


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses a workdir in use by another run, holding a run of another config, holding
    checkpoints without the config they were trained with, or already past `num_epochs`. Touches
    nothing."""
    # Only process 0 holds the lock; the others would find it held by their own run.
    if jax.process_index() == 0 and os.path.exists(_lock_path(workdir)):
        with open(_lock_path(workdir)) as handle:
            if not _try_lock(handle):
                raise _in_use_error(workdir)
    saved = checkpoints.saved_epochs(os.path.join(workdir, "checkpoints"))
    if saved and saved[-1] > config.num_epochs:
        raise ValueError(
            f"num_epochs={config.num_epochs} is below the epoch {saved[-1]} already checkpointed "
            f"in workdir {workdir!r}. Use a new --workdir, or num_epochs >= {saved[-1]}."
        )
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        if saved:
            raise ValueError(
                f"workdir {workdir!r} holds checkpoints but no config.json, so nothing says which "
                "config trained them. Use a new --workdir, or restore that run's config.json."
            )
        return
    with open(path) as handle:
        previous = json.load(handle)
    current = config_record(config)
    differences = sorted(
        k
        for k in set(previous) | set(current)
        if k not in RESUMABLE_CHANGES and previous.get(k) != current.get(k)
    )
    if differences:
        listed = ", ".join(
            f"{k}: {previous.get(k)!r} there, {current.get(k)!r} now" for k in differences
        )
        raise ValueError(
            f"workdir {workdir!r} holds a run with another config ({listed}). "
            "Use a new --workdir, or the same flags to resume that run."
        )


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Every check that can fail a run before it starts: the config, the devices, the data, the
    workdir. Writes nothing (with several processes, call it after `jax.distributed.initialize`:
    it counts the devices).

    Raises:
      ValueError: a config entry out of range (also a subset or batch above the dataset's size),
        or a workdir in use by another run or holding a run of another config.
      FileNotFoundError: the dataset is not prepared (the message gives the command that prepares
        it).
    """
    validate_config(config)
    parallel.choose_num_devices(config.num_devices, (config.batch_size, config.eval_chunk_size))
    data.check_prepared(config.dataset)
    check_split_sizes(config)
    check_workdir(config, workdir)


class Setup(NamedTuple):
    """A sweep ready to train: what `build_setup` returns.

    task: the task's functions; members: one dict per member (seed and hyperparameters); keys: the
    members' `train.MemberKeys`, stacked; hparams: `{name: [M] float32}`; states: the members' fresh
    states, stacked and replicated on the mesh; run_epoch: `run_epoch(states, epoch) -> (states,
    metrics)`, compiled (states donated); evaluate and final_evaluate: `(params, chunks) -> metrics`
    over stacked params (the final one is the task's final evaluation); compile_seconds: of the
    epoch.
    """

    task: tasks.Task
    members: list[dict[str, float]]
    keys: train.MemberKeys
    hparams: dict[str, jax.Array]
    states: train.TrainState
    run_epoch: Callable
    evaluate: Callable
    final_evaluate: Callable
    compile_seconds: float


def data_info(config, images: jax.Array, labels: jax.Array) -> tasks.DataInfo:
    """What the task may know of the training split `images [N, D]`, `labels [N]`."""
    num_examples, input_dim = images.shape
    return tasks.DataInfo(
        num_examples=num_examples,
        input_dim=input_dim,
        num_classes=data.NUM_CLASSES,
        label_entropy=float(train.label_entropy(labels, data.NUM_CLASSES)),
        steps_per_epoch=num_examples // config.batch_size,
    )


def member_inputs(
    config: ml_collections.ConfigDict,
) -> tuple[list[dict[str, float]], train.MemberKeys, dict[str, jax.Array]]:
    """The sweep's members (`sweep_members`), their keys stacked, and every hyperparameter of the
    task as a `[M]` float32 array."""
    members = sweep_members(config)
    defaults = {n: spec.default for n, spec in tasks.load(config.task).HYPERPARAMETERS.items()}
    keys = train.stack(
        [train.member_keys(m["seed"], {n: m[n] for n in defaults}, defaults) for m in members]
    )
    hparams = {n: jnp.asarray([m[n] for m in members], jnp.float32) for n in defaults}
    return members, keys, hparams


def build_setup(config: ml_collections.ConfigDict, mesh: Mesh, images, labels) -> Setup:
    """The one builder of a sweep's training: the task, the members, their fresh states and the
    compiled programs on `mesh`, for the training split `images [N, D]`, `labels [N]`. Serves the
    driver, the benchmark and the tests."""
    task = tasks.load(config.task).build(config, data_info(config, images, labels))
    members, keys, hparams = member_inputs(config)
    states = jax.vmap(task.init)(keys.init)
    states, images, labels, keys, hparams = parallel.replicate(
        (states, images, labels, keys, hparams), mesh
    )
    # The epoch donates the states: every leaf needs its own buffer (the EMA starts as the params).
    states = jax.tree_util.tree_map(jnp.copy, states)

    def make_epoch(collectives):
        return train.make_train_epoch(
            train.make_train_step(task.update, config.ema_decay, collectives, config.ema_debias)
        )

    epoch_program = parallel.compile_sweep_epoch(
        make_epoch, mesh, images.shape[0], config.batch_size, config.members_at_once
    )
    started = time.perf_counter()
    epoch_args = (images, labels, jnp.int32(0), keys.shuffle, keys.noise, hparams)
    compiled_epoch = epoch_program.lower(states, *epoch_args).compile()
    compile_seconds = time.perf_counter() - started

    def run_epoch(states, epoch: int):
        return compiled_epoch(
            states, images, labels, jnp.int32(epoch), keys.shuffle, keys.noise, hparams
        )

    def evaluator(per_example):
        program = parallel.compile_sweep_evaluate(
            lambda collectives: train.make_evaluate(per_example, task.summarize, collectives),
            mesh,
            config.members_at_once,
        )
        return lambda params, chunks: program(params, chunks, keys.eval, hparams)

    evaluate = evaluator(task.evaluate)
    final_evaluate = evaluate if task.final_evaluate is None else evaluator(task.final_evaluate)
    return Setup(
        task, members, keys, hparams, states, run_epoch, evaluate, final_evaluate, compile_seconds
    )


def _load(config: ml_collections.ConfigDict) -> tuple[data.Split, data.Split]:
    train_split = data.load_split(config.dataset, "train", subset_size=config.train_subset or None)
    test_split = data.load_split(config.dataset, "test", subset_size=config.test_subset or None)
    return train_split, test_split


def _first(split: data.Split, size: int) -> data.Split:
    return data.Split(split.images[:size], split.labels[:size]) if size else split


def _member(metrics_tree, m: int) -> dict:
    return {name: np.asarray(value)[m] for name, value in metrics_tree.items()}


def result_rows(setup: Setup, epochs: int, final_train, final_test, seconds: float) -> list[dict]:
    """The results table: one row per member, its seed and hyperparameters, then the task's
    columns."""
    rows = []
    for m, member in enumerate(setup.members):
        row = dict(member) | {"epochs": epochs}
        row |= setup.task.result_row(_member(final_train, m), _member(final_test, m))
        rows.append(row | {"train_seconds": round(seconds, 1)})
    return rows


def result_columns(setup: Setup) -> tuple[str, ...]:
    """The results table's columns: seed, the hyperparameters, epochs, the task's, train_seconds."""
    return (*setup.members[0], "epochs", *setup.task.result_columns, "train_seconds")


def _write_summaries(workdir: str, setup: Setup, rows: list[dict], num_seeds: int) -> None:
    """`results.md`, and with several seeds `results_summary.csv` (not `results.csv`, which is
    written last)."""
    columns = result_columns(setup)
    text = metrics.markdown_table(rows, columns) + "\n"
    if num_seeds > 1:
        groups = [c for c in setup.members[0] if c != "seed"]
        summary = metrics.seed_summary(rows, groups, setup.task.result_columns)
        summary_columns = (
            *groups,
            "seeds",
            *(f"{c}_{s}" for c in setup.task.result_columns for s in ("mean", "std")),
        )
        metrics.write_csv(os.path.join(workdir, "results_summary.csv"), summary, summary_columns)
        text += (
            f"\nMean ± standard deviation over {num_seeds} seeds:\n\n"
            + metrics.markdown_summary(summary, groups, setup.task.result_columns)
            + "\n"
        )
    metrics.write_text(os.path.join(workdir, "results.md"), text)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains every member of `config`'s sweep at once, writes the workdir's files and figures,
    returns the results rows. Holds the workdir's lock (process 0) while it trains and writes."""
    preflight(config, workdir)
    writer = jax.process_index() == 0
    with workdir_lock(workdir) if writer else contextlib.nullcontext():
        return _train_and_write(config, workdir, writer)


def _train_and_write(config: ml_collections.ConfigDict, workdir: str, writer: bool) -> list[dict]:
    train_split, test_split = _load(config)
    chunk_sizes = (config.batch_size, config.eval_chunk_size)
    num_devices = parallel.choose_num_devices(config.num_devices, chunk_sizes)
    mesh = parallel.make_mesh(num_devices)
    setup = build_setup(config, mesh, *train_split)
    steps_per_epoch = train_split.images.shape[0] // config.batch_size
    logging.info(
        "Sweep of %d members of %d params each on %d device(s), %d at once, %d steps per epoch; "
        "compiled in %.1f s.",
        len(setup.members),
        models.count_params(setup.states.params) // len(setup.members),
        num_devices,
        parallel.members_at_once(config.members_at_once, mesh, len(setup.members)),
        steps_per_epoch,
        setup.compile_seconds,
    )
    schedule = train.make_schedule(config, steps_per_epoch)

    def chunks_of(split: data.Split):
        chunked = train.chunk_split(*split, config.eval_chunk_size, data.NUM_CLASSES)
        return parallel.replicate(chunked, mesh)

    train_chunks = chunks_of(_first(train_split, config.train_eval_size))
    test_chunks = chunks_of(test_split)

    os.makedirs(workdir, exist_ok=True)
    manager = checkpoints.checkpoint_manager(os.path.join(workdir, "checkpoints"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    states = setup.states
    restored = checkpoints.restore_latest(manager, states)
    start_epoch, train_seconds = 0, 0.0
    if restored is not None:
        start_epoch, states, meta = restored
        train_seconds = meta["train_seconds"]
        logging.info("Resuming from the checkpoint of epoch %d in %s.", start_epoch, workdir)
    if writer:
        metrics.write_text(
            os.path.join(workdir, "config.json"), json.dumps(config_record(config), indent=2)
        )
        metrics.truncate_jsonl(metrics_path, start_epoch)

    progress = tqdm(
        range(start_epoch + 1, config.num_epochs + 1),
        initial=start_epoch,
        total=config.num_epochs,
        desc="epochs",
        unit="epoch",
        disable=not (config.progress and writer),
    )
    # The newest test evaluation, reused for the results when it is the last one.
    test_metrics = None
    for epoch in progress:
        started = time.perf_counter()
        states, batch_metrics = setup.run_epoch(states, epoch)
        batch_metrics = parallel.to_host(batch_metrics)
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        groups = {"train_batches": batch_metrics}
        if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
            groups["train"] = parallel.to_host(setup.evaluate(states.ema_params, train_chunks))
            groups["test"] = test_metrics = parallel.to_host(
                setup.evaluate(states.ema_params, test_chunks)
            )
            reports = (
                setup.task.progress(_member(test_metrics, m)) for m in range(len(setup.members))
            )
            progress.set_postfix(test=" ".join(reports))
        if writer:
            learning_rate = float(schedule(epoch * steps_per_epoch - 1))
            records = metrics.epoch_records(
                epoch, setup.members, learning_rate, epoch_seconds, **groups
            )
            metrics.append_jsonl(metrics_path, records)
        if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
            checkpoints.save(manager, epoch, states, {"train_seconds": train_seconds})
    progress.close()

    final_train = parallel.to_host(setup.evaluate(states.ema_params, chunks_of(train_split)))
    if test_metrics is None or setup.task.final_evaluate is not None:
        test_metrics = parallel.to_host(setup.final_evaluate(states.ema_params, test_chunks))
    rows = result_rows(setup, config.num_epochs, final_train, test_metrics, train_seconds)
    if writer:
        _write_summaries(workdir, setup, rows, len(config.seeds))
        run = tasks.TrainedRun(
            workdir=workdir,
            members=setup.members,
            rows=rows,
            records=metrics.read_jsonl(metrics_path),
            ema_params=parallel.to_host(states.ema_params),
            test_images=np.asarray(test_split.images),
            test_labels=np.asarray(test_split.labels),
        )
        figures = setup.task.figures(run)
        logging.info("Wrote %s", ", ".join(figures))
        metrics.write_csv(os.path.join(workdir, "results.csv"), rows, result_columns(setup))
    return rows
