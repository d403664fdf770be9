"""Orbax checkpoints, the one format for trained weights: the DDNN's TrainState per epoch (a
CheckpointManager over RUN_DIR/checkpoints/) and a router family's stacked variables (one
StandardCheckpointer directory).

The latest few epochs are kept for resuming and the best epoch on validation for collection.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ddnn_jax.common.errors import UsageError

SELECTION_METRIC = "val_accuracy_mean"


def _selection(metrics: dict) -> float:
    return metrics[SELECTION_METRIC]


def manager(directory: Path, keep: int = 3) -> ocp.CheckpointManager:
    """A manager over ``directory`` whose step numbers are completed epochs."""
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        best_fn=_selection,
        best_mode="max",
        preservation_policy=policies.AnyPreservationPolicy(
            [policies.LatestN(n=keep), policies.BestN(get_metric_fn=_selection, n=1)]
        ),
        create=True,
    )
    try:
        return ocp.CheckpointManager(Path(directory).absolute(), options=options)
    except (ValueError, UnicodeDecodeError, OSError, KeyError, TypeError) as err:
        raise UsageError(
            f"{_damaged_metadata(Path(directory)) or directory} is damaged ({type(err).__name__}): move "
            "that epoch's directory out of checkpoints/, or delete the run and train it again"
        ) from None


def unscored_steps(manager: ocp.CheckpointManager) -> list[int]:
    """Saved epochs whose metrics file is gone: the best one cannot be known while they exist."""
    root = Path(manager.directory)
    return [s for s in manager.all_steps() if not (root / str(s) / "metrics" / "metrics").is_file()]


def lost_metrics(manager: ocp.CheckpointManager) -> str | None:
    """Why the best epoch cannot be known (an epoch whose metrics file is gone), or None."""
    unscored = unscored_steps(manager)
    if not unscored:
        return None
    return f"epoch {unscored[0]} has lost its metrics, so the best epoch is unknown"


def _damaged_metadata(directory: Path) -> Path | None:
    """The first epoch's metrics file that does not parse, if one does not."""
    for path in sorted(directory.glob("*/metrics/metrics")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return path
    return None


DIGEST_METRIC = "state_sha256"  # recorded beside the selection metric of every checkpoint


def state_digest(state) -> str:
    """SHA-256 of a state's parameters and batch statistics: which weights outputs come from."""
    return tree_digest({"p": state.params, "b": state.batch_stats})


def tree_digest(tree) -> str:
    """SHA-256 of a tree's leaves, in the tree's order."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def recorded_digest(manager: ocp.CheckpointManager, epoch: int) -> str:
    """The digest saved with a checkpoint ("" for checkpoints saved without one)."""
    return str((manager.metrics(epoch) or {}).get(DIGEST_METRIC, ""))


SPACE_MARGIN = 1 << 20  # bytes of metadata beyond the arrays themselves


def ensure_space(directory: Path, tree) -> None:
    """Raises OSError(ENOSPC) when ``directory``'s filesystem cannot hold ``tree``: Orbax's
    writer threads would otherwise fail half-way with pages of tracebacks."""
    # .nbytes of a device array needs no copy to the host; plain numbers have none
    need = sum(getattr(x, "nbytes", 8) for x in jax.tree.leaves(tree)) + SPACE_MARGIN
    probe = Path(directory)
    while not probe.exists():
        probe = probe.parent
    if shutil.disk_usage(probe).free < need:
        raise OSError(errno.ENOSPC, f"No space left on device for {need} bytes", str(directory))


def save(manager: ocp.CheckpointManager, epoch: int, state, selection_accuracy: float) -> None:
    """Saves the state after ``epoch`` and waits until it is safely on disk."""
    ensure_space(manager.directory, state)
    metrics = {SELECTION_METRIC: selection_accuracy, DIGEST_METRIC: state_digest(state)}
    manager.save(epoch, args=ocp.args.StandardSave(state), metrics=metrics)
    manager.wait_until_finished()


class DamagedCheckpoint(Exception):
    """A checkpoint that exists but cannot be restored."""


def restore(manager: ocp.CheckpointManager, epoch: int, template):
    """The state saved after ``epoch``, with the structure and dtypes of ``template``; raises
    DamagedCheckpoint when its files cannot be read back."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        return manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax and tensorstore raise many kinds for damaged files
        raise DamagedCheckpoint(f"the checkpoint of epoch {epoch} is damaged ({type(err).__name__})") from err


def saved_digest(manager: ocp.CheckpointManager, epoch: int) -> str:
    """``state_digest`` of the weights saved after ``epoch``, restored as plain arrays without
    building the model; raises DamagedCheckpoint when its files cannot be read back."""
    try:
        saved = manager.restore(epoch, args=ocp.args.StandardRestore())
        return tree_digest({"p": saved["params"], "b": saved["batch_stats"]})
    except Exception as err:  # orbax and tensorstore raise many kinds for damaged files
        raise DamagedCheckpoint(f"the checkpoint of epoch {epoch} is damaged ({type(err).__name__})") from err


def restore_latest(manager: ocp.CheckpointManager, template, warn: Callable[[str], None]):
    """(state, epoch) of the latest checkpoint that restores, or (None, 0) when there is none.
    Later checkpoints that do not restore are moved aside (``checkpoints/.damaged-N``, with a
    warning) so that training continues from the one before; if none restores, nothing is
    touched and DamagedCheckpoint is raised (the template may be what is wrong)."""
    steps = sorted(manager.all_steps(), reverse=True)
    failed = []
    for epoch in steps:
        try:
            state = restore(manager, epoch, template)
        except DamagedCheckpoint as damage:
            failed.append((epoch, damage))
            continue
        for bad, why in failed:
            aside = Path(manager.directory) / f".damaged-{bad}"
            warn(f"warning: {why}; moved to {aside}, resuming from epoch {epoch}")
            (Path(manager.directory) / str(bad)).rename(aside)
        if failed:
            manager.reload()
        return state, epoch
    if failed:
        raise DamagedCheckpoint(f"no checkpoint of epochs {steps} restores: {failed[0][1]}")
    return None, 0


def save_tree(directory: Path, tree) -> None:
    """Writes a tree of arrays to ``directory`` (which must not exist yet) and waits for it."""
    tree = jax.device_get(tree)
    ensure_space(Path(directory).parent, tree)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(directory).absolute(), tree)
        checkpointer.wait_until_finished()


def restore_tree(directory: Path):
    """The tree of numpy arrays written by ``save_tree``."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(directory).absolute())
