"""Quantized weights: an integer constant read through ``DequantizeLinear`` (QDQ models).

The algebra. ``DequantizeLinear(x, scale, zero_point)`` computes ``y = (x − zero_point) · scale``
element by element, with ``scale`` and ``zero_point`` (default 0) given

- per tensor: scalars (or one-element vectors), one pair for all of ``x``;
- per axis (opset ≥ 13): vectors of length ``x.shape[axis]``, entry ``i`` for every element
  whose index on ``axis`` is ``i``;
- per block (opset ≥ 21, ``block_size`` B > 0): tensors of ``x``'s rank, equal to ``x``'s shape
  except ``ceil(x.shape[axis] / B)`` on ``axis``; positions ``p`` of ``axis`` with the same
  ``p // B`` share an entry.

So ``y`` has ``x``'s shape, and every axis of ``x`` is an axis of ``y``. The zero point is the
quantized zero: an element of ``x`` equal to its zero point dequantizes to exactly 0.0. That is
how a quantized weight is masked or sparsified while it stays quantized (folding the
dequantization into a float initializer would de-quantize the model: 4x the weight bytes).

A *quantized weight* is a ``DequantizeLinear`` output whose ``x``, ``scale`` and ``zero_point``
are all constants; it stands for the float weight of the op that reads it. Some exporters keep
the float weight and write ``QuantizeLinear`` → ``DequantizeLinear`` after it (fake quantization):
that output is a weight too, stored as the float constant, whose 0.0 quantizes to the zero point
and dequantizes back to 0.0. ``weight_source`` finds the stored constant in both forms; Q and DQ
keep every axis, so an axis of the weight is the same axis of its source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantizedWeight:
    node: object  # the DequantizeLinear
    data: object  # x: the stored integer (or float8) constant
    scale: object
    zero_point: object | None
    axis: int  # non-negative; meaningful per axis and per block only
    block_size: int  # 0 unless quantized per block


def _is_const(model, value) -> bool:
    return value is not None and model.constant_shape(value) is not None


def _produced_by(value, op_type: str):
    """The standard-domain ``op_type`` node producing ``value``, if that is what produces it."""
    node = value.producer() if value is not None else None
    return (
        node
        if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")
        else None
    )


def _constant_parameters(model, node) -> bool:
    """Scale and (optional) zero point of a QuantizeLinear/DequantizeLinear are constants."""
    return _is_const(model, node.inputs[1]) and all(
        _is_const(model, v) for v in node.inputs[2:3] if v is not None
    )


def quantized_weight(model, value) -> QuantizedWeight | None:
    """The quantized weight ``value`` is, when it is DequantizeLinear of constants; else None."""
    node = _produced_by(value, "DequantizeLinear")
    if (
        node is None
        or not _is_const(model, node.inputs[0])
        or not _constant_parameters(model, node)
    ):
        return None
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    rank = len(model.constant_shape(node.inputs[0]))
    axis = int(model.attr(node, "axis", 1))
    return QuantizedWeight(
        node,
        node.inputs[0],
        node.inputs[1],
        zero_point,
        axis + rank if axis < 0 else axis,
        int(model.attr(node, "block_size", 0)),
    )


def _fake_quantized_source(model, value):
    """The float constant W of DequantizeLinear(QuantizeLinear(W, s, z), s', z'), all constant."""
    node = _produced_by(value, "DequantizeLinear")
    quantize = _produced_by(node.inputs[0], "QuantizeLinear") if node is not None else None
    if (
        quantize is None
        or not _constant_parameters(model, node)
        or not _constant_parameters(model, quantize)
    ):
        return None
    return quantize.inputs[0] if _is_const(model, quantize.inputs[0]) else None


def weight_source(model, value):
    """The constant a weight is stored as: the value itself when constant, the data of a
    quantized weight, or the float constant of a fake-quantized one; None for anything else."""
    if _is_const(model, value):
        return value
    q = quantized_weight(model, value)
    return q.data if q is not None else _fake_quantized_source(model, value)


def reading_dequantize(model, value) -> QuantizedWeight | None:
    """The quantized weight that reads the constant ``value`` as its data (``x``), if any."""
    for node in model.consumers(value):
        if node.op_type == "DequantizeLinear" and node.inputs[0] is value:
            return quantized_weight(model, node.outputs[0])
    return None


def expand(param: np.ndarray, shape: tuple[int, ...], q: QuantizedWeight) -> np.ndarray:
    """A scale or zero point broadcast to the data's ``shape`` (per tensor, axis or block)."""
    if param.size == 1 and q.block_size == 0:
        return np.broadcast_to(param.reshape(()), shape)
    if q.block_size:
        return np.repeat(param, q.block_size, axis=q.axis).take(
            np.arange(shape[q.axis]), axis=q.axis
        )
    view = [1] * len(shape)
    view[q.axis] = shape[q.axis]
    return np.broadcast_to(param.reshape(view), shape)


