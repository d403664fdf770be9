"""The jaxpr-to-ONNX translation against JAX itself: onnxruntime runs each translated program and
must give JAX's numbers, at a fixed batch and at a dynamic one."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx_graph = pytest.importorskip("ddnn_jax.interop.onnx_graph")

RNG = np.random.default_rng(0)


def _run(fn, x: np.ndarray, batch) -> list[np.ndarray]:
    first = batch if batch is not None else jax.export.symbolic_shape("N")[0]
    example = jax.ShapeDtypeStruct((first, *x.shape[1:]), jnp.float32)
    model = onnx_graph.to_onnx(fn, example, "x", [f"y{i}" for i in range(len(jax.eval_shape(fn, x)))])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


class Edgy(nn.Module):
    """The layers an edge half and its routers use, NHWC, with batch norm at inference."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), padding="SAME")(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.leaky_relu(x, 0.01)
        pooled = nn.max_pool(x, (2, 2), strides=(2, 2))
        n, h, w, c = x.shape
        reshaped = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        flat = jnp.transpose(reshaped, (0, 3, 1, 2)).reshape(n, -1)
        logits = nn.Dense(5)(flat)
        top = jax.lax.top_k(logits, 2)[0]
        entropy = -(jax.nn.softmax(logits) * jax.nn.log_softmax(logits)).sum(-1)
        extras = jnp.stack([top[:, 0] - top[:, 1], entropy, jnp.sort(logits, -1)[:, 0]], axis=-1)
        return logits, extras, pooled - reshaped, jnp.round(jnp.clip(x, 0, 1) * 15.0).astype(jnp.uint8)


@pytest.mark.parametrize("batch", [3, None], ids=["fixed", "dynamic"])
def test_a_small_cnn_computes_what_jax_computes(batch):
    x = RNG.uniform(0, 1, (3, 12, 12, 2)).astype(np.float32)
    module = Edgy()
    variables = module.init(jax.random.key(0), x)
    stats = jax.tree.map(
        lambda v: v + RNG.uniform(0.5, 1.5, v.shape).astype(np.float32), variables["batch_stats"]
    )
    variables = {**variables, "batch_stats": stats}
    fn = lambda images: module.apply(variables, images)
    got, want = _run(fn, x, batch), fn(x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=1e-5)


def test_a_dynamic_graph_takes_any_batch():
    dense = nn.Dense(3)
    variables = dense.init(jax.random.key(1), jnp.zeros((1, 4)))
    fn = lambda x: (dense.apply(variables, x) * 2.0,)
    example = jax.ShapeDtypeStruct((jax.export.symbolic_shape("N")[0], 4), jnp.float32)
    model = onnx_graph.to_onnx(fn, example, "x", ["y"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = RNG.normal(size=(n, 4)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], fn(x)[0], rtol=1e-6, atol=1e-6)


def test_rounding_half_away_from_zero_is_kept():
    x = np.asarray([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]], np.float32)
    fn = lambda v: (jax.lax.round(v, jax.lax.RoundingMethod.AWAY_FROM_ZERO), jnp.round(v))
    got = _run(fn, x, 1)
    np.testing.assert_array_equal(got[0], [[-3, -2, -1, 1, 2, 3]])
    np.testing.assert_array_equal(got[1], [[-2, -2, -0, 0, 2, 2]])  # jnp.round: to even


def test_a_primitive_without_translation_is_named():
    with pytest.raises(onnx_graph.UnsupportedPrimitive, match="'cumsum'"):
        _run(lambda v: (jnp.cumsum(v, axis=-1),), np.ones((2, 3), np.float32), 2)
