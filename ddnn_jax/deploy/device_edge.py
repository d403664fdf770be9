"""``ddnn edge --engine onnx``: the edge half as a device runs it, an exported graph
(``ddnn export-edge``) in onnxruntime (or the LiteRT interpreter), with no JAX anywhere in its
imports. It streams the export's test images, decides with the thresholds of export.json, sends
what it offloads over the same wire to ``ddnn serve`` as the JAX edge (``deploy.edge``), and
writes the same edge_report.json, its in-process comparison taken from the outputs the export was
verified against.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.files import prepare_file, write_json
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.budgets import REFERENCE_TARGET
from ddnn_jax.deploy import auth, image_wire, wire
from ddnn_jax.deploy.client import CircuitBreaker, CloudClient, check_route, warn_unanswered
from ddnn_jax.deploy.exported import CODES, Decision, Exported, read_export, read_samples
from ddnn_jax.deploy.runtimes import runner
from ddnn_jax.deploy.stream import (
    EdgeInterrupted,
    Stream,
    accuracy,
    check_stream,
    run_stream,
    sigterm_interrupts,
    stream_summary,
)

ENGINES = ("jax", "onnx")  # 'ddnn edge --engine'


@dataclasses.dataclass(frozen=True)
class DeviceEdgeConfig:
    """One live run of an exported edge half against a server."""

    export: str  # the directory 'ddnn export-edge' wrote
    server: str  # base URL of 'ddnn serve'
    target: float = REFERENCE_TARGET  # L0: one of the export's decisions
    wire: str = "fp32"  # wire.WIRES: z's, the export's bottleneck's codes, or the image's
    quality: int = image_wire.DEFAULT_QUALITY  # of a lossy image wire
    batch: int = 1
    graph: str | None = None  # a graph file of the export (default: its fp32 graph)
    threads: int | None = None  # the runtime's intra-op threads (default: its own choice)
    timeout_s: float = 5.0
    breaker: int = 5
    backoff_s: float = 30.0
    limit: int | None = None
    token_file: str | None = None
    tls_ca: str | None = None

    def check(self) -> None:
        """Raises UsageError naming the first bad field."""
        if self.wire not in wire.WIRES:
            raise UsageError(f"--wire must be one of {', '.join(wire.WIRES)}, got '{self.wire}'")
        low, high = image_wire.QUALITY_RANGE
        if not low <= self.quality <= high:
            raise UsageError(f"--quality must lie in {low}..{high}, got {self.quality}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        check_stream(self.batch, self.timeout_s, self.breaker, self.backoff_s, self.limit, self.server)


def _route(exported: Exported, config: DeviceEdgeConfig) -> tuple[str, int]:
    """The server path and header param of the wire, refused where the graph cannot feed it."""
    kind = wire.WIRES[config.wire].kind
    sends_codes = exported.sends == CODES
    if (kind == wire.CODES) != sends_codes:  # codes only from a bottleneck's export, z and images otherwise
        made = "a bottleneck's codes" if sends_codes else "z"
        raise UsageError(f"{exported.root}'s graph makes {made}: --wire {config.wire} cannot send them")
    if kind == wire.FEATURES:
        return wire.CLOUD_PATH, 0
    if kind == wire.IMAGES:
        return wire.IMAGE_PATH, config.quality if config.wire in image_wire.LOSSY else 0
    bottleneck = exported.info["bottleneck"]
    return wire.codes_path(bottleneck["name"]), int(bottleneck["bits"])


def _check_server(
    health: dict[str, Any] | None, exported: Exported, path: str, config: DeviceEdgeConfig, progress: Progress
) -> None:
    """Refuses a server that serves other weights, another bottleneck, or not this route; warns
    when none answers (what it offloads then falls back, as with the JAX edge)."""
    info = exported.info
    if health is None:
        warn_unanswered(config.server, progress)
        return
    if health.get("checkpoint") != info["checkpoint"]:
        raise UsageError(
            f"{config.server} serves other weights than {exported.root} was exported from: "
            "serve the run it names in export.json"
        )
    bottleneck = info["bottleneck"]
    if path.startswith(wire.codes_path("")):  # the export's bottleneck, as the server describes it
        described = {k: v for k, v in bottleneck.items() if k != "name"}
        check_route(health, config.server, path, (bottleneck["name"], described))
    else:
        check_route(health, config.server, path, None)


def _name(exported: Exported, config: DeviceEdgeConfig) -> str:
    graph = Path(config.graph or exported.graph().name).stem.replace(".", "-")
    return f"{graph}-L{config.target:g}-{config.wire}-b{config.batch}"


def run_device_edge(
    config: DeviceEdgeConfig, *, out: Path | None = None, progress: Progress = Progress()
) -> tuple[Path, dict[str, Any]]:
    """Runs the exported edge over the export's test images against ``config.server``.

    Returns:
      The report's path (default: EXPORT/edge/NAME/edge_report.json) and its content.
    """
    config.check()
    exported = read_export(Path(config.export))
    decision = exported.decision(config.target)
    path_and_param = _route(exported, config)
    samples = read_samples(exported, config.limit)
    graph = exported.graph(config.graph)
    if not graph.is_file():
        raise UsageError(f"{exported.root} has no graph {graph.name}")
    run_graph = runner(graph, config.threads)
    path = out or exported.root / "edge" / _name(exported, config) / "edge_report.json"
    prepare_file(path)
    token = None if config.token_file is None else auth.read_token(Path(config.token_file))
    client = CloudClient(config.server, config.timeout_s, token, config.tls_ca)
    server = client.health()
    _check_server(server, exported, path_and_param[0], config, progress)
    images = samples["images"]
    pixels = images.astype(np.float32)
    image_wire_kind = wire.WIRES[config.wire].kind == wire.IMAGES

    def step(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        local_logits, router_logit, sent = run_graph(pixels[rows])
        send = router_logit[:, decision.column] >= decision.threshold
        return local_logits, send, images[rows] if image_wire_kind else sent

    step(np.arange(min(config.batch, len(images))))  # the runtime's first call allocates
    stream = Stream(len(images), CircuitBreaker(config.breaker, config.backoff_s))
    started = time.perf_counter()
    label = f"edge onnx L0={config.target:g} {config.wire}"
    classes = int(exported.info["classes"])
    body = lambda rows, made_of: wire.encode(made_of, config.wire, path_and_param[1])
    try:
        with sigterm_interrupts():
            run_stream(
                len(images),
                config.batch,
                step,
                body,
                client,
                (path_and_param[0], classes),
                stream,
                backoff_s=config.backoff_s,
                label=label,
                progress=progress,
            )
    except KeyboardInterrupt:
        if not stream.done:
            raise
        done = stream.done
        kept = {k: v[:done] if np.ndim(v) else v for k, v in samples.items()}
        report = _report(
            exported, config, decision, server, kept, stream.first(done), time.perf_counter() - started
        )
        report["interrupted"] = {"after": done, "of": len(images)}
        write_json(path, report)
        raise EdgeInterrupted(path, report) from None
    finally:
        client.close()
    report = _report(exported, config, decision, server, samples, stream, time.perf_counter() - started)
    write_json(path, report)
    return path, report


def _report(
    exported: Exported,
    config: DeviceEdgeConfig,
    decision: Decision,
    server: Any,
    samples: dict[str, np.ndarray],
    stream: Stream,
    seconds: float,
) -> dict[str, Any]:
    info, labels = exported.info, samples["labels"]
    return {
        "run": info["run"],
        "made_from": info["made_from"],
        "checkpoint": info["checkpoint"],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "server": server,
        "engine": _engine(exported, config),
        "device": platform.processor() or platform.machine(),
        "images": f"test split ({exported.samples})",
        "threshold": decision.threshold,
        "guarantee": None,
        "uplink": {"wire": config.wire, "label": _label(config)},
        **stream_summary(stream, labels, int(samples["images"][0].nbytes), seconds),
        "in_process": _in_process(info, decision, samples, stream),
    }


def _label(config: DeviceEdgeConfig) -> str:
    return f"{config.wire} q{config.quality}" if config.wire in image_wire.LOSSY else config.wire


def _engine(exported: Exported, config: DeviceEdgeConfig) -> dict[str, Any]:
    graph = exported.graph(config.graph)
    runtime = "onnxruntime" if graph.suffix == ".onnx" else "ai-edge-litert"
    try:
        version = importlib.metadata.version(runtime)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"graph": graph.name, "runtime": runtime, "version": version}


def _in_process(info: dict[str, Any], decision: Decision, samples: dict[str, np.ndarray], stream: Stream):
    """The same decisions and answers as the run computed them in process (its collected outputs
    and its family's scores, kept in the export), and how the live run differs."""
    offload = samples["router_logit"][:, decision.column] >= decision.threshold
    local, cloud = samples["local_logits"].argmax(-1), samples["cloud_logits"].argmax(-1)
    predictions = np.where(offload, cloud, local)
    expected, live = accuracy(predictions, samples["labels"]), accuracy(stream.predictions, samples["labels"])
    return {
        "curve": info["curve"],
        "accuracy": expected,
        "local_rate": float(1.0 - offload.mean()),
        "results_json_accuracy": None,
        "decisions_differing": int((stream.offloaded != offload).sum()),
        "predictions_differing": int((stream.predictions != predictions).sum()),
        "accuracy_change": None if live is None or expected is None else live - expected,
    }
