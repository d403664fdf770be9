"""The records of a run: config.json (``RunRecord``), metrics.jsonl, the per-split outputs and
the router families, each with its writer and its reader."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ddnn_jax.common import provenance, runtime
from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.files import check_writable
from ddnn_jax.core.config import TrainConfig, package_versions, resolve_local_weight
from ddnn_jax.core.outputs import SplitOutputs
from ddnn_jax.rundir.files import (
    NPZ_ERRORS,
    atomic_dir,
    load_npz,
    read_json,
    save_npz,
    write_json,
    write_text,
)
from ddnn_jax.rundir.layout import CONFIG, LOCK, SPLITS, FamilyDir, RunDir, as_run
from ddnn_jax.rundir.schema import build

# ------------------------------------------------------------------------------------------------
# config.json and metrics.jsonl


IMPORTED = "imported"  # local_weight_mode of a run imported from PyTorch: w is not known


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """config.json: what a run was trained with, resolved. Written once, when training starts
    (or by ``ddnn import-torch``)."""

    train: TrainConfig
    local_weight_mode: str  # 'per-run', 'per-batch', 'fixed', or 'imported' (w unknown)
    local_weight: float | None  # the w used; None for per-batch and imported runs
    num_classes: int
    image_shape: tuple[int, ...]
    mean: tuple[float, ...]  # per-channel normalisation of x/255 (training split statistics)
    std: tuple[float, ...]
    split_sizes: dict[str, int]
    backend: str
    versions: dict[str, str]
    imported_from: dict[str, Any] | None = None  # PyTorch files and their SHA-256, if imported
    runtime: dict[str, Any] | None = None  # runtime.describe(): cache, determinism, devices
    source: dict[str, Any] | None = None  # provenance.source_revision(): git commit, dirty

    @classmethod
    def resolve(
        cls,
        config: TrainConfig,
        *,
        num_classes: int,
        image_shape,
        mean,
        std,
        split_sizes: dict[str, int],
    ) -> RunRecord:
        """The record of a run about to be trained on this machine: w drawn, versions read."""
        mode, value = resolve_local_weight(config)
        return cls(
            train=config,
            local_weight_mode=mode,
            local_weight=value,
            num_classes=int(num_classes),
            image_shape=tuple(int(s) for s in image_shape),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            split_sizes=dict(split_sizes),
            backend=jax.default_backend(),
            versions=package_versions(),
            runtime=runtime.describe(),
            source=provenance.source_revision(),
        )

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def dataset(self) -> str:
        return self.train.dataset

    def to_json(self) -> dict[str, Any]:
        """The file's layout: every TrainConfig field at the top level, then the resolved values."""
        record = dataclasses.asdict(self.train)
        record.update(
            local_weight_mode=self.local_weight_mode,
            local_weight=self.local_weight,
            num_classes=self.num_classes,
            image_shape=list(self.image_shape),
            normalization={"mean": list(self.mean), "std": list(self.std)},
            split_sizes=self.split_sizes,
            backend=self.backend,
            versions=self.versions,
        )
        if self.imported_from is not None:
            record["imported_from"] = self.imported_from
        if self.runtime is not None:
            record["runtime"] = self.runtime
        if self.source is not None:
            record["source"] = self.source
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunRecord:
        """Raises KeyError/TypeError/ValueError on a record that is not one of ours."""
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in record.items() if k in fields}
        mode = record["local_weight_mode"]
        # the local_weight field of TrainConfig is the spec the user gave
        values["local_weight"] = (
            "per-run"
            if mode == IMPORTED
            else mode
            if mode in ("per-run", "per-batch")
            else str(record["local_weight"])
        )
        for key in ("cloud_conv_channels", "cloud_dense_features"):
            values[key] = tuple(values[key])
        return cls(
            train=TrainConfig(**values),
            local_weight_mode=mode,
            local_weight=record["local_weight"],
            num_classes=int(record["num_classes"]),
            image_shape=tuple(int(s) for s in record["image_shape"]),
            mean=tuple(float(m) for m in record["normalization"]["mean"]),
            std=tuple(float(s) for s in record["normalization"]["std"]),
            split_sizes=dict(record["split_sizes"]),
            backend=str(record["backend"]),
            versions=dict(record.get("versions", {})),
            imported_from=record.get("imported_from"),
            runtime=record.get("runtime"),
            source=record.get("source"),
        )


def write_run_record(run: RunDir, record: RunRecord) -> None:
    write_json(run.config, record.to_json())


def read_run_record(run_dir: RunDir | Path | str) -> RunRecord:
    """config.json of an existing run, or a UsageError saying how to make or mend it."""
    run = as_run(run_dir)
    if not run.config.is_file():
        raise UsageError(
            f"{run} is not a training run (no {CONFIG}): train one first with 'ddnn train --out {run}'"
        )
    value = read_json(run.config, "restore it or train the run again")
    try:
        return RunRecord.from_json(value)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UsageError(
            f"{run.config} is not a ddnn run record ({type(err).__name__}: {err}): "
            "restore it or train the run again"
        ) from None


