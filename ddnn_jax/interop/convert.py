"""Flax variables <-> the three PyTorch state dicts of the reference implementation, and the
``ddnn import-torch`` / ``ddnn export-torch`` stages built on them.

Only layouts differ: PyTorch convolutions are [out, in, kh, kw] where Flax's are [kh, kw, in, out],
and Linear weights are [out, in] where Dense kernels are [in, out]. Our modules flatten feature
maps in PyTorch's channel-first order (``models._flatten_channels_first``), so the first Dense
after each flatten ports by transposition alone, like every other Dense. Batch norm's running
mean and variance are Flax's ``batch_stats``; ``num_batches_tracked`` only matters to PyTorch
with ``momentum=None`` and is written as the number of optimizer steps taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.limits import STATE_DICT_BYTES, check_size
from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.training import (
    accuracy,
    build_model,
    create_train_state,
    make_predict_fn,
    predict_in_batches,
)
from ddnn_jax.data import DataSplits, load_dataset
from ddnn_jax.rundir import (
    IMPORTED,
    RunDir,
    RunRecord,
    atomic_dir,
    atomic_file,
    check_for_training,
    checkpoints,
    locked,
    prepare_file,
    restore_best,
    write_json,
)

# Our top-level module -> the class name of its PyTorch counterpart (one state dict each).
PARTS = {
    "feature_extractor": "LocalFeatureExtractor",
    "local_classifier": "LocalClassifier",
    "cloud": "CloudCNN",
}
EXPORT_FILES = {part: f"{part}.pth" for part in PARTS}
EXPORT_MANIFEST = "export.json"


def require_torch():
    """The torch module, or a UsageError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise UsageError(
            "PyTorch is not installed: pip install torch==2.13.0 (or the 'parity' extra)"
        ) from None
    return torch


