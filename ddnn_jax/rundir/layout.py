"""The run directory's layout: every file and folder name in a run or a study, and the classes
that turn them into paths (``RunDir``, ``FamilyDir``, ``StudyDir``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ddnn_jax.common.errors import UsageError

SPLITS = ("train", "val", "test")

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TORCH_CHECKPOINTS = "torch_checkpoints"  # the torch backend's epoch-N.pt, for resuming
OUTPUTS = "outputs"
OUT_OF_FOLD = "oof"  # the out-of-fold DDNNs (fold_K/) and the training split's logits from them
LOCK = ".lock"  # the run directory's exclusive lock (flock) and its holder
ROUTERS = "routers"
FAMILY_RECORD = "router.json"
FAMILY_SCORES = "scores.npz"
FAMILY_VARIABLES = "variables"
BOTTLENECKS = "bottlenecks"  # learned bottlenecks at the split (ddnn bottleneck), one folder each
BOTTLENECK_RECORD = "bottleneck.json"
BOTTLENECK_CLOUD = "cloud_logits.npz"  # per split, the cloud exit's logits behind the bottleneck
BOTTLENECK_BYTES = "coded_bytes.npz"  # per split, each sample's entropy-coded payload in bytes
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


@dataclasses.dataclass(frozen=True)
class _Artefact:
    """A trained artefact's folder: a JSON record, one array file and a variables folder, built
    beside its final place and renamed in (so a folder whose name starts with '.' is unfinished)."""

    root: Path
    RECORD = ""  # the file names each kind sets
    ARRAYS = ""

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def record(self) -> Path:
        return self.root / self.RECORD

    @property
    def variables(self) -> Path:
        return self.root / FAMILY_VARIABLES

    def is_complete(self) -> bool:
        return self.record.is_file() and (self.root / self.ARRAYS).is_file() and self.variables.is_dir()

    @classmethod
    def complete_in(cls, parent: Path) -> dict[str, Any]:
        """Every complete artefact of this kind under ``parent``, by name."""
        if not parent.is_dir():
            return {}
        found = (cls(d) for d in sorted(parent.iterdir()) if not d.name.startswith("."))
        return {a.name: a for a in found if a.is_complete()}


class FamilyDir(_Artefact):
    """``RUN_DIR/routers/NAME/``: one trained router family."""

    RECORD, ARRAYS = FAMILY_RECORD, FAMILY_SCORES

    @property
    def scores(self) -> Path:
        return self.root / FAMILY_SCORES


class BottleneckDir(_Artefact):
    """``RUN_DIR/bottlenecks/NAME/``: one learned bottleneck and the cloud's answers through it."""

    RECORD, ARRAYS = BOTTLENECK_RECORD, BOTTLENECK_CLOUD

    @property
    def cloud_logits(self) -> Path:
        return self.root / BOTTLENECK_CLOUD

    @property
    def coded_bytes(self) -> Path:
        return self.root / BOTTLENECK_BYTES


@dataclasses.dataclass(frozen=True)
class _Directory:
    """A directory of known layout; ``root`` may be given as a string."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __str__(self) -> str:
        return str(self.root)

    def _own(self, *parts: str) -> Path:
        """root/parts, refused when a folder on the way is a symbolic link: a run reads and
        writes only inside itself, never through a link to elsewhere."""
        path = self.root
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise UsageError(
                    f"{path} is a symbolic link: a run writes only inside itself; remove the link"
                )
        return path

    @property
    def figures(self) -> Path:
        return self._own(FIGURES)


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
    def torch_checkpoints(self) -> Path:
        """The torch backend's per-epoch PyTorch states (epoch-N.pt), which it resumes from."""
        return self.root / TORCH_CHECKPOINTS

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def outputs_dir(self) -> Path:
        return self._own(OUTPUTS)

    def outputs(self, split: str) -> Path:
        return self.outputs_dir / f"{split}.npz"

    @property
    def routers(self) -> Path:
        return self._own(ROUTERS)

    def family(self, name: str) -> FamilyDir:
        return FamilyDir(self.routers / name)

    def families(self) -> dict[str, FamilyDir]:
        """Every complete router family, by name (directories being built are hidden)."""
        return FamilyDir.complete_in(self.routers)

    def bottleneck(self, name: str) -> BottleneckDir:
        return BottleneckDir(self._own(BOTTLENECKS) / name)

    def bottlenecks(self) -> dict[str, BottleneckDir]:
        """Every complete bottleneck, by name (directories being built are hidden)."""
        return BottleneckDir.complete_in(self._own(BOTTLENECKS))

    @property
    def run_plan(self) -> Path:
        return self.root / RUN_PLAN

    @property
    def weight_sweep(self) -> Path:
        return self._own(WEIGHT_SWEEP)

    def sweep_run(self, local_weight: float, seed: int) -> RunDir:
        return RunDir(self.weight_sweep / f"w{local_weight}_seed{seed}")

    def sweep_runs(self) -> list[RunDir]:
        root = self.weight_sweep
        return [RunDir(d) for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []

    @property
    def oof_dir(self) -> Path:
        return self._own(OUT_OF_FOLD)

    def oof_run(self, fold: int) -> RunDir:
        """The DDNN trained without fold ``fold`` of the training split."""
        return RunDir(self.oof_dir / f"fold_{fold}")

    @property
    def oof_outputs(self) -> Path:
        """The training split's outputs, each sample's from the DDNN that did not train on it."""
        return self.oof_dir / "train.npz"

    @property
    def bench_inference(self) -> Path:
        return self.root / BENCH_INFERENCE

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def edge_dir(self) -> Path:
        """Reports of the edge half run against a server (``ddnn edge``)."""
        return self._own(EDGE)

    def edge_report(self, name: str) -> Path:
        return self._own(EDGE, name) / EDGE_REPORT

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
