"""The training stage: the resumable epoch loop over :mod:`ddnn_jax.core.training`.

The loop checkpoints every epoch and resumes from the last checkpoint: every random number of
epoch e is derived from (seed, e) and the global step, so a resumed run repeats exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import TrainingDiverged, UsageError
from ddnn_jax.common.progress import EpochBar, Progress
from ddnn_jax.core import optim
from ddnn_jax.core.config import TrainConfig, run_identity
from ddnn_jax.core.training import (
    TICKS_PER_EPOCH,
    TrainEpoch,
    TrainState,
    accuracy,
    build_model,
    create_train_state,
    make_predict_fn,
    place,
    plateau_schedule,
    predict_in_batches,
    run_constants,
    train_mesh,
    train_step_fn,
)
from ddnn_jax.data import DataSplits
from ddnn_jax.rundir import (
    RunDir,
    RunRecord,
    as_run,
    check_for_training,
    checkpoints,
    locked,
    read_metrics,
    read_run_record,
    run_data,
    write_metrics,
    write_run_record,
)


def check_finite(losses: np.ndarray, *, first_step: int, epoch: int) -> None:
    """Raises TrainingDiverged naming the first step whose loss is NaN or infinite."""
    if not np.all(np.isfinite(losses)):
        bad = int(np.argmin(np.isfinite(losses)))
        raise TrainingDiverged(
            f"loss became {losses[bad]} at step {first_step + bad} (epoch {epoch}): "
            "lower the learning rate or check the data"
        )


def _restore_or_init(
    config: TrainConfig, data: DataSplits, manager, progress: Progress
) -> tuple[TrainState, int]:
    """The state to continue from (the latest checkpoint that restores, or a fresh one) and
    its epoch."""
    fresh = create_train_state(config, data.image_shape, data.num_classes)
    try:
        state, epoch = checkpoints.restore_latest(manager, fresh, progress.warn)
    except checkpoints.DamagedCheckpoint as err:
        manager.close()
        raise UsageError(f"{err}: restore checkpoints/ from a copy, or train in a new --out") from None
    return (fresh, 0) if state is None else (state, epoch)


def _validate(predict, state: TrainState, data: DataSplits, batch_size: int) -> tuple[float, float]:
    """Validation accuracy of the local and the cloud exit."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    local_logits, cloud_logits = predict_in_batches(predict, variables, data.val.images, batch_size)
    return accuracy(local_logits, data.val.labels), accuracy(cloud_logits, data.val.labels)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One run to train: its configuration, its data in memory, its directory and its w (None
    for a fresh draw at every step)."""

    config: TrainConfig
    data: DataSplits
    run: RunDir
    local_weight: float | None


@dataclasses.dataclass
class _Resumed:
    """A job restored to where it stopped: its checkpoint manager, state, epoch and history."""

    job: TrainJob
    manager: Any
    state: TrainState
    epoch: int
    history: list[dict]

    def shapes(self) -> tuple:
        """Jobs with equal keys have the same shapes and settings but their seed, weight and
        data: one compiled program trains them, together or one after another."""
        config, data = self.job.config, self.job.data
        same = dataclasses.replace(
            config,
            seed=0,
            local_weight="per-run",
            data_dir=None,
            download=False,
            limit_train=None,
            limit_eval=None,
            holdout_fold=None,  # which fold is left out is data; the fold runs' sizes are equal
            cotrain_warmup=0,  # a co-trained router's warm-up and weight are data (RunConstants)
            cotrain_weight=0.0,
        )
        return (
            same,
            len(data.train),
            len(data.val),
            data.image_shape,
            data.num_classes,
            data.horizontal_flip,
            data.crop_padding,
        )


def read_history(run: RunDir, epoch: int) -> list[dict]:
    """metrics.jsonl's rows of epochs 1 to ``epoch`` (the one resumed from), or a UsageError
    when some are missing."""
    history = [row for row in read_metrics(run) if row["epoch"] <= epoch]
    if [row["epoch"] for row in history] != list(range(1, epoch + 1)):
        raise UsageError(
            f"{run.metrics} lacks epochs that checkpoints/ holds (1 to {epoch}): restore it "
            f"from a copy, or delete {run} and train again"
        )
    return history


def _resume(job: TrainJob, progress: Progress) -> _Resumed:
    manager = checkpoints.manager(job.run.checkpoints, keep=job.config.keep_checkpoints)
    state, epoch = _restore_or_init(job.config, job.data, manager, progress)
    try:
        history = read_history(job.run, epoch)
    except UsageError:
        manager.close()
        raise
    return _Resumed(job, manager, state, epoch, history)


def train(
    config: TrainConfig,
    data: DataSplits,
    run_dir: RunDir | Path,
    *,
    local_weight: float | None,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
) -> list[dict]:
    """Trains (or resumes training) one run until ``config.epochs``; returns its per-epoch
    metrics (see train_jobs)."""
    job = TrainJob(config, data, as_run(run_dir), local_weight)
    return train_jobs([job], progress=progress, on_epoch_trained=on_epoch_trained)[0]


def train_jobs(
    jobs: Sequence[TrainJob],
    *,
    together: bool = False,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
) -> list[list[dict]]:
    """Trains (or resumes) every job until its ``config.epochs``; returns each one's per-epoch
    metrics. Each job checkpoints every epoch into its own directory and resumes from there.

    Args:
      jobs: the runs to train.
      together: train the jobs that have the same shapes and stand at the same epoch as one
        program with a leading run axis (``jax.vmap``: one device pass trains all of them, the
        way to fill an accelerator). Otherwise they train one after another, through the same
        compiled programs. Either way each run computes what it computes alone, to float
        tolerance.
      progress: where epoch lines and the live bar go.
      on_epoch_trained: called with the epoch number once its training program has run and
        before it is validated and checkpointed (the resume tests kill the process there).
    """
    resumed: list[_Resumed] = []
    try:
        for job in jobs:
            resumed.append(_resume(job, progress))
        groups: dict[Any, list[_Resumed]] = {}
        for i, r in enumerate(resumed):
            # runs at the same epoch train together; others (one resumed further) apart
            groups.setdefault((r.epoch, r.shapes()) if together else i, []).append(r)
        programs: dict[tuple, TrainEpoch] = {}  # runs of equal shapes share one, alone or together
        for group in groups.values():
            _train_group(group, programs, progress, on_epoch_trained)
    finally:
        for r in resumed:
            r.manager.close()
    return [r.history for r in resumed]


def _run_slice(tree: Any, i: int) -> Any:
    """Run ``i``'s part of a tree with a leading run axis."""
    return jax.tree.map(lambda leaf: leaf[i], tree)


