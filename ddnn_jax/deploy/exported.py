"""An exported edge half on disk (``ddnn export-edge``): the one owner of its layout, and its
reader, in NumPy and the standard library only so that a device without JAX reads it.

    DIR/edge.onnx        the edge half as one ONNX graph (edge.tflite for LiteRT)
    DIR/edge.int8.onnx   the same graph quantised to int8 by onnxruntime, when asked
    DIR/export.json      inputs, outputs, the decision's thresholds, what it was made from and
                         how it was verified
    DIR/test_split.npz   the run's test images and labels, and the in-process outputs the
                         verification compared against (what a device checks itself on)

The graph is a pure function: ``images`` float32 [N, H, W, C] in pixel units 0..255 (the run's
normalisation inside) to ``local_logits`` [N, C], ``router_logit`` [N, G] and ``z`` [N, h, w, c]
(``codes``, uint8, when exported behind a bottleneck). The host decides: a sample is offloaded
at target L0 when ``router_logit[:, column] >= threshold`` of that target in export.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.limits import JSON_BYTES, check_npz, check_size

EXPORT_JSON = "export.json"
SAMPLES = "test_split.npz"
GRAPHS = {"onnx": "edge.onnx", "litert": "edge.tflite"}  # by format
INT8 = "edge.int8.onnx"
INPUT = "images"
LOCAL_LOGITS, ROUTER_LOGIT, FEATURES, CODES = "local_logits", "router_logit", "z", "codes"
FORMAT_VERSION = 1


class Decision(NamedTuple):
    """Offload when ``router_logit[:, column] >= threshold``: the family's rule at ``target``."""

    target: float
    column: int
    threshold: float


class Exported(NamedTuple):
    """An export directory, read: its description and where its files are."""

    root: Path
    info: dict[str, Any]  # export.json

    def graph(self, name: str | None = None) -> Path:
        """The graph file ``name`` (default: the export's format's fp32 graph)."""
        return self.root / (name or GRAPHS[self.info["format"]])

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES

    @property
    def sends(self) -> str:
        """What the graph's third output is: 'z' or 'codes'."""
        return str(self.info["outputs"][2]["name"])

    def decision(self, target: float) -> Decision:
        """The rule at ``target``; UsageError naming the targets it has."""
        for d in self.info["decisions"]:
            if abs(d["target"] - target) < 1e-9:
                return Decision(float(d["target"]), int(d["column"]), float(d["threshold"]))
        have = ", ".join(f"{d['target']:g}" for d in self.info["decisions"])
        raise UsageError(f"{self.root} decides at L0 in {have}, not {target:g}: choose one of them")


def read_export(root: Path) -> Exported:
    """The export in ``root``; UsageError when it is not one (or not complete)."""
    path = root / EXPORT_JSON
    if not path.is_file():
        raise UsageError(f"{root} has no {EXPORT_JSON}: give a directory 'ddnn export-edge' wrote")
    check_size(path, JSON_BYTES, "export description")
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON ({err}): export the edge again") from None
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path} is not an export of this ddnn-jax: export the edge again")
    exported = Exported(root, info)
    if not exported.graph().is_file():
        raise UsageError(f"{root} has no {exported.graph().name}: export the edge again")
    return exported


def read_samples(exported: Exported, limit: int | None = None) -> dict[str, np.ndarray]:
    """The export's test images, labels and in-process outputs, the first ``limit``."""
    if not exported.samples.is_file():
        raise UsageError(f"{exported.root} has no {SAMPLES}: export the edge again")
    check_npz(exported.samples)
    with np.load(exported.samples) as found:
        return {name: found[name][:limit] if found[name].ndim else found[name] for name in found.files}
