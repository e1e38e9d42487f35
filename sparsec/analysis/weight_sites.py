"""Which weights carry multiply-accumulates, and along which axis they reduce.

Per-op knowledge as data: ``REDUCTION_AXIS[op](node, model) -> [(input index, axis, activation
index, activation axis)]`` names the constant operands of a node, their reduction
(input-channel) axis, and the activation operand whose channel axis that reduction runs over,
all read from ``op_layouts``:
MatMul B ``[K, N]`` axis -2 against A's axis -1 (or A ``[M, K]`` axis -1 against B's axis -2),
Gemm B axis 1 when ``transB=1`` else 0 against A's axis 1 (0 when ``transA=1``), Conv W
``[O, I/g, k...]`` axis 1 and ConvTranspose W ``[I, O/g, k...]`` axis 0 against X's axis 1
(ungrouped only: a grouped conv's input channels are not W's axis). An embedding table (the
data of a Gather along axis 0, only when asked for) groups along its last axis: every gathered
row, which becomes an activation, keeps the same pattern; no activation weighs it. N:M groups
and blocks run along the reduction axis. A weight used by several nodes is one site; when its uses
disagree on the axis it is not a site (reported). With ``quantized=True`` a quantized weight
(an integer initializer read through ``DequantizeLinear``, ``analysis.quantized``) is a site too,
named by that initializer (DequantizeLinear keeps every axis, so the reduction axis is the
same) and carrying its ``QuantizedWeight``: its zeros are its zero points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sparsec.analysis.op_layouts import COMPUTE_OPS
from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.quantized import QuantizedWeight, quantized_weight


@dataclass
class WeightSite:
    name: str
    axis: int  # the reduction axis, non-negative
    shape: tuple[int, ...]
    nodes: list[str] = field(
        default_factory=list
    )  # the names of the nodes using it (unnamed ones left out)
    activations: list[tuple[str, int] | None] = field(
        default_factory=list
    )  # per use: (value, channel axis)
    quantized: QuantizedWeight | None = (
        None  # set when the site is the stored data of a quantized weight
    )


def _reduction_axes(node, model) -> list[tuple]:
    """Per operand that may be the weight (``op_layouts``): its contraction axis against the
    other operand's (no activation when the conv is grouped)."""
    layout = op_layout(model, node)
    return [
        (
            w.index,
            w.contraction,
            None if layout.grouped else layout.other(w).index,
            layout.other(w).contraction,
        )
        for w in layout.operands()
    ]


def _embedding(node, model) -> list[tuple]:
    return [(0, -1, None, None)] if int(model.attr(node, "axis", 0)) == 0 else []


REDUCTION_AXIS: dict[str, Callable] = dict.fromkeys(COMPUTE_OPS, _reduction_axes)
EMBEDDING_AXIS: dict[str, Callable] = {"Gather": _embedding}


def _stored(model, value, quantized: bool) -> tuple:
    """(initializer, QuantizedWeight or None) a compute operand stores its weight in: a float
    initializer, or (when ``quantized``) the integer initializer behind a DequantizeLinear."""
    if value.is_initializer():
        dtype = model.elem_type(value)
        return (value, None) if dtype is not None and dtype.kind == "f" else (None, None)
    q = quantized_weight(model, value) if quantized else None
    dtype = model.elem_type(q.data) if q is not None and q.data.is_initializer() else None
    return (q.data, q) if dtype is not None and dtype.kind in "iu" else (None, None)


def weight_sites(
    model, *, embeddings: bool = False, quantized: bool = False
) -> tuple[list[WeightSite], dict[str, str]]:
    """The float constant operands of compute nodes (and embedding tables when asked; the
    stored data of quantized weights when ``quantized``) with their reduction axis, and the
    weights left out with the reason (uses that disagree on the axis, e.g. a table both
    gathered and multiplied)."""
    sites: dict[str, WeightSite] = {}
    conflicts: dict[str, str] = {}
    rules = {**REDUCTION_AXIS, **(EMBEDDING_AXIS if embeddings else {})}
    for node in model.nodes():
        rule = rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        for index, rule_axis, act_index, act_axis in rule(node, model) if rule else []:
            operand = node.inputs[index] if index < len(node.inputs) else None
            value, q = _stored(model, operand, quantized) if operand is not None else (None, None)
            shape = model.constant_shape(value) if value is not None else None
            if shape is None or len(shape) < 2:
                continue
            axis = rule_axis % len(shape)
            site = sites.setdefault(
                value.name, WeightSite(value.name, axis, tuple(shape), quantized=q)
            )
            if site.axis != axis:
                conflicts[value.name] = (
                    f"its uses reduce along different axes ({site.axis} and {axis})"
                )
            site.nodes += [node.name] if node.name else []
            activation = node.inputs[act_index] if act_index is not None else None
            site.activations.append(
                None
                if activation is None or activation.is_initializer()
                else (activation.name, act_axis)
            )
    return [s for name, s in sites.items() if name not in conflicts], conflicts
