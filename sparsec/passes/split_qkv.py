"""``split-qkv``: a packed QKV projection rewritten as three separate ones.

timm's ViT (and many other encoders) compute attention's Q, K and V with one packed projection:

    P = X·W + b                            # [B, N, 3·H·D]
    T = Transpose(Reshape(P, [a, c, 3, H, D]), perm=[2, 0, 3, 1, 4])     # [3, a, H, c, D]
    Q, K, V = T[0], T[1], T[2]             # Gather(i, axis 0), Split + Squeeze, or Slice + Squeeze

The reshape splits the 3·H·D axis into (3, H, D), so the head axis is an inner part of it and
the channel engine cannot remove heads. Element (x, h, y, d) of part i is
``P[r, i·H·D + h·D + d]`` with ``r = x·c + y`` the flattened leading index, which is exactly

    Transpose(Reshape(P[..., i·H·D:(i+1)·H·D], [a, c, H, D]), perm=[0, 2, 1, 3])

with the target ``[a, c, H, D]`` the original one without its ``3``: run-time dims (``-1``, or
the ``0`` that copies dim 0 or 1, which P and its slice share) resolve to the same numbers for
every input, so the new target follows any batch and sequence size that the original did. When
P = X·W (+ b) with constant W and b and no other use, the slice of P is written as X·W[:, part]
(+ b[part]): the separate Q/K/V projections of the written-out (BERT) form, whose heads the
engine removes. Otherwise P is sliced; so is a P whose W or b is shared with other nodes (one
packed QKV weight tied between blocks): split, the weight would be copied per block, untying the
blocks and growing the model. Sliced, the shared weight keeps every block's heads in one group,
and they are pruned jointly (the same heads of each block).

Rewritten only when: the permutation is exactly [2, 0, 3, 1, 4]; the target's last three
elements are the constants 3, H, D (the target a constant, or a Concat of rank-1 pieces), so
P's last dim is 3·H·D for every input the original accepts; P has rank 3 and, at the bound input
shapes, the reshape gives (P[0], P[1], 3, H, D); every part taken is a constant index of axis 0
(Gather, Split + Squeeze or Slice + Squeeze, Squeeze of exactly axis 0); and no intermediate
value (P, the reshaped, the transposed, the MatMul output, the Split/Slice outputs) has any other
use or is a graph output.
Exact: the slice form only moves values. The split-weight form computes each output element with
the same products over the same reduction axis; onnxruntime's CPU MatMul is bit-exact under
this column split (measured: widths 96 to 2304, batch 1 to 2·197 rows); a kernel whose reduction
order depends on the output width could differ in the last bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sparsec.analysis.shapes import value_shapes
from sparsec.passes.base import InPlacePass, PassResult

PERM = [2, 0, 3, 1, 4]


@dataclass
class _Match:
    packed: object  # the packed [B, N, 3·H·D] value
    reshape: object
    transpose: object
    width: int  # H·D
    target: list  # the new target's pieces: ir values (kept) and int64 arrays (new constants)
    parts: dict  # part index -> values equal to that part


class SplitQkvPass(InPlacePass):
    """Replace Reshape(.., 3, H, D) → Transpose(2, 0, 3, 1, 4) → unbind by three separate parts."""

    name: ClassVar[str] = "split-qkv"
    keeps_value_shapes: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "Split packed QKV projections (timm's qkv Linear) into separate Q, K, V projections."
    )

    def call(self, model) -> PassResult:
        candidates = [
            n
            for n in model.nodes()
            if n.op_type == "Transpose" and list(model.attr(n, "perm", [])) == PERM
        ]
        shapes = value_shapes(model, None) if candidates else {}
        matches = [m for node in candidates if (m := _match(model, node, shapes)) is not None]
        weights = sum(_rewrite(model, match) for match in matches)
        stats = {"qkv_split": len(matches), "qkv_weights_split": weights}
        return PassResult(model, modified=bool(matches), stats=stats)


def _match(model, transpose, shapes: dict) -> _Match | None:
    """The packed-QKV pattern ending in ``transpose`` (perm [2, 0, 3, 1, 4]), every condition
    verified, else None."""
    reshape = transpose.inputs[0].producer()
    if (
        reshape is None
        or reshape.op_type != "Reshape"
        or not _sole_use(transpose.inputs[0], transpose)
    ):
        return None
    packed = reshape.inputs[0]
    if not _sole_use(packed, reshape) or model.opset < 10:
        return None
    ps, rs = shapes.get(packed.name), shapes.get(reshape.outputs[0].name)
    if (
        ps is None
        or rs is None
        or len(ps) != 3
        or len(rs) != 5
        or tuple(rs[:3]) != (ps[0], ps[1], 3)
    ):
        return None
    target, parts = _target(model, reshape.inputs[1], shapes), _parts(model, transpose)
    if target is None or not parts or target[1] != rs[3] * rs[4] or ps[2] != 3 * target[1]:
        return None
    return _Match(packed, reshape, transpose, target[1], target[0], parts)


def _sole_use(value, node) -> bool:
    return (
        value is not None
        and not value.is_graph_output()
        and [use.node for use in value.uses()] == [node]
    )


def _target(model, target, shapes: dict) -> tuple[list, int] | None:
    """(pieces of the reshape target without its element 2, H·D) when elements 2, 3, 4 are the
    constants 3, H, D (the target a constant, or a Concat of rank-1 pieces)."""
    array = model.constant(target)
    concat = target.producer() if array is None else None
    if array is not None:
        inputs, arrays = [target], [array]
    elif (
        concat is not None and concat.op_type == "Concat" and model.attr(concat, "axis") in (0, -1)
    ):
        inputs, arrays = list(concat.inputs), [model.constant(v) for v in concat.inputs]
    else:
        return None
    pieces, elements = [], []
    for piece, array in zip(inputs, arrays):
        length = shapes.get(piece.name) if piece is not None else None
        if length is None or len(length) != 1:
            return None
        start, elements = (
            len(elements),
            elements + (list(array) if array is not None else [None] * length[0]),
        )
        if start <= 2 < len(elements) and array is not None and array.size > 1:
            pieces.append(np.delete(array.astype(np.int64), 2 - start))
        elif not start <= 2 < len(elements):
            pieces.append(piece)
    if len(elements) != 5 or None in elements[2:] or elements[2] != 3 or min(elements[3:]) <= 0:
        return None
    return pieces, int(elements[3] * elements[4])


def _parts(model, transpose) -> dict | None:
    """{part index: values equal to that part} over every use of the transposed value."""
    value, parts = transpose.outputs[0], {}
    if value.is_graph_output():
        return None
    for node in {id(use.node): use.node for use in value.uses()}.values():
        taken = _taken(model, node)
        if taken is None:
            return None
        for index, out in taken:
            parts.setdefault(index, []).append(out)
    live = any(out.uses() or out.is_graph_output() for outs in parts.values() for out in outs)
    return parts if live else None  # a dead pattern (already rewritten, not yet cleaned up) stays


def _taken(model, node) -> list | None:
    """[(part index, value)] that ``node`` takes from the transposed value (axis 0), or None."""
    if node.op_type == "Gather" and model.attr(node, "axis", 0) in (0, -5):
        index = model.constant(node.inputs[1])
        ok = index is not None and index.ndim == 0 and -3 <= int(index) < 3
        return [(int(index) % 3, node.outputs[0])] if ok else None
    if node.op_type == "Slice" and len(node.inputs) >= 3:
        return _sliced(model, node)
    if (
        node.op_type == "Split"
        and model.attr(node, "axis", 0) in (0, -5)
        and len(node.outputs) == 3
    ):
        sizes = (
            model.constant(node.inputs[1])
            if len(node.inputs) > 1 and node.inputs[1] is not None
            else None
        )
        sizes = sizes if sizes is not None else model.attr(node, "split")
        if sizes is not None and list(sizes) != [1, 1, 1]:
            return None
        squeezed = [_squeezed(model, out) for out in node.outputs]
        return (
            None if None in squeezed else [(i, v) for i, outs in enumerate(squeezed) for v in outs]
        )
    return None


def _sliced(model, node) -> list | None:
    """Slice [i, i + 1) of axis 0 followed by Squeeze(axis 0)."""
    inputs = list(node.inputs) + [None] * 2
    starts, ends = model.constant(inputs[1]), model.constant(inputs[2])
    axes = np.array([0]) if inputs[3] is None else model.constant(inputs[3])
    steps = np.array([1]) if inputs[4] is None else model.constant(inputs[4])
    if starts is None or ends is None or axes is None or steps is None or starts.shape != (1,):
        return None
    if [int(a) % 5 for a in axes] != [0] or list(steps) != [1]:
        return None
    start = int(starts[0]) + 3 if int(starts[0]) < 0 else int(starts[0])
    end = min(int(ends[0]) + 3 if int(ends[0]) < 0 else int(ends[0]), 3)
    squeezed = _squeezed(model, node.outputs[0])
    return (
        None
        if squeezed is None or end - start != 1 or not 0 <= start < 3
        else [(start, v) for v in squeezed]
    )


def _squeezed(model, value) -> list | None:
    """The outputs of the Squeeze(axes=[0]) nodes that are ``value``'s only uses, else None."""
    if value.is_graph_output():
        return None
    outs = []
    for use in value.uses():
        node = use.node
        axes = (
            model.constant(node.inputs[1])
            if len(node.inputs) > 1 and node.inputs[1] is not None
            else None
        )
        axes = axes if axes is not None else model.attr(node, "axes")
        if (
            node.op_type != "Squeeze"
            or use.idx != 0
            or axes is None
            or [int(a) % 5 for a in axes] != [0]
        ):
            return None
        outs.append(node.outputs[0])
    return outs


