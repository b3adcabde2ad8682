"""Tests of vib_jax.checkpoints: orbax round trips of stacked states, numbered by epoch."""

import jax
import jax.numpy as jnp
import numpy as np

from vib_jax import checkpoints


def test_save_restore_and_list_epochs(tmp_path):
    directory = str(tmp_path / "checkpoints")
    assert checkpoints.saved_epochs(directory) == []  # creates nothing
    assert not (tmp_path / "checkpoints").exists()
    manager = checkpoints.checkpoint_manager(directory)
    assert checkpoints.restore_latest(manager, {"w": jnp.zeros(3)}) is None
    states = {
        "w": jnp.arange(6.0).reshape(2, 3),
        "step": jnp.array([4, 4], jnp.int32),
        "key": jax.random.key_data(jax.random.split(jax.random.key(0), 2)),
    }
    for epoch in (1, 2, 3):
        moved = jax.tree_util.tree_map(lambda leaf, e=epoch: leaf + e, states)
        checkpoints.save(manager, epoch, moved, {"train_seconds": 1.5 * epoch})
    assert checkpoints.saved_epochs(directory) == [2, 3]  # the newest two are kept
    epoch, restored, meta = checkpoints.restore_latest(
        manager, jax.tree_util.tree_map(jnp.zeros_like, states)
    )
    assert epoch == 3 and meta == {"train_seconds": 4.5}
    for name in states:
        np.testing.assert_array_equal(restored[name], states[name] + 3)
        assert restored[name].dtype == states[name].dtype
