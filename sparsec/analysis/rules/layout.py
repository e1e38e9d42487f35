"""Axis rules of the ops that move data without computing on it: Concat, Split, Slice,
Reshape/Flatten/Squeeze/Unsqueeze, Transpose, Gather, Expand, Pad, Resize, reductions, Softmax.

The index maps (see ``rules.core``): Concat/Split/Slice offset positions; a reshape that merges
axes maps merged position ``q`` to ``(q // stride) % size`` of each source axis (row-major), one
that splits an axis maps the other way; Gather on constant indices maps output positions to the
gathered ones. Shape-carrying constants (Reshape targets, Split sizes, Slice bounds, Gather
indices, Expand shapes, Resize sizes) get a fixup that rewrites them from the kept positions; a
shape computed at run time that surgery could not rewrite blocks the axes it sets.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from weakref import WeakKeyDictionary

import numpy as np

from sparsec.analysis.rules.core import (
    Coupling,
    Fixup,
    Member,
    RuleContext,
    apply_rule,
    axis_rule,
    link_broadcast,
    norm_axis,
    rule_for,
)
from sparsec.analysis.rules.dims import dim_sources, piece_constant, vector_producer
from sparsec.analysis.rules.refine import link_refined, stride_map, stride_of
from sparsec.analysis.rules.shuffle import followed_part


@axis_rule("Constant", "ConstantOfShape")
def constant(node, ctx: RuleContext) -> Coupling:
    """A constant's axes are whatever its consumers make of them (surgery slices it); a
    ConstantOfShape whose shape is computed at run time cannot follow, so its axes block."""
    c = Coupling()
    for value in node.inputs:
        if value is not None:
            c.free.update((value.name, axis) for axis in range(ctx.rank(value) or 0))
    out = node.outputs[0]
    for axis in range(ctx.rank(out) or 0):
        if ctx.is_const(out):
            c.free.add((out.name, axis))
        else:
            c.block(
                (out.name, axis),
                "its size comes from a shape computed at run time (ConstantOfShape input)",
            )
    return c


@axis_rule("Concat")
def concat(node, ctx: RuleContext) -> Coupling:
    c, out = Coupling(), node.outputs[0]
    rank = ctx.rank(out)
    shapes = [ctx.shape(v) for v in node.inputs]
    if rank is None or any(s is None for s in shapes):
        return c
    axis, offset = norm_axis(int(ctx.attr(node, "axis", 0)), rank), 0
    for value, shape in zip(node.inputs, shapes):
        for k in range(rank):
            c.link(
                (value.name, k), (out.name, k), offset + np.arange(shape[k]) if k == axis else None
            )
        offset += shape[axis]
    return c


@axis_rule("Split")
def split(node, ctx: RuleContext) -> Coupling:
    c, x = Coupling(), node.inputs[0]
    rank, outs = ctx.rank(x), [v for v in node.outputs if v is not None]
    shapes = [ctx.shape(v) for v in outs]
    if rank is None or any(s is None for s in shapes):
        return c
    axis, offset = norm_axis(int(ctx.attr(node, "axis", 0)), rank), 0
    for value, shape in zip(outs, shapes):
        for k in range(rank):
            c.link(
                (value.name, k), (x.name, k), offset + np.arange(shape[k]) if k == axis else None
            )
        offset += shape[axis]

    def apply(model, kept) -> None:
        sizes = [
            len(kept((v.name, axis))) if kept((v.name, axis)) is not None else s[axis]
            for v, s in zip(outs, shapes)
        ]
        if sizes == [s[axis] for s in shapes]:
            return
        if ctx.opset >= 13:
            model.remove_attr(node, "num_outputs")
            model.replace_constant_input(node, 1, np.array(sizes, dtype=np.int64))
        else:
            model.set_attr(node, "split", sizes)

    c.fixups.append(Fixup(node, apply))
    return c


@axis_rule("Slice")
def slice_(node, ctx: RuleContext) -> Coupling:
    """Unsliced axes are the identity; an axis sliced with step 1 is an offset map. With bounds
    computed at run time (a rotary half split) but constant axes, only the unsliced axes map."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    shape = ctx.shape(x)
    raw = None if shape is None else _slice_inputs(node, ctx, len(shape))
    if raw is None:
        axes = ctx.ints(node, "axes", 3) if shape is not None else None
        sliced = (
            {norm_axis(a, len(shape)) for a in axes}
            if axes is not None
            else set(range(len(shape or ())))
        )
        for axis in set(range(len(shape or ()))) - sliced:
            c.link((y.name, axis), (x.name, axis))
        return c
    bounds = _clamped(raw, shape)
    for axis in range(len(shape)):
        start, end, step = bounds.get(axis, (0, shape[axis], 1))
        if axis not in bounds:
            c.link((y.name, axis), (x.name, axis))
        elif step == 1:
            c.link((y.name, axis), (x.name, axis), start + np.arange(max(end - start, 0)))
        else:
            c.block((x.name, axis), "sliced with a step other than 1")

    def apply(model, kept) -> None:
        starts, ends = list(raw[0]), list(raw[1])
        for slot, axis in enumerate(raw[2]):
            start, end, step = bounds[axis]
            positions = kept((x.name, axis))
            if positions is not None and step == 1:
                starts[slot], ends[slot] = (
                    int(np.sum(positions < start)),
                    int(np.sum(positions < end)),
                )
        if (starts, ends) != (list(raw[0]), list(raw[1])):
            _write_slice_bounds(model, node, ctx, starts, ends, raw[2])

    c.fixups.append(Fixup(node, apply))
    return c


