"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

Algebra: BN(y) = s·(y − mean) + beta with s = gamma / sqrt(var + eps), per channel c.
For y = W ⊛ x + b, BN(y) = (s·W) ⊛ x + (s·(b − mean) + beta): scale W along its output-channel
axis and replace the bias. Which inputs are the weight and bias and the output-channel axis come
from ``analysis.op_layouts``: Conv W [O, I/g, k...] axis 0; Gemm B axis 0
when transB else axis 1 (the bias absorbs beta·C, so beta becomes 1); ConvTranspose
W [I, O/g, k...]: output channel o = group·(O/g) + j lives at rows of group ``group``,
column j. The fold runs only when the producer's output feeds this BN alone and every
parameter is constant; arithmetic is in float64, stored in the weight's dtype.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.passes.base import InPlacePass, PassResult


def _foldable_layout(model, node):
    """The node's ``op_layouts`` entry when BN can fold into it: a bias input to absorb the
    shift, output channels on axis 1 (what BN scales): Conv, ConvTranspose, Gemm."""
    layout = op_layout(model, node)
    return (
        layout
        if layout is not None and layout.bias is not None and layout.output_channels == 1
        else None
    )


def _bn_scale_shift(model, bn) -> tuple[np.ndarray, np.ndarray] | None:
    params = [model.constant(v) for v in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    scale = gamma / np.sqrt(var + float(model.attr(bn, "epsilon", 1e-5)))
    return scale, beta - mean * scale


def _foldable_producer(model, bn):
    if (
        bn.op_type != "BatchNormalization"
        or bn.domain not in ("", "ai.onnx")
        or model.attr(bn, "training_mode", 0)
    ):
        return None
    if any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return None
    producer = model.producer(bn.inputs[0])
    layout = _foldable_layout(model, producer) if producer is not None else None
    if layout is None:
        return None
    out = producer.outputs[0]
    weight = producer.inputs[layout.weight.index]
    if out.is_graph_output() or model.consumers(out) != [bn] or not _dense_constant(model, weight):
        return None
    bias = producer.inputs[layout.bias] if len(producer.inputs) > layout.bias else None
    return None if bias is not None and model.constant(bias) is None else producer


def _dense_constant(model, value) -> bool:
    """A weight stored densely (folding a ``ConstantOfShape`` weight would materialise it)."""
    producer = value.producer()
    return (producer is None or producer.op_type != "ConstantOfShape") and model.constant(
        value
    ) is not None


def _scale_weight(layout, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``weight`` with every output channel c (on the layout's output axis) multiplied by ``scale[c]``."""
    if not layout.output_per_group:
        view = [1] * weight.ndim
        view[layout.weight.kept] = -1
        return weight * scale.reshape(view)
    groups = layout.groups
    per_group = weight.reshape((groups, weight.shape[0] // groups) + weight.shape[1:])
    factors = scale.reshape((groups, 1, weight.shape[1]) + (1,) * (weight.ndim - 2))
    return (per_group * factors).reshape(weight.shape)


def _fold(model, node, bn, scale: np.ndarray, shift: np.ndarray) -> None:
    layout = op_layout(model, node)
    weight = model.constant(node.inputs[layout.weight.index])
    has_bias = len(node.inputs) > layout.bias and node.inputs[layout.bias] is not None
    bias = model.constant(node.inputs[layout.bias]).astype(np.float64) if has_bias else np.zeros(1)
    if (
        layout.bias_scale_attr is not None
    ):  # Gemm: beta·C, so the new bias carries beta and beta becomes 1
        bias = bias * layout.bias_scale
        model.set_attr(node, layout.bias_scale_attr, 1.0)
    new_bias = np.broadcast_to(bias, np.broadcast_shapes(bias.shape, scale.shape)) * scale + shift
    scaled = _scale_weight(layout, weight.astype(np.float64), scale).astype(weight.dtype)
    model.replace_constant_input(node, layout.weight.index, scaled)
    if has_bias:
        model.replace_constant_input(node, layout.bias, new_bias.astype(weight.dtype))
    else:
        added = model.add_initializer(
            f"{node.name or node.op_type}_bias", new_bias.astype(weight.dtype)
        )
        model.set_input(node, layout.bias, added)
    model.replace_all_uses(bn.outputs[0], node.outputs[0])
    model.remove_node(bn)


class BatchNormFoldPass(InPlacePass):
    """Fold BatchNormalization into a preceding Conv / ConvTranspose / Gemm."""

    name: ClassVar[str] = "bn-fold"
    keeps_value_shapes: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "Fold inference BatchNormalization into the preceding Conv, ConvTranspose or Gemm."
    )

    def call(self, model) -> PassResult:
        folded = 0
        for bn in model.nodes():
            producer = _foldable_producer(model, bn)
            factors = _bn_scale_shift(model, bn) if producer is not None else None
            if factors is None:
                continue
            _fold(model, producer, bn, *factors)
            folded += 1
        return PassResult(model, modified=folded > 0, stats={"batchnorms_folded": folded})
