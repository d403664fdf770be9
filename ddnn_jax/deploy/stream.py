"""The edge's stream over its images, whatever computes the edge half: batch by batch, the edge's
step gives local logits, the offload decisions and what an offload is made from; the offloaded
samples go to the cloud in one request, and every sample's answer, latency and bytes are recorded.

``ddnn edge`` drives it with the JAX edge (``deploy.edge``), ``ddnn edge --engine onnx`` with an
exported graph in onnxruntime (``deploy.device_edge``). This module imports neither JAX nor any
module that does, so that the second runs where JAX is not installed.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.deploy import wire
from ddnn_jax.deploy.client import FAILURES, Answer, CircuitBreaker, CloudClient, parse_server

MAX_TIMEOUT_S = 3600.0  # a request's wait; a socket's timeout must be finite

# rows of the batch -> (local logits [n, C], offload mask [n], what an offload is made of [n, ...])
Step = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
# (rows offloaded, what they are made of) -> the request body
Body = Callable[[np.ndarray, np.ndarray], bytes]


def check_stream(
    batch: int, timeout_s: float, breaker: int, backoff_s: float, limit: int | None, server: str
) -> None:
    """Raises UsageError naming the first bad flag of a stream against a server."""
    if not 1 <= batch <= wire.MAX_BATCH:  # a request holds at most what a server takes
        raise UsageError(f"--batch must lie in 1..{wire.MAX_BATCH}, got {batch}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # NaN and inf fail too
        raise UsageError(f"--timeout must lie in (0, {MAX_TIMEOUT_S:g}] seconds, got {timeout_s}")
    if breaker < 0:
        raise UsageError(f"--breaker must be 0 (never open) or more, got {breaker}")
    if not 0 < backoff_s <= MAX_TIMEOUT_S:
        raise UsageError(f"--backoff must lie in (0, {MAX_TIMEOUT_S:g}] seconds, got {backoff_s}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    parse_server(server)


class EdgeInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the stream; the report of the images done so far is written."""

    def __init__(self, path: Path, report: dict[str, Any]):
        super().__init__(f"interrupted after {report['samples']} images")
        self.path, self.report = path, report


class Stream:
    """The per-sample and per-request records of one live run."""

    def __init__(self, n: int, breaker: CircuitBreaker):
        self.offloaded = np.zeros(n, bool)
        self.answered_by_cloud = np.zeros(n, bool)
        self.predictions = np.zeros(n, np.int64)
        self.latency = np.zeros(n)  # image in -> answer out, seconds
        self.edge_seconds: list[float] = []  # per batch: edge network and decision
        self.round_trips: list[float] = []  # per offloaded sample: its request's seconds
        self.requests = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.payload = 0  # request bytes after the wire's header, in all
        self.fallbacks = {failure: 0 for failure in FAILURES}
        self.reasons: dict[str, str] = {}  # the first reason of each failure
        self.breaker = breaker
        self.done = 0  # images whose batch is complete

    def first(self, n: int) -> Stream:
        """The records of the first n images (the requests' totals as they stand)."""
        kept = copy.copy(self)
        for name in ("offloaded", "answered_by_cloud", "predictions", "latency"):
            setattr(kept, name, getattr(self, name)[:n])
        return kept

    def fall_back(self, rows: np.ndarray, failure: str, reason: str) -> None:
        """Offloaded samples that keep their local answer without a request."""
        self.fallbacks[failure] += len(rows)
        self.reasons.setdefault(failure, reason)

    def record(self, rows: np.ndarray, answer: Answer) -> None:
        self.requests += 1
        self.bytes_up += answer.bytes_up
        self.bytes_down += answer.bytes_down
        self.round_trips += [answer.seconds] * len(rows)
        if answer.logits is None:
            assert answer.failure is not None
            self.fall_back(rows, answer.failure, answer.reason)
        else:
            self.predictions[rows] = answer.logits.argmax(-1)
            self.answered_by_cloud[rows] = True