def _slice_inputs(node, ctx: RuleContext, rank: int):
    """(starts, ends, axes, steps) as written (axes normalised), or None when not constant."""
    starts, ends = ctx.ints(node, "starts", 1), ctx.ints(node, "ends", 2)
    if starts is None or ends is None:
        return None
    axes = ctx.ints(node, "axes", 3)
    steps = (ctx.ints(node, "steps", 4) if ctx.opset >= 10 else None) or [1] * len(starts)
    axes = list(range(len(starts))) if axes is None else [norm_axis(a, rank) for a in axes]
    return starts, ends, axes, steps


def _clamped(raw, shape) -> dict[int, tuple[int, int, int]]:
    """{axis: (start, end, step)} with step-1 bounds clamped to the dims."""
    bounds = {}
    for first, last, axis, step in zip(raw[0], raw[1], raw[2], raw[3]):
        dim = shape[axis]
        start = min(max(first + dim if first < 0 else first, 0), dim)
        end = min(max(last + dim if last < 0 else last, 0), dim)
        bounds[axis] = (start, end, step)
    return bounds


def _write_slice_bounds(model, node, ctx: RuleContext, starts, ends, axes) -> None:
    if ctx.opset >= 10:
        model.replace_constant_input(node, 1, np.array(starts, dtype=np.int64))
        model.replace_constant_input(node, 2, np.array(ends, dtype=np.int64))
        model.replace_constant_input(node, 3, np.array(axes, dtype=np.int64))
    else:
        model.set_attr(node, "starts", starts)
        model.set_attr(node, "ends", ends)
        model.set_attr(node, "axes", axes)


# ---------------------------------------------------------------- reshapes
def link_regroup(c: Coupling, x, x_shape, y, y_shape, ctx: RuleContext | None = None) -> None:
    """Link the axes of a row-major reshape from ``x_shape`` to ``y_shape``.

    Axes of size 1 are free. The others form blocks of equal product: one axis to one is the
    identity. When several axes merge into one (C×H×W → features) or one splits into several
    (hidden → heads×head_dim), the single axis is linked to *one* part only, position q to part
    position ``(q // stride) % size``: removing a channel (a head) removes every position it
    owns (a run of them when it is the outer part, a stride of them when it is inner: an NHWC
    [N, W, H, C] → [N, W, H·C] sequence). The part is the outermost, unless in a merge exactly
    one part traces back to a compute weight's channel axis (``_channel_part``, given
    ``ctx``), or a split's parts reach a merge in another order (a channel shuffle: the split
    follows the part the merge links, ``rules.shuffle.followed_part``). The other parts are
    blocked (linking them too would tie every channel to every other through the shared
    positions). A many-to-many block (MobileViT's unfold [B, C, H, W] → [B·C·nh, ph, nw, pw])
    is linked through the parts of its common refinement (``rules.refine``), each axis of
    several parts following the one ``_RefinedChoice`` names; one without a refinement is
    blocked.
    """
    for value, shape in ((x, x_shape), (y, y_shape)):
        c.free.update((value.name, axis) for axis, size in enumerate(shape) if size == 1)
    for ins, outs in _blocks(
        [(a, d) for a, d in enumerate(x_shape) if d != 1],
        [(a, d) for a, d in enumerate(y_shape) if d != 1],
    ):
        if len(ins) == 1 and len(outs) == 1:
            c.link((x.name, ins[0][0]), (y.name, outs[0][0]))
        elif len(ins) == 1:
            _link_part(c, (x.name, ins[0][0]), y, outs, followed_part(ctx, y, outs) if ctx else 0)
        elif len(outs) == 1:
            _link_part(c, (y.name, outs[0][0]), x, ins, _channel_part(ctx, x, ins) if ctx else 0)
        elif not link_refined(c, x, ins, y, outs, _RefinedChoice(ctx, x, y)):
            for axis, _ in ins:
                c.block(
                    (x.name, axis), "reshaped together with other axes in a way sparsec cannot map"
                )