def read_metrics(run_dir: RunDir | Path | str) -> list[dict[str, Any]]:
    """The per-epoch rows of metrics.jsonl (empty before the first epoch ends)."""
    run = as_run(run_dir)
    if not run.metrics.exists():
        return []
    try:
        lines = run.metrics.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in rows):
            raise ValueError("a row without its epoch")
        return rows
    except (UnicodeDecodeError, ValueError):
        raise UsageError(
            f"{run.metrics} is damaged: restore it from a copy, or train the run again in a new --out"
        ) from None


def write_metrics(run: RunDir, rows: list[dict[str, Any]]) -> None:
    write_text(run.metrics, "".join(json.dumps(row) + "\n" for row in rows))


def check_for_training(run: RunDir) -> bool:
    """Checks RUN_DIR can hold a training run; returns whether it already holds one."""
    root = run.root
    if root.exists() and not root.is_dir():
        raise UsageError(f"--out {root} exists and is not a directory: choose another path")
    if root.is_dir():
        if run.config.is_file():
            check_writable(root)
            return True
        if any(p.name != LOCK for p in root.iterdir()):
            raise UsageError(
                f"--out {root} is a non-empty directory that holds no ddnn run: "
                "choose a new or empty directory"
            )
        check_writable(root)
        return False
    parent = root.parent
    while not parent.exists():
        parent = parent.parent
    check_writable(parent)
    return False


# ------------------------------------------------------------------------------------------------
# outputs/{split}.npz


def _output_arrays(o: SplitOutputs) -> dict[str, Any]:
    arrays: dict[str, Any] = {
        "local_logits": o.local_logits.astype(np.float32),
        "cloud_logits": o.cloud_logits.astype(np.float32),
        "labels": o.labels.astype(np.int32),
        "epoch": np.int32(o.epoch),
        "checkpoint": np.str_(o.checkpoint),
    }
    if o.features is not None:
        arrays["features"] = o.features.astype(np.float32)
    return arrays


def write_oof_outputs(run: RunDir, outputs: SplitOutputs) -> Path:
    """oof/train.npz, atomically. ``checkpoint`` names the fold DDNNs' weights it came from."""
    return save_npz(run.oof_outputs, _output_arrays(outputs))


def read_oof_outputs(run: RunDir) -> SplitOutputs:
    """oof/train.npz, or a UsageError saying how to make it."""
    remedy = f"run 'ddnn run' with --families logits-oof on {run}"
    if not run.oof_outputs.is_file():
        raise UsageError(f"{run.oof_outputs} is missing: {remedy}")
    try:
        with load_npz(run.oof_outputs) as arrays:
            return SplitOutputs(
                local_logits=arrays["local_logits"],
                cloud_logits=arrays["cloud_logits"],
                labels=arrays["labels"],
                epoch=int(arrays["epoch"]),
                checkpoint=str(arrays["checkpoint"]),
            )
    except NPZ_ERRORS as err:
        raise UsageError(
            f"{run.oof_outputs} is damaged ({type(err).__name__}): delete it and {remedy}"
        ) from None


def write_outputs(run: RunDir, outputs: dict[str, SplitOutputs]) -> dict[str, Path]:
    """Every split's outputs, replacing outputs/ as a whole: a reader never sees splits of two
    collections."""
    with atomic_dir(run.outputs_dir) as staging:
        for split in SPLITS:
            with open(staging / run.outputs(split).name, "wb") as f:
                np.savez(f, **_output_arrays(outputs[split]))
    return {split: run.outputs(split) for split in SPLITS}


def read_outputs(run_dir: RunDir | Path | str, *, need_features: bool = False) -> dict[str, SplitOutputs]:
    """The collected outputs of every split, or a UsageError naming the damaged, missing or
    mismatched file and the command that makes it again."""
    run = as_run(run_dir)
    loaded = {}
    remedy = f"run 'ddnn collect --run {run}{' --features' if need_features else ''}'"
    for split in SPLITS:
        path = run.outputs(split)
        if not path.is_file():
            raise UsageError(f"{path} is missing: {remedy} first")
        try:
            with load_npz(path) as arrays:
                loaded[split] = SplitOutputs(
                    local_logits=arrays["local_logits"],
                    cloud_logits=arrays["cloud_logits"],
                    labels=arrays["labels"],
                    epoch=int(arrays["epoch"]),
                    features=arrays["features"] if need_features and "features" in arrays else None,
                    checkpoint=str(arrays["checkpoint"]) if "checkpoint" in arrays.files else "",
                )
        except NPZ_ERRORS as err:
            raise UsageError(f"{path} is damaged ({type(err).__name__}): {remedy} again") from None
        if need_features and loaded[split].features is None:
            raise UsageError(f"{path} has no edge features: {remedy} first")
    epochs = {split: o.epoch for split, o in loaded.items()}
    if len(set(epochs.values())) > 1:
        raise UsageError(f"{run.outputs_dir} mixes the outputs of epochs {epochs}: {remedy} again")
    return loaded


