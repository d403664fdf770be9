"""The edge half as a client of ``ddnn serve`` (``ddnn edge``): the split made real.

The edge runs the feature extractor and the local head on the run's test images, decides per
sample from edge-only information, sends z over HTTP only for the samples it offloads, and
writes ``edge_report.json``: accuracy, achieved local rate, bytes on the wire per sample and per
offload (HTTP headers included), latency percentiles, throughput and fallbacks.

Every rule is fixed before the first sample and decides each sample on its own, so the same
decisions come whatever the batch:

* ``router``: the family's router on the sample's edge inputs, offloading when its score reaches
  the threshold calibrated on validation (results.json curve ``router_<family>_calibrated``);
* ``entropy``: normalised entropy of the local softmax against its threshold calibrated on
  validation the same way (curve ``entropy_calibrated``);
* ``random``: the evaluate stage's random ranking of the evaluated samples, a function of the run
  seed and the sample's index (curve ``random``);
* ``oracle``: the budgeted oracle's choice, read from the run's collected outputs: a reference
  that knows what no edge can, the cloud's correctness (curve ``oracle``).

The report recomputes the same rule in process from the collected outputs and records both
accuracies and how many decisions and predictions differ; at fp32 without fallbacks they are
equal. When the server is unreachable, slow (``timeout_s``) or answers an error, the samples of
that request keep their local answer and are counted as fallbacks; none is lost.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.core.decisions import (
    calibrated_thresholds,
    entropy_scores,
    heuristic_offload,
    oracle_offload,
)
from ddnn_jax.core.families import calibrated, curve_name
from ddnn_jax.core.labels import correctness
from ddnn_jax.core.models import feature_shape
from ddnn_jax.core.router_net import RouterConfig, edge_inputs
from ddnn_jax.core.training import TrainState, build_model, make_predict_fn, predict_in_batches
from ddnn_jax.data.datasets import normalize, read_image_folder
from ddnn_jax.deploy import wire
from ddnn_jax.deploy.cloud import CLOUD_PATH, HEALTH_PATH
from ddnn_jax.rundir.checkpoints import state_digest
from ddnn_jax.rundir.records import (
    FamilyDir,
    FamilyRecord,
    RunDir,
    RunRecord,
    SplitOutputs,
    as_run,
    outputs_fingerprint,
    read_family,
    read_family_scores,
    read_outputs,
    read_results,
    read_run_record,
    write_json,
)
from ddnn_jax.stages.collect import restore_best
from ddnn_jax.stages.evaluate import STREAM_RANDOM_RULE
from ddnn_jax.stages.route import deployed_router, split_images

MECHANISMS = ("router", "entropy", "random", "oracle")
FAILURES = ("unreachable", "timeout", "server_error", "refused")


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """One live run of the edge half against a server."""

    server: str  # base URL of 'ddnn serve', e.g. http://127.0.0.1:8000
    mechanism: str = "router"  # one of MECHANISMS
    target: float = 0.54  # L0, the local rate the rule was calibrated for
    wire: str = "fp32"  # how z travels: wire.WIRES
    batch: int = 1  # samples the edge processes (and offloads) together
    family: str = "logits"  # the router family (mechanism 'router')
    timeout_s: float = 5.0  # a request not answered by then falls back to the local answer
    limit: int | None = None  # the first N images only (default: all)
    images: str | None = None  # a folder of images instead of the test split (data.read_image_folder)

    def check(self) -> None:
        """Raises UsageError naming the first bad field."""
        if self.mechanism not in MECHANISMS:
            raise UsageError(f"--mechanism must be one of {', '.join(MECHANISMS)}, got '{self.mechanism}'")
        if not 0.0 <= self.target <= 1.0:
            raise UsageError(f"--target must lie in [0, 1], got {self.target}")
        if self.wire not in wire.WIRES:
            raise UsageError(f"--wire must be one of {', '.join(wire.WIRES)}, got '{self.wire}'")
        if self.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {self.batch}")
        if not self.timeout_s > 0:
            raise UsageError(f"--timeout must be positive, got {self.timeout_s}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        parse_server(self.server)


def parse_server(url: str) -> urllib.parse.SplitResult:
    """The server's URL, checked: http(s)://host[:port]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--server '{url}' is not an http://HOST:PORT address: give the one 'ddnn serve' printed"
        )
    try:
        parts.port  # noqa: B018 (parses the port)
    except ValueError:
        raise UsageError(f"--server '{url}' has a bad port: give the one 'ddnn serve' printed") from None
    return parts


