"""const-fold-shapes: integer shape subgraphs fold; float compute and symbolic dims do not."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import MODELS, assert_same_outputs, make_model
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir import Model
from sparsec.passes.const_fold import ConstantFoldShapesPass

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def test_shape_of_static_dims_folds_while_the_batch_stays_symbolic():
    model = Model.load(MODELS / "cleanup_cnn.onnx")
    result = ConstantFoldShapesPass()(model)
    assert result.stats["nodes_folded"] == 3  # Shape(start=1), ReduceProd, Concat
    reshape = next(n for n in model.nodes() if n.op_type == "Reshape")
    np.testing.assert_array_equal(model.constant(reshape.inputs[1]), [-1, 128])
    for batch in (1, 3):  # still batch-agnostic
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        assert_same_outputs(onnx.load(str(MODELS / "cleanup_cnn.onnx")), model.to_proto(), {"x": x})


def test_shape_of_symbolic_batch_does_not_fold():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ]
    model = Model.from_proto(make_model(nodes, [("x", F, ["N", 4])], [("y", F, ["N", 4])]))
    assert not ConstantFoldShapesPass()(model).modified


def test_float_compute_on_constants_is_left_alone():
    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), "a")]
    nodes = [helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Add", ["x", "b"], ["y"])]
    model = Model.from_proto(make_model(nodes, [("x", F, [4, 4])], [("y", F, [4, 4])], inits))
    assert not ConstantFoldShapesPass()(model).modified


def test_gather_unsqueeze_concat_chain_folds_exactly():
    inits = [
        numpy_helper.from_array(np.array([2, 3, 4], np.int64), "dims"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Gather", ["dims", "one"], ["d1"]),
        helper.make_node("Unsqueeze", ["d1", "axes"], ["d1v"]),
        helper.make_node("Concat", ["d1v", "d1v"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    proto = make_model(nodes, [("x", F, [9])], [("y", F, [3, 3])], inits)
    model = Model.from_proto(proto)
    assert ConstantFoldShapesPass()(model).stats["nodes_folded"] == 3
    assert [n.op_type for n in model.nodes()] == ["Reshape"]
    assert_same_outputs(proto, model.to_proto(), {"x": np.arange(9, dtype=np.float32)})


def test_float_data_movement_is_refused_without_running_it(monkeypatch):
    """An op whose output has its first input's type (Unsqueeze) is not evaluated on a float
    constant (the result could never fold), while on an int64 constant it still folds."""
    from sparsec.ir import cleanup

    evaluated = []
    run = cleanup.evaluate_node

    def recorded(model, node, arrays):
        evaluated.append(arrays[0].dtype)
        return run(model, node, arrays)

    monkeypatch.setattr(cleanup, "evaluate_node", recorded)
    inits = [
        numpy_helper.from_array(np.ones(4, np.float32), "scale"),
        numpy_helper.from_array(np.array([2, 2], np.int64), "dims"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["scale", "axes"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["m"]),
        helper.make_node("Unsqueeze", ["dims", "axes"], ["d"]),
        helper.make_node("Squeeze", ["d", "axes"], ["shape"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    model = Model.from_proto(make_model(nodes, [("x", F, [1, 4])], [("y", F, [2, 2])], inits))
    result = ConstantFoldShapesPass()(model)
    assert result.stats["nodes_folded"] == 2  # the int64 Unsqueeze and Squeeze
    assert evaluated == [np.dtype(np.int64), np.dtype(np.int64)]
    assert [n.op_type for n in model.nodes()] == ["Unsqueeze", "Mul", "Reshape"]
