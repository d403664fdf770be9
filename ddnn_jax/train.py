"""Joint training of the two exits: loss, jitted train step, evaluation, and the epoch loop.

The loop checkpoints every epoch and resumes from the last checkpoint: every random number of
epoch e is derived from (seed, e) and the global step, so a resumed run repeats exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
TICKS_PER_EPOCH = 50  # progress updates from inside the compiled epoch


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
    return DDNN(
        num_classes=num_classes,
        edge_channels=config.edge_channels,
        local_hidden=config.local_hidden,
        cloud_conv_channels=tuple(config.cloud_conv_channels),
        cloud_dense_features=tuple(config.cloud_dense_features),
        dropout_rate=config.dropout_rate,
        conv=config.conv,
    )


def plateau_schedule(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """The learning-rate factor, driven by the validation error once per epoch."""
    return optim.plateau(config.plateau_factor, config.plateau_patience)


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
        tx=optax.adam(config.learning_rate),
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


def train_step_fn(
    *,
    local_weight: float | None,
    mean: np.ndarray,
    std: np.ndarray,
    horizontal_flip: bool,
    crop_padding: int,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The pure ``step(state, images, labels, rng) -> (state, metrics)`` of one run.

    Args:
      local_weight: w of the joint loss, or None to draw w ~ U(0, 1) at every step.
      mean, std: per-channel normalisation of the raw uint8 images.
      horizontal_flip: whether augmentation flips images.
      crop_padding: the random crop's shift in pixels.
    """
    channel_mean, channel_std = jnp.asarray(mean), jnp.asarray(std)

    def step(state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array):
        augment_rng, dropout_rng, weight_rng = jax.random.split(rng, 3)
        images = augment(images, augment_rng, horizontal_flip=horizontal_flip, pad=crop_padding)
        images = normalize(images, channel_mean, channel_std)
        w = jax.random.uniform(weight_rng) if local_weight is None else local_weight

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


