"""The run directory: every file and folder name in it, the records written there, atomic writes
of files and directories, and the readers. No other module spells a path inside a run.

::

    RUN_DIR/
      config.json              RunRecord: the resolved training configuration
      metrics.jsonl            one row per trained epoch
      checkpoints/             Orbax checkpoints of the TrainState, step = completed epoch
      outputs/{split}.npz      SplitOutputs of the best epoch, one file per split
      routers/NAME/            one router family: router.json (FamilyRecord), scores.npz
                               (router logits [G, N] per split), variables/ (Orbax, stacked over G)
      run_plan.json            the RunPlan of ``ddnn run``
      weight_sweep/wW_seedS/   the local-weight study's short runs, each a run directory itself
      bench_inference.json     Fig. 6.5's timings of this run
      results.json             Results: every mechanism on the test split
      edge/NAME/edge_report.json   one run of the edge half against 'ddnn serve' (``ddnn edge``)
      edge/sweep.json          accuracy against bytes on the wire, every target and wire
      report.md, figures/      the report and its figures, drawn from results.json and edge/

A study (``ddnn study``) is a directory of such runs, one per seed::

    STUDY_DIR/
      study_config.json        the flags every seed's run shares (all but the seed)
      seed_S/                  one run directory per seed
      study.json, study.md     the aggregate over seeds and its report; figures/ beside them

Every record says what it was made from: outputs carry the epoch of the checkpoint they come
from, a router family the fingerprint of the outputs it was trained on, and the results the
fingerprint of the outputs they score. Files are written under a temporary name and renamed into
place; directories are built beside their final name and renamed in, so a reader sees a whole
artefact or none.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NotRequired, TypedDict

import jax
import numpy as np

from ddnn_jax.common import runtime
from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.config import TrainConfig, package_versions, resolve_local_weight

SPLITS = ("train", "val", "test")
IMPORTED = "imported"  # local_weight_mode of a run imported from PyTorch: w is not known

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
OUTPUTS = "outputs"
LOCK = ".lock"  # the run directory's exclusive lock (flock) and its holder
# What np.load raises for a truncated, garbled or incomplete .npz.
NPZ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
ROUTERS = "routers"
FAMILY_RECORD = "router.json"
FAMILY_SCORES = "scores.npz"
FAMILY_VARIABLES = "variables"
RUN_PLAN = "run_plan.json"
WEIGHT_SWEEP = "weight_sweep"
BENCH_INFERENCE = "bench_inference.json"
RESULTS = "results.json"
REPORT = "report.md"
EDGE = "edge"
EDGE_REPORT = "edge_report.json"
EDGE_SWEEP = "sweep.json"
FIGURES = "figures"
STUDY_CONFIG = "study_config.json"
STUDY_RESULTS = "study.json"
STUDY_REPORT = "study.md"


# ------------------------------------------------------------------------------------------------
# Layout


@dataclasses.dataclass(frozen=True)
class FamilyDir:
    """``RUN_DIR/routers/NAME/``: one trained router family."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def record(self) -> Path:
        return self.root / FAMILY_RECORD

    @property
    def scores(self) -> Path:
        return self.root / FAMILY_SCORES

    @property
    def variables(self) -> Path:
        return self.root / FAMILY_VARIABLES

    def is_complete(self) -> bool:
        return self.record.is_file() and self.scores.is_file() and self.variables.is_dir()


