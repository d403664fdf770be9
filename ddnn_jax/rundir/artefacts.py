"""The trained artefacts of a run as live objects: the best checkpoint's TrainState, the
deployed routers of a family, and the run's images reloaded per data split."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, cast

import jax
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.outputs import SplitOutputs
from ddnn_jax.core.router_net import RouterConfig, build_router, router_scores
from ddnn_jax.core.training import TrainState, create_train_state
from ddnn_jax.core.variants.budget import with_budget
from ddnn_jax.core.variants.out_of_fold import trained_on
from ddnn_jax.data import DataSplits, Split, load_dataset
from ddnn_jax.rundir import checkpoints
from ddnn_jax.rundir.layout import SPLITS, FamilyDir, RunDir
from ddnn_jax.rundir.records import RunRecord, outputs_source, read_family, read_run_record


def restore_best(run: RunDir) -> tuple[RunRecord, TrainState, int]:
    """The trained DDNN of a run at its best epoch on validation.

    Args:
      run: a run directory with checkpoints.
    Returns:
      (the run's record, the TrainState of its best epoch, that epoch).
    """
    record = read_run_record(run)
    manager = checkpoints.manager(run.checkpoints, keep=record.train.keep_checkpoints)
    lost = checkpoints.lost_metrics(manager)
    if lost:
        manager.close()
        raise UsageError(
            f"{run.checkpoints}: {lost}: restore it from a copy, move that epoch out of "
            "checkpoints/, or train again in a new --out"
        )
    best_epoch = manager.best_step()
    if best_epoch is None:
        saved = list(manager.all_steps())
        manager.close()
        if saved:
            raise UsageError(
                f"{run.checkpoints} holds epochs {saved} but none says how good it was (their "
                f"metrics files are damaged): delete {run} and train again"
            )
        raise UsageError(
            f"{run} has no checkpoint yet: finish training with 'ddnn train --out {run}' and the run's flags"
        )
    template = create_train_state(record.train, record.image_shape, record.num_classes)
    try:
        state = checkpoints.restore(manager, best_epoch, template)
    except checkpoints.DamagedCheckpoint as err:
        raise UsageError(
            f"{run}: {err}, and it is the best one: restore {run.checkpoints / str(best_epoch)} from a "
            "copy, or train the run again in a new --out"
        ) from None
    finally:
        manager.close()
    return record, state, best_epoch


def best_checkpoint(run: RunDir) -> tuple[int, str] | None:
    """(epoch, recorded digest) of the run's best checkpoint on validation, if it has one."""
    record = read_run_record(run)
    manager = checkpoints.manager(run.checkpoints, keep=record.train.keep_checkpoints)
    best = manager.best_step()
    source = None if best is None else (best, checkpoints.recorded_digest(manager, best))
    manager.close()
    return source


def outputs_complete(run: RunDir, *, with_features: bool) -> bool:
    """Whether every split's outputs exist, come from the current best checkpoint (its epoch,
    and its weights where both record a digest), and hold features if asked."""
    made_from, best = outputs_source(run, with_features=with_features), best_checkpoint(run)
    return made_from is not None and best is not None and same_checkpoint(made_from, best)


def same_checkpoint(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Same epoch, and same weights unless either side predates digests."""
    return a[0] == b[0] and (not a[1] or not b[1] or a[1] == b[1])


class DeployedRouter(NamedTuple):
    """One router of a family as a deployment runs it: its configuration, weights and the
    standardisation of its inputs (the family's training statistics)."""

    config: RouterConfig
    variables: Any
    mean: np.ndarray
    std: np.ndarray
    budget: float | None = None  # a budget router's L0, read after its inputs
    members: int = 1  # > 1: the variables have a leading axis of routers whose logits are averaged

    def logits(self, raw_inputs: jax.Array) -> jax.Array:
        """Router scores [N] of raw inputs (``router_net.edge_inputs``): its logit, or its loss's
        fold of several outputs; traceable, so a deployment can compute them in the same
        program as the edge network."""
        standardized = (raw_inputs - self.mean) / self.std
        if self.budget is not None:
            standardized = with_budget(standardized, self.budget)
        apply = lambda v: router_scores(
            self.config, cast(jax.Array, build_router(self.config).apply(v, standardized, train=False))
        )
        if self.members == 1:
            return apply(self.variables)
        return jax.vmap(apply)(self.variables).mean(0)


def deployed_router(family: FamilyDir, index: int) -> DeployedRouter:
    """One router of a family as a callable on edge inputs, standardisation included.

    Args:
      family: a trained family's directory (``route`` returns it; ``RunDir.family(name)``).
      index: the router's target index in the family's grid, or 0 for a score family.
    Returns:
      The router: its config, weights and input standardisation (``logits(inputs)``); a budget
      family's one network with L0 set to the target's.
    """
    record = read_family(family)
    config = RouterConfig.from_json(record.config)
    stacked = checkpoints.restore_tree(family.variables)
    row = 0 if config.objective == "budget" else index
    rows = slice(row * record.members, (row + 1) * record.members) if record.members > 1 else row
    return DeployedRouter(
        config=config,
        variables=jax.tree.map(lambda leaf: jax.numpy.asarray(leaf[rows]), stacked),
        members=record.members,
        mean=np.asarray(record.input_mean, np.float32),
        std=np.asarray(record.input_std, np.float32),
        budget=float(config.targets[index]) if config.objective == "budget" else None,
    )


def run_data(config: TrainConfig) -> DataSplits:
    """The data a run of ``config`` trains on: its dataset, split by its seed, limited as it asks,
    and without its held-out fold of the training split (an out-of-fold run; the normalisation
    stays the whole training split's, as the run it serves has it)."""
    data = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        split_seed=config.seed,
        limit_train=config.limit_train,
        limit_eval=config.limit_eval,
        download=config.download,
    )
    if config.holdout_fold is None:
        return data
    keep = trained_on(len(data.train.labels), config.holdout_folds, config.seed, config.holdout_fold)
    return dataclasses.replace(data, train=Split(data.train.images[keep], data.train.labels[keep]))


def split_images(run: RunDir, outputs: dict[str, SplitOutputs]) -> dict[str, np.ndarray]:
    """The run's images per split, reloaded with the run's own split seed and limits."""
    data = run_data(read_run_record(run).train)
    images = {}
    for name in SPLITS:
        split = getattr(data, name)
        if not np.array_equal(split.labels, outputs[name].labels):
            raise UsageError(f"the {name} images of {run} no longer match its outputs: rerun 'ddnn collect'")
        images[name] = split.images
    return images
