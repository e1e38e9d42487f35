"""ONNX nodes as differentiable torch code: ``OPS`` maps an op_type (default domain) to a
function ``(node, inputs) -> outputs`` over torch tensors, following the ONNX operator
definitions for the opset-13+ forms the exporters write (attributes read with
``Model.attr``; inputs that ONNX takes as shapes, axes or indices are read as Python ints).

Invariant: on the same inputs a translated node computes what onnxruntime computes, up to
float rounding (tests/test_reconstruct.py checks whole regions against onnxruntime, 1e-5
relative). An op without an entry is not translated: ``unsupported(nodes)`` names it and the
region holding it is left as it is, never an error. torch is imported by the caller
(``reconstruct``), never at module level of a module the CLI imports without the extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sparsec.ir.model import Model

ONNX_DTYPES = {  # TensorProto data type -> torch dtype name
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
}


class _LazyTorch:
    """``torch``, imported at the first attribute read (it is an optional extra)."""

    def __getattr__(self, name: str) -> Any:
        import torch as module

        return getattr(module, name)


torch: Any = _LazyTorch()


def attr(node, name: str, default: Any = None) -> Any:
    return Model.attr(node, name, default)


def ints(tensor) -> list[int]:
    """A shape/axes/indices input as Python ints."""
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _axes(node, inputs, index: int = 1) -> list[int] | None:
    """Axes from the attribute (older opsets) or the optional input ``index`` (newer)."""
    axes = attr(node, "axes")
    if axes is None and len(inputs) > index and inputs[index] is not None:
        axes = ints(inputs[index])
    return None if axes is None else list(axes)


def _reduce(function: Callable) -> Callable:
    def run(node, inputs):
        x, axes = inputs[0], _axes(node, inputs)
        keep = bool(attr(node, "keepdims", 1))
        if axes is None or not axes:
            if attr(node, "noop_with_empty_axes", 0) and axes is not None:
                return [x]
            axes = list(range(x.dim()))
        return [function(x, axes, keep)]

    return run


def _gemm(node, inputs):
    a, b = inputs[0], inputs[1]
    a = a.transpose(0, 1) if attr(node, "transA", 0) else a
    b = b.transpose(0, 1) if attr(node, "transB", 0) else b
    y = attr(node, "alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + attr(node, "beta", 1.0) * inputs[2]
    return [y]


def _pads(node, rank: int) -> list[int]:
    pads = attr(node, "pads") or [0] * (2 * rank)
    if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise NotImplementedError("auto_pad SAME")
    if pads[:rank] != pads[rank:]:
        raise NotImplementedError("asymmetric pads")
    return list(pads[:rank])


def _conv(node, inputs):
    x, w = inputs[0], inputs[1]
    rank = x.dim() - 2
    function = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[rank]
    bias = inputs[2] if len(inputs) > 2 else None
    return [
        function(
            x,
            w,
            bias,
            stride=attr(node, "strides") or 1,
            padding=_pads(node, rank),
            dilation=attr(node, "dilations") or 1,
            groups=attr(node, "group", 1),
        )
    ]


def _max_pool(node, inputs):
    x = inputs[0]
    rank = x.dim() - 2
    function = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d}[rank]
    return [
        function(
            x,
            attr(node, "kernel_shape"),
            stride=attr(node, "strides") or 1,
            padding=_pads(node, rank),
            dilation=attr(node, "dilations") or 1,
            ceil_mode=bool(attr(node, "ceil_mode", 0)),
        )
    ]


def _batch_norm(node, inputs):
    x, scale, bias, mean, var = inputs[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inverse = torch.rsqrt(var.reshape(shape) + attr(node, "epsilon", 1e-5))
    return [(x - mean.reshape(shape)) * inverse * scale.reshape(shape) + bias.reshape(shape)]


def _layer_norm(node, inputs):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attr(node, "axis", -1) % x.dim()
    shape = list(x.shape[axis:])
    scale, bias = scale.expand(shape), None if bias is None else bias.expand(shape)
    return [torch.nn.functional.layer_norm(x, shape, scale, bias, attr(node, "epsilon", 1e-5))]


def _softmax(node, inputs):
    return [torch.softmax(inputs[0], dim=attr(node, "axis", -1))]


def _gelu(node, inputs):
    approximate = attr(node, "approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return [torch.nn.functional.gelu(inputs[0], approximate=approximate)]


def _reshape(node, inputs):
    x, shape = inputs[0], ints(inputs[1])
    if not attr(node, "allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _transpose(node, inputs):
    perm = attr(node, "perm") or list(range(inputs[0].dim()))[::-1]
    return [inputs[0].permute(*perm)]


def _flatten(node, inputs):
    x = inputs[0]
    axis = attr(node, "axis", 1) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def _unsqueeze(node, inputs):
    x, axes = inputs[0], _axes(node, inputs) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


def _squeeze(node, inputs):
    x, axes = inputs[0], _axes(node, inputs)
    if axes is None:
        return [x.squeeze()]
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return [x]


def _concat(node, inputs):
    return [torch.cat([x for x in inputs if x is not None], dim=attr(node, "axis"))]


def _split(node, inputs):
    x, axis = inputs[0], attr(node, "axis", 0)
    sizes = attr(node, "split")
    if sizes is None and len(inputs) > 1 and inputs[1] is not None:
        sizes = ints(inputs[1])
    if sizes is None:
        count = len(node.outputs)
        sizes = [-(-x.shape[axis] // count)] * count
    return list(torch.split(x, list(sizes), dim=axis))


def _slice(node, inputs):
    x = inputs[0]
    starts, ends = ints(inputs[1]), ints(inputs[2])
    axes = ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
    steps = ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 0:
            raise NotImplementedError("negative Slice step")
        size = x.shape[axis]
        first, last = (max(0, min(size, v + size if v < 0 else v)) for v in (start, end))
        index[axis % x.dim()] = slice(first, last, step)
    return [x[tuple(index)]]


def _gather(node, inputs):
    x, indices = inputs[0], inputs[1].long()
    axis = attr(node, "axis", 0) % x.dim()
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    taken = torch.index_select(x, axis, indices.reshape(-1))
    shape = list(x.shape[:axis]) + list(indices.shape) + list(x.shape[axis + 1 :])
    return [taken.reshape(shape)]


def _shape(node, inputs):
    shape = list(inputs[0].shape)
    start, end = attr(node, "start", 0), attr(node, "end", len(shape))
    return [torch.tensor(shape[start:end], dtype=torch.int64)]


def _cast(node, inputs):
    return [inputs[0].to(getattr(torch, ONNX_DTYPES[attr(node, "to")]))]


def _constant_of_shape(node, inputs):
    fill = attr(node, "value")
    fill = np.zeros(1, np.float32) if fill is None else fill.reshape(-1)
    return [torch.full(ints(inputs[0]), fill[0].item(), dtype=torch.from_numpy(fill.copy()).dtype)]


def _range(node, inputs):
    start, limit, delta = (v.item() for v in inputs[:3])
    return [torch.arange(start, limit, delta, dtype=inputs[0].dtype)]


def _clip(node, inputs):
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attr(node, "min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attr(node, "max")
    return [torch.clamp(inputs[0], min=low, max=high)]


def _constant(node, inputs):
    return [torch.from_numpy(np.array(attr(node, "value")))]


def _binary(function: Callable) -> Callable:
    return lambda node, inputs: [function(inputs[0], inputs[1])]


def _unary(function: Callable) -> Callable:
    return lambda node, inputs: [function(inputs[0])]


def _lazy(name: str) -> Callable:
    """``torch.<name>`` looked up at call time (torch is bound late)."""

    def call(*args):
        return getattr(torch, name)(*args)

    return call


OPS: dict[str, Callable] = {
    "MatMul": _binary(_lazy("matmul")),
    "Gemm": _gemm,
    "Conv": _conv,
    "Add": _binary(lambda a, b: a + b),
    "Sub": _binary(lambda a, b: a - b),
    "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(
        lambda a, b: a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")
    ),
    "Pow": _binary(_lazy("pow")),
    "Equal": _binary(_lazy("eq")),
    "Greater": _binary(_lazy("gt")),
    "GreaterOrEqual": _binary(_lazy("ge")),
    "Less": _binary(_lazy("lt")),
    "LessOrEqual": _binary(_lazy("le")),
    "And": _binary(_lazy("logical_and")),
    "Or": _binary(_lazy("logical_or")),
    "Not": _unary(_lazy("logical_not")),
    "IsNaN": _unary(_lazy("isnan")),
    "Relu": _unary(_lazy("relu")),
    "Sigmoid": _unary(_lazy("sigmoid")),
    "Tanh": _unary(_lazy("tanh")),
    "Erf": _unary(_lazy("erf")),
    "Sqrt": _unary(_lazy("sqrt")),
    "Exp": _unary(_lazy("exp")),
    "Neg": _unary(_lazy("neg")),
    "Reciprocal": _unary(_lazy("reciprocal")),
    "Identity": _unary(lambda x: x),
    "Gelu": _gelu,
    "Softmax": _softmax,
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "MaxPool": _max_pool,
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "ReduceMean": _reduce(lambda x, axes, keep: x.mean(dim=axes, keepdim=keep)),
    "ReduceSum": _reduce(lambda x, axes, keep: x.sum(dim=axes, keepdim=keep)),
    "ReduceL2": _reduce(lambda x, axes, keep: torch.sqrt((x * x).sum(dim=axes, keepdim=keep))),
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Flatten": _flatten,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Where": lambda node, inputs: [torch.where(inputs[0].bool(), inputs[1], inputs[2])],
    "Expand": lambda node, inputs: [inputs[0] * torch.ones(ints(inputs[1]), dtype=inputs[0].dtype)],
    "Shape": _shape,
    "Cast": _cast,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Clip": _clip,
}


def unsupported(nodes) -> list[str]:
    """Why ``nodes`` cannot be translated: one line per op without a mapping (none: [])."""
    missing = sorted(
        {n.op_type for n in nodes if n.domain not in ("", "ai.onnx") or n.op_type not in OPS}
    )
    return [f"no torch mapping for {op}" for op in missing]


def run_node(node, inputs: list) -> list:
    """The node's outputs (torch tensors) from its inputs (tensors or None)."""
    return OPS[node.op_type](node, inputs)
