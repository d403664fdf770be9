"""The exchange formats an edge half is exported to (``FORMATS``: a new one is one writer and
one entry), each a writer of a traceable JAX function: ONNX through ``onnx_graph`` (the jaxpr
translated), LiteRT through ``litert``; and onnxruntime's int8 quantisation of an ONNX graph.
Running a written graph is ``deploy.runtimes``'s, which needs no JAX.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.deploy.exported import INPUT


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnx(
    fn: Callable[..., Any], example: jax.ShapeDtypeStruct, names: Sequence[str], path: Path
) -> dict[str, Any]:
    try:
        from ddnn_jax.interop.onnx_graph import OPSET, to_onnx
    except ImportError:
        raise UsageError("exporting to ONNX needs onnx: pip install 'ddnn-jax[export]'") from None
    path.write_bytes(to_onnx(fn, example, INPUT, names, doc="ddnn-jax edge half").SerializeToString())
    return {"tool": "ddnn_jax.interop.onnx_graph (jaxpr to ONNX)", "opset": OPSET, "onnx": _version("onnx")}


def _litert(
    fn: Callable[..., Any], example: jax.ShapeDtypeStruct, names: Sequence[str], path: Path
) -> dict[str, Any]:
    from ddnn_jax.interop.litert import to_litert

    return to_litert(fn, example.shape[1:], example.shape[0], names, path)


class Format(NamedTuple):
    """An exchange format: its writer of a traceable function, and whether its batch may be
    dynamic (else a graph has one fixed batch, 1 unless asked)."""

    write: Callable[[Callable[..., Any], jax.ShapeDtypeStruct, Sequence[str], Path], dict[str, Any]]
    dynamic_batch: bool


FORMATS = {"onnx": Format(_onnx, True), "litert": Format(_litert, False)}


def write_graph(
    form: str,
    fn: Callable[..., Any],
    image_shape: Sequence[int],
    batch: int | None,
    names: Sequence[str],
    path: Path,
) -> dict[str, Any]:
    """Writes ``fn`` of float32 images [batch, *image_shape] (None: a dynamic batch) as a graph
    of format ``form``; returns how (tool, versions, opset)."""
    first: Any = batch if batch is not None else jax.export.symbolic_shape("N")[0]
    return FORMATS[form].write(fn, jax.ShapeDtypeStruct((first, *image_shape), jnp.float32), names, path)


def quantise_int8(graph: Path, out: Path, calibration: np.ndarray, batch: int | None) -> None:
    """An int8 copy of the ONNX ``graph`` by onnxruntime's static quantisation: QDQ format,
    weights per channel, activations calibrated on ``calibration`` images (min-max), fed
    ``batch`` at a time (the graph's fixed batch, else 64)."""
    size = batch or 64
    feeds = [np.asarray(calibration[i : i + size], np.float32) for i in range(0, len(calibration), size)]
    feeds = [f for f in feeds if len(f) == size] or feeds[:1]
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{INPUT: f} for f in feeds])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    # its advice to pre-process first goes to the root logger; pre-processed, our graphs fail to
    # quantise (onnxruntime 1.32's bias-scale adjustment errs on per-channel Gemm)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(graph),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    finally:
        root.setLevel(level)
