"""The flags of the two halves over the network: ``ddnn serve`` and ``ddnn edge``."""

from __future__ import annotations

from pathlib import Path

from ddnn_jax.cli.edge_flags import add_stream_flags
from ddnn_jax.cli.flags import (
    Help,
    add_guarantee_flags,
    add_quiet,
    add_run_dir,
    add_runtime_flags,
    integer,
    names,
)


def add_deployment(commands) -> None:
    """ddnn serve and ddnn edge."""
    from ddnn_jax.core.mechanisms import edge_mechanisms
    from ddnn_jax.deploy.cloud import DEFAULT_MAX_BATCH, MAX_BATCH
    from ddnn_jax.deploy.device_edge import ENGINES
    from ddnn_jax.deploy.edge import EdgeConfig

    serve = commands.add_parser(
        "serve", help="serve a run's cloud half over HTTP (stops cleanly on SIGTERM)", formatter_class=Help
    )
    add_run_dir(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=integer, default=0, help="port to listen on (0: a free one)")
    serve.add_argument(
        "--max-batch",
        type=integer,
        default=DEFAULT_MAX_BATCH,
        help=f"samples per request at most, up to {MAX_BATCH:,}; sets the request size limit",
    )
    serve.add_argument(
        "--bottlenecks",
        type=names,
        default=None,
        metavar="NAME,...|none",
        help="the run's learned bottlenecks to serve codes of (default: all it has)",
    )
    tokens = serve.add_mutually_exclusive_group()
    tokens.add_argument(
        "--new-token",
        type=Path,
        metavar="FILE",
        help="make a random token, write it to FILE (owner-only) and serve only requests carrying it",
    )
    tokens.add_argument(
        "--token-file", type=Path, metavar="FILE", help="serve only requests carrying the token in FILE"
    )
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve https with this certificate chain")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="let anyone in on a --host beyond this machine (refused without a token otherwise)",
    )
    add_runtime_flags(serve)
    edge = commands.add_parser(
        "edge",
        help="run a run's edge half on its test split against 'ddnn serve' -> edge_report.json",
        formatter_class=Help,
    )
    add_run_dir(edge)
    edge.add_argument(
        "--engine",
        choices=ENGINES,
        default="jax",
        help="jax: the run's edge in JAX; onnx: an exported graph without JAX "
        "(its own flags: ddnn edge --engine onnx --help)",
    )
    edge.add_argument(
        "--mechanism", choices=edge_mechanisms(), default=EdgeConfig.mechanism, help="decision rule"
    )
    edge.add_argument(
        "--bottleneck",
        default=EdgeConfig.bottleneck,
        metavar="NAME",
        help="the bottleneck whose codes a bottleneck wire sends (default: the run's only one)",
    )
    add_stream_flags(edge, EdgeConfig)
    edge.add_argument("--family", default=EdgeConfig.family, help="router family (--mechanism router)")
    edge.add_argument(
        "--images",
        default=EdgeConfig.images,
        metavar="DIR",
        help="run on the images in DIR (or in its class folders 0 .. C-1, which label them) "
        "instead of the run's test split",
    )
    edge.add_argument(
        "--out", type=Path, default=None, help="report path (default: RUN_DIR/edge/NAME/edge_report.json)"
    )
    edge.add_argument(
        "--sweep",
        action="store_true",
        help="instead of one live run: entropy and the router at every target over every wire "
        "-> RUN_DIR/edge/sweep.json (the report's accuracy-vs-bytes figure)",
    )
    add_guarantee_flags(edge, kind=None)
    add_quiet(edge)
    _add_export(commands)


def _add_export(commands) -> None:
    from ddnn_jax.interop.engines import FORMATS
    from ddnn_jax.interop.export_edge import ExportConfig

    export = commands.add_parser(
        "export-edge",
        help="write a run's edge half as an ONNX or LiteRT graph, verified on its test split",
        formatter_class=Help,
    )
    add_run_dir(export)
    export.add_argument("--format", choices=tuple(FORMATS), default=ExportConfig.format, help="graph format")
    export.add_argument(
        "--family", default=ExportConfig.family, help="the router family whose routers the graph computes"
    )
    export.add_argument(
        "--batch",
        type=batch_size,
        default=None,
        metavar="N|dynamic",
        help="the graph's batch (default: dynamic for onnx, 1 for litert, whose batch is fixed)",
    )
    export.add_argument(
        "--bottleneck",
        default=ExportConfig.bottleneck,
        metavar="NAME",
        help="output this bottleneck's codes instead of z (default: the family's bottleneck, if any)",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="also an int8 graph by onnxruntime's static quantisation, verified",
    )
    export.add_argument(
        "--calibration",
        type=integer,
        default=ExportConfig.calibration,
        help="validation images that calibrate the int8 graph",
    )
    export.add_argument(
        "--out", required=True, type=Path, help="the export directory (new, or an earlier export)"
    )
    add_quiet(export)


def batch_size(text: str) -> int | None:
    """A graph's batch: a positive integer, or 'dynamic' (None)."""
    return None if text == "dynamic" else integer(text)
