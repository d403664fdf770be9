"""An exported edge graph run by a device runtime: onnxruntime for ``.onnx``, the LiteRT
interpreter for ``.tflite``. NumPy in, NumPy out, and no JAX: the device edge
(``deploy.device_edge``), the export's verification and the benchmarks all run graphs through here.

A graph of fixed batch N takes any number of images: whole batches of N, the last one padded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ddnn_jax.common.errors import UsageError
from ddnn_jax.deploy.exported import INPUT, LOCAL_LOGITS, ROUTER_LOGIT

Outputs = tuple[np.ndarray, ...]
Runner = Callable[[np.ndarray], Outputs]  # images [n, H, W, C], any n -> the graph's outputs
_CHUNK = 512  # images per call of a dynamic-batch graph


def open_graph(path: Path, threads: int | None = None) -> tuple[Callable[[np.ndarray], Outputs], int | None]:
    """The graph at ``path`` as a function of one float32 batch, and its fixed batch (None:
    dynamic). ``threads``: the runtime's intra-op threads (None: its default)."""
    if path.suffix == ".onnx":
        return _onnxruntime(path, threads)
    if path.suffix == ".tflite":
        return _litert(path, threads)
    raise UsageError(f"{path}: an edge graph is a .onnx or a .tflite file")


def runner(path: Path, threads: int | None = None) -> Runner:
    """The graph at ``path`` on any number of images, in whole batches (the last one padded)."""
    call, batch = open_graph(path, threads)
    size = batch or _CHUNK

    def run(images: np.ndarray) -> Outputs:
        parts = []
        for start in range(0, len(images), size):
            chunk = np.asarray(images[start : start + size], np.float32)
            n = len(chunk)
            if batch is not None and n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
            parts.append([out[:n] for out in call(chunk)])
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))

    return run


def _onnxruntime(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("running an ONNX graph needs onnxruntime: pip install 'ddnn-jax[export]'") from None
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own classes for a damaged or foreign file
        raise UsageError(
            f"onnxruntime cannot load {path} ({type(err).__name__}): export the edge again"
        ) from None
    (feed,) = session.get_inputs()  # named INPUT
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else None
    names = [o.name for o in session.get_outputs()]
    return (lambda images: tuple(session.run(names, {feed.name: images}))), batch


def _litert(path: Path, threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UsageError(
            "running a LiteRT graph needs ai-edge-litert: pip install 'ddnn-jax[export]'"
        ) from None
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        signature = interpreter.get_signature_runner()
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"LiteRT cannot load {path} ({err}): export the edge again") from None
    (feed,) = interpreter.get_input_details()
    # the signature's outputs by name, in the graph's order: local logits, router logit, z or codes
    outputs = interpreter.get_signature_list()["serving_default"]["outputs"]
    names = [LOCAL_LOGITS, ROUTER_LOGIT, *(n for n in outputs if n not in (LOCAL_LOGITS, ROUTER_LOGIT))]

    def call(images: np.ndarray) -> Outputs:
        found = signature(**{INPUT: images})
        return tuple(found[name] for name in names)

    return call, int(feed["shape"][0])
