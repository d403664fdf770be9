"""The bottleneck stage: a learned bottleneck at the split (``core.bottleneck``) fine-tuned on a
trained run -> ``RUN_DIR/bottlenecks/NAME/``.

The edge and the local exit are frozen: each batch's z comes from the run's best checkpoint in
evaluation mode (after the run's own augmentation of the images), so the local logits, the
meta-data and every router of the run stay exactly valid. The encoder and decoder start fresh,
the cloud head from the run's; all three train on the cloud exit's cross-entropy with Adam, and
the epoch with the best validation cloud accuracy is kept. The stage then writes the cloud
exit's logits through the bottleneck on every split, which evaluate scores beside the plain run.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.bottleneck import BottleneckConfig, BottleneckedCloud, cloud_like, to_codes
from ddnn_jax.core.codes import framed_sizes
from ddnn_jax.core.models import feature_shape
from ddnn_jax.core.training import build_model, cross_entropy, pad_rows
from ddnn_jax.data import augment, normalize
from ddnn_jax.rundir import SPLITS, BottleneckDir, RunDir, as_run, checkpoints, locked, restore_best, run_data
from ddnn_jax.rundir.bottlenecks import BottleneckRecord, write_bottleneck

STREAM_BOTTLENECK = 300  # fold_in stream of the bottleneck's seed


def bottleneck(
    run_dir: RunDir | Path, config: BottleneckConfig = BottleneckConfig(), progress: Progress = Progress()
) -> BottleneckDir:
    """Fine-tunes a bottleneck on a trained run and writes it with the cloud's logits through it.

    Args:
      run_dir: a trained run (config.json and checkpoints/).
      config: the bottleneck (channels, bits, stride) and its fine-tuning.
      progress: where the per-epoch lines go.
    Returns:
      The bottleneck's directory, RUN_DIR/bottlenecks/NAME/.
    """
    try:
        config.check()
    except ValueError as err:
        raise UsageError(str(err)) from None
    run = as_run(run_dir)
    with locked(run, "bottleneck"):
        return _fine_tune(run, config, progress)


def _fine_tune(run: RunDir, config: BottleneckConfig, progress: Progress) -> BottleneckDir:
    record, state, _ = restore_best(run)
    data = run_data(record.train)
    model = build_model(record.train, data.num_classes)
    z_shape = feature_shape(model, record.image_shape)
    net = BottleneckedCloud(config, z_shape, cloud_like(model))
    edge_variables = {"params": state.params, "batch_stats": state.batch_stats}
    mean, std = np.asarray(record.mean, np.float32), np.asarray(record.std, np.float32)

    def edge_z(images):  # the frozen edge in evaluation mode
        return model.apply(edge_variables, normalize(images, mean, std), method=model.edge)[0]

    key = jax.random.fold_in(jax.random.key(config.seed), STREAM_BOTTLENECK)
    init_key, key = jax.random.split(key)
    fresh = net.init({"params": init_key}, jnp.zeros((1, *z_shape)), train=False)
    params = {**fresh["params"], "cloud": state.params["cloud"]}  # the run's cloud head
    batch_stats = {**fresh["batch_stats"], "cloud": state.batch_stats["cloud"]}
    tx = optax.adam(config.learning_rate)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels, rng):
        augment_rng, dropout_rng = jax.random.split(rng)
        images = augment(images, augment_rng, horizontal_flip=data.horizontal_flip, pad=data.crop_padding)
        z = jax.lax.stop_gradient(edge_z(images))

        def loss_fn(p):
            logits, updates = net.apply(
                {"params": p, "batch_stats": batch_stats},
                z,
                train=True,
                rngs={"dropout": dropout_rng},
                mutable=["batch_stats"],
            )
            return cross_entropy(logits, labels).mean(), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    predict = jax.jit(lambda variables, images: net.apply(variables, edge_z(images)))

    @jax.jit
    def encode(variables, images):  # the integer codes the wire carries
        values = cast(jax.Array, net.apply(variables, edge_z(images), method=net.encode))
        return to_codes(values, config.bits)

    def in_batches(fn, variables, images):
        size = record.train.eval_batch_size
        padded = (pad_rows(images[i : i + size], size) for i in range(0, len(images), size))
        return np.concatenate([np.asarray(fn(variables, batch)) for batch in padded])[: len(images)]

    cloud_logits = functools.partial(in_batches, predict)

    n = len(data.train)
    steps = n // config.batch_size
    if steps < 1:
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {n} training images: make it smaller")
    order_rng = np.random.default_rng(config.seed)
    history, best = [], (-1.0, 0, None)
    for epoch in range(1, config.epochs + 1):
        started, losses = time.perf_counter(), []
        order = order_rng.permutation(n)
        for i in range(steps):
            rows = order[i * config.batch_size : (i + 1) * config.batch_size]
            key, rng = jax.random.split(key)
            params, batch_stats, opt_state, loss = step(
                params, batch_stats, opt_state, data.train.images[rows], data.train.labels[rows], rng
            )
            losses.append(loss)
        variables = {"params": params, "batch_stats": batch_stats}
        val_accuracy = float((cloud_logits(variables, data.val.images).argmax(-1) == data.val.labels).mean())
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(jax.device_get(losses))),
            "val_accuracy_cloud": val_accuracy,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        progress.note(
            f"bottleneck {config.name} epoch {epoch}/{config.epochs}  loss {row['train_loss']:.4f}  "
            f"val cloud {val_accuracy:.4f}  {row['seconds']:.1f}s"
        )
        if val_accuracy > best[0]:
            best = (val_accuracy, epoch, jax.device_get(variables))
    best_accuracy, best_epoch, best_variables = best
    logits = {split: cloud_logits(best_variables, getattr(data, split).images) for split in SPLITS}
    coded = {
        split: framed_sizes(in_batches(encode, best_variables, getattr(data, split).images), config.bits)
        for split in SPLITS
    }
    written = BottleneckRecord(
        config=dict(vars(config)),
        z_shape=list(z_shape),
        code_shape=list(config.code_shape(z_shape)),
        payload_bytes=config.payload_bytes(z_shape),
        made_from=checkpoints.state_digest(state),
        best_epoch=best_epoch,
        history=history,
        val_accuracy_cloud=best_accuracy,
    )
    return write_bottleneck(run, config.name, written, logits, coded, best_variables)