def _projection(model, packed):
    """(x, W value, W, b value, b, b first) when ``packed`` = X·W (+ b), W constant [K, L], b [L]."""
    node, bias_value, bias, bias_first = packed.producer(), None, None, False
    if node is not None and node.op_type == "Add":
        consts = [model.constant(v) for v in node.inputs]
        if len(consts) != 2 or (consts[0] is None) == (consts[1] is None):
            return None
        bias_first = consts[0] is not None
        bias_value, matmul_out = node.inputs[int(not bias_first)], node.inputs[int(bias_first)]
        bias = consts[int(not bias_first)]
        if bias.ndim != 1 or not _sole_use(matmul_out, node):
            return None
        node = matmul_out.producer()
    if node is None or node.op_type != "MatMul":
        return None
    weight = model.constant(node.inputs[1])
    if weight is None or weight.ndim != 2 or (bias is not None and bias.shape != weight.shape[1:]):
        return None
    if _shared(node.inputs[1], node) or (
        bias is not None and _shared(bias_value, packed.producer())
    ):
        return None  # split, it would be copied per block: the blocks would lose their tie
    return node.inputs[0], node.inputs[1], weight, bias_value, bias, bias_first


def _shared(value, node) -> bool:
    """Whether the constant ``value`` is read by a node other than ``node`` (a weight tied
    between blocks)."""
    return any(use.node is not node for use in value.uses()) or value.is_graph_output()


