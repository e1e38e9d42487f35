"""The cone of a few values: the sub-model of a ``Model`` that computes them and nothing else.

``cone(model, names, static)`` returns a ModelProto whose outputs are ``names`` and whose run on
the model's inputs gives exactly the values the whole model computes for them: it holds every
main-graph node they depend on (a node with subgraphs depends on every value its subgraphs
read), in graph order, the initializers and graph inputs those nodes read, the model's opsets
and local functions. One exception makes it small: a standard ``Shape``/``Size`` node whose
input has a fully known shape in ``static`` becomes a ``Constant`` holding its result (its
value depends on that shape alone), so the cone stops there instead of reaching back through
the layers that compute that input. Used by the shape-inference fallback, which would otherwise
serialize and run the whole model to learn the shapes of a few values (``analysis.shapes``).

The walk is linear in the size of the cone plus one pass over the graph (for the order).
Returns None when the cone cannot be written as one protobuf (its weights pass 2 GB, or a
value it reads is not a main-graph value): the caller then runs the whole model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.ir.model import PROTOBUF_LIMIT_BYTES
from sparsec.ir.shapes import shape_op_result

_STANDARD = ("", "ai.onnx")


@dataclass
class Cone:
    """What computes some values: ``nodes`` in graph order (a folded ``Shape``/``Size`` among
    them with its result in ``constants``), the ``initializers`` and graph ``inputs`` they read."""

    names: list[str]
    nodes: list[ir.Node]
    constants: dict[ir.Node, np.ndarray] = field(default_factory=dict)
    initializers: dict[str, ir.Value] = field(default_factory=dict)
    inputs: dict[str, ir.Value] = field(default_factory=dict)

    def key(self) -> tuple:
        """What the cone's values depend on (the same key: the same values, on the same
        inputs): its nodes with their op, inputs, attributes and outputs; the folded results;
        the initializers by tensor (the bytes of small ones, which carry shapes: a tensor is
        replaced, never written into, but a freed one's id may be reused) and the inputs."""
        parts: list = [tuple(self.names)]
        for node in self.nodes:
            folded = self.constants.get(node)
            parts.append(
                (node, node.op_type, node.domain, node.name)
                + tuple(v.name if v is not None else None for v in node.inputs)
                + tuple(node.attributes.values())
                + tuple(v.name for v in node.outputs)
                + ((folded.tobytes(),) if folded is not None else ())
            )
        for name, value in self.initializers.items():
            tensor = value.const_value
            data = tensor.tobytes() if tensor is not None and tensor.nbytes <= 1024 else None
            parts.append((name, id(tensor), value.shape, value.dtype, data))
        parts.extend((name, value.shape, value.type) for name, value in self.inputs.items())
        return tuple(parts)


def cone(
    model, names: Sequence[str], static: Mapping[str, Sequence[int]]
) -> onnx.ModelProto | None:
    """The sub-model computing ``names`` (see the module docstring), or None."""
    found = find_cone(model, names, static)
    return None if found is None else cone_proto(model, found)


def find_cone(model, names: Sequence[str], static: Mapping[str, Sequence[int]]) -> Cone | None:
    """The nodes, initializers and inputs computing ``names`` (None as ``cone`` says)."""
    by_name = model.values_by_name()
    found = Cone(list(names), [])
    nodes: set[ir.Node] = set()
    pending = [by_name.get(name) for name in names]
    seen: set[str] = set()
    while pending:
        value = pending.pop()
        if value is None:
            return None  # not a main-graph value: the whole model answers
        if value.name in seen:
            continue
        seen.add(value.name)
        node = value.producer()
        if value.is_initializer():
            found.initializers[value.name] = value
        elif node is None:
            found.inputs[value.name] = value
        elif (folded := _folded_shape(node, static)) is not None:
            found.constants[node] = folded
        elif node not in nodes:
            nodes.add(node)
            reads = model.reads(node)  # a subgraph's own values are not main-graph values
            pending.extend(by_name[read] for read in sorted(reads) if read in by_name)
    weights = sum(
        v.const_value.nbytes for v in found.initializers.values() if v.const_value is not None
    )
    if weights >= PROTOBUF_LIMIT_BYTES:
        return None
    found.nodes = [node for node in model.graph if node in nodes or node in found.constants]
    return found


def _folded_shape(node: ir.Node, static: Mapping[str, Sequence[int]]) -> np.ndarray | None:
    """The result of a ``Shape``/``Size`` node whose input's shape is known, else None."""
    if node.op_type not in ("Shape", "Size") or node.domain not in _STANDARD:
        return None
    source = node.inputs[0] if node.inputs else None
    dims = static.get(source.name) if source is not None and source.name else None
    if dims is None:
        return None
    start, end = (node.attributes.get_int(key) for key in ("start", "end"))
    return shape_op_result(node.op_type, dims, start or 0, end)


def cone_proto(model, found: Cone) -> onnx.ModelProto:
    """``found`` as a model: its nodes, initializers and inputs, ``names`` as outputs."""
    protos = [
        onnx.helper.make_node(
            "Constant",
            [],
            [str(node.outputs[0].name)],
            value=onnx.numpy_helper.from_array(found.constants[node]),
        )
        if node in found.constants
        else ir.serde.serialize_node(node)
        for node in found.nodes
    ]
    tensors = []
    for name, value in found.initializers.items():
        if value.const_value is None:
            continue  # no data to give: onnxruntime says what it misses
        tensor = ir.serde.serialize_tensor(value.const_value)
        tensor.name = name
        tensors.append(tensor)
    graph = onnx.helper.make_graph(
        protos,
        "cone",
        [ir.serde.serialize_value(value) for value in found.inputs.values()],
        [onnx.ValueInfoProto(name=name) for name in found.names],  # ORT says what it computes
        initializer=tensors,
    )
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opsets().items()],
        ir_version=model.ir.ir_version,
    )
    proto.functions.extend(ir.serde.serialize_function(f) for f in model.ir.functions.values())
    return proto
