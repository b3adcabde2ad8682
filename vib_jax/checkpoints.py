"""Orbax checkpoints of a sweep's stacked train states, saved by epoch, for resuming a run
exactly."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A manager of checkpoints under `directory` (created on first save), numbered by epoch."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def saved_epochs(directory: str) -> list[int]:
    """The epochs checkpointed under `directory` (orbax names each checkpoint by its number);
    creates nothing."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def save(manager: ocp.CheckpointManager, epoch: int, states: Any, meta: dict) -> None:
    """Saves `states` (any pytree of arrays) and the JSON-able `meta` as checkpoint `epoch`, and
    waits."""
    manager.save(
        epoch,
        args=ocp.args.Composite(state=ocp.args.StandardSave(states), meta=ocp.args.JsonSave(meta)),
    )
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> tuple[int, Any, dict] | None:
    """`(epoch, states, meta)` of the newest checkpoint, or None if there is none.

    Args:
      manager: from `checkpoint_manager`.
      like: a pytree with the shapes, dtypes and shardings to restore into (e.g. freshly initialised
        states).
    """
    epoch = manager.latest_step()
    if epoch is None:
        return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    restored = manager.restore(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return epoch, restored["state"], restored["meta"]
