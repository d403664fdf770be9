"""The ONNX side of the jaxpr translation (``onnx_graph``): the graph being built, and one
translation per JAX primitive (``RULES``), each a function of the equation and the ONNX names of
its operands that adds nodes and returns the names of its results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class UnsupportedPrimitive(ValueError):
    """The traced program uses a JAX primitive this translator has no ONNX form for."""


class Graph:
    """The ONNX nodes and initialisers being built, with what later translations look up: each
    initialiser's value and each node output's operator and inputs."""

    def __init__(self, batch_symbol: Any):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.batch_symbol = batch_symbol
        self.batch_size: str | None = None  # a [1] int64 tensor: the first input's first dimension
        self.consts: dict[str, np.ndarray] = {}  # initialiser values, by name
        self.made_by: dict[str, tuple[str, list[str]]] = {}  # a node output's operator and inputs
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, dtype: Any = None) -> str:
        name = self.fresh("const")
        self.consts[name] = np.asarray(value, dtype)
        self.initializers.append(numpy_helper.from_array(self.consts[name], name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> Any:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        self.made_by[names[0]] = (op_type, list(inputs))
        return names[0] if outputs == 1 else names

    def shape(self, dims: Sequence[Any]) -> str:
        """An int64 shape tensor for ``dims``, the batch symbol read from the first input."""
        if all(isinstance(d, int) for d in dims):
            return self.const(np.asarray(dims, np.int64))
        parts = []
        for d in dims:
            if isinstance(d, int):
                parts.append(self.const(np.asarray([d], np.int64)))
            elif d == self.batch_symbol and self.batch_size is not None:
                parts.append(self.batch_size)
            else:
                raise UnsupportedPrimitive(f"a shape with the dimension {d}: only the batch may be symbolic")
        return self.op("Concat", parts, axis=0)


def onnx_type(dtype: Any) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


_ELEMENTWISE = {
    "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
    "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "tanh": "Tanh",
    "logistic": "Sigmoid", "sign": "Sign", "floor": "Floor", "ceil": "Ceil", "erf": "Erf",
    "gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less", "le": "LessOrEqual", "eq": "Equal",
    "and": "And", "or": "Or", "not": "Not", "copy": "Identity", "copy_p": "Identity",
    "stop_gradient": "Identity",
}  # fmt: skip


def _elementwise(op_type: str) -> Callable[..., str]:
    return lambda graph, eqn, *args: graph.op(op_type, args)


def _aval(eqn: Any, i: int = 0) -> Any:
    return eqn.outvars[i].aval


def _integer_pow(graph: Graph, eqn: Any, x: str) -> str:
    exponent = eqn.params["y"]
    if exponent == 2:
        return graph.op("Mul", [x, x])
    return graph.op("Pow", [x, graph.const(np.asarray(exponent, _aval(eqn).dtype))])


def _rsqrt(graph: Graph, eqn: Any, x: str) -> str:
    return graph.op("Reciprocal", [graph.op("Sqrt", [x])])


def _log1p(graph: Graph, eqn: Any, x: str) -> str:
    return graph.op("Log", [graph.op("Add", [x, graph.const(np.asarray(1, _aval(eqn).dtype))])])


def _ne(graph: Graph, eqn: Any, x: str, y: str) -> str:
    return graph.op("Not", [graph.op("Equal", [x, y])])


def _round(graph: Graph, eqn: Any, x: str) -> str:
    if int(eqn.params["rounding_method"]) == 1:  # to nearest even, as ONNX's Round
        return graph.op("Round", [x])
    half = graph.const(np.asarray(0.5, _aval(eqn).dtype))  # half away from zero
    magnitude = graph.op("Floor", [graph.op("Add", [graph.op("Abs", [x]), half])])
    return graph.op("Mul", [graph.op("Sign", [x]), magnitude])


def _clamp(graph: Graph, eqn: Any, low: str, x: str, high: str) -> str:
    return graph.op("Max", [graph.op("Min", [x, high]), low])


def _scalar(graph: Graph, name: str) -> float | None:
    value = graph.consts.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _leaky_relu(graph: Graph, which: str, negative: str, positive: str) -> str | None:
    """LeakyRelu for where(x >= 0, x, c * x), as Flax's leaky_relu traces: one fused operator
    in place of a comparison, a product and a Where (which onnxruntime runs slowly)."""
    compare, scaled = graph.made_by.get(which), graph.made_by.get(negative)
    if compare is None or scaled is None or compare[0] != "GreaterOrEqual" or scaled[0] != "Mul":
        return None
    x, zero = compare[1]
    others = [a for a in scaled[1] if a != x]
    if zero not in graph.consts or _scalar(graph, zero) != 0.0 or positive != x or len(others) != 1:
        return None
    alpha = _scalar(graph, others[0])
    return None if alpha is None else graph.op("LeakyRelu", [x], alpha=alpha)


def _select_n(graph: Graph, eqn: Any, which: str, *cases: str) -> str:
    if len(cases) != 2:
        raise UnsupportedPrimitive("select_n with more than two cases has no ONNX translation")
    fused = _leaky_relu(graph, which, *cases)
    if fused is not None:
        return fused
    if eqn.invars[0].aval.dtype != np.bool_:
        which = graph.op("Cast", [which], to=TensorProto.BOOL)
    return graph.op("Where", [which, cases[1], cases[0]])


def _convert(graph: Graph, eqn: Any, x: str) -> str:
    return graph.op("Cast", [x], to=onnx_type(eqn.params["new_dtype"]))


def _reshape_to_output(graph: Graph, eqn: Any, x: str) -> str:
    """reshape, squeeze, expand_dims: the output's shape says it all."""
    return graph.op("Reshape", [x, graph.shape(_aval(eqn).shape)])