def _blocks(ins, outs):
    """Split two lists of (axis, size) into consecutive runs of equal product."""
    blocks, cur_in, cur_out, p_in, p_out, i, o = [], [], [], 1, 1, 0, 0
    while i < len(ins) or o < len(outs):
        if (p_in <= p_out and i < len(ins)) or o >= len(outs):
            cur_in.append(ins[i])
            p_in, i = p_in * ins[i][1], i + 1
        else:
            cur_out.append(outs[o])
            p_out, o = p_out * outs[o][1], o + 1
        if p_in == p_out and cur_in and cur_out:
            blocks.append((cur_in, cur_out))
            cur_in, cur_out, p_in, p_out = [], [], 1, 1
    return blocks


def _link_part(c: Coupling, single, parts_value, parts, linked: int) -> None:
    """Link ``single`` to part ``linked`` of ``parts`` (row-major), block the other parts."""
    c.link(single, (parts_value.name, parts[linked][0]), stride_map([d for _, d in parts], linked))
    for k, (axis, _) in enumerate(parts):
        if k != linked:
            c.block(
                (parts_value.name, axis),
                f"is merged into one axis with axis {parts[linked][0]}, which follows pruning "
                "(only one part of a reshaped axis can)",
            )


TRACE_DEPTH = 12  # producers walked back from a merged part to find a compute weight
_TRACING: ContextVar[bool] = ContextVar("sparsec_merge_trace", default=False)


def _channel_part(ctx: RuleContext, value, parts) -> int:
    """The part of a merge to link: the only one whose axis traces back to a compute weight's
    channel axis (the C of an NHWC H×C merge), else the outermost. A merge met while tracing
    for another one takes the outermost (the walk stays linear in the depth)."""
    traced = _traced(ctx, value, {k: axis for k, (axis, _) in enumerate(parts)})
    return traced[0] if traced is not None and len(traced) == 1 else 0


def _traced(ctx: RuleContext, value, axes: dict[int, int]) -> list[int] | None:
    """The keys of ``axes`` whose axis of ``value`` traces back to a compute weight; None
    while tracing for another reshape."""
    if _TRACING.get():
        return None
    token = _TRACING.set(True)
    try:
        return [k for k, axis in axes.items() if _traces_to_compute(ctx, value, axis)]
    finally:
        _TRACING.reset(token)


def _traces_to_compute(ctx: RuleContext, value, axis: int) -> bool:
    """Whether (value, axis) is linked, through its producers' own axis rules, to a compute
    weight's axis (a Conv's output channels, a MatMul's columns)."""

    def compute(coupling: Coupling, member: Member) -> bool | None:
        return any(other in coupling.compute for other in coupling.partners(member)) or None

    return bool(_walk_back(ctx, value, axis, compute, identity_only=False))


