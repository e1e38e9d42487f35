"""Axis rules of normalizations and pooling: per-channel statistics and affine parameters follow
the channel axis; a GroupNorm's groups go whole; a LayerNorm's normalized axes are statistics
(exact only against an oracle that masks them); pooling keeps batch and channel; LRN, which mixes
neighbouring channels, is a lossy coupling on its channel axis (``Coupling.lossy``: prunable only
when lossy couplings are allowed, its oracle reference runs it on the kept channels).
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.rules.core import (
    Coupling,
    Member,
    RuleContext,
    axis_rule,
    count_fixup,
    identity_all,
    link_broadcast,
    norm_axis,
)


def _channel_params(c: Coupling, node, channel: Member, start: int) -> None:
    for value in node.inputs[start:]:
        if value is not None:
            c.link((value.name, 0), channel)


@axis_rule("BatchNormalization", "InstanceNormalization")
def channel_norm(node, ctx: RuleContext) -> Coupling:
    """Per-channel statistics and affine parameters: all [C] vectors follow X axis 1."""
    c = Coupling()
    x, y = node.inputs[0], node.outputs[0]
    identity_all(c, x, y, ctx.rank(x) or 0)
    _channel_params(c, node, (x.name, 1), 1)
    for extra in node.outputs[1:]:  # training-mode running statistics
        if extra is not None and extra.name:
            c.link((extra.name, 0), (x.name, 1))
    return c


@axis_rule("GroupNormalization")
def group_norm(node, ctx: RuleContext) -> Coupling:
    """Statistics per group of C/G channels: whole groups go together; num_groups shrinks."""
    c = Coupling()
    x, y = node.inputs[0], node.outputs[0]
    shape, groups = ctx.shape(x), int(ctx.attr(node, "num_groups", 1))
    if shape is None:
        return c
    identity_all(c, x, y, len(shape))
    per_group = shape[1] // groups
    group_member = c.virtual(node, "groups", groups)
    c.link((x.name, 1), group_member, np.arange(shape[1]) // per_group)
    for value in node.inputs[1:]:
        size = (ctx.shape(value) or (0,))[0]
        c.link((value.name, 0), (x.name, 1) if size == shape[1] else group_member)
    count_fixup(c, node, "num_groups", group_member)
    return c


@axis_rule("LayerNormalization")
def layer_norm(node, ctx: RuleContext) -> Coupling:
    """Normalizes over axes [axis, rank); scale and bias broadcast over the same axes."""
    c = Coupling()
    x, y = node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    if rank is None:
        return c
    identity_all(c, x, y, rank)
    first = norm_axis(int(ctx.attr(node, "axis", -1)), rank)
    c.stats.update((x.name, axis) for axis in range(first, rank))
    for value in node.inputs[1:]:
        if value is not None:
            link_broadcast(c, ctx, value, x)
    return c


POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@axis_rule(*POOLS)
def pool(node, ctx: RuleContext) -> Coupling:
    """Pooling keeps batch and channel; a spatial axis pooled with kernel 1, stride 1 and no
    padding maps to itself (a height pooling over a permuted [N, W, C, H]: kernel (1, H)); the
    other spatial axes change size and stay blocked."""
    c = Coupling()
    x = node.inputs[0]
    for out in node.outputs:
        if out is not None and out.name:
            c.link((out.name, 0), (x.name, 0))
            c.link((out.name, 1), (x.name, 1))
    for axis in _unit_kernel_axes(node, ctx):  # not the Indices output: its values count them
        c.link((node.outputs[0].name, axis), (x.name, axis))
    return c


def _unit_kernel_axes(node, ctx: RuleContext) -> list[int]:
    kernel = ctx.attr(node, "kernel_shape")
    if kernel is None or ctx.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return []
    n = len(kernel)
    strides = ctx.attr(node, "strides") or [1] * n
    pads = ctx.attr(node, "pads") or [0] * (2 * n)
    dilations = ctx.attr(node, "dilations") or [1] * n
    return [
        2 + i
        for i in range(n)
        if kernel[i] == 1 and strides[i] == 1 and pads[i] == pads[i + n] == 0 and dilations[i] == 1
    ]


@axis_rule("LRN")
def lrn(node, ctx: RuleContext) -> Coupling:
    """Elementwise but for the channel axis, whose window of ``size`` neighbours it sums
    squares over: removing channels changes the kept ones' windows (lossy; ``size`` stays)."""
    c = Coupling()
    x, y = node.inputs[0], node.outputs[0]
    for axis in range(ctx.rank(x) or 0):
        if axis != 1:
            c.link((y.name, axis), (x.name, axis))
    c.mix(node, 1, "normalizes across neighbouring channels")
    return c