def make_train_step(**step_options):
    """One jitted optimizer step, ``(state, {"image", "label"}, rng) -> (state, metrics)``,
    driven from Python: for tests and for benchmarking against the compiled epoch."""
    step = train_step_fn(**step_options)
    return jax.jit(
        lambda state, batch, rng: step(state, batch["image"], batch["label"], rng), donate_argnums=0
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


def replicate(mesh: Mesh, tree):
    """A full copy of every array of ``tree`` on every device of the mesh. Each process passes
    the same values (the same dataset, the same seeded state), so this works multi-host."""
    sharding = NamedSharding(mesh, P())

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def make_train_epoch(
    step,
    mesh: Mesh,
    *,
    batch_size: int,
    steps_per_epoch: int,
    on_step: Callable[[int, float], None] | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """The whole epoch as one compiled program:
    ``epoch(state, images, labels, root_key, epoch) -> (state, per-step metrics)``.

    ``images`` [N, H, W, C] uint8 and ``labels`` live on the devices for the whole run. The
    program draws the epoch's permutation, then a ``lax.scan`` gathers, augments and trains on
    each batch. Keys are derived exactly as in a step-by-step loop: the shuffle from
    (root, STREAM_SHUFFLE, epoch), step i from (root, STREAM_STEP, global step i). The batch
    axis is sharded over ``mesh``; parameters and optimizer state are replicated, and XLA
    inserts the reductions of gradients and batch statistics, so any device count computes
    the same function.

    ``on_step(steps_done, loss)``, if given, is called on the host with the number of steps
    done and the last step's loss, about ``TICKS_PER_EPOCH`` times per epoch (a progress bar):
    the scan then runs over chunks of steps, each an inner scan followed by one host callback,
    so that the steps themselves compile exactly as without it. The callbacks depend on the
    losses they report, so they arrive in order. Without ``on_step`` nothing leaves the device.
    The program is traced once: a second trace (a silent recompilation) raises.
    """
    replicated = NamedSharding(mesh, P())
    by_example = NamedSharding(mesh, P(None, DATA_AXIS))
    per_step = batch_size * steps_per_epoch
    tick_every = max(1, steps_per_epoch // TICKS_PER_EPOCH)

    @trace_once
    def epoch_fn(state, images, labels, root, epoch):
        shuffle_key = jax.random.fold_in(jax.random.fold_in(root, STREAM_SHUFFLE), epoch)
        order = jax.random.permutation(shuffle_key, labels.shape[0])
        batches = order[:per_step].reshape(steps_per_epoch, batch_size)
        batches = jax.lax.with_sharding_constraint(batches, by_example)
        step_root = jax.random.fold_in(root, STREAM_STEP)
        first_step = (epoch - 1) * steps_per_epoch

        def body(state, xs):
            i, idx = xs
            rng = jax.random.fold_in(step_root, first_step + i)
            return step(state, images[idx], labels[idx], rng)

        xs = (jnp.arange(steps_per_epoch), batches)
        if on_step is None:
            return jax.lax.scan(body, state, xs)
        return _scan_with_ticks(body, state, xs, steps_per_epoch, tick_every, on_step)

    return jax.jit(epoch_fn, donate_argnums=0, out_shardings=(replicated, replicated))


def _scan_with_ticks(body, state, xs, steps: int, every: int, on_step: Callable[[int, float], None]):
    """``lax.scan(body, state, xs)`` over ``steps`` steps, calling ``on_step(steps done, loss)``
    on the host after every ``every`` steps and after the last."""
    chunks, tail = divmod(steps, every)
    head = jax.tree.map(lambda a: a[: chunks * every].reshape(chunks, every, *a.shape[1:]), xs)

    def chunk(state, chunk_xs):
        state, metrics = jax.lax.scan(body, state, chunk_xs)
        jax.debug.callback(on_step, chunk_xs[0][-1] + 1, metrics["loss"][-1])
        return state, metrics

    state, metrics = jax.lax.scan(chunk, state, head)
    metrics = jax.tree.map(lambda m: m.reshape(chunks * every, *m.shape[2:]), metrics)
    if tail:
        state, tail_metrics = jax.lax.scan(body, state, jax.tree.map(lambda a: a[chunks * every :], xs))
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), metrics, tail_metrics)
        jax.debug.callback(on_step, steps, tail_metrics["loss"][-1])
    return state, metrics


def make_predict_fn(model: DDNN, mean, std, with_features: bool = False):
    """Jitted evaluation-mode forward pass on uint8 images: (local_logits, cloud_logits[, z])."""
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    @jax.jit
    def predict(variables, images):
        local_logits, cloud_logits, z = model.apply(variables, normalize(images, mean, std), train=False)
        return (local_logits, cloud_logits, z) if with_features else (local_logits, cloud_logits)

    return predict


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
    """The live bar of the epoch in progress, advanced from inside the compiled epoch."""

    def __init__(self, progress: Progress, steps: int, batch_size: int):
        self.progress, self.steps, self.batch_size = progress, steps, batch_size
        self.bar = None
        self.done = 0
        self.title = ""
        self.compiled = False

    def open(self, epoch: int, epochs: int) -> None:
        """A new bar; the first epoch of a process says that it compiles until its first tick."""
        self.title = f"epoch {epoch}/{epochs}"
        description = self.title if self.compiled else f"{self.title} (compiling)"
        self.bar = self.progress.bar(self.steps * self.batch_size, description, unit="img", unit_scale=True)
        self.done = 0

    def on_step(self, steps_done, loss) -> None:
        steps_done = int(steps_done)
        if self.bar is not None and steps_done > self.done:
            if not self.compiled:
                self.compiled = True
                self.bar.set_description_str(self.title, refresh=False)
            self.bar.set_postfix_str(f"loss {float(loss):.4f}", refresh=False)
            self.bar.update((steps_done - self.done) * self.batch_size)
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


def train(
    config: TrainConfig,
    data: DataSplits,
    run_dir: RunDir | Path,
    *,
    local_weight: float | None,
    progress: Progress = Progress(),
    on_epoch_trained: Callable[[int], None] | None = None,
) -> list[dict]:
    """Trains (or resumes training) until ``config.epochs``; returns the per-epoch metrics.

    Args:
      config: the run's configuration.
      data: the dataset in memory.
      run_dir: where checkpoints/ and metrics.jsonl live.
      local_weight: the resolved w, or None for a fresh draw at every step.
      progress: where epoch lines and the live bar go.
      on_epoch_trained: called with the epoch number once its training program has run and
        before it is validated and checkpointed (the resume tests kill the process there).
    """
    run = as_run(run_dir)
    manager = checkpointing.manager(run.checkpoints, keep=config.keep_checkpoints)
    state, start_epoch = _restore_or_init(config, data, manager, progress)
    history = [row for row in read_metrics(run) if row["epoch"] <= start_epoch]
    if [row["epoch"] for row in history] != list(range(1, start_epoch + 1)):
        manager.close()
        raise UsageError(
            f"{run.metrics} lacks epochs that checkpoints/ holds (1 to {start_epoch}): restore it "
            f"from a copy, or delete {run} and train again"
        )
    mesh = data_mesh(config.batch_size)
    steps_per_epoch = len(data.train) // config.batch_size
    live = _EpochBar(progress, steps_per_epoch, config.batch_size)
    on_step = live.on_step if progress.shows_bars else None
    run_epoch = _epoch_program(data, mesh, local_weight, config.batch_size, steps_per_epoch, on_step)
    predict = make_predict_fn(build_model(config, data.num_classes), data.mean, data.std)
    plateau = plateau_schedule(config)
    root = jax.random.key(config.seed)
    images, labels = replicate(mesh, data.train.images), replicate(mesh, data.train.labels)
    state = replicate(mesh, state)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        learning_rate = config.learning_rate * float(state.plateau.scale)
        live.open(epoch, config.epochs)
        try:
            state, step_metrics = run_epoch(state, images, labels, root, epoch)
            step_metrics = jax.device_get(step_metrics)
        finally:
            live.close()
        if on_epoch_trained is not None:
            on_epoch_trained(epoch)
        _check_finite(step_metrics["loss"], first_step=(epoch - 1) * steps_per_epoch + 1, epoch=epoch)
        val_local, val_cloud = _validate(predict, state, data, config.eval_batch_size)
        selection = (val_local + val_cloud) / 2
        state = state.replace(plateau=optim.end_of_epoch(plateau, state.plateau, 1.0 - selection))
        seen = steps_per_epoch * config.batch_size
        row = _epoch_row(epoch, step_metrics, seen, val_local, val_cloud, learning_rate, started)
        history.append(row)
        write_metrics(run, history)
        checkpointing.save(manager, epoch, state, selection)
        progress.note(_epoch_line(row, config.epochs, seen))
    manager.close()
    return history


def _epoch_program(data: DataSplits, mesh: Mesh, local_weight, batch_size: int, steps: int, on_step):
    """The run's compiled epoch (see make_train_epoch)."""
    step = train_step_fn(
        local_weight=local_weight,
        mean=data.mean,
        std=data.std,
        horizontal_flip=data.horizontal_flip,
        crop_padding=data.crop_padding,
    )
    return make_train_epoch(step, mesh, batch_size=batch_size, steps_per_epoch=steps, on_step=on_step)


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
    run = as_run(run_dir)
    config.validate()
    check_for_training(run)
    with locked(run, "train"):
        return _run_training(config, run, progress, on_epoch_trained)


def _run_training(config, run: RunDir, progress: Progress, on_epoch_trained) -> list[dict]:
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
    return train(
        config,
        data,
        run,
        local_weight=record.local_weight,
        progress=progress,
        on_epoch_trained=on_epoch_trained,
    )
