"""Which weights carry multiply-accumulates, and along which axis they reduce.

Per-op knowledge as data: ``REDUCTION_AXIS[op](node, model) -> [(input index, axis)]`` names
the constant operands of a node and their reduction (input-channel) axis: MatMul B ``[K, N]``
axis -2 (A ``[M, K]`` axis -1 when A is the constant), Gemm B axis 1 when ``transB=1`` else 0
(A axis 0 when ``transA=1`` else 1), Conv W ``[O, I/g, k...]`` axis 1, ConvTranspose W
``[I, O/g, k...]`` axis 0. N:M groups and blocks run along that axis. A weight used by several
nodes is one site; when its uses disagree on the axis it is not a site (reported).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class WeightSite:
    name: str
    axis: int  # the reduction axis, non-negative
    shape: tuple[int, ...]
    nodes: list[str] = field(default_factory=list)


def _matmul(node, model) -> list[tuple[int, int]]:
    return [(1, -2), (0, -1)]


def _gemm(node, model) -> list[tuple[int, int]]:
    return [(1, 1 if model.attr(node, "transB", 0) else 0), (0, 0 if model.attr(node, "transA", 0) else 1)]


REDUCTION_AXIS: dict[str, Callable] = {
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Conv": lambda node, model: [(1, 1)],
    "ConvTranspose": lambda node, model: [(1, 0)],
}


def weight_sites(model) -> tuple[list[WeightSite], dict[str, str]]:
    """The float constant operands of compute nodes with their reduction axis, and the
    weights left out with the reason (uses that disagree on the axis)."""
    sites: dict[str, WeightSite] = {}
    conflicts: dict[str, str] = {}
    for node in model.nodes():
        rule = REDUCTION_AXIS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        for index, axis in (rule(node, model) if rule else []):
            value = node.inputs[index] if index < len(node.inputs) else None
            shape = model.constant_shape(value) if value is not None and value.is_initializer() else None
            if shape is None or len(shape) < 2 or model.elem_type(value) is None or model.elem_type(value).kind != "f":
                continue
            axis = axis % len(shape)
            site = sites.setdefault(value.name, WeightSite(value.name, axis, tuple(shape)))
            if site.axis != axis:
                conflicts[value.name] = f"its uses reduce along different axes ({site.axis} and {axis})"
            site.nodes.append(node.name or node.op_type)
    return [s for name, s in sites.items() if name not in conflicts], conflicts