# ------------------------------------------------------------------------------------------------
# the network


class _Counting:
    """Counts every byte http.client hands to the socket: request line, headers and body."""

    sent = 0

    def send(self, data) -> None:
        self.sent += len(data)
        super().send(data)  # type: ignore[misc]


class _HTTP(_Counting, http.client.HTTPConnection):
    pass


class _HTTPS(_Counting, http.client.HTTPSConnection):
    pass


class Answer(NamedTuple):
    """One request's outcome: logits, or the failure (one of FAILURES) and its reason."""

    logits: np.ndarray | None
    failure: str | None
    reason: str
    bytes_up: int
    bytes_down: int
    seconds: float


class CloudClient:
    """A keep-alive HTTP client of ``ddnn serve`` that counts its bytes and never raises on
    network faults: a failed request closes the connection and the next one opens a new one."""

    def __init__(self, url: str, timeout_s: float):
        parts = parse_server(url)
        self._make = _HTTPS if parts.scheme == "https" else _HTTP
        self.host, self.port, self.timeout_s = str(parts.hostname), parts.port, timeout_s
        self._connection: _HTTP | _HTTPS | None = None

    def _open(self) -> _HTTP | _HTTPS:
        if self._connection is None:
            self._connection = self._make(self.host, self.port, timeout=self.timeout_s)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def health(self) -> dict[str, Any] | None:
        """The server's /health answer, or None when it does not give one."""
        connection = self._open()
        try:
            connection.request("GET", HEALTH_PATH)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                self.close()
                return None
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def infer(self, body: bytes, n: int, classes: int) -> Answer:
        """POSTs one encoded feature batch; the cloud logits [n, classes] or why there are none.

        A kept-alive connection the server has closed meanwhile is reopened once (the request
        never reached it); every other fault is the answer. ``timeout_s`` bounds each wait on
        the socket."""
        started, sent = time.perf_counter(), 0
        for attempt in (0, 1):
            reused = self._connection is not None
            connection = self._open()
            connection.sent = 0
            try:
                connection.request("POST", CLOUD_PATH, body=body, headers={"Content-Type": wire.CONTENT_TYPE})
                response = connection.getresponse()
                answer = response.read()
                break
            except TimeoutError:
                reason = f"no answer within {self.timeout_s:g} s"
                return self._failed("timeout", reason, sent + connection.sent, started)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
                sent += connection.sent
                if not reused or attempt:
                    return self._failed("unreachable", f"{type(err).__name__}: {err}", sent, started)
                self.close()
            except (OSError, http.client.HTTPException) as err:
                return self._failed(
                    "unreachable", f"{type(err).__name__}: {err}", sent + connection.sent, started
                )
        sent += connection.sent
        seconds = time.perf_counter() - started
        down = _response_bytes(response, answer)
        if response.status != 200:
            self.close()
            failure = "server_error" if response.status >= 500 else "refused"
            reason = f"HTTP {response.status}: {answer.decode('utf-8', 'replace').strip()}"
            return Answer(None, failure, reason, sent, down, seconds)
        try:
            logits = wire.decode_logits(answer, n, classes)
        except wire.WireError as err:
            return Answer(None, "server_error", str(err), sent, down, seconds)
        return Answer(logits, None, "", sent, down, seconds)

    def _failed(self, failure: str, reason: str, sent: int, started: float) -> Answer:
        self.close()
        return Answer(None, failure, reason, sent, 0, time.perf_counter() - started)


