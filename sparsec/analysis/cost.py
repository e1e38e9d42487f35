"""Parameters and multiply-accumulates (MACs) per node, and their totals.

Parameters: every floating-point constant tensor (initializer, ``Constant`` node or
``ConstantOfShape`` with a constant shape), and the stored integers of a quantized weight (the
data a ``DequantizeLinear`` reads), counts once, however many nodes share it; a node is
credited with the constants it consumes first. MACs: one rule per op type in ``MAC_RULES``
(data, not branches; the compute ops' read their ``op_layouts`` entry), each computing from
concrete shapes bound as ``sparsec.analysis.inputs.bind_shapes`` says (batch 1 unless the user
says otherwise). A node whose shapes stay unknown is listed in ``unknown`` instead of silently counting zero.

Work MACs leave out, so that a latency / MACs ratio can be explained: *other operations* (one
per output element of an elementwise op, a factor per op in ``ELEMENT_FACTORS``; pooling's
window per output element; reductions one per input element; Resize its interpolation taps per
output element; LRN its window) and *bytes moved* by data-movement ops (``MOVEMENT_OPS``: the
bytes of their outputs). Both are estimates of work a runtime does, not measured; compute ops
(those with MACs) count none (their bias adds are part of the products).

Work done once, at session creation: a node whose inputs are all constants (or outputs of such
nodes) is folded by onnxruntime before the first run (a sparse encoding's decoder, a position
table built with Range), so it counts no MACs, other operations or bytes moved, and a
``ConstantOfShape`` only such nodes read (the decoder's zero fill) is not a parameter: the
parameters are what is stored and what the per-run graph reads.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sparsec.analysis.op_layouts import COMPUTE_OPS
from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.rules.elementwise import ELEMENTWISE
from sparsec.analysis.rules.layout import REDUCTIONS
from sparsec.analysis.shapes import Shape, value_shapes


@dataclass
class NodeCost:
    name: str
    op_type: str
    params: int
    macs: int | None
    other_ops: int | None = 0  # non-MAC element operations (None: shapes unknown)
    bytes_moved: int | None = 0  # bytes a data-movement op writes (None: shapes unknown)


@dataclass
class CostReport:
    params: int
    macs: int
    nodes: list[NodeCost] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    other_ops: int = 0
    bytes_moved: int = 0
    other_unknown: list[str] = field(default_factory=list)  # other ops / bytes not counted

    def by_op(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for node in self.nodes:
            row = table.setdefault(node.op_type, Counter())
            row["count"] += 1
            row["params"] += node.params
            row["macs"] += node.macs or 0
            row["other_ops"] += node.other_ops or 0
            row["bytes_moved"] += node.bytes_moved or 0
        return {op: dict(row) for op, row in table.items()}


class _Shapes:
    """Shape lookups for one node's cost rule."""

    def __init__(self, model, shapes: Mapping[str, Shape]) -> None:
        self.model, self.shapes = model, shapes

    def of(self, value) -> Shape | None:
        if value is None:
            return None
        return self.shapes.get(value.name) or self.model.constant_shape(value)


def _prod(dims) -> int:
    return int(math.prod(dims))


def _weighted(node, s: _Shapes) -> int | None:
    """A compute op of ``op_layouts``: a conv's ``full_side`` elements × prod(W.shape[1:]); a
    product's output elements × the length of its activation's contraction axis."""
    layout = op_layout(s.model, node)
    if layout.role == "conv":
        side = (
            node.outputs[0]
            if layout.full_side == "output"
            else node.inputs[layout.activation.index]
        )
        elements, weight = s.of(side), s.of(node.inputs[layout.weight.index])
        return None if elements is None or weight is None else _prod(elements) * _prod(weight[1:])
    out, a = s.of(node.outputs[0]), s.of(node.inputs[layout.activation.index])
    if out is None or a is None or not a:
        return None
    return _prod(out) * a[layout.activation.contraction if len(a) >= 2 else -1]


