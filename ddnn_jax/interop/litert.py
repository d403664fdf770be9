"""A JAX function as a LiteRT flatbuffer: jax2tf with native serialisation (StableHLO inside a
TensorFlow function), saved with a serving signature whose outputs carry our names, then
TensorFlow's LiteRT converter restricted to LiteRT's builtin operators, so that the plain
interpreter (``ai-edge-litert``, no TensorFlow) runs it. TensorFlow comes from the ``prepare``
extra; the conversion is the only thing here that needs it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ddnn_jax.common.errors import UsageError
from ddnn_jax.deploy.exported import INPUT


def to_litert(
    fn: Callable[..., Any], image_shape: Sequence[int], batch: int, names: Sequence[str], path: Path
) -> dict[str, Any]:
    """Writes ``fn`` of float32 images [batch, *image_shape] to ``path`` as LiteRT; returns how.

    Raises:
      UsageError: TensorFlow is not installed, or the converter refuses an operator (named in
        its message).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError:
        raise UsageError("exporting to LiteRT needs TensorFlow: pip install 'ddnn-jax[prepare]'") from None
    converted = jax2tf.convert(fn, native_serialization_platforms=("cpu",))
    signature = [tf.TensorSpec((batch, *image_shape), tf.float32, name=INPUT)]
    module = tf.Module()
    module.edge = tf.function(
        lambda images: dict(zip(names, converted(images), strict=True)),
        input_signature=signature,
        autograph=False,
    )
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": module.edge})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                flatbuffer = converter.convert()
        except Exception as err:  # the converter's ConverterError names the operator it cannot map
            raise UsageError(
                f"the LiteRT converter refused the edge half: {str(err).splitlines()[0]}"
            ) from None
    path.write_bytes(flatbuffer)
    return {
        "tool": "jax2tf (native serialisation) + TFLiteConverter (builtin operators)",
        "tensorflow": importlib.metadata.version(
            "tensorflow-cpu" if _has("tensorflow-cpu") else "tensorflow"
        ),
        "batch": batch,
    }


def _has(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