def _response_bytes(response: http.client.HTTPResponse, body: bytes) -> int:
    """Status line, headers and body as received (rebuilt from what http.client parsed)."""
    status_line = len(f"HTTP/1.1 {response.status} {response.reason}\r\n")
    headers = sum(len(name) + len(value) + 4 for name, value in response.getheaders())
    return status_line + headers + 2 + len(body)


# ------------------------------------------------------------------------------------------------
# the edge network and the decision rules


class EdgeHalf:
    """The edge network of a trained run, its own variables only: uint8 images -> (z, logits)."""

    def __init__(self, record: RunRecord, state: TrainState):
        self.checkpoint = state_digest(state)
        model = build_model(record.train, record.num_classes)
        self.feature_shape = feature_shape(model, record.image_shape)
        self.num_classes = record.num_classes
        edge = ("feature_extractor", "local_classifier")
        self._variables = {
            "params": {k: state.params[k] for k in edge},
            "batch_stats": {k: state.batch_stats[k] for k in edge if k in state.batch_stats},
        }
        mean, std = jnp.asarray(record.mean, jnp.float32), jnp.asarray(record.std, jnp.float32)
        self._apply = jax.jit(lambda v, x: model.apply(v, normalize(x, mean, std), method=model.edge))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z, local_logits = self._apply(self._variables, images)
        return np.asarray(z), np.asarray(local_logits)


class Rule(NamedTuple):
    """A decision rule fixed before the stream, and the in-process evaluation it reproduces."""

    decide: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    reference: np.ndarray  # [N] the in-process offload mask of the evaluated samples
    curve: str  # the results.json curve of this rule
    threshold: float | None  # on the rule's score (router logit, normalised entropy)


def build_rule(inputs: _Inputs, config: EdgeConfig) -> Rule:
    """The rule of ``config.mechanism`` at ``config.target`` for the evaluated images."""
    reference, n = inputs.reference, len(inputs.images)
    if config.mechanism == "router":
        return _router_rule(inputs, config)
    if config.mechanism == "entropy":
        val_scores = entropy_scores(inputs.outputs["val"].local_logits)
        threshold = float(calibrated_thresholds(val_scores, [config.target])[0])
        decide = lambda index, logits, z, x: entropy_scores(logits) >= threshold
        return Rule(
            decide, decide(None, reference.local_logits, None, None), calibrated("entropy"), threshold
        )
    if config.mechanism == "random":
        key = jax.random.fold_in(jax.random.key(read_run_record(inputs.run).seed), STREAM_RANDOM_RULE)
        targets = jnp.asarray([config.target], jnp.float32)
        plan = np.asarray(heuristic_offload("random", jnp.zeros((n, 1)), targets, key))[0]
    else:
        if inputs.labels is None:
            raise UsageError("the oracle needs labels: put the images in class folders 0 .. C-1")
        c = correctness(reference.local_logits, reference.cloud_logits, inputs.labels)
        plan = np.asarray(oracle_offload(c, jnp.asarray([config.target], jnp.float32)))[0]
    return Rule(lambda index, logits, z, x: plan[index], plan, config.mechanism, None)


def _family(run: RunDir, name: str) -> tuple[FamilyDir, FamilyRecord]:
    family = run.family(name)
    if not family.is_complete():
        have = ", ".join(run.families()) or "none"
        raise UsageError(f"{run} has no router family '{name}' (it has: {have}): give --family")
    return family, read_family(family)