def _attention(node, s: _Shapes) -> int | None:
    """Score and context products: 2 × B × Sq × Skv × hidden (projections are separate ops),
    plus the packed input projection of ``com.microsoft`` Attention when it has weights."""
    query, key = s.of(node.inputs[0]), s.of(node.inputs[1]) if len(node.inputs) > 1 else None
    if query is None:
        return None
    macs = 0
    layout = op_layout(s.model, node)  # com.microsoft Attention: its packed projection
    if layout is not None:
        weights = s.of(node.inputs[layout.weight.index])
        if weights is None:
            return None
        macs += _prod(query[:-1]) * _prod(weights)
        hidden = weights[layout.weight.kept] // 3
        return macs + 2 * query[0] * query[1] * query[1] * hidden
    if key is None:
        return None
    if len(query) == 4:  # [B, H, S, D]
        return 2 * query[0] * query[1] * query[2] * key[2] * query[3]
    return 2 * query[0] * query[1] * key[1] * query[2]


def _recurrent(node, s: _Shapes) -> int | None:
    """LSTM/GRU/RNN: steps × batch × (|W| + |R|); W and R already hold gates × hidden rows."""
    x, w, r = s.of(node.inputs[0]), s.of(node.inputs[1]), s.of(node.inputs[2])
    if x is None or w is None or r is None:
        return None
    return x[0] * x[1] * (_prod(w) + _prod(r))


MAC_RULES: dict[tuple[str, str], Callable] = {
    **{("", op_type): _weighted for op_type in COMPUTE_OPS},
    ("", "Attention"): _attention,
    ("com.microsoft", "Attention"): _attention,
    ("com.microsoft", "MultiHeadAttention"): _attention,
    ("", "LSTM"): _recurrent,
    ("", "GRU"): _recurrent,
    ("", "RNN"): _recurrent,
}


def folded_nodes(model) -> set[int]:
    """ids of the nodes computed from constants only (transitively): onnxruntime folds them at
    session creation. Nodes with subgraphs or random outputs are never folded."""
    constant = {id(v) for v in model.initializers().values()}
    folded: set[int] = set()
    for node in model.nodes():
        if node.op_type.startswith("Random") or model.has_subgraphs(node):
            continue
        if all(v is None or id(v) in constant for v in node.inputs):
            folded.add(id(node))
            constant.update(id(o) for o in node.outputs)
    return folded


def float_constants(model, folded: set[int] | None = None) -> list:
    """The constants counted as parameters (see the module docstring), each once."""
    folded = folded_nodes(model) if folded is None else folded
    seen, result = set(), []
    candidates = list(model.initializers().values())
    candidates += [
        o for n in model.nodes() if n.op_type in ("Constant", "ConstantOfShape") for o in n.outputs
    ]
    for value in candidates:
        if id(value) in seen or not (_is_float_constant(model, value) or _is_quantized_data(value)):
            continue
        if _fill_read_at_creation(value, folded):
            continue
        seen.add(id(value))
        result.append(value)
    return result


def _fill_read_at_creation(value, folded: set[int]) -> bool:
    """A ``ConstantOfShape`` output read only by folded nodes (an encoding's zero fill)."""
    node = value.producer()
    uses = list(value.uses())
    return (
        node is not None
        and node.op_type == "ConstantOfShape"
        and bool(uses)
        and all(id(use.node) in folded for use in uses)
        and not value.is_graph_output()
    )


def _is_quantized_data(value) -> bool:
    return any(use.node.op_type == "DequantizeLinear" and use.idx == 0 for use in value.uses())


def _is_float_constant(model, value) -> bool:
    if value.const_value is not None:
        return value.const_value.dtype.is_floating_point()
    node = value.producer()
    if node is not None and node.op_type == "ConstantOfShape":
        fill = model.attr(node, "value")
        return fill is None or fill.dtype.kind == "f"
    array = model.constant(value)
    return array is not None and array.dtype.kind == "f"