def _walk_back(ctx: RuleContext, value, axis: int, found, identity_only: bool):
    """Walk (value, axis) back through its producers' axis rules (every edge, or the identity
    ones only; through a refined reshape's parts too), up to ``TRACE_DEPTH`` nodes deep, until
    ``found(coupling, member)`` answers (not None) for one of them; that answer, else None."""
    frontier, seen = [(value, axis)], set()
    for _ in range(TRACE_DEPTH):
        step = []
        for current, current_axis in frontier:
            node = current.producer()
            rule = rule_for(node) if node is not None else None
            coupling = apply_rule(rule, node, ctx) if rule is not None else None
            if not isinstance(coupling, Coupling):
                continue
            member = (current.name, current_axis)
            answer = found(coupling, member)
            if answer is not None:
                return answer
            inputs = {v.name: v for v in node.inputs if v is not None}
            for other in _linked_through_parts(coupling, member, identity_only):
                if other[0] in inputs and other not in seen:
                    seen.add(other)
                    step.append((inputs[other[0]], other[1]))
        frontier = step
    return None


def _linked_through_parts(coupling: Coupling, member: Member, identity_only: bool) -> list:
    """``Coupling.partners``, and through a virtual member (a refined reshape's part) the
    members it links in turn."""
    linked = coupling.partners(member, identity_only)
    return linked + [
        beyond
        for other in linked
        if other[0].startswith("#")
        for beyond in coupling.partners(other, identity_only)
        if beyond != member
    ]


def _upstream_stride(ctx: RuleContext, value, axis: int) -> tuple[int, int] | None:
    """``(stride, size)`` of the part that (value, axis) follows where an earlier reshape
    merged it (its edge ``(q // stride) % size``, onto fewer positions than the axis has: not
    a Split's first piece), walking back through identity edges."""

    def merged(coupling: Coupling, member: Member):
        maps = [e.index for e in coupling.edges if e.a == member and e.index is not None]
        found = [(stride_of(index), len(index)) for index in maps]
        return next((m for m, n in found if m is not None and n > m[1]), None)

    return _walk_back(ctx, value, axis, merged, identity_only=True)


class _RefinedChoice:
    """Which part of a refined many-to-many block (``rules.refine``) an axis of several parts
    follows. The part that is the other side's channel axis: an input axis follows the part
    an earlier reshape made it follow (its edge ``(q // stride) % size``: the unfold's
    B·C·nh follows C again in the next reshape), else the only one of its parts that is a
    whole output axis; an output axis follows the only part that is a whole input axis, or,
    of several, the only one tracing back to a compute weight (C beside B in B·C·nh). Else the
    outermost such part, else the outermost part. Decisions are remembered per ``ctx``, so a
    walk back that re-derives this reshape's coupling (its tracing off) sees the same one."""

    def __init__(self, ctx: RuleContext | None, x, y) -> None:
        self.ctx, self.x, self.y = ctx, x, y

    def __call__(self, side: str, value, axis: int, run: range, sizes, whole) -> int:
        if self.ctx is None:
            return _outermost_whole(whole, run)
        memo = _CHOICES.setdefault(self.ctx, {})
        key = (self.y.name, value.name, axis)
        if key not in memo and _TRACING.get():
            return _outermost_whole(whole, run)
        if key not in memo:
            memo[key] = self._decide(side, value, axis, run, sizes, whole)
        return memo[key]

    def _decide(self, side: str, value, axis: int, run: range, sizes, whole) -> int:
        if side == "in":
            token = _TRACING.set(True)
            try:
                stride = _upstream_stride(self.ctx, value, axis)
            finally:
                _TRACING.reset(token)
            pairs = [(math.prod(sizes[k + 1 :]), size) for k, size in enumerate(sizes)]
            if stride in pairs:
                return run[pairs.index(stride)]
        elif len(whole) > 1:
            traced = _traced(self.ctx, self.x, whole) or []
            if len(traced) == 1:
                return traced[0]
        return _outermost_whole(whole, run)


_CHOICES: WeakKeyDictionary[RuleContext, dict] = WeakKeyDictionary()


def _outermost_whole(whole: dict[int, int], run: range) -> int:
    """The outermost part that is a whole axis on the other side, else the outermost part."""
    return min(whole, default=run[0])