def outputs_source(run: RunDir, *, with_features: bool) -> tuple[int, str] | None:
    """(epoch, checkpoint digest) every split's outputs come from, or None if a split is
    missing, damaged, lacks the features asked for, or the splits disagree."""
    sources = set()
    for split in SPLITS:
        path = run.outputs(split)
        if not path.is_file():
            return None
        try:
            with load_npz(path) as arrays:
                if with_features and "features" not in arrays.files:
                    return None
                digest = str(arrays["checkpoint"]) if "checkpoint" in arrays.files else ""
                sources.add((int(arrays["epoch"]), digest))
        except NPZ_ERRORS:
            return None  # damaged: collect again
    return sources.pop() if len(sources) == 1 else None


def outputs_fingerprint(outputs: dict[str, SplitOutputs]) -> str:
    """SHA-256 of every split's logits, labels and epoch: what a router family or the results
    were made from."""
    digest = hashlib.sha256()
    for split in SPLITS:
        o = outputs[split]
        for array in (o.local_logits, o.cloud_logits, o.labels, np.int64(o.epoch)):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# routers/NAME/


@dataclasses.dataclass(frozen=True)
class FamilyRecord:
    """router.json: one router family, trained for a grid of targets."""

    config: dict[str, Any]  # the RouterConfig, as JSON
    made_from: str  # outputs_fingerprint of the outputs it was trained on
    outputs_epoch: int  # the DDNN checkpoint those outputs come from
    benefit_thresholds: list[float]  # B*(L0) per target, from the training split
    # Per target: offload iff the router's logit >= this (its scores.npz row g, or row 0 of a
    # score family), chosen on validation to keep round(L0 * N_val) samples local. A deployed
    # router uses these; ``ddnn evaluate --thresholds`` scores other ones.
    decision_thresholds: list[float]
    best_epoch: list[int]  # per router (one per target, or the score's one), 1-based
    epochs_run: list[int]
    quality: str  # the per-epoch metric below: 'decision_accuracy' or 'mean_accuracy_over_budgets'
    train_quality: list[list[float]]  # per router, per epoch run
    val_quality: list[list[float]]
    input_shape: list[int]
    # what a deployed router subtracts and divides by before its first layer
    input_mean: list[float]
    input_std: list[float]
    seconds: dict[str, float]  # 'compile', 'train'
    backend: str
    # Per target, the labelling's parameter of the candidate validation kept (border's tau);
    # None when the labelling trains one router per target.
    selected: list[float | None] | None = None
    flops_per_sample: int | None = None  # router_net.router_flops plus what its input costs
    # routers whose logits are averaged per target (a cross-fitted family's folds); the weights
    # are stacked target-major, row g * members + k
    members: int = 1


def write_family(
    run: RunDir,
    name: str,
    record: FamilyRecord,
    scores: dict[str, np.ndarray],
    save_variables: Callable[[Path], None],
) -> FamilyDir:
    """Builds the family beside its final place and renames it in; ``save_variables(path)``
    writes the stacked weights to a directory path that must not exist yet."""
    family = run.family(name)
    with atomic_dir(family.root) as staging:
        built = FamilyDir(staging)
        write_json(built.record, dataclasses.asdict(record))
        save_npz(built.scores, scores)
        save_variables(built.variables)
    return family


def read_family(family: FamilyDir) -> FamilyRecord:
    """router.json of a family, or a UsageError saying how to rebuild it."""
    remedy = f"delete {family.root} and run 'ddnn route' again"
    value = read_json(family.record, remedy)
    return build(FamilyRecord, value, "router family record", family.record, remedy)


def family_fingerprint(scores: dict[str, np.ndarray]) -> str:
    """SHA-256 of a family's router logits on every split: what results.json scored."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(np.ascontiguousarray(scores[split], np.float32).tobytes())
    return digest.hexdigest()


def read_family_scores(family: FamilyDir) -> dict[str, np.ndarray]:
    """The router logits [G, N] of every split."""
    try:
        with load_npz(family.scores) as scores:
            return {split: scores[split] for split in SPLITS}
    except NPZ_ERRORS as err:
        raise UsageError(
            f"{family.scores} is damaged ({type(err).__name__}): delete {family.root} and run "
            "'ddnn route' again"
        ) from None
