"""``ddnn export-edge``: a trained run's edge half as one graph a device runtime executes, checked
against what the run evaluated before it is published.

The exported program is the edge's JAX code itself, traced: pixels 0..255 normalised as the run
normalises them, the feature extractor and local head of the best checkpoint, the router family's
inputs and routers, and a bottleneck's encoder where the export sends codes. ``onnx_graph`` turns
it into ONNX; ``litert`` into a LiteRT flatbuffer. The graph is then run on the whole test split and
compared with the run's collected outputs and its family's scores; a graph whose local predictions
or decisions differ (beyond scores within ``NEAR`` of a threshold) is not written.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.common.provenance import source_revision
from ddnn_jax.core.config import package_versions
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.outputs import SplitOutputs
from ddnn_jax.core.router_net import RouterConfig, traced_edge_inputs
from ddnn_jax.core.training import build_model
from ddnn_jax.data import normalize
from ddnn_jax.deploy import exported as layout
from ddnn_jax.deploy.edge_half import EdgeHalf
from ddnn_jax.deploy.rules import router_family
from ddnn_jax.deploy.runtimes import Runner, runner
from ddnn_jax.interop import engines
from ddnn_jax.rundir import (
    RunDir,
    as_run,
    deployed_router,
    outputs_fingerprint,
    read_family_scores,
    read_outputs,
    read_run_record,
    restore_best,
    split_images,
    write_json,
)
from ddnn_jax.rundir.bottlenecks import deployed_bottleneck, read_bottleneck_logits
from ddnn_jax.rundir.files import atomic_dir, save_npz

TOLERANCE = 1e-4  # the most a logit may differ from the run's, absolute
NEAR = 1e-5  # a decision may differ only where the score lies this close to its threshold


class VerificationFailed(RuntimeError):
    """The exported graph does not compute what the run evaluated; ``verification`` says how."""

    def __init__(self, verification: dict[str, Any]):
        super().__init__(summary(verification))
        self.verification = verification


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """One export of a run's edge half."""

    format: str = "onnx"  # engines.FORMATS
    family: str = "logits"  # the router family whose routers the graph computes
    batch: int | None = None  # the graph's fixed batch; None: dynamic
    bottleneck: str | None = None  # send this bottleneck's codes (default: the family's, if any)
    int8: bool = False  # also an int8 graph by onnxruntime's static quantisation (onnx only)
    calibration: int = 512  # validation images that calibrate the int8 graph's activations

    def check(self) -> None:
        """Raises UsageError naming the first bad field."""
        if self.format not in engines.FORMATS:
            raise UsageError(f"--format must be one of {', '.join(engines.FORMATS)}, got '{self.format}'")
        if self.batch is not None and not 1 <= self.batch <= 65536:
            raise UsageError(f"--batch must be 'dynamic' or lie in 1..65536, got {self.batch}")
        if self.int8 and self.format != "onnx":
            raise UsageError("--int8 quantises an ONNX graph: give --format onnx")
        if self.calibration < 1:
            raise UsageError(f"--calibration must be at least 1, got {self.calibration}")


class EdgeProgram(NamedTuple):
    """The traceable edge half of a run and what it is checked against."""

    fn: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
    decisions: list[layout.Decision]
    sends: str  # layout.FEATURES or layout.CODES
    description: dict[str, Any]  # for export.json: run, family, bottleneck, made_from


