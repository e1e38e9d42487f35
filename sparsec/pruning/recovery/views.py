"""Recovery's view of a layer: which inputs of a node are its weight and bias, how the weight
reads as the [K, N] matrix the layer's input rows multiply (bias as the last row), and how the
input reads as those rows.

Invariants: ``store`` writes back what ``matrix`` read (same shapes and dtypes; zeros where the
matrix has them); ``input_rows`` yields rows in the order ``matrix`` multiplies them (a Conv's
im2col patches in its weight's (C, kh, kw) order); ``run_order`` lists the matrix rows so that
every N:M run along the weight's contraction axis is consecutive. See docs/recovery.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sparsec.analysis.op_layouts import OpLayout
from sparsec.analysis.op_layouts import layout as op_layout

STANDARD = ("", "ai.onnx")


@dataclass
class Layer:
    """A refittable node: its weight and optional bias, where Y* is read, and how the weight
    maps to the [K, N] matrix X multiplies."""

    node: Any
    weight: Any
    bias: Any | None
    target: str  # the value holding Y* (the bias Add's output after a MatMul; the sum S when aimed)
    transposed: bool = False  # Gemm transB=1
    scale: float = 1.0  # Gemm alpha
    bias_scale: float = 1.0  # Gemm beta
    kept: np.ndarray | None = None  # original output positions the pruned layer computes
    full: int = 0  # the original's output channel count
    round: int = 0
    channel_axis: int = -1  # the output's channel axis (1 for Conv and the [N, C, ...] norms)
    residual: str | None = None  # the other input of the residual Add whose sum ``target`` is

    @property
    def conv(self) -> bool:
        return self.node.op_type == "Conv"

    @property
    def norm(self) -> bool:
        return self.node.op_type in NORMS

    @property
    def x(self) -> str:
        """What the fit reads in the pruned model: the layer's input, a normalization's output."""
        return self.node.outputs[0].name if self.norm else self.node.inputs[0].name

    @property
    def name(self) -> str:
        return self.node.name or self.target


# A normalization's per-channel scale and bias inputs, and its output's channel axis (None: the
# last, which LayerNormalization must normalize over alone for its scale to be per channel).
NORMS = {
    "BatchNormalization": (1, 2, 1),
    "InstanceNormalization": (1, 2, 1),
    "LayerNormalization": (1, 2, None),
}


REFIT_OPS = ("MatMul", "Gemm", "Conv")  # the compute ops whose weight reads as one [K, N] matrix


def refit_layout(model, node) -> OpLayout | None:
    """The node's ``op_layouts`` entry when it is a MatMul, Gemm or Conv with a weight input."""
    layout = op_layout(model, node)
    if layout is None or layout.op_type not in REFIT_OPS or len(node.inputs) <= layout.weight.index:
        return None
    return layout


def contraction_axes(model, node) -> tuple[int, int] | None:
    """(contraction axis, output axis) of the node's constant weight, non-negative, if it has that form."""
    layout = refit_layout(model, node)
    if layout is None or node.inputs[layout.activation.index] is None:
        return None
    shape = model.constant_shape(node.inputs[layout.weight.index])
    if shape is None:
        return None
    rank = max(len(shape), 2)  # a 1-D MatMul weight is [K]: (0, 1) as for [K, N]
    return layout.weight.contraction % rank, layout.weight.kept % rank


def sole_add(model, value) -> tuple[Any, Any]:
    """(the Add, its other input) when ``value`` is read by one standard Add alone (and is not
    a graph output), else (None, None)."""
    users = model.consumers(value)
    if (
        value.is_graph_output()
        or len(users) != 1
        or users[0].op_type != "Add"
        or users[0].domain not in STANDARD
    ):
        return None, None
    add = users[0]
    other = add.inputs[1] if add.inputs[0] is value else add.inputs[0]
    return (add, other) if other is not value else (None, None)


