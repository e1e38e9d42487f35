"""ir.shapes.infer_node: one node's output shapes from its inputs' shapes, static or nothing.

A node whose output shape depends on input values it is not given (a computed Reshape target,
NonZero), that holds a subgraph, or whose op ONNX does not know must give None, never a guess:
the caller then infers the whole graph (and measures what that leaves unknown).
"""

from __future__ import annotations

import numpy as np
from conftest import make_model
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir import Model
from sparsec.ir.shapes import infer_node

F, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _node(nodes, initializers=(), inputs=(("x", F, [2, 6]),), output=(F, ["a", "b"]), **kwargs):
    proto = make_model(nodes, list(inputs), [("y", *output)], list(initializers), **kwargs)
    model = Model.from_proto(proto)
    return model, model.nodes()[-1]


def test_a_reshape_to_a_constant_target_is_inferred():
    target = numpy_helper.from_array(np.array([3, 4], np.int64), "target")
    model, node = _node([helper.make_node("Reshape", ["x", "target"], ["y"])], [target])
    dtypes: dict = {}
    assert infer_node(model, node, {"x": (2, 6), "target": (2,)}, dtypes) == {"y": (3, 4)}
    assert dtypes["y"] is not None  # the output's type, for the nodes after it


def test_a_reshape_to_a_computed_target_is_not_guessed():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ]
    model, node = _node(nodes)
    assert infer_node(model, node, {"x": (2, 6), "s": (2,)}, {"s": 7}) is None


def test_value_dependent_custom_and_subgraph_nodes_give_nothing():
    nonzero, _ = _node([helper.make_node("NonZero", ["x"], ["y"])], output=(INT64, [2, "n"]))
    custom, _ = _node(
        [helper.make_node("Gelu", ["x"], ["y"], domain="com.example")], domains=("com.example",)
    )
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "branch",
        [],
        [helper.make_tensor_value_info("t", F, [2, 6])],
    )
    subgraph, _ = _node(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        inputs=(("x", F, [2, 6]), ("c", TensorProto.BOOL, [])),
    )
    shapes = {"x": (2, 6), "c": ()}
    for model in (nonzero, custom, subgraph):
        assert infer_node(model, model.nodes()[-1], shapes, {}) is None