def _stack(trees: Sequence[Any]) -> Any:
    """The trees stacked leaf by leaf along a new leading run axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _train_group(
    group: list[_Resumed], programs: dict[tuple, TrainEpoch], progress: Progress, on_epoch_trained
) -> None:
    """Trains runs of equal shapes at the same epoch: alone, or as one program with a run axis."""
    config, data = group[0].job.config, group[0].job.data
    runs = None if len(group) == 1 else len(group)
    along = (lambda trees: trees[0]) if runs is None else _stack
    mesh = train_mesh(config.batch_size, runs)
    steps = len(data.train) // config.batch_size
    live = EpochBar(progress, steps, config.batch_size * len(group))
    on_step = live.on_step if progress.shows_bars else None
    calls = 1 if on_step is None else TICKS_PER_EPOCH
    key = (group[0].shapes(), runs, calls)
    if key not in programs:
        step = train_step_fn(
            horizontal_flip=data.horizontal_flip,
            crop_padding=data.crop_padding,
            cotrained=config.cotrain_router is not None,
        )
        programs[key] = TrainEpoch(
            step, mesh, batch_size=config.batch_size, steps_per_epoch=steps, runs=runs, calls=calls
        )
    run_epoch = programs[key]
    plateau = plateau_schedule(config)
    images = place(mesh, along([r.job.data.train.images for r in group]), runs)
    labels = place(mesh, along([r.job.data.train.labels for r in group]), runs)
    roots = jax.random.wrap_key_data(
        place(mesh, along([jax.random.key_data(jax.random.key(r.job.config.seed)) for r in group]), runs)
    )
    constants = place(
        mesh,
        along(
            [
                run_constants(r.job.local_weight, r.job.data.mean, r.job.data.std, r.job.config, steps)
                for r in group
            ]
        ),
        runs,
    )
    state = place(mesh, along([r.state for r in group]), runs)
    seen = steps * config.batch_size
    title = "" if runs is None else f" ({runs} runs together)"

    for epoch in range(group[0].epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        rates = [config.learning_rate * float(r.state.plateau.scale) for r in group]
        live.open(f"epoch {epoch}/{config.epochs}{title}")
        try:
            state, step_metrics = run_epoch(state, images, labels, roots, epoch, constants, on_step)
        finally:
            live.close()
        if on_epoch_trained is not None:
            on_epoch_trained(epoch)
        for i, r in enumerate(group):
            metrics, r.state = (step_metrics, state) if runs is None else _run_slice((step_metrics, state), i)
            check_finite(metrics["loss"], first_step=(epoch - 1) * steps + 1, epoch=epoch)
            predict = make_predict_fn(build_model(config, data.num_classes), r.job.data.mean, r.job.data.std)
            val_local, val_cloud = _validate(predict, r.state, r.job.data, config.eval_batch_size)
            selection = (val_local + val_cloud) / 2
            r.state = r.state.replace(plateau=optim.end_of_epoch(plateau, r.state.plateau, 1.0 - selection))
            row = epoch_row(epoch, metrics, seen, val_local, val_cloud, rates[i], started)
            r.history.append(row)
            write_metrics(r.job.run, r.history)
            checkpoints.save(r.manager, epoch, r.state, selection)
            where = "" if runs is None else f"  {r.job.run}"
            progress.note(epoch_line(row, config.epochs, seen) + where)
        state = group[0].state if runs is None else place(mesh, _stack([r.state for r in group]), runs)


def epoch_row(
    epoch: int,
    step_metrics: dict,
    images: int,
    val_local: float,
    val_cloud: float,
    learning_rate: float,
    started: float,
) -> dict:
    """The epoch's line of metrics.jsonl; ``images`` were trained on."""
    return {
        "epoch": epoch,
        "train_loss": float(step_metrics["loss"].mean()),
        "train_accuracy_local": int(step_metrics["correct_local"].sum()) / images,
        "train_accuracy_cloud": int(step_metrics["correct_cloud"].sum()) / images,
        "val_accuracy_local": val_local,
        "val_accuracy_cloud": val_cloud,
        "val_accuracy_mean": (val_local + val_cloud) / 2,
        "learning_rate": learning_rate,
        "seconds": time.perf_counter() - started,
        # a co-trained router's squared error on the live benefit (its warm-up epochs included)
        **(
            {"router_loss": float(step_metrics["router_loss"].mean())}
            if "router_loss" in step_metrics
            else {}
        ),
    }