def _matmul(model, node, layout: OpLayout) -> Layer | str:
    weight = node.inputs[layout.weight.index]
    shape = model.constant_shape(weight)
    if len(shape) != 2:
        return f"MatMul weight '{weight.name}' is not 2-D"
    out = node.outputs[0]
    add, other = sole_add(model, out)  # MatMul has no bias input: a per-output Add after it is one
    bias_shape = model.constant_shape(other)
    if (
        add is None
        or not bias_shape
        or bias_shape[-1] != shape[1]
        or int(np.prod(bias_shape)) != shape[1]
    ):
        return Layer(node, weight, None, out.name)
    if len(model.consumers(other)) > 1:  # a shared bias stays; the MatMul alone is refit
        return Layer(node, weight, None, out.name)
    return Layer(node, weight, other, add.outputs[0].name)


def _gemm(model, node, layout: OpLayout) -> Layer | str:
    if layout.activation.contraction != 1:
        return "Gemm with transA=1"
    weight = node.inputs[layout.weight.index]
    n = model.constant_shape(weight)[layout.weight.kept]
    beta = layout.bias_scale
    c = node.inputs[layout.bias] if len(node.inputs) > layout.bias and beta != 0 else None
    if c is not None and model.constant_shape(c) not in ((n,), (1, n)):
        return f"Gemm C '{c.name}' is not a constant per-output bias"
    return Layer(
        node,
        weight,
        c,
        node.outputs[0].name,
        transposed=layout.weight.contraction == 1,
        scale=layout.scale,
        bias_scale=beta,
    )


def _conv(model, node, layout: OpLayout) -> Layer | str:
    if layout.grouped:
        return "grouped Conv"
    weight = node.inputs[layout.weight.index]
    if len(model.constant_shape(weight)) != 4:
        return "Conv that is not 2-D"
    bias = (
        node.inputs[layout.bias]
        if len(node.inputs) > layout.bias and node.inputs[layout.bias] is not None
        else None
    )
    if bias is not None and model.constant_shape(bias) is None:
        return f"Conv bias '{bias.name}' is not constant"
    return Layer(node, weight, bias, node.outputs[0].name, channel_axis=layout.output_channels)


_BUILD = {"MatMul": _matmul, "Gemm": _gemm, "Conv": _conv}


def weight_layer(model, node) -> Layer | str:
    """A MatMul, Gemm or Conv (with ``contraction_axes``) as a ``Layer``, or why it cannot be one."""
    layout = refit_layout(model, node)
    return _BUILD[layout.op_type](model, node, layout)


def _per_channel(size: int, last_dim, over_last: bool) -> bool:
    """A 1-D scale of ``size`` holds one value per channel: always for BatchNormalization and
    InstanceNormalization (the spec's [C]); for LayerNormalization, when it matches the last
    dim (or, that dim unknown, is not a broadcast single value)."""
    if not over_last:
        return True
    return size == last_dim if isinstance(last_dim, int) else size > 1


def norm_layer(model, node) -> Layer | None:
    """A normalization as a per-channel affine ``Layer`` (None when it has no constant 1-D
    scale and bias, or is a LayerNormalization over more than the last axis)."""
    if node.domain not in STANDARD:
        return None
    scale_at, bias_at, axis = NORMS[node.op_type]
    dims = model.shape_dims(node.inputs[0]) or [None]
    if axis is None and int(model.attr(node, "axis", -1)) not in (-1, len(dims) - 1):
        return None
    scale = node.inputs[scale_at]
    bias = node.inputs[bias_at] if len(node.inputs) > bias_at else None
    shape = model.constant_shape(scale)
    if (
        bias is None
        or shape is None
        or len(shape) != 1
        or model.constant_shape(bias) != shape
        or not _per_channel(shape[0], dims[-1], axis is None)
    ):
        return None  # only a constant scale and bias of one value per channel are refit
    return Layer(node, scale, bias, node.outputs[0].name, channel_axis=-1 if axis is None else axis)