@axis_rule("Flatten", "Squeeze", "Unsqueeze")
def regroup(node, ctx: RuleContext) -> Coupling:
    """Ops whose output is a reshape of the input decided by attributes and input dims."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    if x_shape is not None and y_shape is not None:
        link_regroup(c, x, x_shape, y, y_shape, ctx)
    return c


@axis_rule("Reshape")
def reshape(node, ctx: RuleContext) -> Coupling:
    """A reshape; the target entries of pruned output axes are rewritten after surgery.
    Entries computed at run time block their axes (they may not follow the pruning)."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    if x_shape is None or y_shape is None:
        return c
    link_regroup(c, x, x_shape, y, y_shape, ctx)
    entries = shape_entries(ctx, node, 1, len(y_shape))
    identity = {
        e.b[1] for e in c.edges if e.index is None and e.a == (x.name, e.b[1]) and e.b[0] == y.name
    }
    for axis, entry in enumerate(entries):
        if entry is not None and entry[3] == 0 and axis not in identity and y_shape[axis] != 1:
            c.block(
                (y.name, axis), "its target entry 0 copies an input axis it is not coupled with"
            )
    add_shape_fixup(c, node, y, y_shape, entries, keep={0, -1})
    return c


def shape_entries(ctx: RuleContext, node, index: int, length: int) -> list[tuple | None]:
    """Where each entry of the shape vector at ``node.inputs[index]`` comes from:
    ``(owner node, input index, position, value)`` for entries held by a constant (the vector
    itself, or a constant piece of a Concat that builds it, possibly through a Cast of that
    piece (paddle2onnx) or of the whole vector (tf2onnx); a Concat shared with other consumers
    is copied before it is edited), None for entries computed at run time."""
    value = node.inputs[index]
    array = ctx.const(value)
    if array is not None:
        return [(node, index, k, int(v)) for k, v in enumerate(array.reshape(-1))]
    producer = vector_producer(value, sole=True)  # tf2onnx casts the Concat to int64
    if (
        producer is None
        or producer.op_type != "Concat"
        or len(ctx.shape(value) or ()) != 1
        or value.is_graph_output()
    ):
        return [None] * length
    entries: list[tuple | None] = []
    for piece_index, piece in enumerate(producer.inputs):
        piece_array, piece_shape = piece_constant(ctx.const, piece, ctx.attr), ctx.shape(piece)
        if piece_shape is None:
            return [None] * length
        sources = dim_sources(ctx, piece) if piece_array is None else None
        if sources is not None:
            entries += [PassedDim(*source) for source in sources]
        elif piece_array is None:
            entries += [None] * int(math.prod(piece_shape))
        else:
            entries += [
                (producer, piece_index, k, int(v)) for k, v in enumerate(piece_array.reshape(-1))
            ]
    return entries if len(entries) == length else [None] * length


KEEP = (None, None, None, None)  # an entry that needs no rewrite (a size passed through unchanged)


class PassedDim(tuple):
    """An entry that is, at run time, ``factor`` times the size of another (tensor, axis): it
    follows that member's pruning by itself (``dim_source``); the rule links the output axis
    to it, each member position owning ``factor`` consecutive output positions (the outer
    part of a merge, as a grouped-query repeat [Hkv, n_rep] → Hkv·n_rep lays them out)."""

    def __new__(cls, member: Member, factor: int = 1):
        return super().__new__(cls, (None, None, None, member, factor))

    @property
    def member(self) -> Member:
        return self[3]

    @property
    def factor(self) -> int:
        return self[4]


