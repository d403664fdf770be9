"""The route stage: label a run's collected outputs for every target and train one router family.

A family (one input mode, one labelling, one architecture, a grid of targets) is written to
``RUN_DIR/routers/NAME/``:

* ``router.json``: the RouterConfig, the benefit thresholds B*(L0), per-target best epoch, epochs
  run, per-epoch train/validation decision accuracy, and wall times (compile, train);
* ``scores.npz``: router logits [G, N] for the train, val and test splits;
* ``variables.msgpack``: the best-on-validation params and batch statistics, stacked over targets.

The directory is built under a temporary name and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from ddnn_jax import runfiles
from ddnn_jax.collect import SPLITS, load_outputs
from ddnn_jax.config import config_from_record
from ddnn_jax.data import load_dataset
from ddnn_jax.errors import UsageError
from ddnn_jax.labels import benefit_thresholds, check_targets, correctness, labels_of_kind
from ddnn_jax.router import (
    RouterConfig, make_grid_predictor, make_grid_trainer, raw_inputs, standardization, target_keys,
)

ROUTERS = "routers"
ROUTER_RECORD = "router.json"
SCORES = "scores.npz"
VARIABLES = "variables.msgpack"


def default_name(config: RouterConfig) -> str:
    """'logits', 'logits+', 'features-cnn', ... with '-oracle' for oracle labels."""
    return config.inputs + ("-oracle" if config.labels == "oracle" else "")


def meta_labels(
    outputs: dict[str, dict[str, np.ndarray]], targets: np.ndarray, kind: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """B*(L0) from the training split, and the [G, N] labels of every split under them."""
    per_split = {
        name: correctness(o["local_logits"], o["cloud_logits"], o["labels"])
        for name, o in outputs.items()
    }
    thresholds = benefit_thresholds(per_split["train"].benefit, targets)
    labels = {name: np.asarray(labels_of_kind(kind, c, thresholds)) for name, c in per_split.items()}
    return np.asarray(thresholds), labels


def _split_images(run_dir: Path, outputs) -> dict[str, np.ndarray]:
    """The run's images per split, reloaded with the run's own split seed and limits."""
    config = config_from_record(runfiles.read_config(run_dir))
    data = load_dataset(
        config.dataset, data_dir=config.data_dir, split_seed=config.seed,
        limit_train=config.limit_train,
    )
    images = {}
    for name in SPLITS:
        split = getattr(data, name)
        if not np.array_equal(split.labels, outputs[name]["labels"]):
            raise UsageError(
                f"the {name} images of {run_dir} no longer match its outputs: rerun 'ddnn collect'"
            )
        images[name] = split.images
    return images


def _config_record(config: RouterConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def is_up_to_date(family_dir: Path, config: RouterConfig) -> bool:
    path = family_dir / ROUTER_RECORD
    return path.is_file() and json.loads(path.read_text())["config"] == _config_record(config)


def route(run_dir: Path, config: RouterConfig, *, name: str | None = None) -> Path:
    """Trains the router family ``config`` on ``run_dir``'s outputs; returns its directory.

    A family whose directory already holds the same configuration is left as it is (training is
    deterministic, so it would be reproduced exactly).

    Args:
      run_dir: a run with ``outputs/`` (``ddnn collect``; ``--features`` for feature modes).
      config: the family's configuration.
      name: directory name under ``routers/``; ``default_name(config)`` when None.
    """
    try:
        config.check()
        targets = check_targets(config.targets)
    except ValueError as err:
        raise UsageError(str(err)) from None
    family_dir = run_dir / ROUTERS / (name or default_name(config))
    if is_up_to_date(family_dir, config):
        return family_dir
    runfiles.read_config(run_dir)
    outputs = load_outputs(run_dir, need_features=config.inputs.startswith("features"))
    images = _split_images(run_dir, outputs) if config.inputs == "images" else {}

    thresholds, labels = meta_labels(outputs, targets, config.labels)
    inputs = {s: raw_inputs(config.inputs, outputs[s], images.get(s)) for s in SPLITS}
    mean, std = standardization(inputs["train"])
    inputs = {s: (x - mean) / std for s, x in inputs.items()}

    keys = target_keys(config.seed, targets)
    trainer = make_grid_trainer(config, len(inputs["train"]))
    args = (keys, inputs["train"], labels["train"], inputs["val"], labels["val"])
    started = time.perf_counter()
    compiled = trainer.lower(*args).compile()
    compiled_at = time.perf_counter()
    result = jax.block_until_ready(compiled(*args))
    trained_at = time.perf_counter()
    predict = make_grid_predictor(config)
    scores = {s: np.asarray(predict(result.variables, inputs[s]), np.float32) for s in SPLITS}

    record = {
        "config": _config_record(config),
        "run": str(run_dir),
        "benefit_thresholds": thresholds.tolist(),
        "best_epoch": np.asarray(result.best_epoch).tolist(),
        "epochs_run": np.asarray(result.epochs_run).tolist(),
        "train_decision_accuracy": _history(result.train_accuracy),
        "val_decision_accuracy": _history(result.val_accuracy),
        "input_shape": list(inputs["train"].shape[1:]),
        # what a deployed router subtracts and divides by before its first layer
        "input_standardization": {"mean": np.ravel(mean).tolist(), "std": np.ravel(std).tolist()},
        "seconds": {"compile": compiled_at - started, "train": trained_at - compiled_at},
        "backend": jax.default_backend(),
    }
    _write_family(family_dir, record, scores, result.variables)
    return family_dir


def _history(per_epoch: jax.Array) -> list[list[float]]:
    """[G, E] with NaN for epochs not run -> per-target lists of the epochs that ran."""
    return [[float(v) for v in row if np.isfinite(v)] for row in np.asarray(per_epoch)]


def _write_family(family_dir: Path, record: dict, scores: dict, variables) -> None:
    family_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=family_dir.parent, prefix=f".{family_dir.name}."))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the results from other users
        (staging / ROUTER_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        np.savez(staging / SCORES, **scores)
        (staging / VARIABLES).write_bytes(serialization.to_bytes(jax.device_get(variables)))
        if family_dir.exists():
            shutil.rmtree(family_dir)
        staging.rename(family_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_family(family_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A trained family's record and its router logits per split."""
    record = json.loads((family_dir / ROUTER_RECORD).read_text())
    with np.load(family_dir / SCORES) as scores:
        return record, {s: scores[s] for s in scores.files}


def trained_families(run_dir: Path) -> dict[str, Path]:
    """Every complete router family of the run, by name."""
    root = run_dir / ROUTERS
    if not root.is_dir():
        return {}
    return {
        d.name: d for d in sorted(root.iterdir())
        if not d.name.startswith(".") and (d / ROUTER_RECORD).is_file()
    }
