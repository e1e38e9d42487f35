"""``transpose-canonicalize``: exporter idioms rewritten to the single op they compute.

The dynamo exporter's decomposed scaled-dot-product attention transposes K as

    R1 = Reshape(K, [-1, K[-2], K[-1]])      # flatten the leading dims (batch × heads)
    T  = Transpose(R1, perm=[0, 2, 1])
    R2 = Reshape(T, K[:-2] + [K[-1], K[-2]])  # unflatten them

which is ``Transpose(K, perm=[..., r-1, r-2])`` for every K of that rank: the flattened axis is
restored with the same leading dims, in the same order. The idiom hides the head axis from the
channel engine (a merged batch×heads axis, and a shape read at run time), so it is replaced.

Rewritten only when: R1 and T have no other consumer; the concrete shapes (at the bound input
shapes) are exactly the ones above; and each target is computed at run time from constants and
``Shape`` of K itself (so it follows any K), or is a constant while K's shape is static.
Exact: outputs are unchanged bit for bit (a transpose moves values, it computes nothing).
"""

from __future__ import annotations

import math
from typing import ClassVar

from sparsec.analysis.shapes import value_shapes
from sparsec.passes.base import InPlacePass, PassResult
from sparsec.passes.registry import register

SHAPE_OPS = {"Shape", "Slice", "Gather", "Concat", "Unsqueeze", "Squeeze", "Cast", "Constant", "Identity"}


@register
class TransposeCanonicalizePass(InPlacePass):
    """Replace Reshape → Transpose([0, 2, 1]) → Reshape swaps of the last two axes by a Transpose."""

    name: ClassVar[str] = "transpose-canonicalize"
    summary: ClassVar[str] = "Rewrite flatten → transpose → unflatten idioms (dynamo's SDPA Kᵀ) as one Transpose."

    def call(self, model) -> PassResult:
        shapes = value_shapes(model, None)
        rewritten = 0
        for node in list(model.nodes()):
            source = _swap_idiom(model, node, shapes)
            if source is None:
                continue
            rank = len(shapes[source.name])
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            transposed = model.add_node("Transpose", [source], {"perm": perm}, before=node, name="sparsec/canonical")
            model.replace_all_uses(node.outputs[0], transposed)
            rewritten += 1
        return PassResult(model, modified=bool(rewritten), stats={"transposes_canonicalized": rewritten})


def _swap_idiom(model, r2, shapes: dict):
    """K when ``r2`` ends a flatten → swap → unflatten of K's last two axes, else None."""
    if r2.op_type != "Reshape" or r2.outputs[0].is_graph_output():
        return None
    transpose = r2.inputs[0].producer()
    if transpose is None or transpose.op_type != "Transpose" or list(model.attr(transpose, "perm", [])) != [0, 2, 1]:
        return None
    r1 = transpose.inputs[0].producer()
    if r1 is None or r1.op_type != "Reshape" or not _sole_use(transpose.inputs[0], transpose) or not _sole_use(r2.inputs[0], r2):
        return None
    k = r1.inputs[0]
    ks, r1s, r2s = shapes.get(k.name), shapes.get(r1.outputs[0].name), shapes.get(r2.outputs[0].name)
    if ks is None or r1s is None or r2s is None or len(ks) < 3:
        return None
    if tuple(r1s) != (math.prod(ks[:-2]), ks[-2], ks[-1]) or tuple(r2s) != tuple(ks[:-2]) + (ks[-1], ks[-2]):
        return None
    static = all(isinstance(d, int) for d in (model.shape_dims(k) or [None]))
    return k if all(_follows(model, target, k, static) for target in (r1.inputs[1], r2.inputs[1])) else None


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
    return all(v is None or model.constant(v) is not None or _follows(model, v, k, static, depth - 1)
               for v in node.inputs)
