"""Axis rules of ops that read tensor sizes at run time (Shape, Size), and the helpers that
follow one read dim through to the Reshape/Expand targets (and Resize sizes) it builds.

The invariant: a dim read at run time would change with pruning, so the axis it reads is
blocked, unless the dim only flows (through Unsqueeze/Squeeze/Cast/Identity, a Mul by a
positive integer constant, or a Mul by a read dim of an inner axis of the same tensor: the c·h
of ``x.view(n, c * h, w)``; of a size-1 outer one: TorchScript's B·C·nh at batch 1) into an
entry of a Reshape/Expand target or of Resize sizes that ``layout.shape_entries`` resolves:
then the target's axis is linked to it (``dim_source``/``dim_sources``) and follows the
pruning. A run of dims (a Slice of a shape, or Shape(x, start, end) itself) flows only through
plain copies (Cast/Identity), and only into targets surgery can rewrite for their one reader
(``_target_uses``, ``vector_producer(sole=True)``): anything else is a read.
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.rules.core import Coupling, Member, RuleContext, axis_rule, norm_axis


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
    if passes_into_targets(ctx, node.outputs[0]):  # the vector itself is a piece of targets
        return set()
    read: set[int] = set()
    for reader in _vector_readers(node.outputs[0]):
        picked = _picked(reader, ctx, dims)
        if picked is None:
            return set(dims)
        if passes_into_targets(ctx, reader.outputs[0]):
            continue
        read.update(picked)
    return read


VECTOR_CARRIERS = {"Cast", "Identity"}  # ops that pass a whole shape vector on unchanged


def piece_constant(const, value, attr) -> np.ndarray | None:
    """The array a piece of a shape vector always holds: a constant, or a Cast/Identity of an
    integer one, in the Cast's type (int32 or int64; paddle2onnx writes each constant entry of
    a Reshape target as ``Cast(int32 Constant)``); None when it is computed at run time.
    ``const`` and ``attr`` read a value's constant and a node's attribute (``RuleContext.const``
    and ``.attr`` in a rule, ``Model.constant`` and ``.attr`` in surgery)."""
    array = const(value)
    node = value.producer() if array is None and value is not None else None
    if node is None or node.op_type not in VECTOR_CARRIERS:
        return array
    inner = const(node.inputs[0])
    if inner is None or inner.dtype.kind not in "iu":
        return None
    dtype = inner.dtype if node.op_type == "Identity" else _CAST_INTS.get(attr(node, "to", -1))
    return None if dtype is None else inner.astype(dtype)


_CAST_INTS = {6: np.int32, 7: np.int64}  # Cast's ``to`` (ONNX int32, int64) for shape pieces


def _vector_readers(vector) -> list:
    """The nodes that read the shape vector ``vector``, looking through Cast/Identity copies
    of it (Paddle casts a shape to int32 and back before slicing it)."""
    readers = []
    for use in vector.uses():
        node = use.node
        if node.op_type in VECTOR_CARRIERS and not node.outputs[0].is_graph_output():
            readers += _vector_readers(node.outputs[0])
        else:
            readers.append(node)
    return readers


def _target_uses(vector) -> list:
    """The uses of a Concat-built shape vector whose entries ``shape_entries`` resolves: its own
    uses, or the one use at the end of a chain of sole-use Cast/Identity copies of it (a copy
    shared by several readers, or a vector read besides its copy, stays as it is: a read)."""
    uses = list(vector.uses())
    if len(uses) != 1 or uses[0].node.op_type not in VECTOR_CARRIERS:
        return uses
    end = uses[0]
    while end.node.op_type in VECTOR_CARRIERS:
        out = end.node.outputs[0]
        following = list(out.uses())
        if len(following) != 1 or out.is_graph_output():
            return [end]
        end = following[0]
    return [end]


def vector_producer(value, sole: bool = False):
    """The node computing the vector ``value``, through Cast/Identity copies of it (with
    ``sole``, only copies read by nothing else: a Reshape target tf2onnx casts to int64 after
    the Concat that builds it, whose pieces surgery may then edit for that Reshape alone)."""
    node = value.producer() if value is not None else None
    copied = False
    while node is not None and node.op_type in VECTOR_CARRIERS:
        if sole and len(list(node.outputs[0].uses())) != 1:
            return None
        node, copied = node.inputs[0].producer(), True
    if sole and copied and node is not None and len(list(node.outputs[0].uses())) != 1:
        return None  # surgery could not copy a shared vector behind the copies for one reader
    return node


def _shape_producer(value):
    """The Shape node whose output ``value`` is, through Cast/Identity copies; or None."""
    node = vector_producer(value)
    return node if node is not None and node.op_type == "Shape" else None


def _shape_pick(ctx: RuleContext, node) -> tuple[str, list[int]] | None:
    """(tensor name, axes) when ``node`` is Shape(tensor) itself (its ``start``/``end`` axes)
    or a constant Gather or Slice of Shape(tensor)."""
    if node.op_type == "Shape":
        x = node.inputs[0]
        return x.name, _shape_dims(node, ctx, ctx.rank(x) or 0)
    shape_node = _shape_producer(node.inputs[0]) if node.op_type in ("Gather", "Slice") else None
    if shape_node is None:
        return None
    x = shape_node.inputs[0]
    picked = _picked(node, ctx, _shape_dims(shape_node, ctx, ctx.rank(x) or 0))
    return None if picked is None else (x.name, picked)


def _shape_dims(node, ctx: RuleContext, rank: int) -> list[int]:
    """The axes of its input that a Shape node's output lists (``start``/``end``)."""
    start = norm_axis(int(ctx.attr(node, "start", 0)), rank) if rank else 0
    end = ctx.attr(node, "end")
    return list(range(rank))[start : None if end is None else norm_axis(int(end), rank)]