def _router_rule(inputs: _Inputs, config: EdgeConfig) -> Rule:
    run, n = inputs.run, len(inputs.images)
    family, record = _family(run, config.family)
    if record.made_from != outputs_fingerprint(inputs.outputs):
        raise UsageError(
            f"router family {config.family} was trained on other outputs than {run}'s current ones: "
            f"retrain it ('ddnn check --run {run}' gives the command)"
        )
    router = RouterConfig.from_json(record.config)
    targets = list(router.targets)
    matches = [g for g, t in enumerate(targets) if abs(t - config.target) < 1e-9]
    if not matches:
        raise UsageError(
            f"router family {config.family} was calibrated for L0 in {', '.join(f'{t:g}' for t in targets)}, "
            f"not {config.target:g}: choose one of them"
        )
    g = matches[0]
    threshold = float(record.decision_thresholds[g])
    deployed = deployed_router(family, g if router.objective == "grid" else 0)
    score = jax.jit(deployed.logits)

    def decide(index, local_logits, z, images):
        return np.asarray(score(edge_inputs(router.kind, local_logits, z, images)), np.float64) >= threshold

    if inputs.test_split:  # the scores results.json was computed from
        scores = read_family_scores(family)["test"]
        reference = np.asarray(scores[min(g, len(scores) - 1), :n], np.float64) >= threshold
    else:
        ref = inputs.reference
        reference = decide(None, ref.local_logits, ref.features, inputs.images)
    return Rule(decide, reference, calibrated(curve_name(config.family)), threshold)


# ------------------------------------------------------------------------------------------------
# one live run


class _Inputs(NamedTuple):
    """What the edge works on, and the in-process outputs its live answers are checked against."""

    run: RunDir
    edge: EdgeHalf
    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray | None  # [N], None for an unlabelled folder
    outputs: dict[str, SplitOutputs]  # the run's collected outputs (validation calibrates)
    reference: SplitOutputs  # the whole DDNN in process on these images (features for a folder)
    test_split: bool  # the run's test split (else a folder of images)


def _load(run_dir: RunDir | Path, config: EdgeConfig, progress: Progress) -> _Inputs:
    run = as_run(run_dir)
    record = read_run_record(run)
    outputs = read_outputs(run)
    _, state, epoch = restore_best(run)
    edge = EdgeHalf(record, state)
    if outputs["test"].checkpoint and outputs["test"].checkpoint != edge.checkpoint:
        raise UsageError(
            f"{run}'s outputs come from other weights than its best checkpoint: run 'ddnn collect'"
        )
    if config.images is None:
        images = split_images(run, outputs)["test"][: config.limit]
        reference = _first(outputs["test"], len(images))
        return _Inputs(run, edge, images, reference.labels, outputs, reference, True)
    folder = read_image_folder(Path(config.images), record.image_shape, record.num_classes)
    images, labels = (
        folder.images[: config.limit],
        None if folder.labels is None else folder.labels[: config.limit],
    )
    predict = make_predict_fn(build_model(record.train, record.num_classes), record.mean, record.std, True)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    with progress.bar(len(images), "in process", unit="img") as bar:
        local, cloud, z = predict_in_batches(predict, variables, images, record.train.eval_batch_size, bar)
    unknown = np.full(len(images), -1, np.int32)
    reference = SplitOutputs(local, cloud, unknown if labels is None else labels, epoch, z, edge.checkpoint)
    return _Inputs(run, edge, images, labels, outputs, reference, False)


def _first(outputs: SplitOutputs, n: int) -> SplitOutputs:
    return dataclasses.replace(
        outputs,
        local_logits=outputs.local_logits[:n],
        cloud_logits=outputs.cloud_logits[:n],
        labels=outputs.labels[:n],
        features=None,
    )


def _check_server(health: dict[str, Any] | None, edge: EdgeHalf, progress: Progress, server: str) -> None:
    """Refuses a server that serves another model; warns when none answers (all will fall back)."""
    if health is None:
        progress.warn(
            f"ddnn edge: no answer from {server}{HEALTH_PATH}: samples offloaded while it is down fall back"
        )
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


def _percentiles(seconds: np.ndarray) -> dict[str, float] | None:
    if seconds.size == 0:
        return None
    ms = 1000.0 * np.asarray(seconds, np.float64)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(ms.mean())}