def run_stream(
    n: int,
    batch: int,
    step: Step,
    body: Body,
    client: CloudClient,
    route: tuple[str, int],
    stream: Stream,
    *,
    backoff_s: float,
    label: str,
    progress: Progress,
) -> None:
    """Runs images 0..n-1 through ``step`` ``batch`` at a time into ``stream``, offloading what
    it decides to the server's ``route`` = (path, classes)."""
    breaker = stream.breaker
    path, classes = route
    paused = f"offloading paused for {backoff_s:g} s after {breaker.failures} failed requests in a row"
    with progress.bar(n, label, unit="img") as bar:
        for start in range(0, n, batch):
            rows = np.arange(start, min(start + batch, n))
            began = time.perf_counter()
            local_logits, send, made_of = step(rows)
            send = np.asarray(send, bool)
            stream.predictions[rows] = local_logits.argmax(-1)
            decided = time.perf_counter()
            stream.edge_seconds.append(decided - began)
            stream.latency[rows] = decided - began
            if send.any() and not breaker.allows():
                stream.fall_back(rows[send], "circuit_open", paused)
                stream.offloaded[rows[send]] = True
            elif send.any():
                request = body(rows[send], made_of[send])
                stream.payload += len(request) - wire.REQUEST_HEADER_BYTES
                answer = client.infer(request, int(send.sum()), classes, path)
                stream.record(rows[send], answer)
                breaker.record(answer.logits is not None)
                stream.offloaded[rows[send]] = True
                stream.latency[rows[send]] = time.perf_counter() - began
            stream.done = int(rows[-1]) + 1
            bar.update(len(rows))


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM stops the stream as Ctrl-C does (main thread only: signals are delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def accuracy(predictions: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((predictions == labels).mean())


def percentiles(seconds: np.ndarray) -> dict[str, float] | None:
    if seconds.size == 0:
        return None
    ms = 1000.0 * np.asarray(seconds, np.float64)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(ms.mean())}


def stream_summary(
    stream: Stream, labels: np.ndarray | None, image_bytes: int, seconds: float
) -> dict[str, Any]:
    """The report's fields every engine shares: accuracy, local rate, fallbacks, bytes, latency."""
    n = len(stream.offloaded)
    return {
        "samples": n,
        "accuracy": accuracy(stream.predictions, labels),
        "local_rate": float(1.0 - stream.offloaded.mean()),
        "offloaded": int(stream.offloaded.sum()),
        "answered_by_cloud": int(stream.answered_by_cloud.sum()),
        "fallback_rate": sum(stream.fallbacks.values()) / n,
        "fallbacks": {
            f: {"samples": k, "reason": stream.reasons.get(f, "")} for f, k in stream.fallbacks.items() if k
        },
        "circuit_opened": stream.breaker.opened,  # times the circuit breaker opened
        "bytes": _bytes(stream, image_bytes),
        "latency_ms": _latency(stream),
        "seconds": seconds,
        "throughput_per_s": n / seconds,
    }


def _bytes(stream: Stream, image_bytes: int) -> dict[str, Any]:
    """The report's bytes on the wire: in all, per sample and per offload, HTTP headers included."""
    n, offloads = len(stream.offloaded), int(stream.offloaded.sum())
    return {
        "requests": stream.requests,
        "uplink": stream.bytes_up,
        "downlink": stream.bytes_down,
        "uplink_per_sample": stream.bytes_up / n,
        "uplink_per_offload": stream.bytes_up / offloads if offloads else None,
        "downlink_per_offload": stream.bytes_down / offloads if offloads else None,
        # after the wire's 20-byte header: the samples (and their lengths, where they vary)
        "payload_per_offload": stream.payload / offloads if offloads else None,
        "image_bytes": image_bytes,
    }


def _latency(stream: Stream) -> dict[str, dict[str, float] | None]:
    """The report's latency percentiles in milliseconds."""
    offloaded = stream.offloaded
    return {
        "per_sample": percentiles(stream.latency),
        "per_local_sample": percentiles(stream.latency[~offloaded]),
        "per_offload": percentiles(stream.latency[offloaded]),
        "round_trip": percentiles(np.asarray(stream.round_trips)),
        "edge_per_batch": percentiles(np.asarray(stream.edge_seconds)),
    }