def torch_to_flax(state_dicts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """The three state dicts (array-likes) -> {"params", "batch_stats"} of ``models.DDNN``."""
    params: dict[str, dict] = {}
    batch_stats: dict[str, dict] = {}
    for part in PARTS:
        for key, value in state_dicts[part].items():
            layer, name = key.rsplit(".", 1) if "." in key else ("", key)
            value = np.asarray(value)
            if layer.startswith("conv") and name == "weight":
                params.setdefault(part, {}).setdefault(layer, {})["kernel"] = value.transpose(2, 3, 1, 0)
            elif layer.startswith("fc") and name == "weight":
                params.setdefault(part, {}).setdefault(layer, {})["kernel"] = value.T
            elif layer.startswith(("conv", "fc", "bn")) and name == "bias":
                params.setdefault(part, {}).setdefault(layer, {})["bias"] = value
            elif layer.startswith("bn") and name == "weight":
                params.setdefault(part, {}).setdefault(layer, {})["scale"] = value
            elif layer.startswith("bn") and name in ("running_mean", "running_var"):
                stat = "mean" if name == "running_mean" else "var"
                batch_stats.setdefault(part, {}).setdefault(layer, {})[stat] = value
            elif not (layer.startswith("bn") and name == "num_batches_tracked"):
                raise UsageError(
                    f"the {PARTS[part]} state dict has an unexpected entry '{key}': give the "
                    "state dicts of the reference architecture (ddnn_jax.interop.reference)"
                )
    return {"params": params, "batch_stats": batch_stats}


def flax_to_torch(variables: Mapping[str, Any], steps: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{"params", "batch_stats"} -> the three state dicts as numpy arrays (PyTorch layouts)."""
    state_dicts: dict[str, dict[str, np.ndarray]] = {part: {} for part in PARTS}
    params, stats = jax.device_get(variables["params"]), jax.device_get(variables["batch_stats"])
    for part, layers in params.items():
        out = state_dicts[part]
        for layer, leaves in layers.items():
            if layer.startswith("bn"):
                out[f"{layer}.weight"] = np.asarray(leaves["scale"])
                out[f"{layer}.bias"] = np.asarray(leaves["bias"])
                out[f"{layer}.running_mean"] = np.asarray(stats[part][layer]["mean"])
                out[f"{layer}.running_var"] = np.asarray(stats[part][layer]["var"])
                out[f"{layer}.num_batches_tracked"] = np.asarray(steps, np.int64)
                continue
            kernel = np.asarray(leaves["kernel"])
            perm = (3, 2, 0, 1) if kernel.ndim == 4 else (1, 0)
            out[f"{layer}.weight"] = np.ascontiguousarray(kernel.transpose(perm))
            out[f"{layer}.bias"] = np.asarray(leaves["bias"])
    return state_dicts


def architecture(state_dicts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The TrainConfig architecture fields and the class count the state dicts were built with."""

    def shape(part: str, key: str) -> tuple[int, ...]:
        if key not in state_dicts[part]:
            raise UsageError(
                f"the {PARTS[part]} state dict has no '{key}': give the state dicts of the "
                "reference architecture (ddnn_jax.interop.reference)"
            )
        return tuple(np.shape(state_dicts[part][key]))

    cloud_keys = state_dicts["cloud"]
    convs = sorted(
        int(k[4:].split(".")[0]) for k in cloud_keys if k.startswith("conv") and k.endswith(".weight")
    )
    dense = sorted(
        int(k[2:].split(".")[0]) for k in cloud_keys if k.startswith("fc") and k.endswith(".weight")
    )
    return {
        "edge_channels": shape("feature_extractor", "conv1.weight")[0],
        "local_hidden": shape("local_classifier", "fc1.weight")[0],
        "num_classes": shape("local_classifier", "fc2.weight")[0],
        "cloud_conv_channels": tuple(shape("cloud", f"conv{i}.weight")[0] for i in convs),
        "cloud_dense_features": tuple(shape("cloud", f"fc{i}.weight")[0] for i in dense[:-1]),
    }


def load_state_dicts(paths: Mapping[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    """Reads three ``.pth`` state dicts (tensors only, nothing pickled runs) as numpy arrays."""
    torch = require_torch()
    loaded = {}
    for part, path in paths.items():
        if not Path(path).is_file():
            raise UsageError(f"{path} does not exist: give the {PARTS[part]} state dict's path")
        check_size(path, STATE_DICT_BYTES, "PyTorch state dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises pickle, zip and runtime errors alike
            raise UsageError(
                f"{path} is not a PyTorch state dict ({type(err).__name__}): save it with "
                "torch.save(module.state_dict(), path)"
            ) from None
        if not isinstance(state, Mapping):
            raise UsageError(
                f"{path} holds a {type(state).__name__}, not a state dict: save it with "
                "torch.save(module.state_dict(), path)"
            )
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise UsageError(f"{path}: entry {key!r} is not a named tensor: {_REFERENCE}")
        loaded[part] = {key: _as_numpy(value) for key, value in state.items()}
        _check_entries(Path(path), loaded[part])
    return loaded


def _as_numpy(tensor) -> np.ndarray:
    """A tensor as a numpy array; dtypes numpy lacks (bfloat16) are widened to float32."""
    tensor = tensor.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:
        return tensor.float().numpy()


_REFERENCE = "give the state dicts of the reference architecture (ddnn_jax.interop.reference)"
_ENTRY = re.compile(r"((?:conv|fc)\d+|bn\d*)\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_WEIGHT_DIMS = {"conv": 4, "fc": 2, "bn": 1}


def _check_entries(path: Path, state: Mapping[str, np.ndarray]) -> None:
    """UsageError naming the first entry that is not a layer of the reference architecture,
    has the wrong number of dimensions, holds integers where weights are floats (they would
    import as a model of chance accuracy), or holds NaN or infinite values."""
    for key, value in state.items():
        match = _ENTRY.fullmatch(key)
        if match is None:
            raise UsageError(f"{path}: unexpected entry '{key}': {_REFERENCE}")
        layer, name = match.groups()
        dims = 0 if name == "num_batches_tracked" else 1
        if name == "weight":
            dims = _WEIGHT_DIMS[layer.rstrip("0123456789")]
        if value.ndim != dims:
            raise UsageError(f"{path}: '{key}' has {value.ndim} dimensions, {dims} expected: {_REFERENCE}")
        if name != "num_batches_tracked" and value.dtype.kind != "f":
            raise UsageError(
                f"{path}: '{key}' holds {value.dtype} values, not floating-point ones: "
                "save the weights of a trained float model"
            )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise UsageError(f"{path}: '{key}' holds NaN or infinite values: these weights cannot be used")


def _check_shapes(converted: dict, template: dict, dataset: str, image_shape) -> None:
    """UsageError naming the first variable whose shape does not fit the dataset's images."""
    want = jax.tree_util.tree_flatten_with_path(template)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(converted)[0])
    for path, leaf in want:
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        if path not in have:
            raise UsageError(f"the state dicts lack {name}: give all three reference state dicts")
        if tuple(have[path].shape) != tuple(leaf.shape):
            raise UsageError(
                f"{name} has shape {tuple(have[path].shape)} in the PyTorch weights but "
                f"{tuple(leaf.shape)} for {dataset}'s {'x'.join(map(str, image_shape))} images: "
                "import them with the dataset they were trained on"
            )


def _channel_values(flag: str, values, channels: int, positive: bool) -> np.ndarray:
    array = np.asarray(values, np.float32)
    if array.shape != (channels,):
        raise UsageError(
            f"{flag} needs {channels} comma-separated values (one per channel), got {len(array)}"
        )
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{flag} values must be finite numbers, got {list(values)}")
    if positive and not np.all(array > 0):
        raise UsageError(f"{flag} values must be positive, got {list(values)}")
    return array


def _imported_state(state_dicts, config: TrainConfig, data: DataSplits):
    """A TrainState holding the PyTorch weights, after checking they fit the dataset."""
    state = create_train_state(config, data.image_shape, data.num_classes)
    converted = torch_to_flax(state_dicts)
    template = {"params": state.params, "batch_stats": state.batch_stats}
    _check_shapes(converted, template, config.dataset, data.image_shape)
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), converted)
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _validation_accuracies(state, config: TrainConfig, data: DataSplits, mean, std):
    """Validation accuracy of both exits under the given input normalisation."""
    predict = make_predict_fn(build_model(config, data.num_classes), mean, std)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    local_logits, cloud_logits = predict_in_batches(
        predict, variables, data.val.images, config.eval_batch_size
    )
    return accuracy(local_logits, data.val.labels), accuracy(cloud_logits, data.val.labels)


def import_torch(
    paths: Mapping[str, Path],
    *,
    dataset: str,
    out: Path,
    mean=None,
    std=None,
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    limit_train: int | None = None,
    limit_eval: int | None = None,
) -> Path:
    """Makes a run directory from PyTorch weights that ``collect``/``route``/``evaluate``/
    ``report`` accept; returns it.

    Args:
      paths: the .pth state dict of each part in ``PARTS``.
      dataset: the dataset the weights were trained on (it fixes the image shape and classes).
      out: the new run directory (must not exist or be empty).
      mean, std: per-channel normalisation applied to x/255 in training; the dataset's training
        statistics when None.
      data_dir, download: where tfds finds the dataset, and whether it may download it.
      seed: seeds the train/validation split of the run's outputs.
      limit_train: ``collect`` keeps only the first N training images (the routers' training
        set); the default normalisation still comes from the whole training split.
      limit_eval: validate (the import's accuracies) and collect on the first N validation and
        N test images only.
    """
    if check_for_training(RunDir(out)):
        raise UsageError(f"--out {out} already holds a run: choose a new or empty directory")
    for flag, limit in (("--limit-train", limit_train), ("--limit-eval", limit_eval)):
        if limit is not None and limit <= 0:
            raise UsageError(f"{flag} must be positive, got {limit}")
    state_dicts, arch, data = _weights_and_data(paths, dataset, data_dir, seed, download, limit_eval)
    num_classes = data.num_classes
    channels = data.image_shape[-1]
    mean = data.mean if mean is None else _channel_values("--mean", mean, channels, False)
    std = data.std if std is None else _channel_values("--std", std, channels, True)
    config = TrainConfig(
        dataset=dataset,
        epochs=0,
        seed=seed,
        data_dir=data_dir,
        download=download,
        limit_train=limit_train,
        limit_eval=limit_eval,
        **arch,
    )
    state = _imported_state(state_dicts, config, data)
    val_local, val_cloud = _validation_accuracies(state, config, data, mean, std)
    resolved = RunRecord.resolve(
        config,
        num_classes=num_classes,
        image_shape=data.image_shape,
        mean=mean,
        std=std,
        split_sizes={
            "train": min(len(data.train), limit_train or len(data.train)),
            "val": len(data.val),
            "test": len(data.test),
        },
    )
    provenance = {
        "format": "pytorch state dicts",
        "files": {
            part: {"path": str(Path(p).absolute()), "sha256": _sha256(Path(p))} for part, p in paths.items()
        },
        "val_accuracy_local": val_local,
        "val_accuracy_cloud": val_cloud,
    }
    record = dataclasses.replace(
        resolved, local_weight_mode=IMPORTED, local_weight=None, imported_from=provenance
    )
    # Held while the run is swapped in, so that no 'ddnn train' can start writing into --out
    # in between; the swap only ever replaces a new or empty directory (checked under the lock).
    with locked(RunDir(out), "import-torch"):
        if check_for_training(RunDir(out)):
            raise UsageError(f"--out {out} already holds a run: choose a new or empty directory")
        _write_imported_run(out, record, state, (val_local + val_cloud) / 2)
    return out


def _weights_and_data(paths, dataset: str, data_dir, seed: int, download: bool, limit_eval: int | None):
    """The state dicts, the TrainConfig architecture fields they imply, and the dataset, after
    checking that the weights' class count is the dataset's."""
    state_dicts = load_state_dicts(paths)
    arch = architecture(state_dicts)
    num_classes = arch.pop("num_classes")
    data = load_dataset(dataset, data_dir=data_dir, split_seed=seed, download=download, limit_eval=limit_eval)
    if num_classes != data.num_classes:
        raise UsageError(
            f"the PyTorch weights predict {num_classes} classes but {dataset} has "
            f"{data.num_classes}: import them with the dataset they were trained on"
        )
    return state_dicts, arch, data


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_imported_run(out: Path, record: RunRecord, state, selection: float) -> None:
    """config.json and a checkpoint at epoch 0, built beside OUT and renamed into place: an
    interrupted import leaves nothing behind."""
    with atomic_dir(out) as staging:
        built = RunDir(staging)
        write_json(built.config, record.to_json())
        manager = checkpoints.manager(built.checkpoints)
        checkpoints.save(manager, 0, state, selection)
        manager.close()


def export_torch(run_dir: Path, out_dir: Path, force: bool = False) -> dict[str, Path]:
    """Writes the best weights of a run as the three PyTorch state dicts and a manifest with the
    architecture and input normalisation; returns the written paths. ``out_dir`` must be new or
    empty unless ``force``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file: give a directory for the .pth files")
    if not force and out_dir.is_dir() and any(out_dir.iterdir()):
        raise UsageError(f"--out {out_dir} is not empty: choose a new directory, or add --force to overwrite")
    torch = require_torch()
    record, state, _ = restore_best(RunDir(run_dir))
    prepare_file(out_dir / EXPORT_MANIFEST)  # --out made and writable, or one line
    state_dicts = flax_to_torch(
        {"params": state.params, "batch_stats": state.batch_stats}, steps=int(state.step)
    )
    written = {}
    for part, arrays in state_dicts.items():
        path = out_dir / EXPORT_FILES[part]
        with atomic_file(path, "wb") as f:
            torch.save({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, f)
        written[part] = path
    manifest = {
        "classes": {part: cls for part, cls in PARTS.items()},
        "files": {part: EXPORT_FILES[part] for part in PARTS},
        "reference_model": {
            "image_shape": list(record.image_shape),
            "num_classes": record.num_classes,
            "edge_channels": record.train.edge_channels,
            "local_hidden": record.train.local_hidden,
            "cloud_conv_channels": list(record.train.cloud_conv_channels),
            "cloud_dense_features": list(record.train.cloud_dense_features),
            "dropout_rate": record.train.dropout_rate,
        },
        "input": "NCHW float: (x / 255 - mean) / std per channel",
        "normalization": {"mean": list(record.mean), "std": list(record.std)},
        "source_run": str(run_dir.absolute()),
    }
    written["manifest"] = out_dir / EXPORT_MANIFEST
    write_json(written["manifest"], manifest)
    return written
