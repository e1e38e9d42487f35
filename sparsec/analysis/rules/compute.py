"""Axis rules of the compute ops: Conv, ConvTranspose, Gemm and MatMul, read from their
``op_layouts`` entry (which input is the weight, which axes contract).

The invariant: the contraction axis of the activation *is* the weight's contraction axis, the
weight's kept axis *is* the output's channel axis, and both weight axes are compute members
(slicing them removes multiply-accumulates). A product of two activations contracts an axis
that zeroed weights cannot silence (a statistic).

A grouped conv (``g`` groups, more than one channel per group on both sides) stays a grouped
conv when every group loses the same *number* of channels on each side: both sides are
``balanced`` over ``g`` classes (``rules.core``), which constrains the selection instead of
tying channels. Its weight's per-group axis (W axis 1) is then no member: after the cut, group
``j``'s rows keep the local positions group ``j`` kept on that side (``core.GroupedWeight``:
surgery gathers them, the oracle zeroes the others), a different set per group. Depthwise (one
channel per group on one side) links the two sides instead, and a quantized weight (read through
DequantizeLinear) keeps the same local positions in every group (a tile), which plain slices can
cut.
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.rules.core import (
    Coupling,
    GroupedWeight,
    Member,
    RuleContext,
    axis_rule,
    compute_axes,
    count_fixup,
    link_broadcast,
    norm_axis,
)


def _link_groups(c: Coupling, node, channels: Member, size: int, groups: int, tag: str) -> None:
    """Channels of a grouped op keep the same positions in every group: position ``i`` is the
    virtual position ``i % (size / groups)`` (a tile), so every group loses the same ones."""
    per_group = size // groups
    c.link(channels, c.virtual(node, tag, per_group), np.arange(size) % per_group)


@axis_rule("Conv", "ConvTranspose")
def conv(node, ctx: RuleContext) -> Coupling:
    """W axis 0 is the *full* channel side (Conv: the output, ConvTranspose: the input) and W
    axis 1 the per-group side (Conv: input channels of a group, ConvTranspose: outputs).
    Ungrouped: the per-group side is W axis 1. Depthwise (one channel per group on that side):
    full-side channel i pairs with per-group-side channel i // m. Otherwise every group keeps
    the same local positions on both sides (tile maps)."""
    c, layout = Coupling(), op_layout(ctx.model, node)
    x, w, y = (
        node.inputs[layout.activation.index],
        node.inputs[layout.weight.index],
        node.outputs[0],
    )
    w_shape = ctx.shape(w)
    if w_shape is None or ctx.shape(x) is None:
        return c
    sides = {
        layout.weight.kept: (y.name, layout.output_channels),
        layout.weight.contraction: (x.name, layout.activation.contraction),
    }
    full, part = (
        sides[0],
        sides[1],
    )  # W axis 0 indexes all channels of its side, W axis 1 one group's
    groups, full_size, per_group = layout.groups, w_shape[0], w_shape[1]
    c.link((y.name, layout.activation.kept), (x.name, layout.activation.kept))
    c.link(full, (w.name, 0))
    if (
        layout.bias is not None
        and len(node.inputs) > layout.bias
        and node.inputs[layout.bias] is not None
    ):
        c.link((node.inputs[layout.bias].name, 0), (y.name, layout.output_channels))
    compute_axes(c, ctx, w, (0, 1), role=layout.role)
    if not ctx.is_weight(w):
        c.block(
            (x.name, layout.activation.contraction),
            "is convolved with a weight computed at run time",
        )
    if groups == 1:
        c.link(part, (w.name, 1))
    elif per_group == 1:
        c.link(full, part, np.arange(full_size) // (full_size // groups))
        c.free.add((w.name, 1))
        count_fixup(c, node, "group", part)
    elif ctx.model.constant_shape(w) is not None:
        c.compute.discard((w.name, 1))
        c.roles.pop((w.name, 1), None)
        c.free.update({(w.name, 1), part})  # the part side is cut by the gather, not linked
        c.balanced.update({full: groups, part: groups})
        c.grouped.append(GroupedWeight(w.name, part, groups))
    else:
        _link_groups(c, node, full, full_size, groups, "groups")
        c.link(part, (w.name, 1), np.arange(per_group * groups) % per_group)
    return c


@axis_rule("Gemm")
def gemm(node, ctx: RuleContext) -> Coupling:
    """Y[m, n] = Σ_k A[m, k] B[k, n] + C (A, B possibly transposed)."""
    c, layout = Coupling(), op_layout(ctx.model, node)
    a_side, b_side = layout.activation, layout.weight
    a, b, y = node.inputs[a_side.index], node.inputs[b_side.index], node.outputs[0]
    c.link((y.name, 0), (a.name, a_side.kept))
    c.link((y.name, layout.output_channels), (b.name, b_side.kept))
    c.link((a.name, a_side.contraction), (b.name, b_side.contraction))
    if len(node.inputs) > layout.bias and node.inputs[layout.bias] is not None:
        link_broadcast(c, ctx, node.inputs[layout.bias], y)
    compute_axes(c, ctx, a, (0, 1))
    compute_axes(c, ctx, b, (0, 1))
    contraction(c, ctx, a, b, a_side.contraction)
    return c


def contraction(c: Coupling, ctx: RuleContext, a, b, axis: int) -> None:
    """Two activations multiplied and summed over ``axis`` of ``a``: the masked original must
    mask that axis (zeroed weights cannot silence it), so the member is a statistic."""
    if not ctx.is_weight(a) and not ctx.is_weight(b):
        c.stats.add((a.name, axis))


@axis_rule("MatMul")
def matmul(node, ctx: RuleContext) -> Coupling:
    """numpy matmul: A[..., m, k] · B[..., k, n] = Y[..., m, n]; 1-D operands lose their axis."""
    c, layout = Coupling(), op_layout(ctx.model, node)
    a_side, b_side = layout.activation, layout.weight
    a, b, y = node.inputs[a_side.index], node.inputs[b_side.index], node.outputs[0]
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if None in (ra, rb, ry):
        return c
    a_k = norm_axis(a_side.contraction, ra)
    c.link(
        (a.name, a_k), (b.name, max(norm_axis(b_side.contraction, rb), 0))
    )  # a 1-D B contracts its axis 0
    if rb >= 2:
        c.link((y.name, ry - 1), (b.name, norm_axis(b_side.kept, rb)))
    if ra >= 2:
        c.link((y.name, ry - (2 if rb >= 2 else 1)), (a.name, norm_axis(a_side.kept, ra)))
    batch = ry - (ra >= 2) - (rb >= 2)  # Y = broadcast(batch dims) + [m] + [n]
    _link_batch_dims(c, ctx, a, y, batch)
    _link_batch_dims(c, ctx, b, y, batch)
    compute_axes(c, ctx, a, (a_side.kept, a_side.contraction))
    compute_axes(c, ctx, b, (b_side.contraction, b_side.kept))
    contraction(c, ctx, a, b, a_k)
    if not ctx.is_weight(a) and not ctx.is_weight(
        b
    ):  # attention scores or context: batch axes hold heads
        c.roles.update({(y.name, axis): "heads" for axis in range(batch)})
    return c


def _link_batch_dims(c: Coupling, ctx: RuleContext, operand, y, batch: int) -> None:
    """The leading (batch) dims of a MatMul operand broadcast, right-aligned, to Y's first
    ``batch`` dims."""
    shape, y_shape = ctx.shape(operand), ctx.shape(y)
    own = len(shape) - 2
    for axis in range(max(own, 0)):
        out_axis = batch - own + axis
        if 0 <= out_axis < batch and shape[axis] == y_shape[out_axis]:
            c.link((operand.name, axis), (y.name, out_axis))
        elif shape[axis] == 1:
            c.free.add((operand.name, axis))
