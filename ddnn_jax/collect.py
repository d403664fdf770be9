"""Per-sample outputs of a trained DDNN: the source of the offloading meta-dataset.

``collect`` runs the best-on-validation weights in evaluation mode over the training, validation
and test splits and writes ``RUN_DIR/outputs/{train,val,test}.npz`` with ``local_logits`` [N, C]
float32, ``cloud_logits`` [N, C] float32, ``labels`` [N] int32 and, on request, ``features``
(z, [N, H, W, C] float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddnn_jax import checkpointing, runfiles
from ddnn_jax.config import config_from_record
from ddnn_jax.data import load_dataset
from ddnn_jax.errors import UsageError
from ddnn_jax.train import build_model, create_train_state, make_predict_fn, predict_in_batches

SPLITS = ("train", "val", "test")


def collect(run_dir: Path, *, with_features: bool = False) -> dict[str, Path]:
    """Writes the per-sample outputs of every split; returns their paths.

    Args:
      run_dir: a training run (config.json and checkpoints/).
      with_features: also store the edge feature maps z.
    """
    record, state, best_epoch = restore_best(run_dir)
    config = config_from_record(record)
    data = load_dataset(
        config.dataset, data_dir=config.data_dir, split_seed=config.seed,
        limit_train=config.limit_train,
    )
    mean = np.asarray(record["normalization"]["mean"], np.float32)
    std = np.asarray(record["normalization"]["std"], np.float32)
    predict = make_predict_fn(
        build_model(config, data.num_classes), mean, std, with_features=with_features
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    written = {}
    for name in SPLITS:
        split = getattr(data, name)
        outputs = predict_in_batches(predict, variables, split.images, config.eval_batch_size)
        arrays = {
            "local_logits": outputs[0].astype(np.float32),
            "cloud_logits": outputs[1].astype(np.float32),
            "labels": split.labels.astype(np.int32),
            "epoch": np.int32(best_epoch),
        }
        if with_features:
            arrays["features"] = outputs[2].astype(np.float32)
        written[name] = save_npz_atomic(run_dir / runfiles.OUTPUTS / f"{name}.npz", arrays)
    return written


def restore_best(run_dir: Path):
    """(config record, TrainState of the best epoch on validation, that epoch) of a run."""
    record = runfiles.read_config(run_dir)
    config = config_from_record(record)
    manager = checkpointing.manager(run_dir, keep=config.keep_checkpoints)
    best_epoch = manager.best_step()
    if best_epoch is None:
        manager.close()
        raise UsageError(
            f"{run_dir} has no checkpoint yet: finish training with "
            f"'ddnn train --out {run_dir}' and the run's flags"
        )
    template = create_train_state(config, tuple(record["image_shape"]), record["num_classes"])
    state = checkpointing.restore(manager, best_epoch, template)
    manager.close()
    return record, state, best_epoch


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """np.savez under a temporary name, then a rename: readers never see half a file."""
    with runfiles.atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_outputs(run_dir: Path, *, need_features: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The collected arrays of every split, or a UsageError saying which command makes them."""
    loaded = {}
    for name in SPLITS:
        path = run_dir / runfiles.OUTPUTS / f"{name}.npz"
        if not path.is_file():
            raise UsageError(f"{path} is missing: run 'ddnn collect --run {run_dir}' first")
        with np.load(path) as arrays:
            loaded[name] = {key: arrays[key] for key in arrays.files}
        if need_features and "features" not in loaded[name]:
            raise UsageError(
                f"{path} has no edge features: run 'ddnn collect --run {run_dir} --features' first"
            )
    return loaded


def outputs_complete(run_dir: Path, *, with_features: bool) -> bool:
    """Whether every split's outputs exist, come from the current best epoch, and hold features
    if asked."""
    config = config_from_record(runfiles.read_config(run_dir))
    manager = checkpointing.manager(run_dir, keep=config.keep_checkpoints)
    best_epoch = manager.best_step()
    manager.close()
    for name in SPLITS:
        path = run_dir / runfiles.OUTPUTS / f"{name}.npz"
        if not path.is_file():
            return False
        with np.load(path) as arrays:
            if int(arrays["epoch"]) != best_epoch or (with_features and "features" not in arrays):
                return False
    return True
