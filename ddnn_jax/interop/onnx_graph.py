"""A JAX function as an ONNX graph: its jaxpr, traced once, translated equation by equation.

Why not an exporter package: jax2onnx (the maintained JAX-to-ONNX route) pins an older
orbax-checkpoint than this package needs, and jax2tf followed by tf2onnx cannot read the StableHLO
that jax2tf's native serialisation produces. A jaxpr, though, is a small, stable language, and the
programs we export (a CNN, its local head, a router, a bottleneck's encoder) use few of its
primitives. Translating the traced program rather than re-describing the network means any router
variant or bottleneck exports without export code of its own; a primitive with no translation
stops the export with its name (``UnsupportedPrimitive``). The ``onnx`` package builds and checks
the graph; onnxruntime runs it in the verification (``interop.export_edge``).

The batch may be symbolic: traced with ``jax.export`` shape polymorphism, its one symbol becomes
the graph's dynamic first dimension, read from the first input's shape where a shape is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import onnx
from jax.extend import core as jcore
from onnx import helper

from ddnn_jax.interop.onnx_ops import RULES, Graph, UnsupportedPrimitive, onnx_type, ranked_shape

__all__ = ["OPSET", "UnsupportedPrimitive", "to_onnx"]

OPSET = 17  # ONNX Runtime 1.14+ and LiteRT-era mobile runtimes all read it
BATCH = "N"  # the dynamic first dimension's name in the graph


def to_onnx(
    fn: Callable[..., Any],
    example: jax.ShapeDtypeStruct,
    input_name: str,
    output_names: Sequence[str],
    *,
    doc: str = "",
) -> onnx.ModelProto:
    """The ONNX model of ``fn`` on one array input.

    Args:
      fn: a traceable function of one array returning a tuple of arrays.
      example: the input's shape and dtype; a ``jax.export.symbolic_shape`` first dimension makes
        the graph's batch dynamic.
      input_name: the graph input's name.
      output_names: one name per output of ``fn``.
      doc: the graph's doc string.

    Raises:
      UnsupportedPrimitive: the program uses a primitive with no translation (named).
    """
    closed = jax.make_jaxpr(fn)(example)
    batch = example.shape[0]
    graph = Graph(None if isinstance(batch, int) else batch)
    env: dict[Any, _Value] = {}
    (invar,) = closed.jaxpr.invars
    env[invar] = input_name
    if graph.batch_symbol is not None:
        full = graph.op("Shape", [input_name])
        graph.batch_size = graph.op("Slice", [full, graph.const([0], np.int64), graph.const([1], np.int64)])
    env.update(_constants(closed))
    _translate(graph, closed.jaxpr, env)
    outvars = closed.jaxpr.outvars
    if len(outvars) != len(output_names):
        raise ValueError(f"the function returns {len(outvars)} arrays, {len(output_names)} names given")
    outputs = []
    for name, var in zip(output_names, outvars, strict=True):
        graph.nodes.append(helper.make_node("Identity", [_read(graph, env, var)], [name]))
        outputs.append(helper.make_tensor_value_info(name, onnx_type(var.aval.dtype), _dims(var.aval.shape)))
    inputs = [helper.make_tensor_value_info(input_name, onnx_type(example.dtype), _dims(example.shape))]
    nodes, initializers = _live(graph, output_names)
    body = helper.make_graph(nodes, "edge", inputs, outputs, initializers, doc_string=doc)
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ddnn-jax")
    onnx.checker.check_model(model, full_check=True)
    return model


def _live(graph: Graph, outputs: Sequence[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initialisers the outputs depend on (a fused pattern leaves its parts unused)."""
    needed, kept = set(outputs), []
    for node in reversed(graph.nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1], [t for t in graph.initializers if t.name in needed]


def _dims(shape: Sequence[Any]) -> list[int | str]:
    return [d if isinstance(d, int) else BATCH for d in shape]


class _Broadcast(NamedTuple):
    """A constant broadcast over the symbolic batch, kept ranked (its other dimensions 1) for
    operators that broadcast by themselves, and expanded only for the others."""

    ranked: str  # the initialiser of the ranked constant
    shape: tuple[Any, ...]