def analyze_cost(model, overrides: Mapping[str, Shape] | None = None) -> CostReport:
    """Per-node params and MACs, with totals, at the bound input shapes."""
    shapes = _Shapes(model, value_shapes(model, overrides))
    folded = folded_nodes(model)
    constants = float_constants(model, folded)
    counted = {id(v) for v in constants}
    credited: set[int] = set()
    itemsizes = _itemsizes(model)
    report = CostReport(params=0, macs=0)
    for node in model.nodes():
        params = 0
        for value in node.inputs:
            if value is not None and id(value) in counted and id(value) not in credited:
                credited.add(id(value))
                params += _prod(model.constant_shape(value) or ())
        rule = MAC_RULES.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        once = id(node) in folded  # computed at session creation, not per run
        macs = 0 if once else (rule(node, shapes) if rule else 0)
        if macs is None:
            report.unknown.append(node.name or node.op_type)
        other, moved = (0, 0) if once else _other_work(node, shapes, itemsizes)
        if other is None or moved is None:
            report.other_unknown.append(node.name or node.op_type)
        report.nodes.append(NodeCost(node.name or "", node.op_type, params, macs, other, moved))
    report.params = sum(_prod(model.constant_shape(v) or ()) for v in constants)
    report.macs = sum(n.macs or 0 for n in report.nodes)
    report.other_ops = sum(n.other_ops or 0 for n in report.nodes)
    report.bytes_moved = sum(n.bytes_moved or 0 for n in report.nodes)
    report.unknown += _nested_compute(model)
    return report


def _nested_compute(model) -> list[str]:
    """Compute nodes inside If/Loop/Scan bodies or functions: not counted, so listed as unknown."""
    top = {id(n) for n in model.nodes()}
    return [
        f"{n.name or n.op_type} (inside a subgraph or function)"
        for n in model.all_nodes()
        if id(n) not in top and (n.domain if n.domain != "ai.onnx" else "", n.op_type) in MAC_RULES
    ]


# Ops that only move data: they count the bytes of every output they write.
MOVEMENT_OPS = (
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "ScatterElements",
    "ScatterND",
    "Pad",
    "Tile",
    "Expand",
    "DepthToSpace",
    "SpaceToDepth",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
)


# Other operations per output element, by op type (data; see the module docstring).
ELEMENT_FACTORS: dict[str, int] = {
    **{op: 1 for op in ELEMENTWISE if op not in MOVEMENT_OPS},  # Identity, Dropout: copies
    "BatchNormalization": 2,  # inference: x · scale' + shift' (statistics folded in)
    # mean (add), centre (sub), variance (mul, add), normalize (mul), affine (mul, add)
    "LayerNormalization": 7,
    "InstanceNormalization": 7,
    "GroupNormalization": 7,
    "MeanVarianceNormalization": 7,
    "LpNormalization": 3,  # square, sum, divide
    "Softmax": 4,  # max, exp(x - max), sum, divide
    "LogSoftmax": 4,  # max, exp(x - max), sum, subtract the log
    "Hardmax": 1,
    "Trilu": 1,
}
VARIADIC = ("Sum", "Max", "Min", "Mean")  # n inputs: n - 1 operations per output element
POOLS = ("MaxPool", "AveragePool", "LpPool")  # the kernel window per output element
# One operation per input element: every element is read into a sum, max or product.
PER_INPUT = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", *REDUCTIONS, "CumSum")
RESIZE_TAPS = {"nearest": 1, "linear": 2, "cubic": 4}  # per resized axis


def _elements(s: _Shapes, value) -> int | None:
    shape = s.shapes.get(value.name) if value is not None else None
    shape = s.of(value) if shape is None else shape  # () is a scalar's shape, not unknown
    return None if shape is None else _prod(shape)


