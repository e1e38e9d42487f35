"""Which nodes an edited copy of a model changed (``changed_nodes``): the nodes whose op,
names, constant inputs or attributes differ from the original's node at the same position.

Invariant: a node not listed, whose dynamic inputs hold the same values, computes the same
outputs (a subgraph is not compared and always counts as changed).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def changed_nodes(model, original) -> list[int]:
    """Positions of the main-graph nodes of ``model`` (a copy of ``original`` edited in
    place: the same nodes in the same order) that may compute something else than
    ``original``'s node there from the same input values: another op, other input or output
    names, another constant input (shape or data), another attribute, or a subgraph (not
    compared: counted as changed). A node not listed whose dynamic inputs are the same
    computes the same outputs."""
    mine, theirs = model.nodes(), original.nodes()
    if len(mine) != len(theirs):
        raise ValueError("changed_nodes compares a model with an edited copy of the same nodes")
    return [
        index
        for index, (node, other) in enumerate(zip(mine, theirs))
        if not _same_node(model, node, original, other)
    ]


def _same_node(model, node: ir.Node, original, other: ir.Node) -> bool:
    signature = (node.op_type, node.domain, node.overload, len(node.inputs))
    if signature != (other.op_type, other.domain, other.overload, len(other.inputs)):
        return False
    names = [[v and v.name for v in n.inputs] + [v.name for v in n.outputs] for n in (node, other)]
    if names[0] != names[1]:
        return False
    if not all(
        _same_array(model.constant(v), original.constant(w))
        for v, w in zip(node.inputs, other.inputs)
    ):
        return False
    return _same_attributes(node, other)


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    )


def _same_attributes(node: ir.Node, other: ir.Node) -> bool:
    """Equal attributes; a subgraph (not compared) never counts as equal."""
    if set(node.attributes) != set(other.attributes):
        return False
    for name, attribute in node.attributes.items():
        theirs = other.attributes[name]
        if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return False
        if attribute.type != theirs.type or attribute.is_ref() != theirs.is_ref():
            return False
        mine, value = attribute.value, theirs.value
        if attribute.type == ir.AttributeType.TENSOR and not attribute.is_ref():
            if not _same_array(mine.numpy(), value.numpy()):
                return False
        elif mine != value:
            return False
    return True
