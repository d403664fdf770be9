"""Joint training of the two exits: loss, jitted train step, evaluation, and the epoch loop.

The loop checkpoints every epoch and resumes from the last checkpoint: every random number of
epoch e is derived from (seed, e) and the global step, so a resumed run repeats exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ddnn_jax import checkpointing, optim
from ddnn_jax.config import STREAM_INIT, STREAM_SHUFFLE, STREAM_STEP, TrainConfig, run_identity
from ddnn_jax.data import DataSplits, augment, load_dataset, normalize
from ddnn_jax.errors import TrainingDiverged, UsageError
from ddnn_jax.models import DDNN
from ddnn_jax.progress import Progress
from ddnn_jax.retrace import trace_once
from ddnn_jax.rundir import (
    RunDir,
    RunRecord,
    as_run,
    check_for_training,
    locked,
    read_metrics,
    read_run_record,
    write_metrics,
    write_run_record,
)

DATA_AXIS = "data"
RUN_AXIS = "run"  # the leading axis of runs trained together
# Host calls of the compiled epoch when a progress bar shows it (the bar advances between them);
# without a bar the epoch is one call: on XLA:CPU each call costs tens of milliseconds.
TICKS_PER_EPOCH = 20


class TrainState(train_state.TrainState):
    """Parameters, Adam state and step, plus batch-norm statistics and the plateau schedule,
    whose factor scales every update."""

    batch_stats: Any
    plateau: optim.PlateauState

    def apply_gradients(self, *, grads, **kwargs):
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, optim.scale_updates(updates, self.plateau))
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)


def build_model(config: TrainConfig, num_classes: int) -> DDNN:
    """The run's network. Equal architectures get the same module object, so that the states of
    two runs have equal static parts (``apply_fn``) and share compiled programs."""
    return _shared_ddnn(
        num_classes=num_classes,
        edge_channels=config.edge_channels,
        local_hidden=config.local_hidden,
        cloud_conv_channels=tuple(config.cloud_conv_channels),
        cloud_dense_features=tuple(config.cloud_dense_features),
        dropout_rate=config.dropout_rate,
        conv=config.conv,
        precision=config.precision,
    )


_shared_ddnn = functools.lru_cache(maxsize=16)(DDNN)


def plateau_schedule(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """The learning-rate factor, driven by the validation error once per epoch."""
    return optim.plateau(config.plateau_factor, config.plateau_patience)


@functools.lru_cache(maxsize=8)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optimizer object per learning rate: states of equal runs then have equal static
    parts, so a compiled program made for one run takes the next without tracing again."""
    return optax.adam(learning_rate)