def _other_ops(node, s: _Shapes) -> int | None:
    """Non-MAC element operations of one node (0 for an op the tables do not name)."""
    op = node.op_type
    if op in POOLS:
        out, kernel = _elements(s, node.outputs[0]), s.model.attr(node, "kernel_shape")
        return None if out is None or kernel is None else out * _prod(kernel)
    if op in PER_INPUT:
        return _elements(s, node.inputs[0])
    if op in ("Resize", "Upsample"):
        return _resize_ops(node, s)
    if op == "LRN":
        out = _elements(s, node.outputs[0])
        return None if out is None else out * int(s.model.attr(node, "size", 1))
    factor = ELEMENT_FACTORS.get(op)
    if factor is None:
        return 0
    out = _elements(s, node.outputs[0])
    if op in VARIADIC:
        factor = max(1, len([v for v in node.inputs if v is not None]) - 1)
    return None if out is None else out * factor


def _resize_ops(node, s: _Shapes) -> int | None:
    """Output elements × taps: per axis whose size changes, 1 (nearest), 2 (linear), 4 (cubic)."""
    before, after = s.of(node.inputs[0]), s.of(node.outputs[0])
    if before is None or after is None:
        return None
    mode = s.model.attr(node, "mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    resized = sum(1 for a, b in zip(before, after) if a != b)
    return _prod(after) * RESIZE_TAPS.get(mode, 1) ** resized


def _bytes_moved(node, s: _Shapes, itemsizes: Mapping[str, int]) -> int | None:
    """The bytes a data-movement op writes (all its outputs); 0 for other ops."""
    if node.op_type not in MOVEMENT_OPS:
        return 0
    total = 0
    for value in node.outputs:
        if not value.uses() and not value.is_graph_output():  # an unused optional output
            continue
        elements, itemsize = _elements(s, value), itemsizes.get(value.name)
        if elements is None or itemsize is None:
            return None
        total += elements * itemsize
    return total


def _itemsizes(model) -> dict[str, int]:
    """Bytes per element of every value: its declared type, else that of its node's first input
    (types a graph does not declare inside are mostly its input's: an estimate, like the counts
    it serves)."""
    sizes: dict[str, int] = {}

    def declared(value) -> int | None:
        dtype = model.elem_type(value)
        return None if dtype is None else int(dtype.itemsize)

    for value in [*model.inputs, *model.initializers().values()]:
        if declared(value) is not None:
            sizes[value.name] = declared(value)
    for node in model.nodes():
        inherited = _output_itemsize(model, node, sizes)
        for value in node.outputs:
            size = declared(value) or inherited
            if size is not None:
                sizes[value.name] = size
    return sizes


# Element bytes of an ONNX TensorProto data type (Cast's ``to``), and of ops whose output type
# is fixed whatever their inputs are.
TYPE_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
FIXED_ITEMSIZE = {
    **dict.fromkeys(("Shape", "Size", "NonZero", "ArgMax", "ArgMin"), 8),  # int64
    **dict.fromkeys(("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"), 1),  # bool
    **dict.fromkeys(("Not", "And", "Or", "Xor", "IsNaN", "IsInf"), 1),
}


def _output_itemsize(model, node, sizes: Mapping[str, int]) -> int | None:
    """Element bytes of ``node``'s outputs when they declare none: Cast's target, a fixed type,
    CastLike's second input, else its first input's."""
    if node.op_type == "Cast":
        return TYPE_ITEMSIZE.get(int(model.attr(node, "to", 0)))
    if node.op_type in FIXED_ITEMSIZE:
        return FIXED_ITEMSIZE[node.op_type]
    source = node.inputs[1 if node.op_type == "CastLike" else 0] if node.inputs else None
    return sizes.get(source.name) if source is not None else None


def _other_work(node, s: _Shapes, itemsizes: Mapping[str, int]) -> tuple[int | None, int | None]:
    """(other operations, bytes moved) of a standard-domain node; (0, 0) for other domains."""
    if node.domain not in ("", "ai.onnx"):
        return 0, 0
    return _other_ops(node, s), _bytes_moved(node, s, itemsizes)
