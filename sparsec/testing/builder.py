"""The graph builder the fuzzing generator's blocks write with: ``State`` (the running tensor,
its concrete shape and kind) and ``Builder`` (nodes, initializers or ``Constant`` weights,
opset-dependent op forms), plus float or QDQ-quantized weights.

Invariant: every op form a block writes through the builder is valid at the graph's opset
(11 to 21): an int list that moved from an attribute to an input (``AXES_INPUT_SINCE``) is
written the way that opset reads it, and a per-axis DequantizeLinear (opset 13 on) falls back to
a per-tensor one before."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper, numpy_helper

# the first opset at which each op reads its int list (``axes`` / ``split``) as an input
AXES_INPUT_SINCE = {
    "Squeeze": 13,
    "Unsqueeze": 13,
    "Split": 13,
    "ReduceSum": 13,
    "ReduceMean": 18,
    "ReduceMax": 18,
}
PER_AXIS_QDQ_SINCE = 13


@dataclass
class State:
    name: str
    shape: list[int]
    kind: str  # image | seq | flat


class Builder:
    """Nodes and initializers of one graph; every helper returns its output name."""

    def __init__(self, graph: dict) -> None:
        self.opset, self.symbolic = graph["opset"], graph["batch"] == "symbolic"
        self.weights = graph["weights"]
        self.nodes: list = []
        self.inits: list = []
        self.outputs: list = []
        self.inputs: list = []  # extra graph inputs: (name, shape)
        self.saved: list = []  # states a later ``join`` block may merge back (skip connections)
        self.count = 0
        self.rng = np.random.default_rng(0)

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, array, base: str = "c", weight: bool = False) -> str:
        name = self.name(base)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        as_node = self.weights == "constant" or (self.weights == "mixed" and self.count % 2 == 0)
        if weight and as_node:
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=self.name("Constant"), value=tensor)
            )
        else:
            self.inits.append(tensor)
        return name

    def ints(self, values) -> str:
        return self.const(np.array(values, np.int64), "i")

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, np.float32), "s")

    def op(self, op_type: str, inputs, outputs: int = 1, nodes: list | None = None, **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attrs)
        (self.nodes if nodes is None else nodes).append(node)
        return names[0] if outputs == 1 else names

    def weight(self, *shape) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return self.const(
            self.rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32), "w", weight=True
        )

    def vector(self, size: int, low: float = -0.5, high: float = 0.5) -> str:
        return self.const(self.rng.uniform(low, high, size).astype(np.float32), "v", weight=True)

    # opset-dependent forms
    def with_ints(
        self, op_type: str, inputs, name: str, values, outputs: int = 1, nodes=None, **attrs
    ):
        """``op_type`` with the int list ``values`` as the input after ``inputs`` or as the
        attribute ``name``, whichever the graph's opset reads (``AXES_INPUT_SINCE``); appended
        to ``nodes`` (a subgraph's) when given."""
        if self.opset >= AXES_INPUT_SINCE[op_type]:
            return self.op(op_type, [*inputs, self.ints(values)], outputs, nodes, **attrs)
        return self.op(op_type, list(inputs), outputs, nodes, **{name: list(values)}, **attrs)

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 1) -> str:
        return self.with_ints(op_type, [x], "axes", axes, keepdims=keepdims)

    def reduce_mean(self, x: str, axes: list[int], keepdims: int = 1) -> str:
        return self.reduce("ReduceMean", x, axes, keepdims)

    def unsqueeze(self, x: str, axes: list[int], nodes: list | None = None) -> str:
        return self.with_ints("Unsqueeze", [x], "axes", axes, nodes=nodes)

    def squeeze(self, x: str, axes: list[int], nodes: list | None = None) -> str:
        return self.with_ints("Squeeze", [x], "axes", axes, nodes=nodes)

    def split(self, x: str, sizes: list[int], axis: int) -> list[str]:
        return self.with_ints("Split", [x], "split", sizes, outputs=len(sizes), axis=axis)

    def reshape(self, x: str, target: list[int]) -> str:
        """``target``'s batch entry becomes 0 (copy) when the batch is symbolic."""
        target = list(target)
        if self.symbolic:
            target[0] = 0
        return self.op("Reshape", [x, self.ints(target)])


# ---------------------------------------------------------------- weights, optionally quantized
def weight(b: Builder, spec: dict, shape: tuple[int, ...], axis: int = 0) -> str:
    """A float weight, or with ``spec["qdq"]`` an int8 one through DequantizeLinear (per-axis
    scales along ``axis`` when ``spec["per_axis"]`` and the opset has them)."""
    if not spec.get("qdq"):
        return b.weight(*shape)
    real = b.rng.normal(0, np.sqrt(2 / max(1, int(np.prod(shape[1:])))), shape).astype(np.float32)
    if spec.get("per_axis") and b.opset >= PER_AXIS_QDQ_SINCE:
        other = tuple(i for i in range(len(shape)) if i != axis)
        scale = (np.abs(real).max(axis=other) / 127 + 1e-3).astype(np.float32)
        expanded = scale.reshape([-1 if i == axis else 1 for i in range(len(shape))])
        q = np.clip(np.round(real / expanded), -127, 127).astype(np.int8)
        zero = np.zeros(shape[axis], np.int8)
        return b.op(
            "DequantizeLinear",
            [b.const(q, "q"), b.const(scale, "qs"), b.const(zero, "qz")],
            axis=axis,
        )
    scale = np.float32(np.abs(real).max() / 127 + 1e-3)
    q = np.clip(np.round(real / scale), -127, 127).astype(np.int8)
    return b.op(
        "DequantizeLinear",
        [b.const(q, "q"), b.const(np.array(scale), "qs"), b.const(np.array(0, np.int8), "qz")],
    )


def qdq_activation(b: Builder, x: str, scale: float) -> str:
    q = b.op("QuantizeLinear", [x, b.scalar(scale), b.const(np.array(128, np.uint8), "qz")])
    return b.op("DequantizeLinear", [q, b.scalar(scale), b.const(np.array(128, np.uint8), "qz")])
