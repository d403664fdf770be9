"""Joint training of the two exits: loss, jitted train step, evaluation, and the epoch loop.

The loop checkpoints every epoch and resumes from the last checkpoint: every random number of
epoch e is derived from (seed, e) and the global step, so a resumed run repeats exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ddnn_jax import checkpointing, runfiles
from ddnn_jax.config import (
    STREAM_INIT, STREAM_SHUFFLE, STREAM_STEP, TrainConfig, config_from_record, resolved_record,
    run_identity,
)
from ddnn_jax.data import DataSplits, augment, load_dataset, normalize
from ddnn_jax.errors import TrainingDiverged, UsageError
from ddnn_jax.models import DDNN

# Crash testing: the process SIGKILLs itself when this epoch's training program has run, before
# the epoch is validated and checkpointed.
FAULT_ENV = "DDNN_FAULT_IN_EPOCH"
DATA_AXIS = "data"


class TrainState(train_state.TrainState):
    """Parameters, Adam state and step, plus batch-norm statistics and the plateau scheduler."""

    batch_stats: Any
    plateau: optax.contrib.ReduceLROnPlateauState


def build_model(config: TrainConfig, num_classes: int) -> DDNN:
    return DDNN(
        num_classes=num_classes,
        edge_channels=config.edge_channels,
        local_hidden=config.local_hidden,
        cloud_conv_channels=tuple(config.cloud_conv_channels),
        cloud_dense_features=tuple(config.cloud_dense_features),
        dropout_rate=config.dropout_rate,
    )


def plateau_schedule(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """Learning-rate scale driven by the validation error, updated once per epoch."""
    return optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience
    )


def create_train_state(
    config: TrainConfig, image_shape: tuple[int, ...], num_classes: int
) -> TrainState:
    """A freshly initialised state; the initialisation depends only on the seed."""
    model = build_model(config, num_classes)
    key = jax.random.fold_in(jax.random.key(config.seed), STREAM_INIT)
    variables = jax.jit(model.init, static_argnames="train")(
        {"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False
    )
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=tx,
        plateau=plateau_schedule(config).init(variables["params"]),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def joint_loss(
    local_logits: jax.Array, cloud_logits: jax.Array, labels: jax.Array, local_weight: jax.Array
) -> jax.Array:
    """mean over the batch of w * CE(local) + (1 - w) * CE(cloud)."""
    per_sample = local_weight * cross_entropy(local_logits, labels) + (
        1.0 - local_weight
    ) * cross_entropy(cloud_logits, labels)
    return per_sample.mean()


def train_step_fn(
    *, local_weight: float | None, mean: np.ndarray, std: np.ndarray, horizontal_flip: bool,
    crop_padding: int,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The pure ``step(state, images, labels, rng) -> (state, metrics)`` of one run.

    Args:
      local_weight: w of the joint loss, or None to draw w ~ U(0, 1) at every step.
      mean, std: per-channel normalisation of the raw uint8 images.
      horizontal_flip: whether augmentation flips images.
      crop_padding: the random crop's shift in pixels.
    """
    mean, std = jnp.asarray(mean), jnp.asarray(std)

    def step(state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array):
        augment_rng, dropout_rng, weight_rng = jax.random.split(rng, 3)
        images = augment(images, augment_rng, horizontal_flip=horizontal_flip, pad=crop_padding)
        images = normalize(images, mean, std)
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

        (loss, (local_logits, cloud_logits, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
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
    return jax.jit(lambda state, batch, rng: step(state, batch["image"], batch["label"], rng),
                   donate_argnums=0)


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
    step, mesh: Mesh, *, batch_size: int, steps_per_epoch: int,
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
    """
    replicated = NamedSharding(mesh, P())
    by_example = NamedSharding(mesh, P(None, DATA_AXIS))
    per_step = batch_size * steps_per_epoch

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

        return jax.lax.scan(body, state, (jnp.arange(steps_per_epoch), batches))

    return jax.jit(epoch_fn, donate_argnums=0, out_shardings=(replicated, replicated))


def make_predict_fn(model: DDNN, mean: np.ndarray, std: np.ndarray, with_features: bool = False):
    """Jitted evaluation-mode forward pass on uint8 images: (local_logits, cloud_logits[, z])."""
    mean, std = jnp.asarray(mean), jnp.asarray(std)

    @jax.jit
    def predict(variables, images):
        local_logits, cloud_logits, z = model.apply(
            variables, normalize(images, mean, std), train=False
        )
        return (local_logits, cloud_logits, z) if with_features else (local_logits, cloud_logits)

    return predict


def predict_in_batches(predict, variables, images: np.ndarray, batch_size: int):
    """Runs ``predict`` over all images in fixed-size batches (the last one padded): numpy out."""
    n = len(images)
    outputs = []
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(predict(variables, chunk))
    return tuple(np.concatenate(parts)[:n] for parts in zip(*jax.device_get(outputs)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def _write_metrics(path: Path, rows: list[dict]) -> None:
    runfiles.write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _check_finite(losses: np.ndarray, *, first_step: int, epoch: int) -> None:
    """Raises TrainingDiverged naming the first step whose loss is NaN or infinite."""
    if not np.all(np.isfinite(losses)):
        bad = int(np.argmin(np.isfinite(losses)))
        raise TrainingDiverged(
            f"loss became {losses[bad]} at step {first_step + bad} (epoch {epoch}): "
            "lower the learning rate or check the data"
        )


def _schedule_learning_rate(
    state: TrainState, plateau, base_learning_rate: float, validation_error: float
) -> TrainState:
    """Feeds the epoch's validation error to the plateau scheduler and sets Adam's rate."""
    _, plateau_state = plateau.update(
        updates={}, state=state.plateau, value=jnp.asarray(validation_error)
    )
    hyperparams = dict(state.opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(
        base_learning_rate * plateau_state.scale, jnp.float32
    )
    return state.replace(
        plateau=plateau_state, opt_state=state.opt_state._replace(hyperparams=hyperparams)
    )


def train(
    config: TrainConfig, data: DataSplits, run_dir: Path, *, local_weight: float | None
) -> list[dict]:
    """Trains (or resumes training) until ``config.epochs``; returns the per-epoch metrics.

    Args:
      config: the run's configuration.
      data: the dataset in memory.
      run_dir: where checkpoints/ and metrics.jsonl live.
      local_weight: the resolved w, or None for a fresh draw at every step.
    """
    state = create_train_state(config, data.image_shape, data.num_classes)
    manager = checkpointing.manager(run_dir, keep=config.keep_checkpoints)
    start_epoch = 0
    if manager.latest_step() is not None:
        start_epoch = manager.latest_step()
        state = checkpointing.restore(manager, start_epoch, state)
    metrics_path = run_dir / runfiles.METRICS
    history = [row for row in runfiles.read_metrics(run_dir) if row["epoch"] <= start_epoch]

    mesh = data_mesh(config.batch_size)
    steps_per_epoch = len(data.train) // config.batch_size
    run_epoch = make_train_epoch(
        train_step_fn(local_weight=local_weight, mean=data.mean, std=data.std,
                      horizontal_flip=data.horizontal_flip, crop_padding=data.crop_padding),
        mesh, batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
    )
    predict = make_predict_fn(build_model(config, data.num_classes), data.mean, data.std)
    plateau = plateau_schedule(config)
    root = jax.random.key(config.seed)
    images, labels = replicate(mesh, data.train.images), replicate(mesh, data.train.labels)
    state = replicate(mesh, state)
    fault_epoch = int(os.environ.get(FAULT_ENV, "0"))

    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        learning_rate = float(state.opt_state.hyperparams["learning_rate"])
        state, step_metrics = run_epoch(state, images, labels, root, epoch)
        step_metrics = jax.device_get(step_metrics)
        if epoch == fault_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        losses = step_metrics["loss"]
        _check_finite(losses, first_step=(epoch - 1) * steps_per_epoch + 1, epoch=epoch)
        seen = steps_per_epoch * config.batch_size

        variables = {"params": state.params, "batch_stats": state.batch_stats}
        local_logits, cloud_logits = predict_in_batches(
            predict, variables, data.val.images, config.eval_batch_size
        )
        val_local = accuracy(local_logits, data.val.labels)
        val_cloud = accuracy(cloud_logits, data.val.labels)
        selection = (val_local + val_cloud) / 2
        state = _schedule_learning_rate(state, plateau, config.learning_rate, 1.0 - selection)

        row = {
            "epoch": epoch,
            "train_loss": float(losses.mean()),
            "train_accuracy_local": int(step_metrics["correct_local"].sum()) / seen,
            "train_accuracy_cloud": int(step_metrics["correct_cloud"].sum()) / seen,
            "val_accuracy_local": val_local,
            "val_accuracy_cloud": val_cloud,
            "val_accuracy_mean": selection,
            "learning_rate": learning_rate,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        _write_metrics(metrics_path, history)
        checkpointing.save(manager, epoch, state, selection)
        print(
            f"epoch {epoch}/{config.epochs}  loss {row['train_loss']:.4f}  "
            f"val local {val_local:.4f}  val cloud {val_cloud:.4f}  "
            f"lr {learning_rate:.2e}  {row['seconds']:.1f}s",
            flush=True,
        )
    manager.close()
    return history


def run_training(config: TrainConfig, run_dir: Path) -> list[dict]:
    """Starts or resumes the run in ``run_dir``: the entry point of ``ddnn train``.

    Everything the user can get wrong is checked before the first file is written.
    """
    config.validate()
    resuming = runfiles.check_run_dir_for_training(run_dir)
    if resuming:
        record = runfiles.read_config(run_dir)
        if record.get("imported_from"):
            raise UsageError(
                f"{run_dir} holds weights imported from PyTorch and cannot be trained further: "
                "train a new run with another --out"
            )
        old = run_identity(config_from_record(record))
        new = run_identity(config)
        changed = [key for key in new if old[key] != new[key]]
        if changed:
            details = ", ".join(f"{key}: {old[key]!r} -> {new[key]!r}" for key in changed)
            raise UsageError(
                f"{run_dir} holds a run with another configuration ({details}): "
                "rerun with its original flags to resume, or choose a new --out"
            )
    data = load_dataset(
        config.dataset, data_dir=config.data_dir, split_seed=config.seed,
        limit_train=config.limit_train, download=config.download,
    )
    record = resolved_record(
        config, num_classes=data.num_classes, image_shape=data.image_shape,
        mean=data.mean, std=data.std,
        split_sizes={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
    )
    if not resuming:
        runfiles.write_json_atomic(run_dir / runfiles.CONFIG, record)
    return train(config, data, run_dir, local_weight=record["local_weight"])
