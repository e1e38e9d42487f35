"""Axis-coupling rules: per-op knowledge, as data, of which tensor axes must shrink together.

The algebra. A *member* is a (tensor name, axis) pair; its positions are the indices along
that axis. A rule looks at one node and returns a ``Coupling``:

- ``edges``: ``Edge(a, b, index)`` says position ``p`` of member ``a`` *is* position
  ``index[p]`` of member ``b`` (``index=None`` is the identity). ``index`` is a function from
  ``a``'s positions to ``b``'s: an offset (Concat, Split, Slice), a stride (Flatten or a
  Reshape merging C×H×W into features: ``(q // stride) % size``), a tile (the positions of a
  grouped Conv's channels within their group) or a gather (constant Gather indices).
- ``compute``: weight members whose slicing removes multiply-accumulates (a group without one
  is not worth pruning).
- ``free``: members the node leaves unconstrained (a broadcast size-1 axis, Shape's input).
- ``fixups``: what surgery must rewrite on this node once the kept positions are known
  (Reshape targets, Split sizes, Slice starts/ends, ``group`` attributes...).
- ``stats``: members the node reduces over to compute a statistic (LayerNorm, ReduceMean), or
  sums over in a product of two activations: pruning them is exact only against an oracle
  that masks them too (it does).
- ``roles``: what a member is to the node, for choosing ratios per kind of group: ``conv`` or
  ``linear`` (a compute weight's axis), ``heads`` (the head axis of an attention: a batch axis
  of a product of two activations, or the heads of an attention op).

Every axis of every input and output of the node that the coupling neither links nor frees is
*blocked* by that node: a channel group containing it is not pruned, and the reason names the
node. An op without a rule blocks all its axes. So a rule nobody wrote is a barrier, never a
guess. Teaching sparsec a custom op is one ``@axis_rule("MyOp", domain="my.domain")`` function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.quantized import weight_source

Member = tuple[str, int]  # (value name, axis); virtual members use a name starting with "#"


@dataclass(frozen=True)
class Edge:
    a: Member
    b: Member
    index: np.ndarray | None = None  # a's position p is b's position index[p]; None = identity


@dataclass
class Fixup:
    """A surgery step on ``node`` given ``kept(member) -> kept positions or None``."""

    node: object
    apply: Callable  # apply(model, kept) -> None


@dataclass
class Coupling:
    edges: list[Edge] = field(default_factory=list)
    compute: set[Member] = field(default_factory=set)
    free: set[Member] = field(default_factory=set)
    fixups: list[Fixup] = field(default_factory=list)
    stats: set[Member] = field(default_factory=set)
    reasons: dict[Member, str] = field(default_factory=dict)  # specific block reasons
    sizes: dict[Member, int] = field(default_factory=dict)  # sizes of virtual members
    roles: dict[Member, str] = field(default_factory=dict)  # conv / linear / heads

    def link(self, a: Member, b: Member, index: np.ndarray | None = None) -> None:
        self.edges.append(Edge(a, b, index))

    def block(self, member: Member, reason: str) -> None:
        self.reasons[member] = reason

    def virtual(self, node, tag: str, size: int) -> Member:
        member = (f"#{node.name or id(node)}:{tag}", 0)
        self.sizes[member] = size
        return member


class RuleContext:
    """What a rule may read: concrete shapes, constants, attributes, the opset."""

    def __init__(self, model, shapes: dict[str, tuple[int, ...]], measured: dict | None = None) -> None:
        self.model, self.shapes, self.opset = model, shapes, model.opset
        self.measured = measured or {}  # values of run-time shape tensors on sample inputs

    def shape(self, value) -> tuple[int, ...] | None:
        if value is None or not value.name:
            return None
        shape = self.shapes.get(value.name)
        return shape if shape is not None else self.model.constant_shape(value)

    def rank(self, value) -> int | None:
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def const(self, value) -> np.ndarray | None:
        return self.model.constant(value)

    def attr(self, node, name: str, default=None):
        return self.model.attr(node, name, default)

    def ints(self, node, attr_name: str, input_index: int | None = None) -> list[int] | None:
        """An int list given as attribute (older opsets) or constant input (newer ones)."""
        value = self.attr(node, attr_name)
        if value is not None:
            return [int(v) for v in np.atleast_1d(value)]
        if input_index is not None and input_index < len(node.inputs) and node.inputs[input_index] is not None:
            array = self.const(node.inputs[input_index])
            return None if array is None else [int(v) for v in np.atleast_1d(array)]
        return None

    def is_const(self, value) -> bool:
        return value is not None and self.model.constant_shape(value) is not None

    def is_weight(self, value) -> bool:
        """A constant, or a quantized weight read through DequantizeLinear (``quantized``):
        what a compute op multiplies by is known before run time either way."""
        return value is not None and weight_source(self.model, value) is not None


Rule = Callable[[object, RuleContext], Coupling]
AXIS_RULES: dict[tuple[str, str], Rule] = {}


def axis_rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    """Register ``fn(node, ctx) -> Coupling`` as the axis rule of ``op_types`` in ``domain``."""

    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            AXIS_RULES[(domain, op_type)] = fn
        return fn

    return register


def rule_for(node) -> Rule | None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return AXIS_RULES.get((domain, node.op_type))


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def identity_all(c: Coupling, a, b, rank: int) -> None:
    """Link every axis of ``a`` to the same axis of ``b`` (same-shape tensors)."""
    for axis in range(rank):
        c.link((a.name, axis), (b.name, axis))


def link_broadcast(c: Coupling, ctx: RuleContext, value, out) -> None:
    """Link ``value``'s axes to ``out``'s under numpy broadcasting (right-aligned); size-1
    axes are free, even against a size-1 output axis (one position can never be removed, and
    a shared broadcast operand such as a rotary table must not tie the groups it meets)."""
    shape, out_shape = ctx.shape(value), ctx.shape(out)
    if shape is None or out_shape is None:
        return
    offset = len(out_shape) - len(shape)
    for axis, size in enumerate(shape):
        if offset + axis < 0:
            continue
        if size == 1:
            c.free.add((value.name, axis))
            if out_shape[offset + axis] == 1:
                c.free.add((out.name, offset + axis))
        elif size == out_shape[offset + axis]:
            c.link((value.name, axis), (out.name, offset + axis))


def compute_axes(c: Coupling, ctx: RuleContext, value, axes, role: str = "linear") -> None:
    """Mark ``axes`` of ``value``, when it is a weight (a constant, or a quantized one: its
    DequantizeLinear output), as compute-weight channel axes."""
    rank = ctx.rank(value)
    if rank is not None and ctx.is_weight(value):
        members = {(value.name, norm_axis(axis, rank)) for axis in axes if -rank <= axis < rank}
        c.compute.update(members)
        c.roles.update(dict.fromkeys(members, role))


# ---------------------------------------------------------------- elementwise and activations
ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Mod",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Not",
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink", "Erf", "Exp", "Log", "Neg", "Abs",
    "Sqrt", "Reciprocal", "Sign", "Floor", "Ceil", "Round", "Sin", "Cos", "IsNaN", "IsInf",
    "Clip", "Cast", "Identity", "Dropout",
)


@axis_rule(*ELEMENTWISE)
def elementwise(node, ctx: RuleContext) -> Coupling:
    """Every input broadcasts to the output; extra outputs (Dropout's mask) match output 0."""
    c = Coupling()
    out = node.outputs[0]
    for value in node.inputs:
        if value is not None:
            link_broadcast(c, ctx, value, out)
    for extra in node.outputs[1:]:
        if extra is not None and extra.name and ctx.rank(extra) == ctx.rank(out):
            identity_all(c, extra, out, ctx.rank(out) or 0)
    return c


@axis_rule("CastLike")
def cast_like(node, ctx: RuleContext) -> Coupling:
    c = Coupling()
    identity_all(c, node.inputs[0], node.outputs[0], ctx.rank(node.outputs[0]) or 0)
    c.free.update((node.inputs[1].name, axis) for axis in range(ctx.rank(node.inputs[1]) or 0))
    return c


@axis_rule("Shape", "Size")
def shape_of(node, ctx: RuleContext) -> Coupling:
    """A dim read at run time would change with pruning: the axes whose sizes the Shape's
    consumers actually pick (constant Gather or Slice of the shape vector) are blocked, the
    others are free. Size, or a shape vector used whole, reads every axis. A dim picked only
    to be passed into Reshape/Expand targets (``passes_into_targets``) is not a read: those
    rules link the target's axis to it, so it follows the pruning."""
    c, x = Coupling(), node.inputs[0]
    rank = ctx.rank(x) or 0
    read = _read_dims(node, ctx, rank) if node.op_type == "Shape" else set(range(rank))
    for axis in range(rank):
        if axis in read:
            c.block((x.name, axis), f"its size is read at run time ({node.op_type} '{node.name}')")
        else:
            c.free.add((x.name, axis))
    return c


def _read_dims(node, ctx: RuleContext, rank: int) -> set[int]:
    dims = _shape_dims(node, ctx, rank)
    read: set[int] = set()
    for use in node.outputs[0].uses():
        picked = _picked(use.node, ctx, dims)
        if picked is None:
            return set(dims)
        if len(picked) == 1 and passes_into_targets(ctx, use.node.outputs[0]):
            continue
        read.update(picked)
    return read


def _shape_dims(node, ctx: RuleContext, rank: int) -> list[int]:
    """The axes of its input that a Shape node's output lists (``start``/``end``)."""
    start = norm_axis(int(ctx.attr(node, "start", 0)), rank) if rank else 0
    end = ctx.attr(node, "end")
    return list(range(rank))[start:None if end is None else norm_axis(int(end), rank)]


def _picked(reader, ctx: RuleContext, dims: list[int]) -> list[int] | None:
    """The axes a constant Gather (axis 0) or Slice of a shape vector picks, or None."""
    if reader.op_type == "Gather" and int(ctx.attr(reader, "axis", 0)) == 0 and ctx.const(reader.inputs[1]) is not None:
        indices = np.atleast_1d(ctx.const(reader.inputs[1])).reshape(-1)
    elif reader.op_type == "Slice" and ctx.ints(reader, "starts", 1) is not None and ctx.ints(reader, "ends", 2) is not None:
        indices = np.arange(len(dims))[slice(ctx.ints(reader, "starts", 1)[0], ctx.ints(reader, "ends", 2)[0])]
    else:
        return None
    return [dims[int(i)] for i in indices if -len(dims) <= int(i) < len(dims)]


DIM_CARRIERS = {"Unsqueeze", "Squeeze", "Cast", "Identity"}
SHAPE_TARGETS = {"Reshape": 1, "Expand": 1}  # op -> the input holding the target shape


def _carries(ctx: RuleContext, node, value) -> int | None:
    """The factor by which ``node`` passes the one-element dim ``value`` on: 1 through
    Unsqueeze/Squeeze/Cast/Identity, k through a Mul by a positive integer constant k (the
    ``n_rep`` of a grouped-query repeat); None for anything else."""
    if node.op_type in DIM_CARRIERS:
        return 1 if node.inputs[0] is value else None
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
    factor = ctx.const(other) if other is not value else None
    if factor is None or factor.size != 1 or factor.dtype.kind not in "iu" or int(factor.reshape(-1)[0]) < 1:
        return None
    return int(factor.reshape(-1)[0])


def passes_into_targets(ctx: RuleContext, value, depth: int = 4) -> bool:
    """Whether a one-element dim value is used only as an entry of Reshape/Expand targets
    built by a Concat (through ``_carries`` ops): exactly the entries ``shape_entries``
    resolves to the dim they carry (times a constant factor), so the target's axis is linked
    to it. Any other use (a target that is the value itself, other arithmetic) is a read."""
    uses = list(value.uses())
    if not uses or value.is_graph_output() or depth == 0:
        return False
    for use in uses:
        node = use.node
        if _carries(ctx, node, value) is not None:
            ok = passes_into_targets(ctx, node.outputs[0], depth - 1)
        else:
            targets = list(node.outputs[0].uses()) if node.op_type == "Concat" else []
            ok = bool(targets) and not node.outputs[0].is_graph_output() and all(
                SHAPE_TARGETS.get(u.node.op_type) == u.idx and ctx.shape(u.node.outputs[0]) is not None
                and ctx.shape(u.node.inputs[0]) is not None for u in targets)  # the target rule will resolve it
        if not ok:
            return False
    return True


def dim_source(ctx: RuleContext, value, depth: int = 4) -> tuple[Member, int] | None:
    """(member, factor) when a one-element value is, at run time, ``factor`` times the size
    of (tensor, axis): a constant Gather or Slice picking one dim of Shape(X), possibly
    through ``_carries`` ops; else None."""
    node = value.producer() if value is not None else None
    if node is None or depth == 0:
        return None
    carried = next((v for v in node.inputs if v is not None and _carries(ctx, node, v) is not None), None)
    if carried is not None and ctx.const(carried) is None:
        source = dim_source(ctx, carried, depth - 1)
        return None if source is None else (source[0], source[1] * _carries(ctx, node, carried))
    shape_node = node.inputs[0].producer() if node.op_type in ("Gather", "Slice") else None
    if shape_node is None or shape_node.op_type != "Shape":
        return None
    picked = _picked(node, ctx, _shape_dims(shape_node, ctx, ctx.rank(shape_node.inputs[0]) or 0))
    return ((shape_node.inputs[0].name, picked[0]), 1) if picked is not None and len(picked) == 1 else None


# ---------------------------------------------------------------- quantization (QDQ)
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
    axis, block = norm_axis(int(ctx.attr(node, "axis", 1)), max(rank, 1)), int(ctx.attr(node, "block_size", 0))
    for param in node.inputs[1:3]:
        shape = ctx.shape(param)
        if param is None or shape is None:
            continue
        if block:
            for k in range(rank):
                c.link((x.name, k), (param.name, k), np.arange(ctx.shape(x)[k]) // block if k == axis else None)
        elif int(np.prod(shape)) == 1:
            c.free.update((param.name, k) for k in range(len(shape)))
        else:
            c.link((param.name, 0), (x.name, axis))
    return c


# ---------------------------------------------------------------- convolutions and products
def count_fixup(c: Coupling, node, attribute: str, member: Member) -> None:
    """After surgery, set ``node.attribute`` to the number of kept positions of ``member``."""

    def apply(model, kept) -> None:
        positions = kept(member)
        if positions is not None:
            model.set_attr(node, attribute, int(len(positions)))

    c.fixups.append(Fixup(node, apply))


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
    x, w, y = node.inputs[layout.activation.index], node.inputs[layout.weight.index], node.outputs[0]
    w_shape = ctx.shape(w)
    if w_shape is None or ctx.shape(x) is None:
        return c
    sides = {layout.weight.kept: (y.name, layout.output_channels),
             layout.weight.contraction: (x.name, layout.activation.contraction)}
    full, part = sides[0], sides[1]  # W axis 0 indexes all channels of its side, W axis 1 one group's
    groups, full_size, per_group = layout.groups, w_shape[0], w_shape[1]
    c.link((y.name, layout.activation.kept), (x.name, layout.activation.kept))
    c.link(full, (w.name, 0))
    if layout.bias is not None and len(node.inputs) > layout.bias and node.inputs[layout.bias] is not None:
        c.link((node.inputs[layout.bias].name, 0), (y.name, layout.output_channels))
    compute_axes(c, ctx, w, (0, 1), role=layout.role)
    if not ctx.is_weight(w):
        c.block((x.name, layout.activation.contraction), "is convolved with a weight computed at run time")
    if groups == 1:
        c.link(part, (w.name, 1))
    elif per_group == 1:
        c.link(full, part, np.arange(full_size) // (full_size // groups))
        c.free.add((w.name, 1))
        count_fixup(c, node, "group", part)
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
    c.link((a.name, a_k), (b.name, max(norm_axis(b_side.contraction, rb), 0)))  # a 1-D B contracts its axis 0
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
    if not ctx.is_weight(a) and not ctx.is_weight(b):  # attention scores or context: batch axes hold heads
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


# ---------------------------------------------------------------- normalizations and pooling
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
    """Pooling keeps batch and channel; spatial axes change size and stay blocked."""
    c = Coupling()
    x = node.inputs[0]
    for out in node.outputs:
        if out is not None and out.name:
            c.link((out.name, 0), (x.name, 0))
            c.link((out.name, 1), (x.name, 1))
    return c


@axis_rule("LRN")
def lrn(node, ctx: RuleContext) -> Coupling:
    c = Coupling()
    x, y = node.inputs[0], node.outputs[0]
    for axis in range(ctx.rank(x) or 0):
        if axis != 1:
            c.link((y.name, axis), (x.name, axis))
    c.block((node.inputs[0].name, 1), "normalizes across neighbouring channels")
    return c