def create_train_state(config: TrainConfig, image_shape: tuple[int, ...], num_classes: int) -> TrainState:
    """A freshly initialised state; the initialisation depends only on the seed."""
    model = build_model(config, num_classes)
    key = jax.random.fold_in(jax.random.key(config.seed), STREAM_INIT)
    variables = jax.jit(model.init, static_argnames="train")(
        {"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False
    )
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=_adam(config.learning_rate),
        plateau=plateau_schedule(config).init(variables["params"]),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def joint_loss(
    local_logits: jax.Array, cloud_logits: jax.Array, labels: jax.Array, local_weight: jax.Array
) -> jax.Array:
    """mean over the batch of w * CE(local) + (1 - w) * CE(cloud)."""
    per_sample = local_weight * cross_entropy(local_logits, labels) + (1.0 - local_weight) * cross_entropy(
        cloud_logits, labels
    )
    return per_sample.mean()


class RunConstants(NamedTuple):
    """What a run's steps read besides their batch, as data: runs that differ only in these
    (other weights, other seeds' splits) are trained by one compiled program."""

    w: Any  # float32 scalar: the joint loss's local weight; NaN draws w ~ U(0, 1) per step
    mean: Any  # [C] float32: per-channel normalisation of x / 255
    std: Any  # [C] float32


def run_constants(local_weight: float | None, mean, std) -> RunConstants:
    """A run's constants: its fixed weight (None: drawn at every step) and its normalisation."""
    return RunConstants(
        w=np.float32(np.nan if local_weight is None else local_weight),
        mean=np.asarray(mean, np.float32),
        std=np.asarray(std, np.float32),
    )


def train_step_fn(
    *, horizontal_flip: bool, crop_padding: int
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array, RunConstants], tuple[TrainState, dict]]:
    """The pure ``step(state, images, labels, rng, constants) -> (state, metrics)`` of one run.

    Args:
      horizontal_flip: whether augmentation flips images.
      crop_padding: the random crop's shift in pixels.
    """

    def step(
        state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array, constants: RunConstants
    ):
        augment_rng, dropout_rng, weight_rng = jax.random.split(rng, 3)
        images = augment(images, augment_rng, horizontal_flip=horizontal_flip, pad=crop_padding)
        images = normalize(images, constants.mean, constants.std)
        w = jnp.where(jnp.isnan(constants.w), jax.random.uniform(weight_rng), constants.w)

        def loss_fn(params):
            (local_logits, cloud_logits, _), updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                rngs={"dropout": dropout_rng},
                mutable=["batch_stats"],
            )
            loss = joint_loss(local_logits, cloud_logits, labels, w)
            return loss, (local_logits, cloud_logits, updates["batch_stats"])

        (loss, (local_logits, cloud_logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        metrics = {
            "loss": loss,
            "correct_local": (local_logits.argmax(-1) == labels).sum(),
            "correct_cloud": (cloud_logits.argmax(-1) == labels).sum(),
        }
        return state, metrics

    return step


def make_train_step(*, local_weight: float | None, mean, std, horizontal_flip: bool, crop_padding: int):
    """One jitted optimizer step, ``(state, {"image", "label"}, rng) -> (state, metrics)``,
    driven from Python: for tests and for benchmarking against the compiled epoch."""
    step = train_step_fn(horizontal_flip=horizontal_flip, crop_padding=crop_padding)
    constants = run_constants(local_weight, mean, std)
    return jax.jit(
        lambda state, batch, rng: step(state, batch["image"], batch["label"], rng, constants),
        donate_argnums=0,
    )


def data_mesh(batch_size: int) -> Mesh:
    """A 1-D mesh over every device of every process; batches are split along it."""
    devices = jax.devices()
    if batch_size % len(devices):
        raise UsageError(
            f"--batch-size {batch_size} does not split evenly over {len(devices)} devices: "
            f"use a multiple of {len(devices)}"
        )
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def train_mesh(batch_size: int, runs: int | None) -> Mesh:
    """The mesh of one run (``data_mesh``) or of ``runs`` runs trained together: a 2-D mesh
    (run, data) over every device of every process. The runs are split over as many devices as
    divide both their count and the device count; the batch of each run is split over the rest."""
    if runs is None:
        return data_mesh(batch_size)
    devices = jax.device_count()
    across_runs = math.gcd(runs, devices)
    across_batch = devices // across_runs
    if batch_size % across_batch:
        raise UsageError(
            f"--batch-size {batch_size} does not split evenly over the {across_batch} devices each "
            f"of {runs} runs gets: use a multiple of {across_batch}"
        )
    return jax.make_mesh((across_runs, across_batch), (RUN_AXIS, DATA_AXIS), axis_types=(AxisType.Auto,) * 2)


def place(mesh: Mesh, tree, runs: int | None):
    """``tree`` on the mesh: replicated for one run; for runs together, each array's leading
    run axis split along RUN_AXIS (and replicated along the data axis)."""
    return _put(tree, NamedSharding(mesh, P() if runs is None else P(RUN_AXIS)))


def replicate(mesh: Mesh, tree):
    """A full copy of every array of ``tree`` on every device of the mesh."""
    return _put(tree, NamedSharding(mesh, P()))


def _put(tree, sharding: NamedSharding):
    """Every array of ``tree`` laid out by ``sharding``. Each process passes the same values
    (the same dataset, the same seeded state) and keeps its own shards, so this works
    multi-host."""

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def chunk_steps(steps_per_epoch: int, calls: int) -> int:
    """Optimizer steps per call of the compiled chunk, for about ``calls`` calls an epoch."""
    return max(1, steps_per_epoch // calls)


class TrainEpoch:
    """One epoch of training as compiled programs:
    ``epoch(state, images, labels, root, epoch, constants, on_step=None) -> (state, per-step
    metrics)``.

    ``images`` [N, H, W, C] uint8 and ``labels`` live on the devices for the whole run. A small
    program draws the epoch's permutation; then one compiled chunk program, a loop over
    ``chunk_steps`` steps that gathers, augments and trains on each batch, is called ``calls``
    times (about: the last call runs the steps that are left). One call runs the whole epoch;
    a progress bar asks for ``TICKS_PER_EPOCH``. Keys are derived
    exactly as in a step-by-step loop: the shuffle from (root, STREAM_SHUFFLE, epoch), step i from
    (root, STREAM_STEP, global step i). The batch axis is sharded over the mesh's data axis;
    parameters and optimizer state are replicated along it, and XLA inserts the reductions of
    gradients and batch statistics, so any device count computes the same function.

    The per-step metrics come back to the host as numpy arrays. ``on_step(steps_done, loss)``,
    if given, is called on the host with the steps done and the last step's loss (the mean over
    runs) after each chunk (a progress bar). The programs contain no host callback, so JAX's
    persistent compilation cache can keep them, and every chunking runs the same step program:
    the same numbers with a bar or without (tested). The host reads a chunk's loss only once the next chunk is
    queued, so the device does not wait for the bar. Each program is traced once: a second trace
    (a silent recompilation) raises.

    With ``runs=R`` every argument but ``epoch`` has a leading run axis of R (independent
    trainings: other seeds, other weights, the same shapes) and one program trains them all
    (``jax.vmap``); each run computes what it computes alone, to float tolerance. On a mesh
    with a RUN_AXIS (``train_mesh``) the runs are split over it (``place``).
    """

    def __init__(
        self,
        step,
        mesh: Mesh,
        *,
        batch_size: int,
        steps_per_epoch: int,
        runs: int | None = None,
        calls: int = 1,
    ):
        self.steps, self.chunk = steps_per_epoch, chunk_steps(steps_per_epoch, calls)
        self.calls = -(-steps_per_epoch // self.chunk)
        self.runs = runs
        run_axis = () if runs is None else (RUN_AXIS if RUN_AXIS in mesh.axis_names else None,)
        state_sharding = NamedSharding(mesh, P(*run_axis))  # whole on each data-axis device
        by_example = NamedSharding(mesh, P(*run_axis, None, None, DATA_AXIS))
        per_epoch, calls, chunk = batch_size * steps_per_epoch, self.calls, self.chunk

        def batches(root, n_examples: int, epoch):
            """[calls, chunk, batch] example indices; the rows past the last step repeat it."""
            shuffle_key = jax.random.fold_in(jax.random.fold_in(root, STREAM_SHUFFLE), epoch)
            order = jax.random.permutation(shuffle_key, n_examples)[:per_epoch]
            rows = order.reshape(steps_per_epoch, batch_size)
            rows = rows[jnp.minimum(jnp.arange(calls * chunk), steps_per_epoch - 1)]
            return rows.reshape(calls, chunk, batch_size)

        def run_chunk(state, images, labels, rows, root, constants, epoch, call):
            step_root = jax.random.fold_in(root, STREAM_STEP)
            first = (epoch - 1) * steps_per_epoch + call * chunk
            count = jnp.minimum(chunk, steps_per_epoch - call * chunk)
            mine = jax.lax.dynamic_index_in_dim(rows, call, keepdims=False)

            def one(state, i):
                idx, rng = mine[i], jax.random.fold_in(step_root, first + i)
                return step(state, images[idx], labels[idx], rng, constants)

            def body(i, carry):
                state, metrics = carry
                state, out = one(state, i)
                return state, jax.tree.map(lambda m, v: m.at[i].set(v), metrics, out)

            shapes = jax.eval_shape(one, state, 0)[1]
            metrics = jax.tree.map(lambda s: jnp.zeros((chunk, *s.shape), s.dtype), shapes)
            return jax.lax.fori_loop(0, count, body, (state, metrics))

        if runs is not None:
            batches = jax.vmap(batches, in_axes=(0, None, None))
            run_chunk = jax.vmap(run_chunk, in_axes=(0, 0, 0, 0, 0, 0, None, None))
        self._batches = jax.jit(trace_once(batches), static_argnums=1, out_shardings=by_example)
        outputs = (state_sharding, state_sharding)
        self._chunk = jax.jit(trace_once(run_chunk), donate_argnums=0, out_shardings=outputs)

    def __call__(self, state, images, labels, root, epoch: int, constants: RunConstants, on_step=None):
        rows = self._batches(root, labels.shape[-1], epoch)
        chunks, pending = [], None
        for call in range(self.calls):
            state, metrics = self._chunk(state, images, labels, rows, root, constants, epoch, call)
            chunks.append(metrics)
            if on_step is not None:
                if pending is not None:
                    self._tick(on_step, *pending)
                pending = (call, metrics["loss"])
        if pending is not None:
            self._tick(on_step, *pending)
        axis = 0 if self.runs is None else 1
        chunks = jax.device_get(chunks)
        metrics = jax.tree.map(lambda *parts: np.concatenate(parts, axis=axis), *chunks)
        return state, jax.tree.map(lambda m: m[:, : self.steps] if axis else m[: self.steps], metrics)

    def _tick(self, on_step, call: int, losses) -> None:
        done = min(self.steps, (call + 1) * self.chunk)
        last = np.asarray(losses)[..., done - call * self.chunk - 1]
        on_step(done, float(np.mean(last)))


@functools.lru_cache(maxsize=16)
def _forward(model: DDNN, with_features: bool):
    """The jitted evaluation-mode forward pass, normalisation as data: one program for every run
    of the same architecture."""

    def forward(variables, images, mean, std):
        local_logits, cloud_logits, z = model.apply(variables, normalize(images, mean, std), train=False)
        return (local_logits, cloud_logits, z) if with_features else (local_logits, cloud_logits)

    return jax.jit(forward)


def make_predict_fn(model: DDNN, mean, std, with_features: bool = False):
    """Evaluation-mode forward pass on uint8 images: (local_logits, cloud_logits[, z])."""
    forward = _forward(model, with_features)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return lambda variables, images: forward(variables, images, mean, std)


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` with zero rows appended up to a multiple of ``multiple`` rows."""
    pad = -len(x) % multiple
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x


def predict_in_batches(predict, variables, inputs: np.ndarray, batch_size: int, bar=None):
    """Runs ``predict(variables, batch) -> tuple of arrays`` over all inputs in fixed-size
    batches (the last one padded, so one compiled program serves every split); a tuple of numpy
    arrays out. ``bar`` (a tqdm) advances by the rows done."""
    n = len(inputs)
    outputs = []
    for start in range(0, n, batch_size):
        chunk = inputs[start : start + batch_size]
        outputs.append(jax.device_get(predict(variables, pad_rows(chunk, batch_size))))
        if bar is not None:
            bar.update(len(chunk))
    return tuple(np.concatenate(part)[:n] for part in zip(*outputs, strict=True))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def _check_finite(losses: np.ndarray, *, first_step: int, epoch: int) -> None:
    """Raises TrainingDiverged naming the first step whose loss is NaN or infinite."""
    if not np.all(np.isfinite(losses)):
        bad = int(np.argmin(np.isfinite(losses)))
        raise TrainingDiverged(
            f"loss became {losses[bad]} at step {first_step + bad} (epoch {epoch}): "
            "lower the learning rate or check the data"
        )


class _EpochBar:
    """The live bar of the epoch in progress, advanced after each chunk of steps."""

    def __init__(self, progress: Progress, steps: int, images_per_step: int):
        self.progress, self.steps, self.images_per_step = progress, steps, images_per_step
        self.bar = None
        self.done = 0
        self.title = ""
        self.compiled = False

    def open(self, title: str) -> None:
        """A new bar; the first epoch of a process says that it compiles until its first tick."""
        self.title = title
        description = self.title if self.compiled else f"{self.title} (compiling)"
        self.bar = self.progress.bar(
            self.steps * self.images_per_step, description, unit="img", unit_scale=True
        )
        self.done = 0

    def on_step(self, steps_done, loss) -> None:
        steps_done = int(steps_done)
        if self.bar is not None and steps_done > self.done:
            if not self.compiled:
                self.compiled = True
                self.bar.set_description_str(self.title, refresh=False)
            self.bar.set_postfix_str(f"loss {float(loss):.4f}", refresh=False)
            self.bar.update((steps_done - self.done) * self.images_per_step)
            self.done = steps_done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _restore_or_init(
    config: TrainConfig, data: DataSplits, manager, progress: Progress
) -> tuple[TrainState, int]:
    """The state to continue from (the latest checkpoint that restores, or a fresh one) and
    its epoch."""
    fresh = create_train_state(config, data.image_shape, data.num_classes)
    try:
        state, epoch = checkpointing.restore_latest(manager, fresh, progress.warn)
    except checkpointing.DamagedCheckpoint as err:
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
            config, seed=0, local_weight="per-run", data_dir=None, download=False, limit_train=None
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


def _resume(job: TrainJob, progress: Progress) -> _Resumed:
    manager = checkpointing.manager(job.run.checkpoints, keep=job.config.keep_checkpoints)
    state, epoch = _restore_or_init(job.config, job.data, manager, progress)
    history = [row for row in read_metrics(job.run) if row["epoch"] <= epoch]
    if [row["epoch"] for row in history] != list(range(1, epoch + 1)):
        manager.close()
        raise UsageError(
            f"{job.run.metrics} lacks epochs that checkpoints/ holds (1 to {epoch}): restore it "
            f"from a copy, or delete {job.run} and train again"
        )
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
    live = _EpochBar(progress, steps, config.batch_size * len(group))
    on_step = live.on_step if progress.shows_bars else None
    calls = 1 if on_step is None else TICKS_PER_EPOCH
    key = (group[0].shapes(), runs, calls)
    if key not in programs:
        step = train_step_fn(horizontal_flip=data.horizontal_flip, crop_padding=data.crop_padding)
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
        mesh, along([run_constants(r.job.local_weight, r.job.data.mean, r.job.data.std) for r in group]), runs
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
            _check_finite(metrics["loss"], first_step=(epoch - 1) * steps + 1, epoch=epoch)
            predict = make_predict_fn(build_model(config, data.num_classes), r.job.data.mean, r.job.data.std)
            val_local, val_cloud = _validate(predict, r.state, r.job.data, config.eval_batch_size)
            selection = (val_local + val_cloud) / 2
            r.state = r.state.replace(plateau=optim.end_of_epoch(plateau, r.state.plateau, 1.0 - selection))
            row = _epoch_row(epoch, metrics, seen, val_local, val_cloud, rates[i], started)
            r.history.append(row)
            write_metrics(r.job.run, r.history)
            checkpointing.save(r.manager, epoch, r.state, selection)
            where = "" if runs is None else f"  {r.job.run}"
            progress.note(_epoch_line(row, config.epochs, seen) + where)
        state = group[0].state if runs is None else place(mesh, _stack([r.state for r in group]), runs)


def _epoch_row(
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
    }


def _epoch_line(row: dict, epochs: int, images: int) -> str:
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


def run_training(
    config: TrainConfig,
    run_dir: RunDir | Path,
    *,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
) -> list[dict]:
    """Starts or resumes the run in ``run_dir``: the entry point of ``ddnn train``.

    Everything the user can get wrong is checked before the first file is written.
    """
    return run_trainings([(config, run_dir)], progress=progress, on_epoch_trained=on_epoch_trained)[0]


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
) -> list[list[dict]]:
    """Starts or resumes each (config, directory) run, holding every run's lock; returns each
    one's per-epoch metrics. ``together``: see train_jobs."""
    pairs = [(config, as_run(run_dir)) for config, run_dir in runs]
    for config, run in pairs:
        config.validate()
        check_for_training(run)
    with contextlib.ExitStack() as held:
        for _, run in pairs:
            held.enter_context(locked(run, "train"))
        jobs = [_job(config, run, progress) for config, run in pairs]
        return train_jobs(jobs, together=together, progress=progress, on_epoch_trained=on_epoch_trained)


def _job(config: TrainConfig, run: RunDir, progress: Progress) -> TrainJob:
    """The run's job: its data loaded, its config.json written when it starts."""
    resuming = check_for_training(run)  # again, now that no one else can write
    if resuming:
        _check_resumable(run, config)
    progress.note(f"loading {config.dataset}")
    data = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        split_seed=config.seed,
        limit_train=config.limit_train,
        download=config.download,
    )
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
        write_run_record(run, record)
    return TrainJob(config, data, run, record.local_weight)