# What a jaxpr variable is while translating: an ONNX value's name, an array known at export time
# (weights and what is computed from them alone, folded here), or a constant broadcast.
_Value = str | np.ndarray | _Broadcast

# Operators whose operands broadcast against each other as NumPy's do.
_BROADCASTING = {
    "add", "sub", "mul", "div", "max", "min", "pow", "gt", "ge", "lt", "le", "eq", "ne", "and", "or",
    "select_n", "clamp",
}  # fmt: skip


def _constants(closed: Any) -> dict[Any, _Value]:
    """The closed-over arrays of a jaxpr (weights, mostly), known at export time."""
    pairs = zip(closed.jaxpr.constvars, closed.consts, strict=True)
    return {var: np.asarray(value) for var, value in pairs}


def _value(env: dict[Any, _Value], atom: Any) -> _Value:
    if isinstance(atom, jcore.Literal):
        return np.asarray(atom.val, getattr(atom.aval, "dtype", None))
    return env[atom]


def _read(graph: Graph, env: dict[Any, _Value], atom: Any, ranked: bool = False) -> str:
    """The ONNX name of ``atom``: a known array becomes an initialiser, a broadcast constant its
    ranked initialiser where ``ranked`` (the operator broadcasts), else an Expand."""
    value = _value(env, atom)
    if isinstance(value, np.ndarray):
        name = graph.const(value)
    elif isinstance(value, _Broadcast):
        if ranked:
            return value.ranked
        name = graph.op("Expand", [value.ranked, graph.shape(value.shape)])
    else:
        return value
    if not isinstance(atom, jcore.Literal):
        env[atom] = name  # one initialiser or Expand however often it is read
    return name


def _translate(graph: Graph, jaxpr: Any, env: dict[Any, _Value]) -> None:
    for eqn in jaxpr.eqns:
        values = [_value(env, a) for a in eqn.invars]
        inner = _inner_jaxpr(eqn.params)
        if inner is not None:  # jit, custom_jvp_call, custom_vjp_call: the primal program inline
            sub = _constants(inner)
            sub.update(zip(inner.jaxpr.invars, values, strict=True))
            _translate(graph, inner.jaxpr, sub)
            env.update(zip(eqn.outvars, [_value(sub, v) for v in inner.jaxpr.outvars], strict=True))
        elif all(isinstance(v, np.ndarray) for v in values) and _static(eqn):
            out = eqn.primitive.bind(*values, **eqn.params)  # folded: computed once, here
            outs = out if eqn.primitive.multiple_results else [out]
            env.update(zip(eqn.outvars, [np.asarray(o) for o in outs], strict=True))
        elif eqn.primitive.name == "broadcast_in_dim" and isinstance(values[0], np.ndarray):
            ranked = values[0].reshape(ranked_shape(eqn))
            env[eqn.outvars[0]] = _Broadcast(graph.const(ranked), tuple(eqn.params["shape"]))
        else:
            env.update(zip(eqn.outvars, _emit(graph, eqn, env), strict=True))


def _static(eqn: Any) -> bool:
    return all(isinstance(d, int) for v in eqn.outvars for d in v.aval.shape)


def _emit(graph: Graph, eqn: Any, env: dict[Any, _Value]) -> list[str]:
    """The ONNX nodes of one equation whose inputs are not all known."""
    translate = RULES.get(eqn.primitive.name)
    if translate is None:
        raise UnsupportedPrimitive(f"the JAX primitive '{eqn.primitive.name}' has no ONNX translation")
    # a broadcast constant may stay ranked where a full-shaped value of the batch sits beside it
    dynamic = [a for a in eqn.invars if not isinstance(a, jcore.Literal) and isinstance(env[a], str)]
    ranked = eqn.primitive.name in _BROADCASTING and bool(dynamic)
    args = [_read(graph, env, a, ranked) for a in eqn.invars]
    out = translate(graph, eqn, *args)
    return out if isinstance(out, list) else [out]


def _inner_jaxpr(params: dict[str, Any]) -> Any:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = params.get(key)
        if isinstance(inner, jcore.ClosedJaxpr):
            return inner
        if isinstance(inner, jcore.Jaxpr):
            return jcore.ClosedJaxpr(inner, ())
    return None