def add_shape_fixup(
    c: Coupling, node, y, y_shape, entries, keep: set[int], shape_input: int = 1
) -> None:
    """Block output axes whose shape entry is computed at run time, and rewrite constant
    entries (other than the self-adjusting values in ``keep``) of pruned axes after surgery;
    a Concat building the shape (input ``shape_input``) for other consumers too is copied
    for this node first."""
    for axis, entry in enumerate(entries):
        if entry is None and y_shape[axis] != 1:
            c.block(
                (y.name, axis),
                f"its size comes from a shape computed at run time ({node.op_type} input)",
            )
        elif isinstance(entry, PassedDim) and entry.factor == y_shape[axis] > 1:
            c.block(
                (y.name, axis),
                f"its target entry is computed at run time as {entry.factor} × the size of "
                f"'{entry.member[0]}' axis {entry.member[1]} (1 here): the {entry.factor} does "
                "not follow the pruning",
            )
        elif isinstance(entry, PassedDim):
            c.link(
                (y.name, axis),
                entry.member,
                np.arange(y_shape[axis]) // entry.factor if entry.factor > 1 else None,
            )

    def apply(model, kept) -> None:
        edits: dict[tuple, np.ndarray] = {}
        for axis, entry in enumerate(entries):
            positions = kept((y.name, axis))
            if (
                positions is None
                or entry is None
                or entry is KEEP
                or isinstance(entry, PassedDim)
                or entry[3] in keep
            ):
                continue
            owner, index, position, _ = entry
            if (owner, index) not in edits:
                edits[(owner, index)] = piece_constant(
                    model.constant, owner.inputs[index], model.attr
                ).copy()
            edits[(owner, index)].reshape(-1)[position] = len(positions)
        copies: dict = {}  # a shared Concat is copied once for this node, then all its edits go to the copy
        for (owner, index), array in edits.items():
            if owner is not node and owner not in copies and len(list(owner.outputs[0].uses())) > 1:
                copies[owner] = model.detach_input_producer(node, shape_input)
            model.replace_constant_input(copies.get(owner, owner), index, array)

    c.fixups.append(Fixup(node, apply))


@axis_rule("Expand")
def expand(node, ctx: RuleContext) -> Coupling:
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    y_shape = ctx.shape(y)
    if y_shape is None:
        return c
    link_broadcast(c, ctx, x, y)
    target_length = int((ctx.shape(node.inputs[1]) or (0,))[0])
    entries = [None] * (len(y_shape) - target_length) + shape_entries(ctx, node, 1, target_length)
    measured = ctx.measured.get(node.inputs[1].name)
    if (
        measured is not None and len(measured) == target_length
    ):  # a run-time 1 keeps the input's size
        offset = len(y_shape) - target_length
        entries = [
            KEEP if e is None and k >= offset and measured[k - offset] == 1 else e
            for k, e in enumerate(entries)
        ]
    add_shape_fixup(c, node, y, y_shape, entries, keep={1})
    return c


RUN_TIME_SHAPES = {"Expand": 1}  # op → input whose run-time value the rule reads from ctx.measured


@axis_rule("Transpose")
def transpose(node, ctx: RuleContext) -> Coupling:
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    if rank is None:
        return c
    perm = ctx.attr(node, "perm") or list(reversed(range(rank)))
    for out_axis, in_axis in enumerate(perm):
        c.link((y.name, out_axis), (x.name, int(in_axis)))
    return c


@axis_rule("Gather")
def gather(node, ctx: RuleContext) -> Coupling:
    """Axes other than ``axis`` pass through; on ``axis`` constant 1-D indices are a map."""
    c, data, indices, y = Coupling(), node.inputs[0], node.inputs[1], node.outputs[0]
    rank, index_shape = ctx.rank(data), ctx.shape(indices)
    if rank is None or index_shape is None:
        return c
    axis = norm_axis(int(ctx.attr(node, "axis", 0)), rank)
    for k in range(rank):
        if k != axis:
            c.link((data.name, k), (y.name, k if k < axis else k + len(index_shape) - 1))
    array = ctx.const(indices)
    if array is None:
        for t in range(len(index_shape)):
            c.link((indices.name, t), (y.name, axis + t))
        return c
    c.free.update((indices.name, t) for t in range(len(index_shape)))
    if array.ndim != 1:
        c.block((data.name, axis), "Gather picks single positions on this axis")
        return c
    dim = ctx.shape(data)[axis]
    gathered = np.where(array < 0, array + dim, array).astype(np.int64)
    c.link((y.name, axis), (data.name, axis), gathered)

    def apply(model, kept) -> None:
        kept_data, kept_out = kept((data.name, axis)), kept((y.name, axis))
        if kept_data is None and kept_out is None:
            return
        kept_data = np.arange(dim) if kept_data is None else kept_data
        kept_out = np.arange(len(gathered)) if kept_out is None else kept_out
        model.replace_constant_input(
            node, 1, np.searchsorted(kept_data, gathered[kept_out]).astype(array.dtype)
        )

    c.fixups.append(Fixup(node, apply))
    return c