@dataclasses.dataclass(frozen=True)
class _Directory:
    """A directory of known layout; ``root`` may be given as a string."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __str__(self) -> str:
        return str(self.root)

    @property
    def figures(self) -> Path:
        return self.root / FIGURES


@dataclasses.dataclass(frozen=True)
class RunDir(_Directory):
    """The paths of one run directory."""

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def outputs_dir(self) -> Path:
        return self.root / OUTPUTS

    def outputs(self, split: str) -> Path:
        return self.outputs_dir / f"{split}.npz"

    @property
    def routers(self) -> Path:
        return self.root / ROUTERS

    def family(self, name: str) -> FamilyDir:
        return FamilyDir(self.routers / name)

    def families(self) -> dict[str, FamilyDir]:
        """Every complete router family, by name (directories being built are hidden)."""
        if not self.routers.is_dir():
            return {}
        found = (FamilyDir(d) for d in sorted(self.routers.iterdir()) if not d.name.startswith("."))
        return {f.name: f for f in found if f.is_complete()}

    @property
    def run_plan(self) -> Path:
        return self.root / RUN_PLAN

    @property
    def weight_sweep(self) -> Path:
        return self.root / WEIGHT_SWEEP

    def sweep_run(self, local_weight: float, seed: int) -> RunDir:
        return RunDir(self.weight_sweep / f"w{local_weight}_seed{seed}")

    def sweep_runs(self) -> list[RunDir]:
        root = self.weight_sweep
        return [RunDir(d) for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []

    @property
    def bench_inference(self) -> Path:
        return self.root / BENCH_INFERENCE

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def edge_dir(self) -> Path:
        """Reports of the edge half run against a server (``ddnn edge``)."""
        return self.root / EDGE

    def edge_report(self, name: str) -> Path:
        return self.edge_dir / name / EDGE_REPORT

    @property
    def edge_sweep(self) -> Path:
        return self.edge_dir / EDGE_SWEEP

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def figure(self, fig_id: str) -> Path:
        return self.figures / f"fig_{fig_id.replace('.', '_')}.png"


@dataclasses.dataclass(frozen=True)
class StudyDir(_Directory):
    """The paths of one multi-seed study."""

    @property
    def config(self) -> Path:
        return self.root / STUDY_CONFIG

    def seed_run(self, seed: int) -> RunDir:
        return RunDir(self.root / f"seed_{seed}")

    def runs(self) -> list[RunDir]:
        """Every run directory directly under the study (a folder with a config.json)."""
        if not self.root.is_dir():
            return []
        return [RunDir(d) for d in sorted(self.root.iterdir()) if (d / CONFIG).is_file()]

    @property
    def results(self) -> Path:
        return self.root / STUDY_RESULTS

    @property
    def report(self) -> Path:
        return self.root / STUDY_REPORT

    def figure(self, name: str) -> Path:
        return self.figures / f"study_{name}.png"


def as_run(run: RunDir | Path | str) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir(Path(run))


# ------------------------------------------------------------------------------------------------
# Atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, *, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; what we publish gets the user's usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path`` and renames it into place if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        _publish_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yields an empty staging directory beside ``path``; if the block succeeds it replaces
    ``path`` in one step: an existing directory is exchanged with the staging one atomically
    (Linux renameat2), so a reader or a crash sees the old or the new one, never neither and
    never a mix; the old one is deleted after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        _publish_mode(staging, directory=True)
        if path.exists():
            _exchange(staging, path)  # staging now holds the old directory
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swaps two paths atomically (renameat2 RENAME_EXCHANGE); on systems without it, renames
    b aside first (a crash between the two renames leaves b under a hidden '.old' name)."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
    aside = b.with_name(f".{b.name}.{uuid.uuid4().hex[:8]}.old")
    b.rename(aside)
    try:
        a.rename(b)
    except OSError:
        aside.rename(b)  # put the old one back
        raise
    aside.rename(a)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


_held_locks: dict[Path, int] = {}  # run directories this process holds, with nesting depth


@contextlib.contextmanager
def locked(run: RunDir, stage: str) -> Iterator[None]:
    """Holds the run directory's exclusive lock while a writing stage runs (re-entrant within
    one process, so ``ddnn run`` holds it across its stages). The lock is an flock on
    RUN_DIR/.lock, which the kernel releases when the holder dies, so a kill leaves nothing
    held; the file names its holder for the message of whoever finds it taken. A directory
    made for the lock alone is removed again if the stage fails."""
    key = run.root.resolve()
    if jax.process_index() > 0:
        # one program in several processes: process 0 holds the lock for all of them
        yield
        return
    if key in _held_locks:
        _held_locks[key] += 1
        try:
            yield
        finally:
            _held_locks[key] -= 1
        return
    created = not run.root.exists()
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a .lock planted as a symlink must not make us truncate its target
        fd = os.open(run.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = os.fdopen(fd, "a+", encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot lock {run} ({err.strerror}): choose a directory you can write to") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"{run} is in use by {holder}: wait for it to end, or stop it, and retry") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} (ddnn {stage})\n")
    handle.flush()
    _held_locks[key] = 1
    finished = False
    try:
        yield
        finished = True
    finally:
        del _held_locks[key]
        with contextlib.suppress(OSError):  # never hide the stage's own error
            if created and not finished and [p.name for p in run.root.iterdir()] == [LOCK]:
                run.lock.unlink()
                run.root.rmdir()
        with contextlib.suppress(OSError):
            handle.truncate(0)
        handle.close()  # closing the descriptor releases the flock


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (NaN is refused), sorted keys, under a temporary name."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path, remedy: str) -> Any:
    """The JSON value in ``path``, or a UsageError naming the file and ``remedy``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: {remedy}") from None
    except OSError as err:
        raise UsageError(f"{path} cannot be read ({err.strerror}): {remedy}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({type(err).__name__}): {remedy}") from None


