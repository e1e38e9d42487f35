"""Exporter idioms rewritten to the single op (or the value) they compute, so that the channel
engine sees through them. Both passes are exact: outputs are unchanged bit for bit.

``transpose-canonicalize``. The dynamo exporter's decomposed scaled-dot-product attention transposes K as

    R1 = Reshape(K, [-1, K[-2], K[-1]])      # flatten the leading dims (batch × heads)
    T  = Transpose(R1, perm=[0, 2, 1])
    R2 = Reshape(T, K[:-2] + [K[-1], K[-2]])  # unflatten them

which is ``Transpose(K, perm=[..., r-1, r-2])`` for every K of that rank: the flattened axis is
restored with the same leading dims, in the same order. The idiom hides the head axis from the
channel engine (a merged batch×heads axis, and a shape read at run time), so it is replaced.

Rewritten only when: R1 and T have no other consumer; the concrete shapes (at the bound input
shapes) are exactly the ones above; and each target is computed at run time from constants and
``Shape`` of K itself (so it follows any K), or is a constant while K's shape is static.
Exact: a transpose moves values, it computes nothing.

``shape-canonicalize``. PyTorch's legacy exporter writes an ``expand`` to a size computed at
run time (transformers' grouped-query ``repeat_kv`` is one) as

    T = Concat(dims...)                               # the requested sizes
    F = Reshape(T, [-1])                              # a no-op on a 1-D vector
    W = Where(Equal(F, ConstantOfShape(Shape(F))·c), ConstantOfShape(Shape(F)), F)   # c = -1 → 1
    Expand(X, W)

The Reshape of a 1-D vector to [-1] returns it; the Where replaces the entries equal to c by
1, so it returns F when no entry can equal c: every entry is a constant other than c, or a
dim read from a ``Shape`` (never negative), possibly through Unsqueeze/Squeeze/Cast or a Mul
by a positive constant, while c < 0. Both are replaced by their input; the run-time dims
then reach the Expand target directly (where ``shape_entries`` links them).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from sparsec.analysis.rules.dims import DIM_CARRIERS
from sparsec.analysis.shapes import value_shapes
from sparsec.passes.base import InPlacePass, PassResult

SHAPE_OPS = {
    "Shape",
    "Slice",
    "Gather",
    "Concat",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Constant",
    "Identity",
}


class TransposeCanonicalizePass(InPlacePass):
    """Replace Reshape → Transpose([0, 2, 1]) → Reshape swaps of the last two axes by a Transpose."""

    name: ClassVar[str] = "transpose-canonicalize"
    keeps_value_shapes: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "Rewrite flatten → transpose → unflatten idioms (dynamo's SDPA Kᵀ) as one Transpose."
    )

    def call(self, model) -> PassResult:
        rewritten = 0
        if not _has_ops(model, {"Reshape"}):  # no idiom: spare the shape inference
            return PassResult(model, modified=False, stats={"transposes_canonicalized": 0})
        shapes = value_shapes(model, None)
        for node in list(model.nodes()):
            source = _swap_idiom(model, node, shapes)
            if source is None:
                continue
            rank = len(shapes[source.name])
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            transposed = model.add_node(
                "Transpose", [source], {"perm": perm}, before=node, name="sparsec/canonical"
            )
            model.replace_all_uses(node.outputs[0], transposed)
            rewritten += 1
        return PassResult(
            model, modified=bool(rewritten), stats={"transposes_canonicalized": rewritten}
        )


def _has_ops(model, op_types: set[str]) -> bool:
    """Whether a main-graph node is one of ``op_types`` (the idioms' only possible anchors)."""
    return any(node.op_type in op_types for node in model.graph)


def _swap_idiom(model, r2, shapes: dict):
    """K when ``r2`` ends a flatten → swap → unflatten of K's last two axes, else None."""
    if r2.op_type != "Reshape" or r2.outputs[0].is_graph_output():
        return None
    transpose = r2.inputs[0].producer()
    if (
        transpose is None
        or transpose.op_type != "Transpose"
        or list(model.attr(transpose, "perm", [])) != [0, 2, 1]
    ):
        return None
    r1 = transpose.inputs[0].producer()
    if (
        r1 is None
        or r1.op_type != "Reshape"
        or not _sole_use(transpose.inputs[0], transpose)
        or not _sole_use(r2.inputs[0], r2)
    ):
        return None
    k = r1.inputs[0]
    ks, r1s, r2s = (
        shapes.get(k.name),
        shapes.get(r1.outputs[0].name),
        shapes.get(r2.outputs[0].name),
    )
    if ks is None or r1s is None or r2s is None or len(ks) < 3:
        return None
    if tuple(r1s) != (math.prod(ks[:-2]), ks[-2], ks[-1]) or tuple(r2s) != tuple(ks[:-2]) + (
        ks[-1],
        ks[-2],
    ):
        return None
    static = all(isinstance(d, int) for d in (model.shape_dims(k) or [None]))
    return (
        k
        if all(_follows(model, target, k, static) for target in (r1.inputs[1], r2.inputs[1]))
        else None
    )


def _sole_use(value, node) -> bool:
    return not value.is_graph_output() and [use.node for use in value.uses()] == [node]


def _follows(model, target, k, static: bool, depth: int = 8) -> bool:
    """Whether ``target`` follows any K: computed from constants and ``Shape(k)`` only, or a
    constant when K's shape is static (a constant target fits only the shape it was made for)."""
    if model.constant(target) is not None:
        return static
    node = target.producer()
    if node is None or node.op_type not in SHAPE_OPS or depth == 0:
        return False
    if node.op_type == "Shape":
        return node.inputs[0] is k
    return all(
        v is None or model.constant(v) is not None or _follows(model, v, k, static, depth - 1)
        for v in node.inputs
    )


class ShapeCanonicalizePass(InPlacePass):
    """Drop no-ops on shape vectors: Reshape of a 1-D vector to [-1], and the legacy exporter's
    ``-1 → 1`` Where on a vector that cannot hold -1."""

    name: ClassVar[str] = "shape-canonicalize"
    keeps_value_shapes: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "Drop no-op Reshape([-1]) and expand(-1 → 1) Where idioms on shape vectors (legacy exports)."
    )

    def call(self, model) -> PassResult:
        if not _has_ops(model, {"Reshape", "Where"}):  # no idiom: spare the shape inference
            return PassResult(model, modified=False, stats={"shape_idioms_removed": 0})
        shapes, rewritten = value_shapes(model, None), 0
        for node in list(
            model.nodes()
        ):  # graph order: a Where sees its vector's Reshape already gone
            if node.outputs[0].is_graph_output() or not node.outputs[0].uses():
                continue
            source = (
                _flat_vector(model, node, shapes)
                if node.op_type == "Reshape"
                else _minus_one_where(model, node, shapes)
            )
            if source is not None:
                model.replace_all_uses(node.outputs[0], source)
                rewritten += 1
        return PassResult(
            model, modified=bool(rewritten), stats={"shape_idioms_removed": rewritten}
        )


