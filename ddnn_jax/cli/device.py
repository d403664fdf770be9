"""``ddnn edge --engine onnx``: the one command that runs without JAX, so it has its own parser,
read before the rest of the command line (which imports JAX) is. ``ddnn_jax.cli.main`` sends a
command line here when it asks for that engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddnn_jax.cli.edge_flags import EXIT_USAGE, add_stream_flags, integer, print_report, stream_fields
from ddnn_jax.common.errors import UsageError
from ddnn_jax.common.progress import Progress
from ddnn_jax.deploy.device_edge import ENGINES, DeviceEdgeConfig, run_device_edge


def wants_device_edge(argv: list[str]) -> bool:
    """Whether ``argv`` is ``edge ... --engine onnx``."""
    if not argv or argv[0] != "edge":
        return False
    engine = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--engine"]
    engine += [a.split("=", 1)[1] for a in argv if a.startswith("--engine=")]
    return bool(engine) and engine[-1] == "onnx"


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``ddnn edge --engine onnx``."""
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
    add_stream_flags(parser, DeviceEdgeConfig)
    parser.add_argument("--graph", metavar="FILE", help="a graph of the export (edge.int8.onnx)")
    parser.add_argument("--threads", type=integer, help="the runtime's intra-op threads")
    parser.add_argument("--out", type=Path, help="report path (default: EXPORT/edge/NAME/edge_report.json)")
    parser.add_argument("--quiet", action="store_true", help="no bar")
    return parser


def main(argv: list[str]) -> int:
    """Runs ``ddnn edge --engine onnx ...``; returns its exit status."""
    args = build_parser().parse_args(argv)
    config = DeviceEdgeConfig(
        export=args.export, graph=args.graph, threads=args.threads, **stream_fields(args)
    )
    try:
        code = print_report(
            lambda: run_device_edge(config, out=args.out, progress=Progress(quiet=args.quiet))
        )
    except UsageError as err:
        print(f"ddnn: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return code or 0