def save_npz(path: Path, arrays: dict[str, Any]) -> Path:
    """np.savez under a temporary name, then a rename: readers never see half a file."""
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# ------------------------------------------------------------------------------------------------
# config.json


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
        )


def write_run_record(run: RunDir, record: RunRecord) -> None:
    write_json(run.config, record.to_json())


def read_run_record(run: RunDir) -> RunRecord:
    """config.json of an existing run, or a UsageError saying how to make or mend it."""
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


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """The per-epoch rows of metrics.jsonl (empty before the first epoch ends)."""
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
            _check_writable(root)
            return True
        if any(p.name != LOCK for p in root.iterdir()):
            raise UsageError(
                f"--out {root} is a non-empty directory that holds no ddnn run: "
                "choose a new or empty directory"
            )
        _check_writable(root)
        return False
    parent = root.parent
    while not parent.exists():
        parent = parent.parent
    _check_writable(parent)
    return False


def _check_writable(directory: Path) -> None:
    """Probes with a real file: permission bits say nothing for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise UsageError(
            f"cannot write to {directory} ({err.strerror}): choose an --out path you can write to"
        ) from None


# ------------------------------------------------------------------------------------------------
# outputs/{split}.npz


@dataclasses.dataclass(frozen=True)
class SplitOutputs:
    """One split's per-sample outputs of the DDNN in evaluation mode, made from the checkpoint
    of ``epoch``."""

    local_logits: np.ndarray  # [N, C] float32
    cloud_logits: np.ndarray  # [N, C] float32
    labels: np.ndarray  # [N] int32
    epoch: int  # the checkpoint they come from (the best on validation)
    features: np.ndarray | None = None  # z, [N, H, W, C] float32, with ``collect --features``
    checkpoint: str = ""  # checkpointing.state_digest of those weights ("" if not known)

    def __len__(self) -> int:
        return len(self.labels)


def write_outputs(run: RunDir, outputs: dict[str, SplitOutputs]) -> dict[str, Path]:
    """Every split's outputs, replacing outputs/ as a whole: a reader never sees splits of two
    collections."""
    with atomic_dir(run.outputs_dir) as staging:
        for split in SPLITS:
            o = outputs[split]
            arrays: dict[str, Any] = {
                "local_logits": o.local_logits.astype(np.float32),
                "cloud_logits": o.cloud_logits.astype(np.float32),
                "labels": o.labels.astype(np.int32),
                "epoch": np.int32(o.epoch),
                "checkpoint": np.str_(o.checkpoint),
            }
            if o.features is not None:
                arrays["features"] = o.features.astype(np.float32)
            with open(staging / run.outputs(split).name, "wb") as f:
                np.savez(f, **arrays)
    return {split: run.outputs(split) for split in SPLITS}


def read_outputs(run: RunDir, *, need_features: bool = False) -> dict[str, SplitOutputs]:
    """The collected outputs of every split, or a UsageError naming the damaged, missing or
    mismatched file and the command that makes it again."""
    loaded = {}
    remedy = f"run 'ddnn collect --run {run}{' --features' if need_features else ''}'"
    for split in SPLITS:
        path = run.outputs(split)
        if not path.is_file():
            raise UsageError(f"{path} is missing: {remedy} first")
        try:
            with np.load(path) as arrays:
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
            with np.load(path) as arrays:
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
    try:
        return FamilyRecord(**value)
    except TypeError as err:
        raise UsageError(f"{family.record} is not a router family record ({err}): {remedy}") from None


def family_fingerprint(scores: dict[str, np.ndarray]) -> str:
    """SHA-256 of a family's router logits on every split: what results.json scored."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(np.ascontiguousarray(scores[split], np.float32).tobytes())
    return digest.hexdigest()


def read_family_scores(family: FamilyDir) -> dict[str, np.ndarray]:
    """The router logits [G, N] of every split."""
    try:
        with np.load(family.scores) as scores:
            return {split: scores[split] for split in SPLITS}
    except NPZ_ERRORS as err:
        raise UsageError(
            f"{family.scores} is damaged ({type(err).__name__}): delete {family.root} and run "
            "'ddnn route' again"
        ) from None


# ------------------------------------------------------------------------------------------------
# results.json (the schema the evaluate stage writes and the report reads)


class Point(TypedDict):
    """One operating point of a mechanism on the test split."""

    target: float  # the L0 asked for
    local_rate: float
    accuracy: float
    decision_accuracy: NotRequired[float]  # per-target routers: against their own meta-labels
    best_epoch: NotRequired[int]
    epochs_run: NotRequired[int]
    threshold: NotRequired[float]  # calibrated routers: offload iff logit >= threshold


