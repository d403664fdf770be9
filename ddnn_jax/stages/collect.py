"""Per-sample outputs of a trained DDNN: the source of the offloading meta-dataset.

``collect`` runs the best-on-validation weights in evaluation mode over the training, validation
and test splits and writes one ``rundir.SplitOutputs`` per split: local and cloud logits, labels,
the epoch they come from and, on request, the edge features z.
"""

from __future__ import annotations

from pathlib import Path

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.training import (
    TrainState,
    build_model,
    create_train_state,
    make_predict_fn,
    predict_in_batches,
)
from ddnn_jax.data.datasets import load_dataset
from ddnn_jax.rundir import checkpoints
from ddnn_jax.rundir.records import (
    SPLITS,
    RunDir,
    RunRecord,
    SplitOutputs,
    as_run,
    locked,
    outputs_source,
    read_run_record,
    write_outputs,
)


def collect(
    run_dir: RunDir | Path, *, with_features: bool = False, progress: Progress = Progress()
) -> dict[str, Path]:
    """Writes the per-sample outputs of every split; returns their paths.

    Args:
      run_dir: a training run (config.json and checkpoints/).
      with_features: also store the edge feature maps z.
      progress: where the live bar over the images goes.
    """
    run = as_run(run_dir)
    read_run_record(run)  # before the lock: a directory that is no run gets no lock file
    with locked(run, "collect"):
        return _collect(run, with_features, progress)


def _collect(run: RunDir, with_features: bool, progress: Progress) -> dict[str, Path]:
    record, state, best_epoch = restore_best(run)
    config = record.train
    data = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        split_seed=config.seed,
        limit_train=config.limit_train,
    )
    predict = make_predict_fn(
        build_model(config, data.num_classes), record.mean, record.std, with_features=with_features
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    digest = checkpoints.state_digest(state)
    outputs = {}
    total = sum(len(getattr(data, name)) for name in SPLITS)
    with progress.bar(total, "collect", unit="img", unit_scale=True) as bar:
        for name in SPLITS:
            split = getattr(data, name)
            out = predict_in_batches(predict, variables, split.images, config.eval_batch_size, bar)
            outputs[name] = SplitOutputs(
                local_logits=out[0],
                cloud_logits=out[1],
                labels=split.labels,
                epoch=best_epoch,
                features=out[2] if with_features else None,
                checkpoint=digest,
            )
    return write_outputs(run, outputs)


def restore_best(run: RunDir) -> tuple[RunRecord, TrainState, int]:
    """(config record, TrainState of the best epoch on validation, that epoch) of a run."""
    record = read_run_record(run)
    manager = checkpoints.manager(run.checkpoints, keep=record.train.keep_checkpoints)
    unscored = checkpoints.unscored_steps(manager)
    if unscored:
        manager.close()
        raise UsageError(
            f"{run.checkpoints / str(unscored[0])} has lost its metrics, so the best epoch is unknown: "
            "restore it from a copy, move that epoch out of checkpoints/, or train again in a new --out"
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
