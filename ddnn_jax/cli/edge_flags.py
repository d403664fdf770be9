"""What both engines of ``ddnn edge`` share on the command line, without JAX: the value types,
the flags of a stream against a server, and printing its report. ``parser_deploy`` (the JAX
edge) and ``device`` (the exported graph) both build on it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddnn_jax.deploy import wire
from ddnn_jax.deploy.stream import EdgeInterrupted

EXIT_USAGE = 2  # bad input: one line on stderr says what to do
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C or SIGTERM stopped it


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None


def add_stream_flags(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """The server, the wire and the link's limits; ``defaults`` is the engine's config class."""
    parser.add_argument("--server", required=True, help="the address 'ddnn serve' printed")
    parser.add_argument(
        "--target",
        type=number,
        default=defaults.target,
        help="L0: the local rate the rule was calibrated for",
    )
    parser.add_argument(
        "--wire",
        choices=list(wire.WIRES),
        default=defaults.wire,
        help="what an offload sends: z (fp32, fp16, int8), a bottleneck's codes (bottleneck, "
        "bottleneck-zlib) or the image (raw, png, jpeg, webp)",
    )
    parser.add_argument(
        "--quality", type=integer, default=defaults.quality, help="of the jpeg and webp wires, 1..100"
    )
    parser.add_argument(
        "--batch",
        type=integer,
        default=defaults.batch,
        help="samples the edge processes and offloads together",
    )
    parser.add_argument(
        "--timeout",
        type=number,
        default=defaults.timeout_s,
        help="seconds to wait for the cloud before answering locally",
    )
    parser.add_argument(
        "--token-file",
        default=defaults.token_file,
        metavar="FILE",
        help="the token 'ddnn serve' was given: sent with every request, and the server must prove it",
    )
    parser.add_argument(
        "--tls-ca",
        default=defaults.tls_ca,
        metavar="PEM",
        help="certificates an https server's must chain to (a self-signed one: its own certificate)",
    )
    parser.add_argument(
        "--breaker",
        type=integer,
        default=defaults.breaker,
        help="failed requests in a row after which nothing is offloaded for --backoff seconds (0: never)",
    )
    parser.add_argument(
        "--backoff",
        type=number,
        default=defaults.backoff_s,
        help="seconds an open circuit keeps every sample local before one request probes the server",
    )
    parser.add_argument("--limit", type=integer, default=defaults.limit, help="the first N images only")


def stream_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields ``add_stream_flags`` parsed, by their names in both engines' configs."""
    names = ("server", "target", "wire", "quality", "batch", "token_file", "tls_ca", "breaker", "limit")
    return {**{n: getattr(args, n) for n in names}, "timeout_s": args.timeout, "backoff_s": args.backoff}


def print_report(run: Callable[[], tuple[Path, dict[str, Any]]]) -> int | None:
    """Runs a live edge and prints its summary line and report path (of the images done, when it
    was interrupted: then the exit status says so)."""
    try:
        path, report = run()
    except EdgeInterrupted as stopped:
        done = stopped.report["interrupted"]
        print(summary_line(stopped.report))
        print(f"report of the first {done['after']} of {done['of']} images (interrupted): {stopped.path}")
        return EXIT_INTERRUPTED
    print(summary_line(report))
    print(f"report: {path}")
    return None


def summary_line(report: dict) -> str:
    """One line of an edge report: accuracy, local rate, bytes, latency, fallbacks."""
    b, lat = report["bytes"], report["latency_ms"]
    per_offload = "-" if b["uplink_per_offload"] is None else f"{b['uplink_per_offload']:.0f}"
    accuracy = "accuracy unknown (unlabelled images)"
    if report["accuracy"] is not None:
        live, in_process = 100 * report["accuracy"], 100 * report["in_process"]["accuracy"]
        accuracy = f"accuracy {live:.2f} % (in process {in_process:.2f} %)"
    return (
        f"{accuracy}, {report['samples']} images, "
        f"local {100 * report['local_rate']:.1f} %, uplink {b['uplink_per_sample']:.0f} B/sample "
        f"{per_offload} B/offload, latency p50 {lat['per_sample']['p50']:.2f} ms p99 "
        f"{lat['per_sample']['p99']:.2f} ms, {report['throughput_per_s']:.0f} samples/s, "
        f"fallbacks {100 * report['fallback_rate']:.1f} %"
    )
