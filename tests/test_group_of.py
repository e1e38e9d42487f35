"""``sparsec.group_of`` and ``sparsec.layer_table`` (``analysis/lookup.py``): the channel group
holding a layer's output or input channels, found by node name, weight name, scope or module
path, on the bundled digits CNN (both exporters) and on a generated ResNet-like graph whose
weights have the legacy exporter's anonymous names; errors name the closest names."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import MODELS, make_model, oracle_error
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.analysis.lookup import (
    AxisError,
    NameTypeError,
    UnknownNameError,
    layer_table,
    layers,
    module_of,
)
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.report import layers_text

DIGITS = MODELS / "digits_cnn.onnx"


def resnet_like(seed: int = 0) -> Model:
    """stem → (layer1.0: conv1, conv2) + residual → layer2.0: conv1, conv2 → pool → fc, with
    legacy-exporter node names and some anonymous (``onnx::Conv_N``) weights."""
    rng = np.random.default_rng(seed)
    convs = [  # node scope, weight name, out, in, kernel
        ("/stem", "stem.weight", 8, 3, 3),
        ("/layer1/layer1.0/conv1", "onnx::Conv_10", 8, 8, 3),
        ("/layer1/layer1.0/conv2", "onnx::Conv_11", 8, 8, 3),
        ("/layer2/layer2.0/conv1", "onnx::Conv_12", 16, 8, 3),
        ("/layer2/layer2.0/conv2", "layer2.0.conv2.weight", 16, 16, 1),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(o, i, k, k)).astype(np.float32), name)
        for _, name, o, i, k in convs
    ]
    inits.append(numpy_helper.from_array(rng.normal(size=(10, 16)).astype(np.float32), "fc.weight"))
    feeds = {"/stem": "x", "/layer1/layer1.0/conv1": "s", "/layer1/layer1.0/conv2": "a",
             "/layer2/layer2.0/conv1": "r", "/layer2/layer2.0/conv2": "c"}  # fmt: skip
    outputs = {"/stem": "s0", "/layer1/layer1.0/conv1": "a0", "/layer1/layer1.0/conv2": "b",
               "/layer2/layer2.0/conv1": "c0", "/layer2/layer2.0/conv2": "d0"}  # fmt: skip
    conv = {
        s: helper.make_node(
            "Conv", [feeds[s], w], [outputs[s]], name=f"{s}/Conv", pads=[k // 2] * 4
        )
        for s, w, _, _, k in convs
    }
    nodes = [
        conv["/stem"],
        helper.make_node("Relu", ["s0"], ["s"], name="/Relu"),
        conv["/layer1/layer1.0/conv1"],
        helper.make_node("Relu", ["a0"], ["a"], name="/layer1/layer1.0/relu/Relu"),
        conv["/layer1/layer1.0/conv2"],
        helper.make_node("Add", ["s", "b"], ["r"], name="/layer1/layer1.0/Add"),
        conv["/layer2/layer2.0/conv1"],
        helper.make_node("Relu", ["c0"], ["c"], name="/layer2/layer2.0/relu/Relu"),
        conv["/layer2/layer2.0/conv2"],
        helper.make_node("Relu", ["d0"], ["d"], name="/layer2/layer2.0/relu_1/Relu"),
        helper.make_node("GlobalAveragePool", ["d"], ["p"], name="/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight"], ["y"], name="/fc/Gemm", transB=1),
    ]
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return Model.from_proto(proto)


def test_node_weight_scope_and_module_name_the_same_group():
    model = Model.load(DIGITS)
    group = sparsec.group_of(model, "/se/reduce/Conv")
    assert ("se.reduce.weight", 0) in group.members and group.prunable
    for alias in ("se.reduce.weight", "/se/reduce", "se.reduce"):
        assert sparsec.group_of(model, alias) is group
    assert group.units == 8


def test_input_side_and_an_initializer_axis():
    model = Model.load(DIGITS)
    inputs = sparsec.group_of(model, "/se/reduce/Conv", "input")
    assert ("se.reduce.weight", 1) in inputs.members
    assert sparsec.group_of(model, "se.reduce.weight", 1) is inputs
    assert inputs is sparsec.group_of(model, "/pw/Conv")  # the SE reads the residual stream
    assert inputs.units == 32 and ("pw.weight", 0) in inputs.members


def test_a_layer_held_by_no_prunable_group_gets_its_group_and_reason():
    group = sparsec.group_of(Model.load(DIGITS), "/head/Gemm")
    assert not group.prunable and "logits" in group.reason
    assert ("head.weight", 0) in group.members


def test_unknown_name_names_the_closest():
    model = Model.load(DIGITS)
    with pytest.raises(UnknownNameError, match=r"'/pw/Con'.*closest: '/pw/Conv'"):
        sparsec.group_of(model, "/pw/Con")
    with pytest.raises(KeyError):  # a lookup error to `except KeyError` as well
        sparsec.group_of(model, "nothing")
    with pytest.raises(InputError):
        sparsec.group_of(model, "nothing")
    assert "\\" not in str(UnknownNameError("x")) and str(UnknownNameError("x")) == "x"


def test_channels_in_no_group_are_an_error_not_a_wrong_group():
    model = Model.load(DIGITS)
    with pytest.raises(UnknownNameError, match="is in no channel group"):
        sparsec.group_of(model, "input", 1)  # one input channel (grayscale): no group
    with pytest.raises(UnknownNameError, match="is in no channel group"):
        sparsec.group_of(model, "/stem/Conv", "input")
    with pytest.raises(UnknownNameError, match="not a layer"):
        sparsec.group_of(model, "/Relu", "input")


def test_dynamo_export_answers_by_parameter_name():
    legacy, dynamo = Model.load(DIGITS), Model.load(MODELS / "digits_cnn_dynamo.onnx")
    for module in ("stem", "pw", "se.reduce", "head"):
        a, b = sparsec.group_of(legacy, module), sparsec.group_of(dynamo, module)
        assert (a.units, a.prunable) == (b.units, b.prunable), module
    assert [layer.module for layer in layers(dynamo)] == [layer.module for layer in layers(legacy)]


@pytest.mark.parametrize(
    "scope, module",
    [
        ("/layer4/layer4.0/conv1", "layer4.0.conv1"),
        ("/layer1/layer1.0/down/down.0", "layer1.0.down.0"),
        ("/blocks.0/attn/qkv", "blocks.0.attn.qkv"),
        ("/stem", "stem"),
        ("", ""),
    ],
)
def test_module_of_a_scope(scope, module):
    assert module_of(scope) == module


def test_dynamo_scopes_come_from_metadata():
    model = Model.load(MODELS / "digits_cnn_dynamo.onnx")
    scopes = {layer.module: layer.scope for layer in layers(model)}
    assert scopes["se.reduce"] == "/se/se.reduce" and scopes["pw"] == "/pw"
    assert sparsec.group_of(model, "/se/se.reduce") is sparsec.group_of(model, "se.reduce")


def test_generated_graph_module_paths_from_scopes():
    model = resnet_like()
    modules = [layer.module for layer in layers(model)]
    assert modules == [
        "stem",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "fc",
    ]
    conv1 = sparsec.group_of(model, "layer1.0.conv1")
    assert ("onnx::Conv_10", 0) in conv1.members and conv1.units == 8
    residual = sparsec.group_of(model, "/stem/Conv")
    assert sparsec.group_of(model, "layer1.0.conv2") is residual
    assert sparsec.group_of(model, "layer2.0.conv1", "input") is residual
    assert sparsec.group_of(model, "onnx::Conv_12", 1) is residual


def test_unknown_module_path_suggests_the_closest():
    model = resnet_like()
    with pytest.raises(UnknownNameError, match="closest"):
        sparsec.group_of(model, "layer2.0.conv3")


def test_pruning_the_group_found_matches_its_masked_original(rng):
    """Torch-Pruning's flow: find a layer's group, cut its lowest units, check the oracle."""
    model = resnet_like()
    group = sparsec.group_of(model, "layer2.0.conv1")
    analysis = sparsec.find_channel_groups(model)
    removed = np.sort(rng.choice(group.units, size=5, replace=False))
    result = sparsec.prune_channels(model, analysis, {group.id: removed})
    assert model.constant_shape(model.value("onnx::Conv_12"))[0] == group.units - 5
    assert model.constant_shape(model.value("layer2.0.conv2.weight"))[1] == group.units - 5
    assert oracle_error(model, result.reference()) <= 1e-4


def test_layer_table_rows_and_text():
    rows = layer_table(Model.load(DIGITS))
    by_node = {row.layer.node: row for row in rows}
    assert len(rows) == 8
    assert by_node["/stem/Conv"].input is None and by_node["/stem/Conv"].output.units == 16
    assert by_node["/se/expand/Conv"].output is by_node["/pw/Conv"].output
    assert by_node["/head/Gemm"].input is by_node["/pw/Conv"].output
    text = layers_text([row.to_json() for row in rows])
    assert text == layers_text(rows)
    assert text.startswith("layers: 8 (7 with prunable output channels)")
    assert "kept: reaches graph output 'logits'" in text


def test_analyze_layers_on_the_command_line(cli):
    code, out, _ = cli("analyze", DIGITS, "--layers")
    assert code == 0
    assert "/se/reduce/Conv" in out and "se.reduce" in out and "2 (8)" in out
    code, out, _ = cli("analyze", DIGITS, "--layers", "--json")
    import json

    table = json.loads(out)["layers"]
    assert table[-1]["node"] == "/head/Gemm" and table[-1]["output"]["prunable"] is False


def test_quantized_layers_answer_like_their_float_twin():
    """A QDQ model (onnxruntime's quantizer): a layer's weight is the stored int8 initializer
    behind its DequantizeLinear, and every layer's groups have the float model's sizes."""
    from test_qdq import QUANTIZED

    quantized = Model.load(QUANTIZED / "digits_cnn_qdq.onnx")
    float_rows = {row.layer.module: row for row in layer_table(Model.load(DIGITS))}
    rows = layer_table(quantized)
    assert [row.layer.module for row in rows] == [
        "stem", "branch1", "branch3", "dw", "pw", "se.reduce", "se.expand", "head"
    ]  # fmt: skip
    for row in rows:
        twin = float_rows[row.layer.module]
        assert row.output.units == twin.output.units and row.output.prunable == twin.output.prunable
    weight = next(row.layer.weight for row in rows if row.layer.module == "se.reduce")
    assert quantized.elem_type(quantized.value(weight)).kind == "i"
    assert sparsec.group_of(quantized, weight) is sparsec.group_of(quantized, "se.reduce")


@pytest.mark.parametrize("axis", [4, 5, -5, 100])
def test_an_axis_out_of_range_names_the_rank(axis):
    """No wrap-around: 5 % 4 would be axis 1 of a rank-4 weight."""
    model = Model.load(DIGITS)
    with pytest.raises(
        AxisError, match=rf"axis {axis} is out of range .*'se.reduce.weight' of rank 4"
    ):
        sparsec.group_of(model, "se.reduce.weight", axis)


def test_negative_axes_in_range_count_from_the_end():
    model = Model.load(DIGITS)
    inputs = sparsec.group_of(model, "/se/reduce/Conv", "input")
    assert sparsec.group_of(model, "se.reduce.weight", -3) is inputs
    assert sparsec.group_of(model, "se.reduce.weight", -4) is sparsec.group_of(model, "se.reduce")


@pytest.mark.parametrize("axis", ["bogus", "1", True, 1.0, "Input"])
def test_an_axis_no_side_nor_integer_names_the_accepted_values(axis):
    model = Model.load(DIGITS)
    with pytest.raises(AxisError, match="axis must be 'output', 'input', an integer or None") as e:
        sparsec.group_of(model, "se.reduce.weight", axis)
    assert isinstance(e.value, InputError) and isinstance(e.value, ValueError)
    assert "invalid literal" not in str(e.value)


@pytest.mark.parametrize("name", [123, None, ("stem",), b"stem"])
def test_a_name_must_be_text(name):
    with pytest.raises(NameTypeError, match=r"name must be a str .*got") as e:
        sparsec.group_of(Model.load(DIGITS), name)
    assert isinstance(e.value, TypeError) and isinstance(e.value, InputError)


def test_a_layer_module_path_with_an_integer_axis_counts_its_output_axes():
    model = Model.load(DIGITS)
    assert sparsec.group_of(model, "se.reduce", 1) is sparsec.group_of(model, "/se/reduce/Conv")


def test_norm_layers_answer_to_their_module_path_and_scope():
    """A BatchNorm's module path and scope, as for a layer: the group of its output channels
    (not a row of layer_table, which lists compute layers)."""
    model = Model.load(DIGITS)
    by_node = sparsec.group_of(model, "/stem_bn/BatchNormalization")
    assert sparsec.group_of(model, "stem_bn") is by_node is sparsec.group_of(model, "/stem_bn")
    assert by_node is sparsec.group_of(model, "stem")
    assert sparsec.group_of(model, "res_bn") is sparsec.group_of(model, "pw")
    assert "stem_bn" not in [row.layer.module for row in layer_table(model)]
    dynamo = Model.load(MODELS / "digits_cnn_dynamo.onnx")  # its BatchNorm named by parameters
    assert sparsec.group_of(dynamo, "cat_bn").units == sparsec.group_of(model, "cat_bn").units


def test_closest_names_ignore_case():
    model = Model.load(DIGITS)
    with pytest.raises(UnknownNameError, match=r"closest: 'se\.reduce'"):
        sparsec.group_of(model, "SE.REDUCE")
    with pytest.raises(UnknownNameError, match=r"closest: 'stem_bn'"):
        sparsec.group_of(model, "Stem_BN")


def test_a_heads_group_is_described_and_listed_as_heads():
    model = Model.load(MODELS / "digits_vit.onnx")
    rows = {row.layer.module: row for row in layer_table(model)}
    heads, hidden = rows["blocks.0.attn.q"].output, rows["blocks.0.fc1"].output
    assert heads.kind == "heads" and hidden.kind != "heads"
    assert re.match(rf"group {heads.id}: {heads.units} heads, weights ", heads.describe())
    assert f"{hidden.units} channels, weights" in hidden.describe()
    data = rows["blocks.0.attn.q"].to_json()["output"]
    assert data["channels"] == heads.units and data["kind"] == "heads"  # channels: unchanged
    text = layers_text(list(rows.values()))
    assert f"{heads.id} ({heads.units} heads)" in text
    assert f"{hidden.id} ({hidden.units})" in text and f"({hidden.units} heads)" not in text