class _Stream:
    """The per-sample and per-request records of one live run."""

    def __init__(self, n: int):
        self.offloaded = np.zeros(n, bool)
        self.answered_by_cloud = np.zeros(n, bool)
        self.predictions = np.zeros(n, np.int64)
        self.latency = np.zeros(n)  # image in -> answer out, seconds
        self.edge_seconds: list[float] = []  # per batch: edge network and decision
        self.round_trips: list[float] = []  # per offloaded sample: its request's seconds
        self.requests = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.fallbacks = {failure: 0 for failure in FAILURES}
        self.reasons: dict[str, str] = {}  # the first reason of each failure

    def record(self, rows: np.ndarray, answer: Answer) -> None:
        self.requests += 1
        self.bytes_up += answer.bytes_up
        self.bytes_down += answer.bytes_down
        self.round_trips += [answer.seconds] * len(rows)
        if answer.logits is None:
            assert answer.failure is not None
            self.fallbacks[answer.failure] += len(rows)
            self.reasons.setdefault(answer.failure, answer.reason)
        else:
            self.predictions[rows] = answer.logits.argmax(-1)
            self.answered_by_cloud[rows] = True


def _stream(
    inputs: _Inputs, rule: Rule, config: EdgeConfig, client: CloudClient, progress: Progress
) -> _Stream:
    edge, n = inputs.edge, len(inputs.images)
    stream = _Stream(n)
    with progress.bar(n, f"edge {config.mechanism} L0={config.target:g} {config.wire}", unit="img") as bar:
        for start in range(0, n, config.batch):
            rows = np.arange(start, min(start + config.batch, n))
            began = time.perf_counter()
            z, local_logits = edge(inputs.images[rows])
            send = np.asarray(rule.decide(rows, local_logits, z, inputs.images[rows]), bool)
            stream.predictions[rows] = local_logits.argmax(-1)
            decided = time.perf_counter()
            stream.edge_seconds.append(decided - began)
            stream.latency[rows] = decided - began
            if send.any():
                body = wire.encode_features(z[send], config.wire)
                stream.record(rows[send], client.infer(body, int(send.sum()), edge.num_classes))
                stream.offloaded[rows[send]] = True
                stream.latency[rows[send]] = time.perf_counter() - began
            bar.update(len(rows))
    return stream


def _warm_up(inputs: _Inputs, rule: Rule, batch: int) -> None:
    """Compiles the edge (and the router) for the batch sizes the stream will use."""
    n = len(inputs.images)
    for size in {min(batch, n), n % batch or min(batch, n)}:
        rows = np.arange(size)
        z, local_logits = inputs.edge(inputs.images[rows])
        rule.decide(rows, local_logits, z, inputs.images[rows])


def _in_process(inputs: _Inputs, rule: Rule, config: EdgeConfig, stream: _Stream) -> dict[str, Any]:
    """The same rule evaluated in process, and how the live run differs from it."""
    reference = inputs.reference
    predictions = np.where(
        rule.reference, reference.cloud_logits.argmax(-1), reference.local_logits.argmax(-1)
    )
    accuracy, live = _accuracy(predictions, inputs.labels), _accuracy(stream.predictions, inputs.labels)
    return {
        "curve": rule.curve,
        "accuracy": accuracy,
        "local_rate": float(1.0 - rule.reference.mean()),
        "results_json_accuracy": _results_point(inputs, rule.curve, config.target)
        if inputs.test_split
        else None,
        "decisions_differing": int((stream.offloaded != rule.reference).sum()),
        "predictions_differing": int((stream.predictions != predictions).sum()),
        "accuracy_change": None if live is None or accuracy is None else live - accuracy,
    }


