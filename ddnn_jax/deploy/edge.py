"""The edge half as a client of ``ddnn serve`` (``ddnn edge``): the deployment made real.

The edge runs the feature extractor and the local head on the run's test images, decides per
sample from edge-only information (``deploy.rules``), sends z over HTTP only for the samples it
offloads, and writes ``edge_report.json``: accuracy, achieved local rate, bytes on the wire per
sample and per offload (HTTP headers included), latency percentiles, throughput and fallbacks.

The report recomputes the same rule in process from the collected outputs and records both
accuracies and how many decisions and predictions differ; at fp32 without fallbacks they are
equal. When the server is unreachable, slow (``timeout_s``) or answers an error, the samples of
that request keep their local answer and are counted as fallbacks; none is lost.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.guarantees import Guarantee
from ddnn_jax.core.mechanisms import REFERENCE_TARGET, ROUTER, deployable_rules, edge_mechanisms
from ddnn_jax.deploy import auth, wire
from ddnn_jax.deploy.client import CircuitBreaker, CloudClient, warn_unanswered
from ddnn_jax.deploy.edge_half import EdgeInputs, load_inputs, made_from
from ddnn_jax.deploy.rules import Rule, build_rule
from ddnn_jax.deploy.stream import (
    EdgeInterrupted,
    Stream,
    accuracy,
    check_stream,
    run_stream,
    sigterm_interrupts,
    stream_summary,
)
from ddnn_jax.deploy.uplink import (
    DEFAULT_QUALITY,
    Uplink,
    build_uplink,
    check_quality,
    check_uplink,
    reference_cloud_logits,
)
from ddnn_jax.rundir import RunDir, outputs_fingerprint, prepare_file, read_results, write_json


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """One live run of the edge half against a server."""

    server: str  # base URL of 'ddnn serve', e.g. http://127.0.0.1:8000
    mechanism: str = ROUTER  # one of edge_mechanisms()
    target: float = REFERENCE_TARGET  # L0, the local rate the rule was calibrated for
    wire: str = "fp32"  # how an offload travels: wire.WIRES (z, a bottleneck's codes or the image)
    bottleneck: str | None = None  # the run's bottleneck whose codes a codes wire sends
    quality: int = DEFAULT_QUALITY  # of a lossy image wire (jpeg, webp)
    batch: int = 1  # samples the edge processes (and offloads) together
    family: str = "logits"  # the router family (mechanism 'router')
    timeout_s: float = 5.0  # a request not answered by then falls back to the local answer
    breaker: int = 5  # failed requests in a row that open the circuit breaker (0: never)
    backoff_s: float = 30.0  # how long an open circuit keeps every sample local before a probe
    limit: int | None = None  # the first N images only (default: all)
    images: str | None = None  # a folder of images instead of the test split (data.read_image_folder)
    # deploy a guaranteed threshold (core.guarantees) instead of the calibrated one
    guarantee: Guarantee | None = None
    token_file: str | None = None  # the shared token 'ddnn serve' was given (--new-token)
    tls_ca: str | None = None  # PEM certificates an https server's must chain to (default: the system's)

    def token(self) -> str | None:
        """The shared token, read from ``token_file``."""
        return None if self.token_file is None else auth.read_token(Path(self.token_file))

    def check(self) -> None:
        """Raises UsageError naming the first bad field."""
        if self.mechanism not in edge_mechanisms():
            choices = ", ".join(edge_mechanisms())
            raise UsageError(f"--mechanism must be one of {choices}, got '{self.mechanism}'")
        if not 0.0 <= self.target <= 1.0:
            raise UsageError(f"--target must lie in [0, 1], got {self.target}")
        if self.wire not in wire.WIRES:
            raise UsageError(f"--wire must be one of {', '.join(wire.WIRES)}, got '{self.wire}'")
        check_quality(self.quality)
        check_stream(self.batch, self.timeout_s, self.breaker, self.backoff_s, self.limit, self.server)
        if self.guarantee is not None:
            if self.mechanism not in (ROUTER, *deployable_rules()):
                raise UsageError(f"--guarantee needs a thresholded mechanism, not '{self.mechanism}'")
            try:
                self.guarantee.check()
            except ValueError as err:
                raise UsageError(f"--guarantee: {err}") from None


def check_server(
    health: dict[str, Any] | None, inputs: EdgeInputs, uplink: Uplink, progress: Progress, server: str
) -> None:
    """Refuses a server that serves another model or not this uplink's route; warns when none
    answers (all will fall back)."""
    edge = inputs.edge
    if health is None:
        warn_unanswered(server, progress)
        return
    if tuple(health.get("feature_shape", ())) != edge.feature_shape:
        raise UsageError(
            f"{server} serves features of shape {health.get('feature_shape')}, this edge makes "
            f"{list(edge.feature_shape)}: serve the same run"
        )
    if health.get("checkpoint") != edge.checkpoint:
        raise UsageError(
            f"{server} serves other weights (epoch {health.get('epoch')} of {health.get('run')}) than "
            "this edge's: serve the same run, or the cloud answers would not match"
        )
    check_uplink(health, uplink, inputs, server)


def _stream(
    inputs: EdgeInputs,
    rule: Rule,
    uplink: Uplink,
    config: EdgeConfig,
    client: CloudClient,
    progress: Progress,
    stream: Stream,
) -> None:
    """Runs every image through the JAX edge into ``stream``, offloading what the rule sends."""
    images = inputs.images

    def step(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, local_logits = inputs.edge(images[rows])
        return local_logits, rule.decide(rows, local_logits, z, images[rows]), z

    run_stream(
        len(images),
        config.batch,
        step,
        lambda rows, z: uplink.body(images[rows], z),
        client,
        (uplink.path, inputs.edge.num_classes),
        stream,
        backoff_s=config.backoff_s,
        label=f"edge {config.mechanism} L0={config.target:g} {uplink.label}",
        progress=progress,
    )


def _warm_up(inputs: EdgeInputs, rule: Rule, uplink: Uplink, batch: int) -> None:
    """Compiles the edge, the router and a bottleneck's encoder for the batch sizes the stream
    will use."""
    n = len(inputs.images)
    for size in {min(batch, n), n % batch or min(batch, n)}:
        rows = np.arange(size)
        z, local_logits = inputs.edge(inputs.images[rows])
        rule.decide(rows, local_logits, z, inputs.images[rows])
        uplink.make(inputs.images[rows], z)


def _in_process(
    inputs: EdgeInputs, rule: Rule, uplink: Uplink, config: EdgeConfig, stream: Stream
) -> dict[str, Any]:
    """The same rule evaluated in process (with the cloud behind the uplink's bottleneck where
    it has one), and how the live run differs from it."""
    cloud_logits = reference_cloud_logits(inputs, uplink)
    predictions = np.where(rule.reference, cloud_logits.argmax(-1), inputs.reference.local_logits.argmax(-1))
    expected, live = accuracy(predictions, inputs.labels), accuracy(stream.predictions, inputs.labels)
    return {
        "curve": rule.curve,
        "accuracy": expected,
        "local_rate": float(1.0 - rule.reference.mean()),
        "results_json_accuracy": _results_point(inputs, rule.curve, rule.level, config.guarantee, uplink),
        "decisions_differing": int((stream.offloaded != rule.reference).sum()),
        "predictions_differing": int((stream.predictions != predictions).sum()),
        "accuracy_change": None if live is None or expected is None else live - expected,
    }


def _results_point(
    inputs: EdgeInputs, curve: str, target: float, guarantee: Guarantee | None, uplink: Uplink
) -> float | None:
    """results.json's accuracy of ``curve`` at ``target`` (behind the uplink's bottleneck where
    it has one), when it scored these outputs, all of them (and, for a guaranteed curve, under
    this very guarantee)."""
    run = inputs.run
    if (
        not inputs.test_split
        or not run.results.is_file()
        or len(inputs.images) != len(inputs.outputs["test"])
    ):
        return None
    results = read_results(run)
    if results["made_from"] != outputs_fingerprint(inputs.outputs):
        return None
    curves = results["curves"]
    if uplink.bottleneck is not None:
        curves = results.get("bottlenecks", {}).get(uplink.bottleneck.name, {}).get("curves", {})
    points = curves.get(curve, [])
    if guarantee is not None:
        asked = (guarantee.kind, guarantee.epsilon, guarantee.delta)
        points = [p for p in points if (p.get("guarantee"), p.get("epsilon"), p.get("delta")) == asked]
    return next((p["accuracy"] for p in points if abs(p["target"] - target) < 1e-9), None)


def default_name(config: EdgeConfig, uplink: Uplink) -> str:
    """edge/NAME/ of a live run: mechanism (and family), target, uplink, batch."""
    mechanism = f"router-{config.family}" if config.mechanism == ROUTER else config.mechanism
    return f"{mechanism}-L{config.target:g}-{uplink.label.replace(' ', '-')}-b{config.batch}"


def run_edge(
    run_dir: RunDir | Path, config: EdgeConfig, *, out: Path | None = None, progress: Progress = Progress()
) -> tuple[Path, dict[str, Any]]:
    """Runs the edge half over the run's test split against ``config.server``.

    Args:
      run_dir: a run with outputs (``ddnn collect``), and the router family for 'router'.
      config: mechanism, target, wire, batch and server.
      out: where edge_report.json goes (default: RUN_DIR/edge/NAME/edge_report.json).
      progress: where the live bar over the images goes.

    Returns:
      The report's path and its content.
    """
    config.check()
    token = config.token()
    inputs = load_inputs(run_dir, config.images, config.limit, progress)
    uplink = build_uplink(
        inputs, config.wire, bottleneck=config.bottleneck, quality=config.quality, batch=config.batch
    )
    path = out or inputs.run.edge_report(default_name(config, uplink))
    prepare_file(path)  # before the stream: a report that cannot be written loses all of it
    rule = build_rule(inputs, config.mechanism, config.target, config.family, config.guarantee)
    client = CloudClient(config.server, config.timeout_s, token, config.tls_ca)
    server = client.health()
    check_server(server, inputs, uplink, progress, config.server)
    _warm_up(inputs, rule, uplink, config.batch)
    started = time.perf_counter()
    stream = Stream(len(inputs.images), CircuitBreaker(config.breaker, config.backoff_s))
    try:
        with sigterm_interrupts():
            _stream(inputs, rule, uplink, config, client, progress, stream)
    except KeyboardInterrupt:
        if not stream.done:
            raise
        done = stream.done  # what is finished is reported, not lost
        rule = rule._replace(reference=rule.reference[:done])
        seconds = time.perf_counter() - started
        partial = _report(inputs.first(done), rule, uplink, config, server, stream.first(done), seconds)
        partial["interrupted"] = {"after": done, "of": len(inputs.images)}
        write_json(path, partial)
        raise EdgeInterrupted(path, partial) from None
    finally:
        client.close()
    seconds = time.perf_counter() - started
    report = _report(inputs, rule, uplink, config, server, stream, seconds)
    write_json(path, report)
    return path, report


def _report(
    inputs: EdgeInputs,
    rule: Rule,
    uplink: Uplink,
    config: EdgeConfig,
    server,
    stream: Stream,
    seconds: float,
) -> dict[str, Any]:
    return {
        **made_from(inputs),
        "config": dataclasses.asdict(config),
        "server": server,
        "engine": {"runtime": "jax", "version": jax.__version__, "graph": None},
        "device": jax.devices()[0].device_kind,
        "images": "test split" if inputs.test_split else str(config.images),
        "threshold": rule.threshold,
        # the promise the threshold holds (None: calibrated on validation, no guarantee)
        "guarantee": None
        if config.guarantee is None
        else {**dataclasses.asdict(config.guarantee), "certified_bound": rule.certified_bound},
        "uplink": {"wire": config.wire, "route": uplink.path, "param": uplink.param, "label": uplink.label},
        **stream_summary(stream, inputs.labels, int(inputs.images[0].nbytes), seconds),
        "in_process": _in_process(inputs, rule, uplink, config, stream),
    }