@axis_rule("Pad")
def pad(node, ctx: RuleContext) -> Coupling:
    """Axes padded by nothing pass through; padded axes change size and stay blocked."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    pads = ctx.ints(node, "pads", 1)
    if rank is None or pads is None:
        return c
    axes = ctx.ints(node, "axes", 3) if ctx.opset >= 18 else None
    axes = [norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    padded = {axis for i, axis in enumerate(axes) if pads[i] or pads[i + len(axes)]}
    for axis in range(rank):
        if axis not in padded:
            c.link((y.name, axis), (x.name, axis))
    return c


@axis_rule("Resize", "Upsample")
def resize(node, ctx: RuleContext) -> Coupling:
    """Axes with scale 1 (or an unchanged constant size) pass through; a size entry of a
    pruned axis is rewritten."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    if x_shape is None or y_shape is None:
        return c
    sizes_index = 3 if node.op_type == "Resize" and ctx.opset >= 11 else None
    has_sizes = (
        sizes_index is not None
        and len(node.inputs) > sizes_index
        and node.inputs[sizes_index] is not None
    )
    for axis, (before, after) in enumerate(zip(x_shape, y_shape)):
        if before == after:
            c.link((y.name, axis), (x.name, axis))
    if has_sizes:
        axes = ctx.ints(node, "axes") if ctx.opset >= 18 else None
        axes = (
            list(range(len(y_shape)))
            if axes is None
            else [norm_axis(a, len(y_shape)) for a in axes]
        )
        listed = shape_entries(ctx, node, sizes_index, len(axes))
        entries = [KEEP] * len(y_shape)
        for entry, axis in zip(listed, axes):
            entries[axis] = entry
        add_shape_fixup(c, node, y, y_shape, entries, keep=set(), shape_input=sizes_index)
    return c


REDUCTIONS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ArgMax",
    "ArgMin",
)


@axis_rule(*REDUCTIONS)
def reduce(node, ctx: RuleContext) -> Coupling:
    """Kept axes pass through; reduced axes are statistics (ReduceMean, as in a written-out
    LayerNorm) or blocked."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    if rank is None:
        return c
    reduced = reduced_axes(node, ctx, rank)
    if reduced is None:
        return c
    keepdims = bool(ctx.attr(node, "keepdims", 1))
    out_axis = 0
    for axis in range(rank):
        if axis in reduced:
            if node.op_type == "ReduceMean":
                c.stats.add((x.name, axis))
            else:
                c.block((x.name, axis), f"{node.op_type} reduces over this axis")
            if keepdims:
                c.free.add((y.name, out_axis))
        else:
            c.link((y.name, out_axis), (x.name, axis))
        out_axis += 1 if keepdims or axis not in reduced else 0
    return c


def reduced_axes(node, ctx: RuleContext, rank: int) -> set[int] | None:
    if node.op_type in ("ArgMax", "ArgMin"):
        return {norm_axis(int(ctx.attr(node, "axis", 0)), rank)}
    axes_input = (
        1 if (ctx.opset >= 18 or (node.op_type == "ReduceSum" and ctx.opset >= 13)) else None
    )
    has_input = axes_input is not None and len(node.inputs) > 1 and node.inputs[1] is not None
    axes = ctx.ints(node, "axes", axes_input)
    if axes is None and has_input:
        return None  # axes computed at run time
    if not axes:
        return set() if ctx.attr(node, "noop_with_empty_axes", 0) else set(range(rank))
    return {norm_axis(a, rank) for a in axes}


@axis_rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(node, ctx: RuleContext) -> Coupling:
    """Normalizes over ``axis`` (opset ≥ 13) or over all axes from ``axis`` on (older): a lossy
    coupling there (``Coupling.mix``), other axes pass through."""
    c, x, y = Coupling(), node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    if rank is None:
        return c
    axis = norm_axis(int(ctx.attr(node, "axis", -1 if ctx.opset >= 13 else 1)), rank)
    normalized = {axis} if ctx.opset >= 13 else set(range(axis, rank))
    for k in range(rank):
        if k in normalized:
            c.mix(node, k, f"{node.op_type} normalizes over this axis")
        else:
            c.link((y.name, k), (x.name, k))
    return c