def _accuracy(predictions: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((predictions == labels).mean())


def _results_point(inputs: _Inputs, curve: str, target: float) -> float | None:
    """results.json's accuracy of ``curve`` at ``target``, when it scored these outputs, all of them."""
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
    points = results["curves"].get(curve, [])
    return next((p["accuracy"] for p in points if abs(p["target"] - target) < 1e-9), None)


def default_name(config: EdgeConfig) -> str:
    """edge/NAME/ of a live run: mechanism (and family), target, wire, batch."""
    mechanism = f"router-{config.family}" if config.mechanism == "router" else config.mechanism
    return f"{mechanism}-L{config.target:g}-{config.wire}-b{config.batch}"


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
    inputs = _load(run_dir, config, progress)
    rule = build_rule(inputs, config)
    client = CloudClient(config.server, config.timeout_s)
    server = client.health()
    _check_server(server, inputs.edge, progress, config.server)
    _warm_up(inputs, rule, config.batch)
    started = time.perf_counter()
    try:
        stream = _stream(inputs, rule, config, client, progress)
    finally:
        client.close()
    seconds = time.perf_counter() - started
    report = _report(inputs, rule, config, server, stream, seconds)
    path = out or inputs.run.edge_report(default_name(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    return path, report


def _report(
    inputs: _Inputs, rule: Rule, config: EdgeConfig, server, stream: _Stream, seconds: float
) -> dict[str, Any]:
    n, offloads = len(inputs.images), int(stream.offloaded.sum())
    fallbacks = sum(stream.fallbacks.values())
    offloaded = stream.offloaded
    return {
        "run": str(inputs.run),
        "made_from": outputs_fingerprint(inputs.outputs),  # the outputs its rules were calibrated on
        "checkpoint": inputs.edge.checkpoint,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "server": server,
        "device": jax.devices()[0].device_kind,
        "samples": n,
        "images": "test split" if inputs.test_split else str(config.images),
        "accuracy": _accuracy(stream.predictions, inputs.labels),
        "local_rate": float(1.0 - offloaded.mean()),
        "offloaded": offloads,
        "answered_by_cloud": int(stream.answered_by_cloud.sum()),
        "threshold": rule.threshold,
        "fallback_rate": fallbacks / n,
        "fallbacks": {
            f: {"samples": k, "reason": stream.reasons.get(f, "")} for f, k in stream.fallbacks.items() if k
        },
        "bytes": {
            "requests": stream.requests,
            "uplink": stream.bytes_up,
            "downlink": stream.bytes_down,
            "uplink_per_sample": stream.bytes_up / n,
            "uplink_per_offload": stream.bytes_up / offloads if offloads else None,
            "downlink_per_offload": stream.bytes_down / offloads if offloads else None,
            "payload_per_offload": wire.payload_bytes(config.wire, inputs.edge.feature_shape),
            "image_bytes": int(inputs.images[0].nbytes),
        },
        "latency_ms": {
            "per_sample": _percentiles(stream.latency),
            "per_local_sample": _percentiles(stream.latency[~offloaded]),
            "per_offload": _percentiles(stream.latency[offloaded]),
            "round_trip": _percentiles(np.asarray(stream.round_trips)),
            "edge_per_batch": _percentiles(np.asarray(stream.edge_seconds)),
        },
        "seconds": seconds,
        "throughput_per_s": n / seconds,
        "in_process": _in_process(inputs, rule, config, stream),
    }


# ------------------------------------------------------------------------------------------------
# accuracy against bytes: every target and wire from one pass of the test split per wire


def _cloud_over_wire(
    inputs: _Inputs,
    z: np.ndarray,
    client: CloudClient,
    config: EdgeConfig,
    wire_name: str,
    progress: Progress,
) -> tuple[np.ndarray, int]:
    """The cloud's predictions of every sample with z sent in ``wire_name`` (batches of
    ``config.batch``), and the uplink bytes of a one-sample request in it."""
    n, classes = len(z), inputs.edge.num_classes
    predictions = np.zeros(n, np.int64)
    with progress.bar(n, f"sweep {wire_name}", unit="img") as bar:
        for start in range(0, n, config.batch):
            rows = slice(start, min(start + config.batch, n))
            answer = client.infer(wire.encode_features(z[rows], wire_name), len(z[rows]), classes)
            if answer.logits is None:
                raise UsageError(f"the server failed during the sweep ({answer.reason}): check it and rerun")
            predictions[rows] = answer.logits.argmax(-1)
            bar.update(len(z[rows]))
    single = client.infer(wire.encode_features(z[:1], wire_name), 1, classes)
    if single.logits is None:
        raise UsageError(f"the server failed during the sweep ({single.reason}): check it and rerun")
    return predictions, single.bytes_up


def sweep(
    run_dir: RunDir | Path, config: EdgeConfig, *, out: Path | None = None, progress: Progress = Progress()
) -> Path:
    """Entropy and the calibrated router (``config.family``) at each of the family's targets,
    with z sent in every wire: accuracy, local rate and uplink bytes per sample (one request
    per offloaded sample, headers included). The cloud answers every sample once per wire over
    the network; each rule's decisions then pick the answers it would have asked for.

    Returns:
      The path of sweep.json (default RUN_DIR/edge/sweep.json).
    """
    config.check()
    inputs = _load(run_dir, config, progress)
    if inputs.labels is None:
        raise UsageError("the sweep scores accuracy: give labelled images (class folders 0 .. C-1)")
    _, record = _family(inputs.run, config.family)
    client = CloudClient(config.server, config.timeout_s)
    health = client.health()
    if health is None:
        raise UsageError(
            f"no answer from {config.server}{HEALTH_PATH}: start 'ddnn serve --run {inputs.run}'"
        )
    _check_server(health, inputs.edge, progress, config.server)
    n = len(inputs.images)
    z, local_logits = _edge_outputs(inputs, config.batch, progress)
    local_right = local_logits.argmax(-1) == inputs.labels
    rules = {
        (mechanism, target): build_rule(
            inputs, dataclasses.replace(config, mechanism=mechanism, target=target)
        )
        for mechanism in ("entropy", "router")
        for target in RouterConfig.from_json(record.config).targets
    }
    rows = np.arange(n)
    decisions = {
        key: np.asarray(rule.decide(rows, local_logits, z, inputs.images), bool)
        for key, rule in rules.items()
    }
    points, request_bytes = [], {}
    try:
        for wire_name in wire.WIRES:
            cloud_pred, request_bytes[wire_name] = _cloud_over_wire(
                inputs, z, client, config, wire_name, progress
            )
            cloud_right = cloud_pred == inputs.labels
            points.append(
                _sweep_point(
                    "cloud_only", None, wire_name, np.ones(n, bool), local_right, cloud_right, request_bytes
                )
            )
            for (mechanism, target), offload in decisions.items():
                point = _sweep_point(
                    mechanism, target, wire_name, offload, local_right, cloud_right, request_bytes
                )
                point["curve"] = rules[mechanism, target].curve
                points.append(point)
    finally:
        client.close()
    result = {
        "run": str(inputs.run),
        "made_from": outputs_fingerprint(inputs.outputs),  # the outputs its rules were calibrated on
        "checkpoint": inputs.edge.checkpoint,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "server": health,
        "images": "test split" if inputs.test_split else str(config.images),
        "samples": n,
        "edge_only_accuracy": float(local_right.mean()),
        "image_bytes": int(inputs.images[0].nbytes),
        "request_bytes": request_bytes,
        "payload_bytes": {w: wire.payload_bytes(w, inputs.edge.feature_shape) for w in wire.WIRES},
        "points": points,
    }
    path = out or inputs.run.edge_sweep
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return path


def _edge_outputs(inputs: _Inputs, batch: int, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """z and local logits of every evaluated sample, computed in batches."""
    n = len(inputs.images)
    zs, logits = [], []
    with progress.bar(n, "edge", unit="img") as bar:
        for start in range(0, n, batch):
            z, local_logits = inputs.edge(inputs.images[start : start + batch])
            zs.append(z)
            logits.append(local_logits)
            bar.update(len(z))
    return np.concatenate(zs), np.concatenate(logits)


def _sweep_point(
    mechanism: str,
    target: float | None,
    wire_name: str,
    offload: np.ndarray,
    local_right: np.ndarray,
    cloud_right: np.ndarray,
    request_bytes: dict[str, int],
) -> dict[str, Any]:
    right = np.where(offload, cloud_right, local_right)
    return {
        "mechanism": mechanism,
        "target": target,
        "wire": wire_name,
        "local_rate": float(1.0 - offload.mean()),
        "accuracy": float(right.mean()),
        "bytes_per_sample": float(offload.mean() * request_bytes[wire_name]),
    }
