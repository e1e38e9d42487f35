"""Axis rule of QuantizeLinear and DequantizeLinear (QDQ models): elementwise in x, with
per-tensor, per-axis or per-block scale and zero point (the algebra: ``analysis.quantized``).
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.rules.core import Coupling, RuleContext, axis_rule, identity_all, norm_axis


@axis_rule("QuantizeLinear", "DequantizeLinear")
def quantize_linear(node, ctx: RuleContext) -> Coupling:
    """y = quantize(x) or dequantize(x), element by element: every axis of x is y's. Per-tensor
    scale and zero point (one element) are free; per-axis ones (vectors, ``axis``) are members
    on their axis 0 that shrink with x's ``axis``; per-block ones (``block_size`` B, x's rank)
    follow x on every axis, and on ``axis`` position p of x is their position p // B, so the
    B channels of a block are one unit (a whole block goes or stays)."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    if rank is None:
        return c
    identity_all(c, x, y, rank)
    axis, block = (
        norm_axis(int(ctx.attr(node, "axis", 1)), max(rank, 1)),
        int(ctx.attr(node, "block_size", 0)),
    )
    for param in node.inputs[1:3]:
        shape = ctx.shape(param)
        if param is None or shape is None:
            continue
        if block:
            for k in range(rank):
                c.link(
                    (x.name, k),
                    (param.name, k),
                    np.arange(ctx.shape(x)[k]) // block if k == axis else None,
                )
        elif int(np.prod(shape)) == 1:
            c.free.update((param.name, k) for k in range(len(shape)))
        else:
            c.link((param.name, 0), (x.name, axis))
    return c