def _picked(reader, ctx: RuleContext, dims: list[int]) -> list[int] | None:
    """The axes a constant Gather (axis 0) or Slice of a shape vector picks, or None."""
    if (
        reader.op_type == "Gather"
        and int(ctx.attr(reader, "axis", 0)) == 0
        and ctx.const(reader.inputs[1]) is not None
    ):
        indices = np.atleast_1d(ctx.const(reader.inputs[1])).reshape(-1)
    elif (
        reader.op_type == "Slice"
        and ctx.ints(reader, "starts", 1) is not None
        and ctx.ints(reader, "ends", 2) is not None
        and (ctx.ints(reader, "steps", 4) or [1]) == [1]  # a strided pick reads (kept simple)
    ):
        indices = np.arange(len(dims))[
            slice(ctx.ints(reader, "starts", 1)[0], ctx.ints(reader, "ends", 2)[0])
        ]
    else:
        return None
    return [dims[int(i)] for i in indices if -len(dims) <= int(i) < len(dims)]


DIM_CARRIERS = {"Unsqueeze", "Squeeze", "Cast", "Identity"}
SHAPE_TARGETS = {"Reshape": 1, "Expand": 1, "Resize": 3}  # op -> its input holding a shape


def _carries(ctx: RuleContext, node, value) -> int | None:
    """The factor by which ``node`` passes the one-element dim ``value`` on: 1 through
    Unsqueeze/Squeeze/Cast/Identity, k through a Mul by a positive integer constant k (the
    ``n_rep`` of a grouped-query repeat) or by an inner dim of size k (``_inner_dim_factor``);
    None for anything else."""
    if node.op_type in DIM_CARRIERS:
        return 1 if node.inputs[0] is value else None
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
    factor = ctx.const(other) if other is not value else None
    if factor is None and other is not value:
        return _inner_dim_factor(ctx, value, other)
    if (
        factor is None
        or factor.size != 1
        or factor.dtype.kind not in "iu"
        or int(factor.reshape(-1)[0]) < 1
    ):
        return None
    return int(factor.reshape(-1)[0])


