"""``ddnn edge --engine onnx``: the one command that runs without JAX, so it has its own parser,
read before the rest of the command line (which imports JAX) is. ``ddnn_jax.cli.main`` sends a
command line here when it asks for that engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.deploy import wire
from ddnn_jax.deploy.device_edge import ENGINES, DeviceEdgeConfig, run_device_edge
from ddnn_jax.deploy.stream import EdgeInterrupted

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130  # as cli.commands has them


def wants_device_edge(argv: list[str]) -> bool:
    """Whether ``argv`` is ``edge ... --engine onnx``."""
    if not argv or argv[0] != "edge":
        return False
    engine = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--engine"]
    engine += [a.split("=", 1)[1] for a in argv if a.startswith("--engine=")]
    return bool(engine) and engine[-1] == "onnx"


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``ddnn edge --engine onnx``."""
    d = DeviceEdgeConfig
    parser = argparse.ArgumentParser(
        prog="ddnn edge",
        description="run an exported edge half (ddnn export-edge) in onnxruntime, without JAX, "
        "against 'ddnn serve' -> edge_report.json",
    )
    parser.add_argument("command", choices=["edge"], help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, required=True, help="onnx: the exported graph")
    parser.add_argument(
        "--export", required=True, metavar="DIR", help="the directory 'ddnn export-edge' wrote"
    )
    parser.add_argument("--server", required=True, help="the address 'ddnn serve' printed")
    parser.add_argument("--target", type=float, default=d.target, help="L0: one of the export's decisions")
    parser.add_argument(
        "--wire",
        choices=list(wire.WIRES),
        default=d.wire,
        help="z (fp32, fp16, int8), the export's bottleneck codes, or the image",
    )
    parser.add_argument("--quality", type=int, default=d.quality, help="of the jpeg and webp wires, 1..100")
    parser.add_argument("--batch", type=int, default=d.batch, help="samples processed and offloaded together")
    parser.add_argument(
        "--graph", default=d.graph, metavar="FILE", help="a graph of the export (edge.int8.onnx)"
    )
    parser.add_argument("--threads", type=int, default=d.threads, help="the runtime's intra-op threads")
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds before answering locally")
    parser.add_argument(
        "--breaker", type=int, default=d.breaker, help="failed requests that pause offloading"
    )
    parser.add_argument("--backoff", type=float, default=d.backoff_s, help="seconds offloading stays paused")
    parser.add_argument("--limit", type=int, default=d.limit, help="the first N images only")
    parser.add_argument("--token-file", default=d.token_file, metavar="FILE", help="the server's token")
    parser.add_argument(
        "--tls-ca", default=d.tls_ca, metavar="PEM", help="certificates an https server's chain to"
    )
    parser.add_argument("--out", type=Path, default=None, help="report path (default: EXPORT/edge/NAME/...)")
    parser.add_argument("--quiet", action="store_true", help="no bar")
    return parser


def main(argv: list[str]) -> int:
    """Runs ``ddnn edge --engine onnx ...``; returns its exit status."""
    args = build_parser().parse_args(argv)
    config = DeviceEdgeConfig(
        export=args.export,
        server=args.server,
        target=args.target,
        wire=args.wire,
        quality=args.quality,
        batch=args.batch,
        graph=args.graph,
        threads=args.threads,
        timeout_s=args.timeout,
        breaker=args.breaker,
        backoff_s=args.backoff,
        limit=args.limit,
        token_file=args.token_file,
        tls_ca=args.tls_ca,
    )
    try:
        path, report = run_device_edge(config, out=args.out, progress=Progress(quiet=args.quiet))
    except UsageError as err:
        print(f"ddnn: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except EdgeInterrupted as stopped:
        done = stopped.report["interrupted"]
        print(summary_line(stopped.report))
        print(f"report of the first {done['after']} of {done['of']} images (interrupted): {stopped.path}")
        return EXIT_INTERRUPTED
    print(summary_line(report))
    print(f"report: {path}")
    return 0


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
