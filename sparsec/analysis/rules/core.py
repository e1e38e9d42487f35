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
- ``lossy``: members the node *mixes* along (LRN's window across channels, a Softmax over
  channels): removing positions changes the kept ones' values, so no masking of the original
  equals the pruned model. Such a member is linked like any other, and is blocked unless lossy
  couplings are allowed (``find_channel_groups(..., lossy=True)``); the oracle then runs the node
  on the kept positions only (``pruning/oracle.py``), and the difference from the plain masked
  original is what the coupling cost. Invariant: a lossy member is an axis of the node's first
  input, and its first output holds the same positions on the same axis.
- ``balanced``: members whose positions form ``k`` equal contiguous classes (a grouped Conv's
  channels, group by group) that must each lose the same *number* of positions, not the same
  ones: a constraint on which units are removed together (``pruning/selection.py``), not an
  edge, so it never ties channels into one unit.
- ``grouped``: the weights surgery cuts group by group (``GroupedWeight``), and the oracle masks
  the same way: a balanced grouped conv's W axis 1, which is no member.
- ``roles``: what a member is to the node, for choosing ratios per kind of group: ``conv`` or
  ``linear`` (a compute weight's axis), ``heads`` (the head axis of an attention: a batch axis
  of a product of two activations, or the heads of an attention op).

Every axis of every input and output of the node that the coupling neither links nor frees is
*blocked* by that node: a channel group containing it is not pruned, and the reason names the
node. An op without a rule blocks all its axes. So a rule nobody wrote is a barrier, never a
guess. Teaching sparsec a custom op is one ``@axis_rule("MyOp", domain="my.domain")`` function.

This module is the machinery (members, couplings, the registry, shared link helpers); the rules
live beside it in ``sparsec.analysis.rules`` (``elementwise``, ``dims``, ``quantize``,
``compute``, ``normalization``, ``layout``, ``attention``), and importing that package registers
all of them. A rule that raises is a barrier (``apply_rule``), unless strict mode is on
(``strict()``, or ``SPARSEC_STRICT_RULES=1``): then it raises ``RuleError`` naming the op and
the node, so a broken rule fails a test instead of hiding as a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from sparsec.analysis.quantized import weight_source
from sparsec.errors import InternalError

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


@dataclass(frozen=True)
class GroupedWeight:
    """A grouped conv's weight cut group by group on its per-group axis (W axis 1): the rows of
    group ``j`` (W axis 0, ``rows / groups`` per group) keep the local positions that group ``j``
    keeps on the ``part`` side (``groups`` equal runs of its positions, losing alike)."""

    weight: str  # the weight's value name
    part: Member
    groups: int

    def local(self, positions: np.ndarray, per_group: int) -> list[np.ndarray]:
        """Per group, the local positions (0..per_group-1) among ``positions`` of the part side."""
        return [positions[positions // per_group == j] - j * per_group for j in range(self.groups)]


@dataclass
class Coupling:
    edges: list[Edge] = field(default_factory=list)
    compute: set[Member] = field(default_factory=set)
    free: set[Member] = field(default_factory=set)
    fixups: list[Fixup] = field(default_factory=list)
    stats: set[Member] = field(default_factory=set)
    lossy: dict[Member, str] = field(default_factory=dict)  # mixed members → how the node mixes
    reasons: dict[Member, str] = field(default_factory=dict)  # specific block reasons
    sizes: dict[Member, int] = field(default_factory=dict)  # sizes of virtual members
    roles: dict[Member, str] = field(default_factory=dict)  # conv / linear / heads
    balanced: dict[Member, int] = field(default_factory=dict)  # member → classes losing alike
    grouped: list[GroupedWeight] = field(default_factory=list)  # weights cut group by group

    def link(self, a: Member, b: Member, index: np.ndarray | None = None) -> None:
        self.edges.append(Edge(a, b, index))

    def block(self, member: Member, reason: str) -> None:
        self.reasons[member] = reason

    def partners(self, member: Member, identity_only: bool = False) -> list[Member]:
        """The members one edge (an identity one, if ``identity_only``) links to ``member``."""
        return [
            e.b if e.a == member else e.a
            for e in self.edges
            if member in (e.a, e.b) and not (identity_only and e.index is not None)
        ]

    def mix(self, node, axis: int, reason: str) -> None:
        """``node`` mixes positions along ``axis`` of its first input (and first output): link
        the two by identity and mark the input's axis lossy (``reason``: how it mixes)."""
        x, y = node.inputs[0], node.outputs[0]
        self.link((y.name, axis), (x.name, axis))
        self.lossy[(x.name, axis)] = reason

    def virtual(self, node, tag: str, size: int) -> Member:
        member = (f"#{node.name or id(node)}:{tag}", 0)
        self.sizes[member] = size
        return member


class RuleContext:
    """What a rule may read: concrete shapes, constants, attributes, the opset."""

    def __init__(
        self, model, shapes: dict[str, tuple[int, ...]], measured: dict | None = None
    ) -> None:
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
        if (
            input_index is not None
            and input_index < len(node.inputs)
            and node.inputs[input_index] is not None
        ):
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


STRICT_ENV = "SPARSEC_STRICT_RULES"
_strict_override: list[bool] = []  # innermost ``strict()`` setting last


class RuleError(InternalError):
    """An axis rule raised while strict mode was on (a bug in that rule)."""


def is_strict() -> bool:
    """Whether a raising rule raises: the innermost ``strict()``, else ``SPARSEC_STRICT_RULES``."""
    if _strict_override:
        return _strict_override[-1]
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


@contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Within the block, a rule that raises raises ``RuleError`` (``enabled``) or becomes a
    barrier (not ``enabled``), whatever ``SPARSEC_STRICT_RULES`` says."""
    _strict_override.append(enabled)
    try:
        yield
    finally:
        _strict_override.pop()


def apply_rule(rule: Rule, node, ctx: RuleContext) -> Coupling | str:
    """The rule's coupling of ``node``, or (not strict) why it could not decide."""
    try:
        return rule(node, ctx)
    except Exception as error:
        if is_strict():
            domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            raise RuleError(
                f"axis rule of {domain}{node.op_type} raised on node '{node.name}': "
                f"{type(error).__name__}: {error}"
            ) from error
        return f"axis rule could not decide ({type(error).__name__}: {error})"


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


def count_fixup(c: Coupling, node, attribute: str, member: Member) -> None:
    """After surgery, set ``node.attribute`` to the number of kept positions of ``member``."""

    def apply(model, kept) -> None:
        positions = kept(member)
        if positions is not None:
            model.set_attr(node, attribute, int(len(positions)))

    c.fixups.append(Fixup(node, apply))