def zero_points(model, q: QuantizedWeight, shape: tuple[int, ...]) -> np.ndarray:
    """Per element of the data, the stored value that dequantizes to 0.0 (its zero point)."""
    data_type = model.constant(q.data).dtype
    if q.zero_point is None:
        return np.zeros(shape, dtype=data_type)
    return expand(model.constant(q.zero_point), shape, q).astype(data_type, copy=False)


def dequantized(model, q: QuantizedWeight) -> np.ndarray:
    """(x − zero_point) · scale in float32 (for scores and norms, never stored)."""
    data = model.constant(q.data)
    scale = expand(model.constant(q.scale).astype(np.float32), data.shape, q)
    return (data.astype(np.float32) - zero_points(model, q, data.shape).astype(np.float32)) * scale


def weight_array(model, value) -> np.ndarray | None:
    """The float array a weight holds as its consumer sees it: the constant itself, or the
    dequantization of a quantized weight (a fake-quantized one: its float constant, before
    rounding); None for anything else."""
    q = quantized_weight(model, value)
    if q is not None:
        return dequantized(model, q)
    source = weight_source(model, value)
    return None if source is None else model.constant(source)


def masked_fill(model, value, array: np.ndarray) -> np.ndarray | None:
    """What a masked (zeroed) entry of the constant ``value`` holds: 0 for a float weight (a
    scalar), the zero points for the data of a quantized weight (``array``'s shape), None (do
    not mask) for anything else."""
    if array.dtype.kind == "f":
        return np.zeros((), dtype=array.dtype)
    q = reading_dequantize(model, value)
    return None if q is None else zero_points(model, q, array.shape)


QUANTIZE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def is_quantized(model) -> bool:
    """Whether the model quantizes anything (a QDQ model): onnxruntime's extended optimizations
    rewrite such graphs approximately (dynamic quantization of activations), so two exact
    equivalents can differ there."""
    return any(
        node.op_type in QUANTIZE_OPS and node.domain in ("", "ai.onnx", "com.microsoft")
        for node in model.all_nodes()
    )


def _scalar_parameters(model, node) -> tuple | None:
    """(scale, zero point or None) of a per-tensor Q/DQ node with constant parameters."""
    if not _constant_parameters(model, node):
        return None
    params = [
        model.constant(v) if v is not None else None for v in (list(node.inputs) + [None])[1:3]
    ]
    if any(p is not None and p.size != 1 for p in params):
        return None
    return tuple(None if p is None else (p.dtype.str, p.reshape(()).item()) for p in params)


def activation_quantizers(model) -> list[tuple[object, object, tuple]]:
    """Per-tensor quantizers of activations: (QuantizeLinear, DequantizeLinear, (scale, zero
    point)) for every DequantizeLinear that reads a QuantizeLinear of a non-constant value with
    the same scalar constant scale and zero point. Such a pair only rounds its input to a step of
    the scale: the same elementwise function wherever it stands, and the one place where two
    float computations equal to rounding can differ by a whole step."""
    found = []
    for dq in model.all_nodes():
        q = (
            _produced_by(dq.inputs[0], "QuantizeLinear")
            if dq.op_type == "DequantizeLinear"
            else None
        )
        if q is None or _is_const(model, q.inputs[0]) or weight_source(model, q.inputs[0]):
            continue
        params = _scalar_parameters(model, q)
        if params is not None and params == _scalar_parameters(model, dq):
            found.append((q, dq, params))
    return found