def epoch_line(row: dict, epochs: int, images: int) -> str:
    """The epoch's line on the terminal."""
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"val local {row['val_accuracy_local']:.4f}  val cloud {row['val_accuracy_cloud']:.4f}  "
        f"lr {row['learning_rate']:.2e}  {row['seconds']:.1f}s  ({images / row['seconds']:,.0f} img/s)"
    )


def _check_resumable(run: RunDir, config: TrainConfig) -> None:
    """UsageError unless the run in ``run`` was trained with ``config`` and can be continued."""
    record = read_run_record(run)
    if record.imported_from:
        raise UsageError(
            f"{run} holds weights imported from PyTorch and cannot be trained further: "
            "train a new run with another --out"
        )
    old, new = run_identity(record.train), run_identity(config)
    changed = [key for key in new if old.get(key) != new[key]]
    if changed:
        details = ", ".join(f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in changed)
        raise UsageError(
            f"{run} holds a run with another configuration ({details}): "
            "rerun with its original flags to resume, or choose a new --out"
        )


@dataclasses.dataclass(frozen=True)
class Trainer:
    """A framework that trains jobs: ``train_jobs`` as this module's, and ``describe``, which
    adds to a new run's config.json what the framework knows of where it trains."""

    name: str  # TrainConfig.framework
    train_jobs: Callable[..., list[list[dict]]]
    describe: Callable[[RunRecord], RunRecord] = lambda record: record


JAX = Trainer("jax", train_jobs)


def together_by_default() -> bool:
    """Train runs of equal shapes as one program on an accelerator, one after another on CPU
    (where a run already keeps every core busy)."""
    return jax.default_backend() != "cpu"


def run_trainings(
    runs: Sequence[tuple[TrainConfig, RunDir | Path]],
    *,
    together: bool = False,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
    trainer: Trainer = JAX,
) -> list[list[dict]]:
    """Starts or resumes each (config, directory) run, holding every run's lock.

    Args:
      runs: (configuration, directory) pairs, as ``jobs.training.run_training`` takes one.
      together: train runs of equal shapes as one program with a run axis (see train_jobs);
        the numbers are the same either way.
      progress: where epoch lines and live bars go.
      on_epoch_trained: called with the epoch number after each epoch's step.
      trainer: the framework that trains them, the one each config names (``jobs.training``
        picks it).
    Returns:
      Each run's per-epoch metrics, in the order given.
    """
    pairs = [(config, as_run(run_dir)) for config, run_dir in runs]
    for config, run in pairs:
        config.validate()
        if config.framework != trainer.name:
            raise ValueError(f"a {config.framework} run given to the {trainer.name} trainer")
        check_for_training(run)
    with contextlib.ExitStack() as held:
        for _, run in pairs:
            held.enter_context(locked(run, "train"))
        jobs = [_job(config, run, progress, trainer) for config, run in pairs]
        return trainer.train_jobs(
            jobs, together=together, progress=progress, on_epoch_trained=on_epoch_trained
        )


def _job(config: TrainConfig, run: RunDir, progress: Progress, trainer: Trainer) -> TrainJob:
    """The run's job: its data loaded, its config.json written when it starts."""
    resuming = check_for_training(run)  # again, now that no one else can write
    if resuming:
        _check_resumable(run, config)
    progress.note(f"loading {config.dataset}")
    data = run_data(config)
    if len(data.train) < config.batch_size:
        raise UsageError(
            f"--batch-size {config.batch_size} is larger than the training split "
            f"({len(data.train)} images): lower it"
        )
    record = RunRecord.resolve(
        config,
        num_classes=data.num_classes,
        image_shape=data.image_shape,
        mean=data.mean,
        std=data.std,
        split_sizes={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
    )
    if not resuming:
        write_run_record(run, trainer.describe(record))
    return TrainJob(config, data, run, record.local_weight)