def matrix(model, layer: Layer) -> np.ndarray:
    """[K(+1), N] float64: the weight as the input rows multiply it, the bias as last row; for a
    normalization [2, C]: the identity affine map (a = 1, b = 0) of its output."""
    w = np.asarray(model.constant(layer.weight), dtype=np.float64)
    if layer.norm:
        return np.vstack([np.ones(w.size), np.zeros(w.size)])
    if layer.conv:
        rows = w.reshape(w.shape[0], -1).T
    else:
        rows = (w.T if layer.transposed else w) * layer.scale
    if layer.bias is None:
        return rows
    bias = (
        np.asarray(model.constant(layer.bias), dtype=np.float64).reshape(1, -1) * layer.bias_scale
    )
    return np.vstack([rows, bias])


def store(model, layer: Layer, values: np.ndarray) -> None:
    """Write ``values`` (in ``matrix``'s form) back into the weight and bias, same shapes and dtypes."""
    old = model.constant(layer.weight)
    if layer.norm:  # a·(γ·n + β) + b
        bias = model.constant(layer.bias)
        model.set_constant(layer.weight, (values[0] * old).astype(old.dtype))
        model.set_constant(layer.bias, (values[0] * bias + values[1]).astype(bias.dtype))
        return
    k = values.shape[0] - (layer.bias is not None)
    if layer.conv:
        w = values[:k].T.reshape(old.shape)
    else:
        w = values[:k] / layer.scale
        w = w.T if layer.transposed else w
    model.set_constant(layer.weight, w.astype(old.dtype))  # zeros where the solve kept none: exact
    if layer.bias is not None:
        bias = model.constant(layer.bias)
        model.set_constant(
            layer.bias, (values[k] / layer.bias_scale).reshape(bias.shape).astype(bias.dtype)
        )


def input_rows(model, layer: Layer, x: np.ndarray) -> np.ndarray:
    """The rows [R, K] ``matrix`` multiplies: channels last, flattened (a Conv's im2col patches)."""
    if layer.conv:
        return _patches(model, layer, x)
    x = np.moveaxis(x, layer.channel_axis, -1)
    return x.reshape(-1, x.shape[-1])


def _patches(model, layer: Layer, x: np.ndarray) -> np.ndarray:
    """im2col of a 2-D Conv input [B, C, H, W]: rows [B·OH·OW, C·kh·kw] in W's (C, kh, kw) order."""
    node = layer.node
    kernel = model.constant_shape(layer.weight)[2:]
    strides = model.attr(node, "strides", None) or [1, 1]
    dilations = model.attr(node, "dilations", None) or [1, 1]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    pads = _pads(model, node, x.shape[2:], strides, spans)
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = sliding_window_view(x, spans, axis=(2, 3))
    windows = windows[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kernel[0] * kernel[1])


def _pads(model, node, sizes, strides, spans) -> list[int]:
    """[top, left, bottom, right] from ``pads`` or ``auto_pad``."""
    auto = model.attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(model.attr(node, "pads", None) or [0, 0, 0, 0])
    totals = [
        max((-(-size // s) - 1) * s + span - size, 0)
        for size, s, span in zip(sizes, strides, spans)
    ]
    small = [t // 2 for t in totals]
    large = [t - h for t, h in zip(totals, small)]
    return small + large if auto == "SAME_UPPER" else large + small


def run_order(shape, layer: Layer, m: int) -> np.ndarray:
    """The matrix rows (``matrix``'s contraction rows) ordered so that every N:M run of M
    along the weight's contraction axis is M consecutive rows: rows themselves for MatMul and
    Gemm; for Conv, rows are (channel, kernel position) and a run is M channels at one position."""
    if not layer.conv:
        return np.arange(shape[0] if not layer.transposed else shape[1])
    channels, positions = shape[1], int(np.prod(shape[2:]))
    channel, position = np.divmod(np.arange(channels * positions), positions)
    return np.lexsort((channel % m, position, channel // m))
