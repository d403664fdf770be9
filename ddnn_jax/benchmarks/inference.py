"""``ddnn bench inference``: the Fig. 6.5 timing (``stages.timing``), and with ``--export DIR``
(repeatable) the exported edge half in each device runtime against JAX's compiled edge.

The contenders of one export, measured in one process, rounds interleaved:

* ``jax``: the edge program the export was traced from (``export_edge.edge_program``), jitted:
  the same function, with XLA's threads;
* ``onnxruntime`` on edge.onnx (and edge.int8.onnx where the export has one), ``litert`` on
  edge.tflite: each at one intra-op thread and at the runtime's default.

Two regimes: latency at batch 1 (``calls`` calls a round, the median over rounds of the mean per
call) and throughput over ``throughput_images`` test images at the graph's batch (a dynamic
graph at 256). Each line also gives the graph file's size. Every contender computes all three
outputs (local logits, router logit, z or codes) and hands them to the host as NumPy arrays.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from ddnn_jax.deploy.exported import INT8, Exported, read_export, read_samples
from ddnn_jax.deploy.runtimes import open_graph
from ddnn_jax.interop.export_edge import edge_program
from ddnn_jax.rundir import as_run, write_json
from ddnn_jax.stages import timing

DYNAMIC_BATCH = 256  # a dynamic graph's batch in the throughput regime


def _contenders(exported: Exported) -> dict[str, tuple[Callable, int | None, Path | None]]:
    """name -> (one call on a batch, its fixed batch or None, its graph file)."""
    info = exported.info
    bottleneck = info["bottleneck"]["name"] if info["bottleneck"] else None
    program = jax.jit(edge_program(as_run(Path(info["run"])), info["family"]["name"], bottleneck).fn)
    found: dict[str, tuple[Callable, int | None, Path | None]] = {
        "jax": (lambda x: jax.device_get(program(x)), None, None)
    }
    runtime = "onnxruntime" if exported.graph().suffix == ".onnx" else "litert"
    graphs = [exported.graph(), exported.root / INT8]
    graphs = [g for g in graphs if g.is_file()]
    for graph in graphs:
        label = f"{runtime} int8" if graph.name == INT8 else runtime
        for threads in (1, None):
            call, batch = open_graph(graph, threads)
            found[f"{label} threads={threads or 'default'}"] = (call, batch, graph)
    return found


def _latency_ms(call: Callable, image: np.ndarray, rounds: int, calls: int) -> list[float]:
    ms = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call(image)
        ms.append(1e3 * (time.perf_counter() - started) / calls)
    return ms


def _throughput(call: Callable, batch: int, images: np.ndarray) -> float:
    """Images per second through ``call`` at ``batch`` (whole batches only)."""
    n = len(images) // batch * batch
    started = time.perf_counter()
    for start in range(0, n, batch):
        call(images[start : start + batch])
    return n / (time.perf_counter() - started)


def time_export(root: Path, rounds: int = 5, calls: int = 500, throughput_images: int = 2048) -> list[dict]:
    """One line per contender of the export in ``root``: batch-1 latency, throughput, file size."""
    exported = read_export(root)
    images = read_samples(exported, throughput_images)["images"].astype(np.float32)
    contenders = _contenders(exported)
    image = images[:1]
    ms: dict[str, list[float]] = {name: [] for name in contenders}
    rate: dict[str, list[float]] = {name: [] for name in contenders}
    for call, batch, _ in contenders.values():  # first calls: compile, allocate
        call(image if batch is None else images[:batch])
        call(images[: batch or DYNAMIC_BATCH])
    for _ in range(rounds):
        for name, (call, batch, _) in contenders.items():
            if batch in (None, 1):
                ms[name] += _latency_ms(call, image, 1, calls)
            rate[name].append(_throughput(call, batch or DYNAMIC_BATCH, images))
    common = {
        "measure": "edge_engine",
        "export": str(root),
        "format": exported.info["format"],
        "machine": platform.processor() or platform.machine(),
        "jax_device": jax.devices()[0].device_kind,
        "rounds": rounds,
    }
    lines = []
    for name, (_, batch, graph) in contenders.items():
        lines.append(
            {
                **common,
                "engine": name,
                "graph": None if graph is None else graph.name,
                "graph_bytes": None if graph is None else graph.stat().st_size,
                "batch1_ms": round(statistics.median(ms[name]), 4) if ms[name] else None,
                "batch1_ms_range": [round(min(ms[name]), 4), round(max(ms[name]), 4)] if ms[name] else None,
                "throughput_batch": batch or DYNAMIC_BATCH,
                "throughput_per_s": round(statistics.median(rate[name]), 1),
            }
        )
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = timing.build_parser()
    parser.add_argument(
        "--export",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also time this export's graphs against JAX's edge (repeatable); alone with --exports-only",
    )
    parser.add_argument("--exports-only", action="store_true", help="time the exports only, not Fig. 6.5")
    args = parser.parse_args(argv)
    try:
        config = timing.config_from(args)
    except ValueError as err:
        parser.error(str(err))
    lines = [] if args.exports_only else timing.time_inference(config)
    for line in lines:
        print(json.dumps(line))
    for root in args.export:
        for line in time_export(root, rounds=args.runs):
            print(json.dumps(line))
            lines.append(line)
    if args.out is not None:
        write_json(args.out, lines)
    return lines
