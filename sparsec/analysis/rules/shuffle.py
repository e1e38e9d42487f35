"""Which part a split reshape follows: the one its parts' merge links (a channel shuffle).

The algebra. ShuffleNet's channel shuffle is ``Reshape [N, C, H, W] → [N, g, C/g, H, W]``,
``Transpose`` swapping the two parts, ``Reshape`` back to ``[N, C, H, W]``: input channel
``q = i·(C/g) + j`` (``i`` the shuffle group, ``j`` the sub-channel) lands on output position
``q' = j·g + i``. The merge links its outermost part (``C/g``: ``q' // g``), so the split must
link the same part, its *inner* one (``q % (C/g)``): a unit is then a sub-channel ``j``, removed
from every shuffle group at once, and the pruned shuffle stays a plain slice on both sides (the
kept positions keep their order: ``rank(j)·g + i``). The ``g`` axes are never linked, so they
never shrink; the split's and the merge's rules block them, which blocks only their own
(weightless) component, never the channels.

The decision is read from the graph, not from names: walk the split's output forward through
its single consumer while that consumer maps the tracked axes one to one (a Transpose, an
elementwise op: identity edges of its own axis rule), up to a reshape that merges exactly those
axes into one; the part that arrives outermost there is the part to follow (and the part the
merge links: its own trace, ``layout._channel_part``, then finds a compute weight behind that
part only, or behind none and takes the outermost). Heads (``[B, T, C] → [B, T, H, D]``, into
a MatMul) meet no such merge and keep the outermost part.

Next to grouped convs (ShuffleNet v1), the grouped 1×1 conv after the shuffle must lose as many
positions in each of its ``g`` groups of ``C/g`` (``rules.compute``: a balanced member): removing
sub-channel ``j`` removes outputs ``j·g .. j·g + g - 1``, which lie in group ``j·g // (C/g)``, so
the selection takes sub-channels in bundles, one per group, and the conv's weight keeps a
different set of local positions in each group. When ``g`` does not divide ``C/g`` (the onnx
wheel's ShuffleNet, stage 2: ``4 × 34``) a sub-channel straddling two groups is never removed.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

from sparsec.analysis.rules.core import Coupling, RuleContext, apply_rule, rule_for

MERGES = ("Reshape", "Flatten")  # reshapes that may merge the parts back into one axis
WALK_DEPTH = 6  # consumers walked forward from a split to its merge
_WALKING: ContextVar[bool] = ContextVar("sparsec_split_walk", default=False)


def followed_part(ctx: RuleContext, value, parts) -> int:
    """The index in ``parts`` (``(axis, size)`` of ``value``, row-major) that a split reshape
    links: the part that lands outermost in the merge its parts reach, else 0 (outermost)."""
    if _WALKING.get() or len(parts) < 2:
        return 0
    token = _WALKING.set(True)
    try:
        return _walk(ctx, value, {k: axis for k, (axis, _) in enumerate(parts)})
    finally:
        _WALKING.reset(token)


def _walk(ctx: RuleContext, value, axes: dict[int, int]) -> int:
    """Follow ``axes`` (part → axis of ``value``) forward to a merge of all of them."""
    for _ in range(WALK_DEPTH):
        uses = list(value.uses())
        if len(uses) != 1 or value.is_graph_output():
            return 0
        node = uses[0].node
        if node.op_type in MERGES:
            return _outermost_in_merge(ctx, value, node.outputs[0], axes)
        moved = _mapped_axes(ctx, node, value, axes)
        if moved is None:
            return 0
        value, axes = moved
    return 0


def _mapped_axes(ctx: RuleContext, node, value, axes: dict[int, int]):
    """``(output, axes)`` when ``node``, reading ``value`` as its only activation, maps each
    tracked axis one to one (an identity edge of its axis rule) onto its first output."""
    activations = [v for v in node.inputs if v is not None and not ctx.is_const(v)]
    rule = rule_for(node)
    if activations != [value] or rule is None or not node.outputs:
        return None
    coupling = apply_rule(rule, node, ctx)
    if not isinstance(coupling, Coupling):
        return None
    out = node.outputs[0]
    moved = {}
    for part, axis in axes.items():
        targets = [
            other[1]
            for other in coupling.partners((value.name, axis), identity_only=True)
            if other[0] == out.name
        ]
        if len(targets) != 1:
            return None
        moved[part] = targets[0]
    return out, moved


def _outermost_in_merge(ctx: RuleContext, value, merged, axes: dict[int, int]) -> int:
    """The part whose axis is outermost among ``axes`` of ``value``, when those axes are
    consecutive and merge into exactly one axis of ``merged`` (row-major); else 0."""
    shape, merged_shape = ctx.shape(value), ctx.shape(merged)
    if shape is None or merged_shape is None:
        return 0
    ordered = sorted(axes.values())
    if ordered != list(range(ordered[0], ordered[0] + len(ordered))):
        return 0
    before, size = math.prod(shape[: ordered[0]]), math.prod(shape[k] for k in ordered)
    for axis, dim in enumerate(merged_shape):
        if math.prod(merged_shape[:axis]) == before and dim == size:
            return next(part for part, a in axes.items() if a == ordered[0])
    return 0