class UnconstrainedPoint(TypedDict):
    """The oracle at the local rate it chooses itself."""

    target: None
    local_rate: float
    accuracy: float


class RouterResult(TypedDict):
    family: str
    made_from: str  # family_fingerprint of the scores evaluated
    config: dict[str, Any]
    points: list[Point]  # the thesis decision, logit >= 0 (per-target routers; [] for a score)
    entropy_at_achieved_rate: list[Point]  # the entropy rule at the rates ``points`` kept
    calibrated: list[Point]  # at the thresholds calibrated on validation (or given)
    threshold_source: str  # 'validation' or 'given' (ddnn evaluate --thresholds)
    quality: str  # FamilyRecord.quality
    train_quality: list[list[float]]
    val_quality: list[list[float]]
    seconds: dict[str, float]
    backend: str


class Comparison(TypedDict):
    """A router curve against a baseline rule at the same target, sample by sample."""

    target: float
    mechanism: str  # a router curve
    baseline: str  # 'entropy' or 'random'
    difference: float  # accuracy(mechanism) - accuracy(baseline)
    ci95: list[float]  # paired percentile bootstrap over test samples
    p_value: float  # exact McNemar (two-sided binomial test of the discordant pairs)
    local_rate: float
    baseline_local_rate: float
    n: int  # test samples
    discordant: list[int]  # [mechanism right & baseline wrong, the reverse]


class TestAnalysis(TypedDict):
    router: str
    target: float
    tau: float
    noise_rate: float
    border_rate: float
    shares: dict[str, float]
    misclassification: dict[str, float | None]


class SweepRun(TypedDict):
    local_weight: float
    seed: int
    epochs: int
    limit_train: int | None
    edge_only_accuracy: float
    cloud_only_accuracy: float
    entropy: list[Point]


class Results(TypedDict):
    """results.json. Rates and accuracies are fractions in [0, 1] on the test split."""

    dataset: str
    seed: int
    local_weight: float | None
    local_weight_mode: str
    best_epoch: int
    test_size: int
    made_from: str  # outputs_fingerprint of the outputs scored
    edge_only_accuracy: float
    cloud_only_accuracy: float
    oracle_unconstrained: UnconstrainedPoint
    curves: dict[str, list[Point]]
    summary: dict[str, dict[str, float]]  # per curve: auc, gap_to_oracle
    comparisons: list[Comparison]
    routers: dict[str, RouterResult]  # by curve name
    label_analysis: dict[str, Any]
    test_analysis: TestAnalysis | None
    latency_model: dict[str, Any]
    local_weight_sweep: list[SweepRun]
    timing: dict[str, Any]
    evaluation_config: dict[str, Any]
    inference: list[dict[str, Any]] | None  # the lines of bench_inference.json


def write_results(run: RunDir, results: Results) -> None:
    write_json(run.results, results)


def read_results(run: RunDir) -> Results:
    """results.json, or a UsageError when it is missing, damaged or from another version."""
    if not run.results.is_file():
        raise UsageError(f"{run.results} is missing: run 'ddnn evaluate --run {run}' first")
    value = read_json(run.results, f"run 'ddnn evaluate --run {run}' again")
    missing = sorted(Results.__required_keys__ - set(value)) if isinstance(value, dict) else ["all"]
    if missing:
        raise UsageError(
            f"{run.results} lacks '{missing[0]}' (written by another version): "
            f"run 'ddnn evaluate --run {run}' again"
        )
    return value


def read_edge_reports(run: RunDir) -> list[dict[str, Any]]:
    """Every edge_report.json under RUN_DIR/edge/, by name."""
    if not run.edge_dir.is_dir():
        return []
    paths = sorted(run.edge_dir.glob(f"*/{EDGE_REPORT}"))
    return [read_json(path, f"delete {path.parent} and run 'ddnn edge' again") for path in paths]


def read_edge_sweep(run: RunDir) -> dict[str, Any] | None:
    """RUN_DIR/edge/sweep.json (``ddnn edge --sweep``), if the run has one."""
    if not run.edge_sweep.is_file():
        return None
    return read_json(run.edge_sweep, f"delete it and run 'ddnn edge --run {run} --sweep' again")


def read_inference_timings(run: RunDir) -> list[dict[str, Any]] | None:
    """The lines of bench_inference.json, if the run has them."""
    if not run.bench_inference.is_file():
        return None
    return read_json(run.bench_inference, f"delete it and run 'ddnn bench inference --run {run}'")