def _rewrite(model, match: _Match) -> bool:
    """Build the used parts before the transpose and route the old part values to them; True
    when the projection weight was split (else the packed value was sliced)."""
    before = match.transpose
    pieces = [
        p
        if not isinstance(p, np.ndarray)
        else model.add_initializer(f"{match.packed.name}/split_shape", p)
        for p in match.target
    ]
    target = (
        pieces[0]
        if len(pieces) == 1
        else model.add_node("Concat", pieces, {"axis": 0}, before=before, name="sparsec/split_qkv")
    )
    projection = _projection(model, match.packed)
    allowzero = model.attr(match.reshape, "allowzero")
    for index, values in sorted(match.parts.items()):
        if not any(value.uses() or value.is_graph_output() for value in values):
            continue
        part = _part(
            model, match, projection, slice(index * match.width, (index + 1) * match.width), index
        )
        attrs = {} if allowzero is None else {"allowzero": allowzero}
        part = model.add_node(
            "Reshape", [part, target], attrs, before=before, name="sparsec/split_qkv"
        )
        part = model.add_node(
            "Transpose", [part], {"perm": [0, 2, 1, 3]}, before=before, name="sparsec/split_qkv"
        )
        for value in values:
            model.replace_all_uses(value, part)
    return projection is not None


def _part(model, match: _Match, projection, cols: slice, index: int):
    """P[..., cols]: X·W[:, cols] (+ b[cols]) with new weights, or a Slice of P."""
    before = match.transpose
    if projection is None:
        bounds = [
            model.add_initializer(f"{match.packed.name}/part{index}_{key}", np.array([v], np.int64))
            for key, v in (("starts", cols.start), ("ends", cols.stop), ("axes", -1))
        ]
        return model.add_node(
            "Slice", [match.packed, *bounds], before=before, name="sparsec/split_qkv"
        )
    x, w_value, weight, b_value, bias, bias_first = projection
    w_part = model.add_initializer(f"{w_value.name}_part{index}", weight[:, cols])
    part = model.add_node("MatMul", [x, w_part], before=before, name="sparsec/split_qkv")
    if bias is None:
        return part
    b_part = model.add_initializer(f"{b_value.name}_part{index}", bias[cols])
    return model.add_node(
        "Add",
        [b_part, part] if bias_first else [part, b_part],
        before=before,
        name="sparsec/split_qkv",
    )