def _inner_dim_factor(ctx: RuleContext, value, other) -> int | None:
    """k when the dim ``value`` is multiplied by ``other``, a run-time dim of the same tensor on
    an inner axis (the c·h of ``x.view(n, c * h, w)``): the product follows ``value``'s axis
    with factor k = the inner size, while the inner dim stays a read (its axis is blocked, so
    k cannot change). When the outer of the two has size 1 at this binding (the B of
    TorchScript's ``B * C * nh`` for MobileViT's unfold, at batch 1) the roles swap: the
    product follows the inner dim (times the outer's factor), the outer is a read (the batch:
    never cut), and at any batch the product scales with the batch the merged axis holds too
    (the oracle checks batch 2 as well). None otherwise."""
    mine, theirs = dim_source(ctx, value), dim_source(ctx, other)
    if mine is None or theirs is None:
        return None
    (name, axis), ((other_name, other_axis), other_factor) = mine[0], theirs
    shape = ctx.shapes.get(name)
    if other_name != name or other_axis == axis or shape is None:
        return None
    size_one = (int(shape[axis]) == 1, int(shape[other_axis]) == 1)
    if other_axis < axis:
        return other_factor if size_one == (False, True) else None
    return None if size_one == (True, False) else other_factor * int(shape[other_axis])


def passes_into_targets(ctx: RuleContext, value, depth: int = 4) -> bool:
    """Whether a dim value (one element, or a run of dims sliced from a shape vector: the
    [N, C] of ``x.flatten(2)``'s target) is used only as entries of Reshape/Expand targets
    built by a Concat (through ``_carries`` ops): exactly the entries ``shape_entries``
    resolves to the dim they carry (times a constant factor), so the target's axis is linked
    to it. Any other use (a target that is the value itself, other arithmetic) is a read."""
    uses = list(value.uses())
    if not uses or value.is_graph_output() or depth == 0:
        return False
    several = (ctx.shape(value) or (1,)) != (1,) and ctx.shape(value) != ()
    for use in uses:
        node = use.node
        if _carries(ctx, node, value) is not None and not (
            several and node.op_type not in VECTOR_CARRIERS
        ):  # a run of dims goes on only through plain copies: dim_sources resolves no more
            ok = passes_into_targets(ctx, node.outputs[0], depth - 1)
        else:
            targets = _target_uses(node.outputs[0]) if node.op_type == "Concat" else []
            ok = (
                bool(targets)
                and not node.outputs[0].is_graph_output()
                and all(
                    SHAPE_TARGETS.get(u.node.op_type) == u.idx
                    and ctx.shape(u.node.outputs[0]) is not None
                    and ctx.shape(u.node.inputs[0]) is not None
                    for u in targets
                )
            )  # the target rule will resolve it
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
    carried = next(
        (v for v in node.inputs if v is not None and _carries(ctx, node, v) is not None), None
    )  # of a product of two dims of one tensor, the outer (its partner inner), unless the outer
    # has size 1 here: then the inner (``_inner_dim_factor``); never both
    if carried is not None and ctx.const(carried) is None:
        source = dim_source(ctx, carried, depth - 1)
        return None if source is None else (source[0], source[1] * _carries(ctx, node, carried))
    pick = _shape_pick(ctx, node)
    return ((pick[0], pick[1][0]), 1) if pick is not None and len(pick[1]) == 1 else None


def dim_sources(ctx: RuleContext, value) -> list[tuple[Member, int]] | None:
    """``dim_source`` for every element of a piece of a shape vector: one element, or a
    constant Gather or Slice picking several dims of Shape(X) at once (the [N, C] in
    ``Concat(Slice(Shape(x), 0, 2), [-1])``, ``x.flatten(2)`` as TorchScript writes it), or
    Shape(X, start, end) itself (dynamo's ``Concat(Shape(x, 0, 2), [7, 7])`` Resize sizes)."""
    shape = ctx.shape(value)
    if shape is None or len(shape) != 1:
        return None
    if shape[0] == 1:
        single = dim_source(ctx, value)
        return None if single is None else [single]
    node = vector_producer(value)
    pick = _shape_pick(ctx, node) if node is not None else None
    if pick is None or len(pick[1]) != shape[0]:
        return None
    return [((pick[0], axis), 1) for axis in pick[1]]