def edge_program(run: RunDir, family_name: str, bottleneck: str | None) -> EdgeProgram:
    """The run's edge half as one function of float32 pixels: local logits, the family's router
    logits [N, G] and z (or the bottleneck's codes)."""
    record, outputs = read_run_record(run), read_outputs(run)
    _, state, epoch = restore_best(run)
    edge = EdgeHalf(record, state)
    if outputs["test"].checkpoint and outputs["test"].checkpoint != edge.checkpoint:
        raise UsageError(
            f"{run}'s outputs come from other weights than its best checkpoint: run 'ddnn collect'"
        )
    family, family_record = router_family(run, family_name)
    made_from = outputs_fingerprint(outputs)
    if family_record.made_from != made_from:
        raise UsageError(f"router family {family_name} was trained on other outputs than {run}'s: retrain it")
    router = RouterConfig.from_json(family_record.config)
    routers = [deployed_router(family, g) for g in range(router.score_rows)]
    decisions = [
        layout.Decision(
            float(t), 0 if router.objective == "score" else g, float(family_record.decision_thresholds[g])
        )
        for g, t in enumerate(router.targets)
    ]
    name = bottleneck or router.bottleneck
    deployed = None if name is None else deployed_bottleneck(run, name)
    # XLA's own convolution: one Conv node per layer (the CPU default, im2col, is the same function)
    model = build_model(dataclasses.replace(record.train, conv="xla"), record.num_classes)
    variables = edge.variables
    mean, std = jnp.asarray(record.mean, jnp.float32), jnp.asarray(record.std, jnp.float32)

    def fn(pixels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        z, local_logits = cast(tuple, model.apply(variables, normalize(pixels, mean, std), method=model.edge))
        inputs = traced_edge_inputs(router.kind, local_logits, z, pixels)
        router_logit = jnp.stack([r.logits(inputs) for r in routers], axis=-1)
        sent = z if deployed is None else deployed.codes(deployed.variables, z)
        return local_logits, router_logit, sent

    description = {
        "run": str(run),
        "made_from": made_from,
        "checkpoint": edge.checkpoint,
        "epoch": epoch,
        "dataset": record.train.dataset,
        "classes": record.num_classes,
        "normalisation": {"mean": list(record.mean), "std": list(record.std)},
        "family": {"name": family_name, "inputs": router.inputs, "objective": router.objective},
        "curve": calibrated(curve_name(family_name)),
        "bottleneck": None if deployed is None else {"name": deployed.name, **deployed.describe()},
    }
    return EdgeProgram(fn, decisions, layout.FEATURES if deployed is None else layout.CODES, description)


def _reference(
    run: RunDir, program: EdgeProgram, family_name: str, images: np.ndarray, outputs: SplitOutputs
) -> dict[str, np.ndarray]:
    """What the graph must reproduce on the test split: the collected local logits and the
    family's scores, and z or codes from the JAX edge itself."""
    scores = read_family_scores(run.family(family_name))["test"]
    edge = jax.jit(program.fn)
    sent = np.concatenate([np.asarray(edge(chunk)[2]) for chunk in _chunks(images, 1000)])
    bottleneck = program.description["bottleneck"]
    cloud = outputs.cloud_logits
    if bottleneck is not None:
        cloud = read_bottleneck_logits(run.bottleneck(bottleneck["name"]))["test"]
    return {
        "images": images,
        "labels": outputs.labels,
        layout.LOCAL_LOGITS: outputs.local_logits,
        layout.ROUTER_LOGIT: np.asarray(scores, np.float32).T,
        "sent": sent,
        "cloud_logits": cloud,
    }


def _chunks(images: np.ndarray, size: int):
    for start in range(0, len(images), size):
        yield np.asarray(images[start : start + size], np.float32)


def verify(
    run_graph: Runner, reference: dict[str, np.ndarray], decisions: list[layout.Decision], sends: str
) -> dict[str, Any]:
    """The graph on the reference images against the reference: predictions, logits, decisions,
    and z (or the codes, ``sends``)."""
    local, router_logit, sent = run_graph(reference["images"])
    want_local, want_router = reference[layout.LOCAL_LOGITS], reference[layout.ROUTER_LOGIT]
    compared = []
    for d in decisions:
        got, want = router_logit[:, d.column], want_router[:, d.column]
        differ = (got >= d.threshold) != (want >= d.threshold)
        near = (np.abs(got - d.threshold) <= NEAR) | (np.abs(want - d.threshold) <= NEAR)
        compared.append(
            {
                "target": d.target,
                "differing": int((differ & ~near).sum()),
                "near_threshold": int((differ & near).sum()),
            }
        )
    local_gap = float(np.abs(local - want_local).max())
    router_gap = float(np.abs(router_logit - want_router).max())
    result: dict[str, Any] = {
        "split": "test",
        "samples": len(local),
        "local_predictions_differing": int((local.argmax(-1) != want_local.argmax(-1)).sum()),
        "local_logits_max_abs_diff": local_gap,
        "router_logit_max_abs_diff": router_gap,
        "decisions": compared,
    }
    if sends == layout.CODES:
        result["codes_differing"] = int((sent != reference["sent"]).sum())
    else:
        result["z_max_abs_diff"] = float(np.abs(sent - reference["sent"]).max())
    result["tolerance"] = {"logits": TOLERANCE, "near_threshold": NEAR}
    result["passed"] = (
        result["local_predictions_differing"] == 0
        and max(local_gap, router_gap) <= TOLERANCE
        and all(d["differing"] == 0 for d in compared)
    )
    return result


def summary(verification: dict[str, Any]) -> str:
    """One line: how the graph differs from the run."""
    decided = sum(d["differing"] for d in verification["decisions"])
    near = sum(d["near_threshold"] for d in verification["decisions"])
    return (
        f"{verification['samples']} test images: {verification['local_predictions_differing']} local "
        f"predictions differ, logits within {verification['local_logits_max_abs_diff']:.1e} (local) and "
        f"{verification['router_logit_max_abs_diff']:.1e} (router), {decided} decisions differ "
        f"(+{near} within {NEAR:g} of a threshold) over {len(verification['decisions'])} targets"
    )


def _check_out(out: Path) -> None:
    """An export goes to a new directory or replaces an earlier export, never anything else."""
    if out.exists() and not (out.is_dir() and (out / layout.EXPORT_JSON).is_file()):
        raise UsageError(f"{out} exists and is not an export: give --out a new directory")


def _file(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def export_edge(
    run_dir: RunDir | Path, out: Path, config: ExportConfig = ExportConfig(), progress: Progress = Progress()
) -> tuple[Path, dict[str, Any]]:
    """Exports, verifies and writes the run's edge half to ``out``.

    Args:
      run_dir: a run with outputs (``ddnn collect``) and the router family ``config.family``.
      out: the export directory (new, or an earlier export, replaced in one step).
      config: format, family, batch, bottleneck, int8.
      progress: where the stage lines go.

    Returns:
      ``out`` and export.json's content.

    Raises:
      VerificationFailed: the graph does not reproduce the run's outputs (nothing is written).
    """
    config.check()
    _check_out(out)
    run = as_run(run_dir)
    program = edge_program(run, config.family, config.bottleneck)
    outputs = read_outputs(run)
    images = split_images(run, outputs)["test"]
    shape = images.shape[1:]
    batch = config.batch
    if batch is None and not engines.FORMATS[config.format].dynamic_batch:
        batch = 1
    reference = _reference(run, program, config.family, images, outputs["test"])
    with atomic_dir(out) as staging:
        graph = staging / layout.GRAPHS[config.format]
        progress.stage(f"exporting the edge half of {run} to {config.format}")
        names = [layout.LOCAL_LOGITS, layout.ROUTER_LOGIT, program.sends]
        tool = engines.write_graph(config.format, program.fn, shape, batch, names, graph)
        progress.stage(f"verifying {graph.name} on {len(images):,} test images")
        verification = verify(runner(graph), reference, program.decisions, program.sends)
        if not verification["passed"]:
            raise VerificationFailed(verification)
        files = {graph.name: _file(graph)}
        int8 = None
        if config.int8:
            quantised = staging / layout.INT8
            calibration = split_images(run, outputs)["val"][: config.calibration]
            engines.quantise_int8(graph, quantised, calibration, batch)
            int8 = {
                **verify(runner(quantised), reference, program.decisions, program.sends),
                **_file(quantised),
            }
            files[quantised.name] = _file(quantised)
        save_npz(staging / layout.SAMPLES, {k: v for k, v in reference.items() if k != "sent"})
        info = {
            "format_version": layout.FORMAT_VERSION,
            "format": config.format,
            "exporter": tool,
            "config": dataclasses.asdict(config),
            **program.description,
            "input": {"name": layout.INPUT, "shape": _dims(batch, shape), "dtype": "float32"},
            "outputs": _outputs(batch, reference, names, program),
            "decisions": [d._asdict() for d in program.decisions],
            "rule": f"offload a sample at target L0 when {layout.ROUTER_LOGIT}[:, column] >= threshold",
            "files": files,
            "verification": verification,
            "int8": int8,
            "versions": package_versions(),
            "source": source_revision(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        write_json(staging / layout.EXPORT_JSON, info)
    return out, info


def _dims(batch: int | None, shape: tuple[int, ...]) -> list[int | str]:
    return ["N" if batch is None else batch, *shape]


def _outputs(batch, reference, names, program) -> list[dict[str, Any]]:
    arrays = [reference[layout.LOCAL_LOGITS], reference[layout.ROUTER_LOGIT], reference["sent"]]
    return [
        {"name": name, "shape": _dims(batch, a.shape[1:]), "dtype": str(a.dtype)}
        for name, a in zip(names, arrays, strict=True)
    ]