def _flat_vector(model, reshape, shapes: dict):
    """V when ``reshape`` is Reshape(V, [-1]) of a 1-D V, else None."""
    target = model.constant(reshape.inputs[1])
    dims = shapes.get(reshape.inputs[0].name)
    ok = (
        target is not None
        and target.reshape(-1).tolist() == [-1]
        and dims is not None
        and len(dims) == 1
    )
    return reshape.inputs[0] if ok else None


def _minus_one_where(model, where, shapes: dict):
    """F when ``where`` is Where(Equal(F, full_like(F, c)), full_like(F, 1), F) and no entry of
    F can equal c, else None."""
    if where.op_type != "Where":
        return None
    equal, f = where.inputs[0].producer(), where.inputs[2]
    if (
        equal is None
        or equal.op_type != "Equal"
        or equal.inputs[0] is not f
        or _filled(model, where.inputs[1], f, shapes) != 1
    ):
        return None
    c = _filled(model, equal.inputs[1], f, shapes)
    return f if c is not None and c < 0 and _never_negative(model, f) else None


def _filled(model, value, like, shapes: dict, depth: int = 3) -> int | None:
    """The one number a vector of ``like``'s length is filled with: ConstantOfShape(Shape(like)),
    a constant (the same, folded), or a Mul of two such; else None."""
    array, node = model.constant(value), value.producer()
    if array is not None:
        same_length = array.ndim == 1 and (array.shape[0],) == tuple(shapes.get(like.name, ()))
        return (
            int(array[0])
            if same_length and array.dtype.kind in "iu" and (array == array[0]).all()
            else None
        )
    if node is None or depth == 0:
        return None
    if node.op_type == "Mul" and len(node.inputs) == 2:
        factors = [
            _scalar(model, v)
            if _one_element(model, v)
            else _filled(model, v, like, shapes, depth - 1)
            for v in node.inputs
        ]
        return None if None in factors else factors[0] * factors[1]
    if node.op_type == "ConstantOfShape":
        shape, fill = node.inputs[0].producer(), model.attr(node, "value")
        if (
            shape is not None
            and shape.op_type == "Shape"
            and shape.inputs[0] is like
            and fill is not None
        ):
            return int(np.asarray(fill).reshape(-1)[0])
    return None


def _one_element(model, value) -> bool:
    shape = model.constant_shape(value)
    return shape is not None and math.prod(shape) == 1


def _scalar(model, value) -> int | None:
    array = model.constant(value)
    return int(array.reshape(-1)[0]) if array is not None and array.dtype.kind in "iu" else None


def _never_negative(model, vector, depth: int = 6) -> bool:
    """Every entry of an integer vector is ≥ 0: a non-negative constant, a ``Shape`` (or a
    constant Gather/Slice of one), or built from those by Concat, carriers or a Mul by a
    positive constant."""
    array = model.constant(vector)
    if array is not None:
        return bool((array >= 0).all())
    node = vector.producer()
    if node is None or depth == 0:
        return False
    if node.op_type == "Shape":
        return True
    if node.op_type in ("Gather", "Slice"):
        return _never_negative(model, node.inputs[0], depth - 1)
    if node.op_type in DIM_CARRIERS or node.op_type in ("Concat", "Mul"):
        return all(
            v is None or _never_negative(model, v, depth - 1)
            for v in node.inputs
            if not (node.op_type in ("Unsqueeze", "Squeeze") and v is not node.inputs[0])
        )
    return False
