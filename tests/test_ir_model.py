"""sparsec.ir.Model: checked loading, external data, constants, subgraphs, functions, saving."""

from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import pytest
from conftest import MODELS, assert_same_outputs, make_model
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import MESSAGE_LIMIT, InputError, one_line
from sparsec.ir import Model, loading
from sparsec.ir import model as model_module


def _with_external_data(tmp_path, name="ext.onnx"):
    proto = onnx.load(str(MODELS / "cleanup_cnn.onnx"))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    onnx.save(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=name + ".data",
        size_threshold=0,
    )
    return path


def _set_location(path, location):
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())  # onnx.save would try to follow the location


def test_external_data_loads_and_saves_equal(tmp_path):
    path = _with_external_data(tmp_path)
    model = Model.load(path)
    assert model.source_bytes == path.stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "copy.onnx"
    model.save(out)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_same_outputs(MODELS / "cleanup_cnn.onnx", out, {"x": x})


@pytest.mark.parametrize("location", ["../escape.data", "/etc/passwd", "sub/../../escape.data"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    path = _with_external_data(tmp_path / "m")
    (tmp_path / "escape.data").write_bytes((tmp_path / "m" / "ext.onnx.data").read_bytes())
    _set_location(path, location)
    with pytest.raises(InputError, match="outside the model folder"):
        Model.load(path)


def test_truncated_external_data_without_declared_lengths_is_refused(tmp_path):
    path = _with_external_data(tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        kept = [e for e in tensor.external_data if e.key != "length"]
        del tensor.external_data[:]
        tensor.external_data.extend(kept)
    path.write_bytes(proto.SerializeToString())
    assert Model.load(path).source_bytes > 0  # intact data still loads
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(InputError, match="too short"):
        Model.load(path)


def test_missing_and_truncated_external_data_are_refused(tmp_path):
    path = _with_external_data(tmp_path)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InputError, match="too short"):
        Model.load(path)
    data.unlink()
    with pytest.raises(InputError, match="missing"):
        Model.load(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, I am a text file\n", "not an ONNX model"),
        (None, "not an ONNX model"),  # truncated real model
    ],
)
def test_non_models_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(
        content if content is not None else (MODELS / "cleanup_cnn.onnx").read_bytes()[:3000]
    )
    with pytest.raises(InputError, match=message):
        Model.load(path)


def test_checker_failure_is_refused(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )  # z is never produced
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(InputError, match="checker"):
        Model.load(path)


def _matmul_add(ir_version: int = 8) -> onnx.ModelProto:
    """y = x·w + b with a 4 KB weight w and an 8-byte bias b, neither listed as a graph input."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 32])],
        initializer=[
            numpy_helper.from_array(np.ones((32, 32), np.float32), "w"),
            numpy_helper.from_array(np.ones((2,), np.float32), "b"),
        ],
    )
    proto = helper.make_model(graph, producer_name="p", opset_imports=[helper.make_opsetid("", 8)])
    proto.ir_version = ir_version
    return proto


def test_checker_sees_every_weight_as_a_typed_input_and_only_small_ones_as_data():
    proto = _matmul_add()
    helper.set_model_props(proto, {"k": "v"})
    light = loading.without_weights(proto)
    assert [t.name for t in light.graph.initializer] == ["b"]
    added = {i.name: i for i in light.graph.input if i.name in ("w", "b")}
    assert [d.dim_value for d in added["w"].type.tensor_type.shape.dim] == [32, 32]
    for value in added.values():
        light.graph.input.remove(value)
    light.graph.initializer.insert(0, proto.graph.initializer[0])
    light.metadata_props.extend(proto.metadata_props)
    assert light == proto  # nothing else left out or changed
    onnx.checker.check_model(loading.without_weights(proto))


@pytest.mark.parametrize("ir_version", [3, 8])
def test_initializers_not_listed_as_inputs_load_at_every_ir_version(tmp_path, ir_version):
    path = tmp_path / "m.onnx"
    path.write_bytes(_matmul_add(ir_version).SerializeToString())
    assert [n.op_type for n in Model.load(path).nodes()] == ["MatMul", "Add"]


def test_repeated_metadata_keys_load_and_repeated_initializers_are_refused(tmp_path):
    proto = _matmul_add()
    proto.metadata_props.extend([onnx.StringStringEntryProto(key="k", value=v) for v in "ab"])
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    assert Model.load(path).metadata("k") in ("a", "b")
    proto.graph.initializer.append(proto.graph.initializer[0])
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(InputError, match="initializer 'w' is listed 2 times"):
        Model.load(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        Model.load(tmp_path / "nope.onnx")


def test_save_refuses_to_overwrite_its_source_unless_forced(tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(MODELS / "cleanup_cnn.onnx", path)
    model = Model.load(path)
    with pytest.raises(InputError, match="overwrite"):
        model.save(path)
    model.save(path, force=True)
    assert Model.load(path).nodes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_save_switches_to_external_data_past_the_protobuf_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "PROTOBUF_LIMIT_BYTES", 1000)
    model = Model.load(MODELS / "cleanup_cnn.onnx")
    out = tmp_path / "big.onnx"
    written = model.save(out)
    [data] = [p for p in tmp_path.iterdir() if p != out]  # big.onnx.<8 hex digits>.data
    assert re.fullmatch(r"big\.onnx\.[0-9a-f]{8}\.data", data.name)
    assert written == out.stat().st_size + data.stat().st_size
    assert out.stat().st_size < data.stat().st_size
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_same_outputs(MODELS / "cleanup_cnn.onnx", out, {"x": x})


def test_constants_from_constant_and_constant_of_shape_nodes():
    shape = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "shape")
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["c"],
            value=numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3)),
        ),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["z"],
            value=numpy_helper.from_array(np.array([0.5], np.float32)),
        ),
        helper.make_node("Add", ["c", "z"], ["s"]),
        helper.make_node("Add", ["s", "x"], ["y"]),
    ]
    proto = make_model(
        nodes, [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2, 3])], [shape]
    )
    model = Model.from_proto(proto)
    c, z, s = (model.nodes()[i].outputs[0] for i in range(3))
    np.testing.assert_array_equal(model.constant(c), np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(model.constant(z), np.full((2, 3), 0.5, np.float32))
    assert model.constant_shape(z) == (2, 3)
    assert model.constant(s) is None  # computed, not held


def test_a_rewritten_constant_node_output_is_written_with_its_type(tmp_path, caplog):
    """An exporter's untyped ``Constant`` output (no value_info) gets a shape when sparsec
    rewrites it; without its element type too, onnx-ir cannot write that shape and logs a
    warning per value at every serialisation (thousands per compile on a Paddle export)."""
    value = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("Add", ["c", "x"], ["y"]),
    ]
    proto = make_model(
        nodes, [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2, 3])]
    )
    model = Model.from_proto(proto)
    c = model.nodes()[0].outputs[0]
    assert c.type is None  # as exported: no value_info for it
    model.set_constant(c, np.ones((2, 3), np.float16).astype(np.float32))
    with caplog.at_level("WARNING", logger="onnx_ir"):
        model.save(tmp_path / "out.onnx")
    assert not [record for record in caplog.records if record.name.startswith("onnx_ir")]
    [info] = [v for v in onnx.load(str(tmp_path / "out.onnx")).graph.value_info if v.name == "c"]
    assert info.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in info.type.tensor_type.shape.dim] == [2, 3]


def test_subgraphs_and_functions_survive_a_round_trip(tmp_path):
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])],
    )
    function = helper.make_function(
        "local",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    nodes = [
        helper.make_node(
            "If", ["cond"], ["branch"], then_branch=then_graph, else_branch=else_graph
        ),
        helper.make_node("Twice", ["branch"], ["y"], domain="local"),
    ]
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [3]), ("cond", TensorProto.BOOL, [])],
        [("y", TensorProto.FLOAT, [3])],
        functions=[function],
        domains=["local"],
    )
    source = tmp_path / "if.onnx"
    onnx.save(proto, str(source))
    model = Model.load(source)
    assert {n.op_type for n in model.all_nodes()} == {"If", "Relu", "Neg", "Twice", "Add"}
    model.save(tmp_path / "copy.onnx")
    x = np.array([-1.0, 2.0, -3.0], np.float32)
    for cond in (True, False):
        assert_same_outputs(source, tmp_path / "copy.onnx", {"x": x, "cond": np.array(cond)})


@pytest.mark.parametrize("opset", range(9, 24))
def test_every_supported_opset_loads_and_saves(tmp_path, opset):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        [w],
        opset=opset,
    )
    source = tmp_path / "m.onnx"
    onnx.save(proto, str(source))
    model = Model.load(source)
    assert model.opset == opset
    model.save(tmp_path / "out.onnx")
    assert_same_outputs(source, tmp_path / "out.onnx", {"x": np.ones((1, 1, 5, 5), np.float32)})


def test_resize_initializer_keeps_shape_consistent_for_the_checker():
    model = Model.load(MODELS / "cleanup_cnn.onnx")
    weight = model.initializers()["unused_weight"]
    model.resize_initializer(weight, np.zeros((4, 2), np.float32))
    assert tuple(weight.shape.dims) == (4, 2)
    assert model.check() is None


def test_library_messages_become_one_readable_line():
    ort_text = (
        "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/"
        "model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::string&, "
        "int) ONNX Runtime only *guarantees* support for released opsets.\n"
    )
    assert (
        one_line(ort_text)
        == "Load model from m.onnx failed:ONNX Runtime only *guarantees* support for released opsets."
    )
    enforce = (
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Reshape node. "
        "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:30 "
        "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, "
        "bool) input_shape_size == size was false. The input tensor cannot be reshaped to the requested shape."
    )
    assert one_line(enforce) == (
        "Non-zero status code returned while running Reshape node. Status Message: "
        "input_shape_size == size was false. The input tensor cannot be reshaped to the "
        "requested shape."
    )
    checker = "input 'w' of node: \nname:  OpType: Add\n is not output of any previous nodes."
    assert (
        one_line(checker)
        == "input 'w' of node: name: OpType: Add is not output of any previous nodes."
    )
    long = one_line("x" * 1000)
    assert len(long) == MESSAGE_LIMIT and long.endswith("…")


def test_unique_names_stay_unique_across_model_edits_and_onnx_ir_edits():
    """unique_name keeps its names across Model edits (one walk for many new nodes) and sees a
    name added through onnx-ir once a cached analysis noticed that edit."""
    import onnx_ir as ir

    model = Model.load(MODELS / "digits_cnn.onnx")
    first = model.nodes()[0]
    made = [
        model.add_node("Identity", [first.inputs[0]], before=first, name="n") for _ in range(50)
    ]
    names = [value.name for value in made] + [value.producer().name for value in made]
    assert len(set(names)) == len(names)
    external = ir.Node("", "Identity", [first.inputs[0]], num_outputs=1, name="outside/Identity")
    external.outputs[0].name = "outside/Identity_out"
    model.graph.insert_before(first, external)
    model.cached("any-analysis", lambda: None)  # an analysis sees the onnx-ir edit
    assert model.unique_name("outside/Identity_out") == "outside/Identity_out_1"
    assert model.unique_name("outside/Identity") == "outside/Identity_1"
