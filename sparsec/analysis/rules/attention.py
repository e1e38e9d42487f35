"""Axis rules of fused attention ops: ONNX ``Attention`` (opset 23) and the ``com.microsoft``
``MultiHeadAttention`` / ``Attention`` / ``GroupQueryAttention`` contrib ops.

The algebra. Y = softmax(Q·Kᵀ·scale + mask)·V, computed per head: query head h reads KV head
h // (Hq / Hkv) (grouped-query attention; Hq = Hkv for plain multi-head). So

- a head is a unit: every position of a head (its head_dim slice of Q, K, V and Y, and the
  matching slice of a projection weight or bias) maps to one position of a *heads* member, and
  query heads map onto the KV head they share (h → h // group). Removing a KV head removes
  all its query heads; head_dim itself never shrinks (it is tied inside the unit);
- in the 4-D layout ([B, H, S, D]) the head axis is a real axis; in the 3-D layout
  ([B, S, H·D]) it is a virtual member, and the ``q_num_heads`` / ``kv_num_heads`` /
  ``num_heads`` attributes are rewritten to the kept counts;
- batch and sequence axes pass through (query side to Y, key side between K and V); a mask
  broadcasts against the scores [B, Hq, Sq, Skv];
- past/present key-value caches are left unmapped (ONNX Attention, MultiHeadAttention) or
  follow the KV heads (GroupQueryAttention); either way a head group reaching a cache fed
  from outside is kept whole (it keeps its shape).

The masked original needs no extra masking: a removed head's output meets only zeroed rows of
the output projection.
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.rules.core import (
    Coupling,
    Member,
    RuleContext,
    axis_rule,
    compute_axes,
    count_fixup,
)


def _link_heads(c: Coupling, query: Member, kv: Member, q_heads: int, kv_heads: int) -> None:
    """Query head h reads KV head h // (q_heads / kv_heads); the query side holds the heads."""
    c.link(query, kv, np.arange(q_heads) // (q_heads // kv_heads))
    c.roles[query] = "heads"


def _shape(ctx: RuleContext, value) -> tuple[int, ...] | None:
    return ctx.shape(value) if value is not None else None


def _link_mask(c: Coupling, ctx: RuleContext, mask, scores: list[Member | None]) -> None:
    """A mask broadcasting (right-aligned) against the scores [B, Hq, Sq, Skv]."""
    shape = _shape(ctx, mask)
    if shape is None:
        return
    for axis, size in enumerate(shape):
        target = scores[4 - len(shape) + axis]
        if size == 1:
            c.free.add((mask.name, axis))
        elif target is not None:
            c.link((mask.name, axis), target)


@axis_rule("Attention")
def onnx_attention(node, ctx: RuleContext) -> Coupling:
    """ONNX Attention (opset 23): Q, K, V 4-D [B, H, S, D] or 3-D [B, S, H·D]."""
    c = Coupling()
    q, k, v, y = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
    qs, ks, vs, ys = (_shape(ctx, x) for x in (q, k, v, y))
    if None in (qs, ks, vs, ys) or len(qs) not in (3, 4) or len(ys) != len(qs):
        return c
    for value in (k, v, y):
        c.link((value.name, 0), (q.name, 0))
    c.link((y.name, len(ys) - 2), (q.name, len(qs) - 2))  # query sequence
    c.link((v.name, len(vs) - 2), (k.name, len(ks) - 2))  # key sequence
    if len(qs) == 4:
        query, kv = (q.name, 1), (k.name, 1)
        _link_heads(c, query, kv, qs[1], ks[1])
        c.link((y.name, 1), query)
        c.link((v.name, 1), kv)
        c.link((y.name, 3), (v.name, 3))
        c.link((q.name, 3), (k.name, 3))
        c.roles[(y.name, 1)] = "heads"
    else:
        q_heads, kv_heads = (
            int(ctx.attr(node, "q_num_heads", 0)),
            int(ctx.attr(node, "kv_num_heads", 0)),
        )
        if not q_heads or not kv_heads:
            return c
        query, kv = _link_packed_heads(c, node, (q, k, v, y), (qs, ks, vs, ys), q_heads, kv_heads)
        count_fixup(c, node, "q_num_heads", query)
        count_fixup(c, node, "kv_num_heads", kv)
    query_seq, key_seq = (q.name, len(qs) - 2), (k.name, len(ks) - 2)
    if len(node.inputs) > 3 and node.inputs[3] is not None and node.inputs[3].name:
        _link_mask(c, ctx, node.inputs[3], [(q.name, 0), query, query_seq, key_seq])
    return c


@axis_rule("MultiHeadAttention", domain="com.microsoft")
def ms_multi_head_attention(node, ctx: RuleContext) -> Coupling:
    """com.microsoft MultiHeadAttention with separate 3-D query, key, value [B, S, H·D]
    (optional packed bias [3·H·D]); other layouts (packed QKV, BNSH key/value) are left
    unmapped."""
    c = Coupling()
    q, k, v = (node.inputs[i] if i < len(node.inputs) else None for i in range(3))
    y = node.outputs[0]
    shapes = [_shape(ctx, x) for x in (q, k, v, y)]
    heads_count = int(ctx.attr(node, "num_heads", 0))
    if None in shapes or any(len(s) != 3 for s in shapes) or not heads_count:
        return c
    qs, ks, vs, ys = shapes
    for value in (k, v, y):
        c.link((value.name, 0), (q.name, 0))
    c.link((y.name, 1), (q.name, 1))
    c.link((v.name, 1), (k.name, 1))
    heads = c.virtual(node, "heads", heads_count)  # one head count for Q, K and V
    c.roles[heads] = "heads"
    head_dim, v_dim = qs[2] // heads_count, vs[2] // heads_count
    for value, width, dim in (
        (q, qs[2], head_dim),
        (k, ks[2], head_dim),
        (v, vs[2], v_dim),
        (y, ys[2], v_dim),
    ):
        _split_packed(c, (value.name, 2), heads, [width], [dim])
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    if bias is not None and bias.name:
        _split_packed(c, (bias.name, 0), heads, [qs[2], ks[2], vs[2]], [head_dim, head_dim, v_dim])
    count_fixup(c, node, "num_heads", heads)
    return c


@axis_rule("GroupQueryAttention", domain="com.microsoft")
def ms_group_query_attention(node, ctx: RuleContext) -> Coupling:
    """com.microsoft GroupQueryAttention with separate 3-D query, key, value [B, S, H·D]
    (``num_heads`` query heads, ``kv_num_heads`` KV heads); past/present caches [B, Hkv, T, D]
    follow the KV heads, so a cache that is a graph input or output keeps them all. Packed QKV
    (no key input) is left unmapped."""
    c = Coupling()
    q, k, v = (_input(node, i) for i in range(3))
    y = node.outputs[0]
    shapes = [_shape(ctx, x) for x in (q, k, v, y)]
    q_heads, kv_heads = int(ctx.attr(node, "num_heads", 0)), int(ctx.attr(node, "kv_num_heads", 0))
    if None in shapes or any(len(s) != 3 for s in shapes) or not q_heads or not kv_heads:
        return c
    batch = (q.name, 0)
    for value in (k, v, y):
        c.link((value.name, 0), batch)
    c.link((y.name, 1), (q.name, 1))
    c.link((v.name, 1), (k.name, 1))
    query, kv = _link_packed_heads(c, node, (q, k, v, y), shapes, q_heads, kv_heads)
    caches = [_input(node, 3), _input(node, 4)] + list(node.outputs[1:3])
    for cache in caches:
        if _shape(ctx, cache) is not None:
            c.link((cache.name, 0), batch)
            c.link((cache.name, 1), kv)
    seqlens = _input(node, 5)
    if _shape(ctx, seqlens) is not None:
        c.link((seqlens.name, 0), batch)
    count_fixup(c, node, "num_heads", query)
    count_fixup(c, node, "kv_num_heads", kv)
    return c


def _input(node, index: int):
    value = node.inputs[index] if index < len(node.inputs) else None
    return value if value is not None and value.name else None


@axis_rule("Attention", domain="com.microsoft")
def ms_attention(node, ctx: RuleContext) -> Coupling:
    """com.microsoft Attention: input [B, S, In] · weights [In, Q+K+V] + bias [Q+K+V], heads
    packed per part (``qkv_hidden_sizes``, else three equal parts); output [B, S, V]."""
    c, layout = Coupling(), op_layout(ctx.model, node)
    x, w, y = (
        node.inputs[layout.activation.index],
        node.inputs[layout.weight.index],
        node.outputs[0],
    )
    xs, ws, ys = _shape(ctx, x), _shape(ctx, w), _shape(ctx, y)
    heads_count = int(ctx.attr(node, "num_heads", 0))
    if (
        None in (xs, ws, ys)
        or len(xs) != 3
        or len(ws) != 2
        or not heads_count
        or ctx.attr(node, "qkv_hidden_sizes")
    ):
        return c  # explicit qkv_hidden_sizes would need rewriting too: left unmapped
    part = ws[layout.weight.kept] // 3
    head_dim = part // heads_count
    c.link((y.name, 0), (x.name, 0))
    c.link((y.name, 1), (x.name, 1))
    c.link((x.name, layout.activation.contraction), (w.name, layout.weight.contraction))
    heads = c.virtual(node, "heads", heads_count)
    c.roles[heads] = "heads"
    bias = node.inputs[layout.bias] if len(node.inputs) > layout.bias else None
    for packed in (w, bias):  # weight columns and bias: [Q | K | V]
        if packed is not None and packed.name:
            _split_packed(
                c, (packed.name, len(ctx.shape(packed)) - 1), heads, [part] * 3, [head_dim] * 3
            )
    _split_packed(c, (y.name, 2), heads, [ys[2]], [head_dim])
    compute_axes(c, ctx, w, (layout.weight.contraction, layout.weight.kept))
    count_fixup(c, node, "num_heads", heads)
    return c


def _link_packed_heads(
    c: Coupling, node, values, shapes, q_heads: int, kv_heads: int
) -> tuple[Member, Member]:
    """Q, K, V, Y in the 3-D layout [B, S, heads·head_dim]: virtual query and KV head members,
    each position of the last axes mapped to its head (query heads share KV heads)."""
    q, k, v, y = values
    qs, ks, vs, ys = shapes
    query, kv = c.virtual(node, "heads", q_heads), c.virtual(node, "kv_heads", kv_heads)
    _link_heads(c, query, kv, q_heads, kv_heads)
    head_dim, v_dim = qs[2] // q_heads, vs[2] // kv_heads
    for value, width, dim, heads in (
        (q, qs[2], head_dim, query),
        (k, ks[2], head_dim, kv),
        (v, vs[2], v_dim, kv),
        (y, ys[2], v_dim, query),
    ):
        _split_packed(c, (value.name, 2), heads, [width], [dim])
    return query, kv


def _split_packed(
    c: Coupling, member: Member, heads: Member, widths: list[int], head_dims: list[int]
) -> None:
    """An axis of one or more packed parts ([Q | K | V]), each heads × its head_dim, head-major:
    every position maps to its head."""
    index = np.concatenate([np.arange(width) // dim for width, dim in zip(widths, head_dims)])
    c.link(member, heads, index)