def ranked_shape(eqn: Any) -> list[Any]:
    """broadcast_in_dim's operand shape at the output's rank, 1 where it broadcasts."""
    ranked: list[Any] = [1] * len(eqn.params["shape"])
    for source, target in enumerate(eqn.params["broadcast_dimensions"]):
        ranked[target] = eqn.invars[0].aval.shape[source]
    return ranked


def _broadcast_in_dim(graph: Graph, eqn: Any, x: str, *dynamic: str) -> str:
    ranked = ranked_shape(eqn)
    if tuple(ranked) != tuple(eqn.invars[0].aval.shape):
        x = graph.op("Reshape", [x, graph.shape(ranked)])
    return graph.op("Expand", [x, graph.shape(eqn.params["shape"])])


def _transpose(graph: Graph, eqn: Any, x: str) -> str:
    return graph.op("Transpose", [x], perm=list(eqn.params["permutation"]))


def _slice(graph: Graph, eqn: Any, x: str) -> str:
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params["strides"] or (1,) * len(starts)
    axes = list(range(len(starts)))
    ends = graph.shape(limits)
    i64 = lambda v: graph.const(np.asarray(v, np.int64))
    return graph.op("Slice", [x, i64(starts), ends, i64(axes), i64(strides)])


def _concatenate(graph: Graph, eqn: Any, *xs: str) -> str:
    return graph.op("Concat", xs, axis=int(eqn.params["dimension"]))


def _stack(graph: Graph, eqn: Any, *xs: str) -> str:
    axis = graph.const(np.asarray([eqn.params["axis"]], np.int64))
    return graph.op("Concat", [graph.op("Unsqueeze", [x, axis]) for x in xs], axis=int(eqn.params["axis"]))


def _split(graph: Graph, eqn: Any, x: str) -> list[str]:
    sizes = graph.const(np.asarray(eqn.params["sizes"], np.int64))
    return graph.op("Split", [x, sizes], outputs=len(eqn.outvars), axis=int(eqn.params["axis"]))


def _sort(graph: Graph, eqn: Any, *operands: str) -> str:
    """An ascending sort of one array along an axis of static length, as TopK of all of it."""
    axis = int(eqn.params["dimension"])
    length = eqn.invars[0].aval.shape[axis]
    if len(operands) != 1 or not isinstance(length, int):
        raise UnsupportedPrimitive("sort of several arrays or along the batch has no ONNX translation")
    k = graph.const(np.asarray([length], np.int64))
    return graph.op("TopK", [operands[0], k], outputs=2, axis=axis, largest=0, sorted=1)[0]


def _gather(graph: Graph, eqn: Any, x: str, indices: str) -> str:
    """The one gather a traced ``x[:, i]`` makes: one index into one axis, that axis dropped."""
    numbers = eqn.params["dimension_numbers"]
    axes = tuple(numbers.start_index_map)
    if (
        len(axes) != 1
        or tuple(numbers.collapsed_slice_dims) != axes
        or numbers.operand_batching_dims
        or eqn.invars[1].aval.shape != (1,)
    ):
        raise UnsupportedPrimitive("a gather other than one index into one axis has no ONNX translation")
    index = graph.op("Reshape", [indices, graph.const(np.zeros(0, np.int64))])
    return graph.op("Gather", [x, index], axis=axes[0])


def _pad(graph: Graph, eqn: Any, x: str, value: str) -> str:
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config) or any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise UnsupportedPrimitive("pad with interior or negative padding has no ONNX translation")
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    return graph.op("Pad", [x, graph.const(np.asarray(pads, np.int64)), value])


def _reduce(op_type: str) -> Callable[..., str]:
    def translate(graph: Graph, eqn: Any, x: str) -> str:
        axes = [int(a) for a in eqn.params["axes"]]
        if op_type == "ReduceSum":  # axes an input since opset 13, an attribute of the others until 18
            return graph.op(op_type, [x, graph.const(np.asarray(axes, np.int64))], keepdims=0)
        return graph.op(op_type, [x], axes=axes, keepdims=0)

    return translate


