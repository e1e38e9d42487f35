"""unshare-vectors / share-equal-vectors: a bias an exporter deduplicated no longer merges the
channel groups of unrelated layers, the cut through them stays exact, and what the cut left
equal is one tensor again (the pair settles in a fixed-point pipeline)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsec import api
from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.shared_constants import ShareEqualVectorsPass, UnshareVectorsPass
from sparsec.testing import assert_pass_exact


def _shared_bias_mlp(tied: bool = False, names=("fc1", "fc3"), bias: str = "b16") -> Model:
    """x [N, 8] -> Gemm 8->16 -> Relu -> Gemm 16->8 -> Relu -> Gemm 8->16 -> Relu -> Gemm
    16->4; the two 8->16 layers (nodes ``names``) read one zero bias ``bias`` (as an exporter
    writes equal biases), and with ``tied`` one weight too (a tied weight)."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (8, 16), "w2": (16, 8), "w3": (8, 16), "w4": (16, 4)}
    weights = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    tensors = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    tensors += [numpy_helper.from_array(np.zeros(16, np.float32), bias)]
    tensors += [numpy_helper.from_array(np.full(n, 0.1, np.float32), f"c{n}") for n in (8, 4)]
    third = "w1" if tied else "w3"
    nodes = [
        helper.make_node("Gemm", ["x", "w1", bias], ["h1"], name=names[0]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "w2", "c8"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Gemm", ["r2", third, bias], ["h3"], name=names[1]),
        helper.make_node("Relu", ["h3"], ["r3"]),
        helper.make_node("Gemm", ["r3", "w4", "c4"], ["y"], name="fc4"),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        tensors,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return Model.from_proto(proto)


def _hidden_groups(model: Model) -> list:
    """The prunable groups of 16 units (the two 8->16 layers' outputs)."""
    groups = find_channel_groups(model).groups
    return [g for g in groups if g.prunable and g.units == 16]


def test_a_copy_per_reader_splits_the_group_the_shared_bias_merged():
    model = _shared_bias_mlp()
    assert len(_hidden_groups(model)) == 1
    result = UnshareVectorsPass()(model)
    assert result.stats == {"copies": 1} and len(_hidden_groups(result.model)) == 2
    readers = {n.name: n.inputs[2].name for n in result.model.nodes() if n.op_type == "Gemm"}
    assert readers["fc1"] == "b16" and readers["fc3"] == "fc3:input2"


def test_the_original_stays_with_the_module_its_name_is_a_parameter_of():
    """``b.bias`` read first by module a's Gemm (an exporter's Identity removed): the original
    stays with module b (so a plan maps it there), module a reads a copy named after it."""
    names = ("/a/Gemm", "/b/Gemm")
    result = UnshareVectorsPass()(_shared_bias_mlp(names=names, bias="b.bias"))
    readers = {n.name: n.inputs[2].name for n in result.model.nodes() if n.name in names}
    assert readers == {"/a/Gemm": "/a/Gemm:input2", "/b/Gemm": "b.bias"}


def test_a_tied_weight_stays_shared_its_bias_is_copied():
    result = UnshareVectorsPass()(_shared_bias_mlp(tied=True))
    assert result.stats == {"copies": 1}  # b16 only: w1 is a matrix
    readers = [n.inputs[1].name for n in result.model.nodes() if n.name in ("fc1", "fc3")]
    assert readers == ["w1", "w1"]


def test_the_channel_pipeline_cuts_both_exactly_and_settles_sharing_what_stayed_equal():
    """Both hidden widths are cut, each alone (before: one group, the same indices); the cut
    biases are zeros of 8 again, so they are one tensor again, and the fixed-point pipeline
    settles (the two passes run in its first round only)."""
    model = _shared_bias_mlp()
    pipeline = Pipeline(api.channel_passes(0.5), fixed_point=True)
    result = assert_pass_exact(pipeline, model)
    assert "pipeline.not-settled" not in {d.code for d in result.diagnostics}
    assert result.stats["unshare-vectors.copies"] == 1
    gemms = {n.name: n for n in result.model.nodes() if n.op_type == "Gemm"}
    assert gemms["fc1"].inputs[2] is gemms["fc3"].inputs[2]  # shared again, 8 zeros
    assert gemms["fc1"].inputs[2].name == "b16"
    assert [result.model.constant(gemms[n].inputs[1]).shape[1] for n in ("fc1", "fc3")] == [8, 8]


def test_unequal_copies_and_tensors_the_input_had_apart_are_not_shared():
    model = _shared_bias_mlp()
    UnshareVectorsPass()(model)
    fc3 = next(n for n in model.nodes() if n.name == "fc3")
    model.set_constant(fc3.inputs[2], np.ones(16, np.float32))
    assert ShareEqualVectorsPass()(model).stats == {"vectors_shared": 0}
    model.set_input(fc3, 2, model.add_initializer("zeros", np.zeros(16, np.float32)))  # no copy
    result = ShareEqualVectorsPass()(model)
    assert result.stats == {"vectors_shared": 0} and not result.modified
