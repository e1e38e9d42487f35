"""Parameters and multiply-accumulates (MACs) per node, and their totals.

Parameters: every floating-point constant tensor (initializer, ``Constant`` node or
``ConstantOfShape`` with a constant shape), and the stored integers of a quantized weight (the
data a ``DequantizeLinear`` reads), counts once, however many nodes share it; a node is
credited with the constants it consumes first. MACs: one rule per op type in ``MAC_RULES``
(data, not branches; the compute ops' read their ``op_layouts`` entry), each computing from
concrete shapes bound as ``sparsec.analysis.inputs.bind_shapes`` says (batch 1 unless the user
says otherwise). A node whose shapes stay unknown is listed in ``unknown`` instead of silently counting zero.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sparsec.analysis.op_layouts import COMPUTE_OPS
from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.shapes import Shape, value_shapes


@dataclass
class NodeCost:
    name: str
    op_type: str
    params: int
    macs: int | None


@dataclass
class CostReport:
    params: int
    macs: int
    nodes: list[NodeCost] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def by_op(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for node in self.nodes:
            row = table.setdefault(node.op_type, Counter())
            row["count"] += 1
            row["params"] += node.params
            row["macs"] += node.macs or 0
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


def _float_constants(model) -> list:
    seen, result = set(), []
    candidates = list(model.initializers().values())
    candidates += [
        o for n in model.nodes() if n.op_type in ("Constant", "ConstantOfShape") for o in n.outputs
    ]
    for value in candidates:
        if id(value) in seen or not (_is_float_constant(model, value) or _is_quantized_data(value)):
            continue
        seen.add(id(value))
        result.append(value)
    return result


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
    constants = _float_constants(model)
    float_constants = {id(v) for v in constants}
    credited: set[int] = set()
    report = CostReport(params=0, macs=0)
    for node in model.nodes():
        params = 0
        for value in node.inputs:
            if value is not None and id(value) in float_constants and id(value) not in credited:
                credited.add(id(value))
                params += _prod(model.constant_shape(value) or ())
        rule = MAC_RULES.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        macs = rule(node, shapes) if rule else 0
        if macs is None:
            report.unknown.append(node.name or node.op_type)
        report.nodes.append(NodeCost(node.name or "", node.op_type, params, macs))
    report.params = sum(_prod(model.constant_shape(v) or ()) for v in constants)
    report.macs = sum(n.macs or 0 for n in report.nodes)
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