def _argmax(graph: Graph, eqn: Any, x: str) -> str:
    (axis,) = eqn.params["axes"]
    found = graph.op("ArgMax", [x], axis=int(axis), keepdims=0)
    return graph.op("Cast", [found], to=onnx_type(eqn.params["index_dtype"]))


def _top_k(graph: Graph, eqn: Any, x: str) -> list[str]:
    values, indices = graph.op("TopK", [x, graph.const(np.asarray([eqn.params["k"]], np.int64))], outputs=2)
    return [values, graph.op("Cast", [indices], to=onnx_type(_aval(eqn, 1).dtype))]


def _dot_general(graph: Graph, eqn: Any, lhs: str, rhs: str) -> str:
    """MatMul for a plain [.., K] x [K, M] product, Einsum for any other contraction."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    left, right = eqn.invars[0].aval, eqn.invars[1].aval
    if not lb and tuple(lc) == (left.ndim - 1,) and tuple(rc) == (0,) and right.ndim == 2:
        return graph.op("MatMul", [lhs, rhs])
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs_ix = [next(letters) for _ in range(left.ndim)]
    rhs_ix = [next(letters) for _ in range(right.ndim)]
    for a, b in [*zip(lc, rc, strict=True), *zip(lb, rb, strict=True)]:
        rhs_ix[b] = lhs_ix[a]
    out = [lhs_ix[a] for a in lb]
    out += [c for i, c in enumerate(lhs_ix) if i not in (*lc, *lb)]
    out += [c for i, c in enumerate(rhs_ix) if i not in (*rc, *rb)]
    equation = f"{''.join(lhs_ix)},{''.join(rhs_ix)}->{''.join(out)}"
    return graph.op("Einsum", [lhs, rhs], equation=equation)


def _conv(graph: Graph, eqn: Any, lhs: str, rhs: str) -> str:
    """Conv in NCHW order, whatever the jaxpr's dimension numbers, transposed in and out."""
    p = eqn.params
    numbers = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise UnsupportedPrimitive("a transposed or batch-grouped convolution has no ONNX translation")
    x = graph.op("Transpose", [lhs], perm=list(numbers.lhs_spec))
    w = graph.op("Transpose", [rhs], perm=list(numbers.rhs_spec))
    padding = p["padding"]
    pads = [lo for lo, _ in padding] + [hi for _, hi in padding]
    y = graph.op(
        "Conv",
        [x, w],
        strides=list(p["window_strides"]),
        pads=pads,
        dilations=list(p["rhs_dilation"]),
        group=int(p["feature_group_count"]),
    )
    return graph.op("Transpose", [y], perm=[int(i) for i in np.argsort(numbers.out_spec)])


def _reduce_window_max(graph: Graph, eqn: Any, x: str) -> str:
    """MaxPool over the spatial axes of an NHWC array (window and stride 1 on batch and channels)."""
    p = eqn.params
    window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    ndim = len(window)
    if window[0] != 1 or window[-1] != 1 or strides[0] != 1 or strides[-1] != 1:
        raise UnsupportedPrimitive("reduce_window_max over the batch or channel axis has no ONNX translation")
    to_nchw = [0, ndim - 1, *range(1, ndim - 1)]
    pads = [lo for lo, _ in padding[1:-1]] + [hi for _, hi in padding[1:-1]]
    y = graph.op(
        "MaxPool",
        [graph.op("Transpose", [x], perm=to_nchw)],
        kernel_shape=list(window[1:-1]),
        strides=list(strides[1:-1]),
        pads=pads,
    )
    return graph.op("Transpose", [y], perm=[int(i) for i in np.argsort(to_nchw)])


def _iota(graph: Graph, eqn: Any) -> str:
    aval, axis = _aval(eqn), eqn.params["dimension"]
    if not all(isinstance(d, int) for d in aval.shape):
        raise UnsupportedPrimitive("iota over the symbolic batch has no ONNX translation")
    counts = np.arange(aval.shape[axis], dtype=aval.dtype)
    shape = [1] * aval.ndim
    shape[axis] = aval.shape[axis]
    return graph.const(np.broadcast_to(counts.reshape(shape), aval.shape))


RULES: dict[str, Callable[..., Any]] = {
    **{name: _elementwise(op) for name, op in _ELEMENTWISE.items()},
    "integer_pow": _integer_pow,
    "rsqrt": _rsqrt,
    "log1p": _log1p,
    "ne": _ne,
    "round": _round,
    "clamp": _clamp,
    "select_n": _select_n,
    "convert_element_type": _convert,
    "reshape": _reshape_to_output,
    "squeeze": _reshape_to_output,
    "expand_dims": _reshape_to_output,
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "slice": _slice,
    "concatenate": _concatenate,
    "stack": _stack,
    "split": _split,
    "sort": _sort,
    "gather": _gather,
    "pad": _pad,
    "reduce_sum": _reduce("ReduceSum"),
    "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"),
    "argmax": _argmax,
    "top_k": _top_k,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "reduce_window_max": _reduce_window_max,
    "iota": _iota,
}
