"""dead-code and identity-elimination: what they remove, and exact equality in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import MODELS, assert_same_outputs, make_model
from onnx import TensorProto, helper

from sparsec.ir import Model
from sparsec.passes.cleanup import DeadCodePass, IdentityEliminationPass
from sparsec.testing import assert_pass_exact

F = TensorProto.FLOAT


def _feeds(batch=2):
    return {"x": np.random.default_rng(0).standard_normal((batch, 3, 8, 8)).astype(np.float32)}


def test_dead_code_removes_branch_initializers_functions_and_opsets():
    result = assert_pass_exact(DeadCodePass(), MODELS / "cleanup_cnn.onnx", batch=2)
    model = result.model
    ops = [n.op_type for n in model.nodes()]
    assert (
        result.modified and result.stats["nodes_removed"] == 3
    )  # dead conv, its relu, the unused Constant
    assert "dead_conv" not in {n.name for n in model.nodes()} and ops.count("Conv") == 2
    assert {"unused_weight", "w_dead"}.isdisjoint(model.initializers())
    assert result.stats["functions_removed"] == 1 and not model.functions()
    assert "com.example" not in model.opsets()
    assert not assert_pass_exact(DeadCodePass(), model).modified  # idempotent


def test_dead_code_keeps_the_interface():
    # An unused graph input and an output computed from nothing else must both stay.
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["unused"])]
    model = Model.from_proto(make_model(nodes, [("x", F, [2]), ("spare", F, [2])], [("y", F, [2])]))
    DeadCodePass()(model)
    assert [v.name for v in model.inputs] == ["x", "spare"]
    assert [n.op_type for n in model.nodes()] == ["Relu"]


def test_identity_elimination_keeps_output_names_and_values():
    result = assert_pass_exact(IdentityEliminationPass(), MODELS / "cleanup_cnn.onnx", batch=2)
    model = result.model
    assert result.stats["nodes_removed"] == 3  # two Identity nodes and the inference Dropout
    assert not {"Identity", "Dropout"} & {n.op_type for n in model.nodes()}
    assert [v.name for v in model.outputs] == ["logits"]
    assert model.outputs[0].shape.dims[1] == 10


def test_identity_between_input_and_output_or_two_outputs_stays():
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["r_copy"]),
    ]
    model = Model.from_proto(
        make_model(nodes, [("x", F, [2])], [("y", F, [2]), ("r", F, [2]), ("r_copy", F, [2])])
    )
    assert not IdentityEliminationPass()(model).modified
    assert [v.name for v in model.outputs] == ["y", "r", "r_copy"]


def test_dropout_in_training_mode_stays():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"])]
    inits = [
        onnx.numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
        onnx.numpy_helper.from_array(np.array(True), "train"),
    ]
    model = Model.from_proto(make_model(nodes, [("x", F, [4])], [("y", F, [4])], inits))
    assert not IdentityEliminationPass()(model).modified


def test_identity_inside_a_subgraph_is_removed():
    body = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", F, [3])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", F, [3])],
    )
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=other)]
    proto = make_model(nodes, [("x", F, [3]), ("cond", TensorProto.BOOL, [])], [("y", F, [3])])
    model = Model.from_proto(proto)
    assert IdentityEliminationPass()(model).stats["nodes_removed"] == 1
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    for cond in (True, False):
        assert_same_outputs(proto, model.to_proto(), {"x": x, "cond": np.array(cond)})


def test_identity_exporting_an_outer_value_from_a_branch_stays():
    body = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", F, [3])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", F, [3])],
    )
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=other)]
    proto = make_model(nodes, [("x", F, [3]), ("cond", TensorProto.BOOL, [])], [("y", F, [3])])
    model = Model.from_proto(proto)
    assert not IdentityEliminationPass()(model).modified
    assert model.check() is None
