"""Non-tensor values (sequences, maps, optionals, strings) load, pass through cleanup untouched,
and are compared element by element in validation.

The models are built here with onnx.helper: a scikit-learn-style classifier (LinearClassifier
→ label + ZipMap probabilities, a sequence of maps, as skl2onnx writes every classifier), a
SequenceConstruct output, Optional outputs (present and empty), string outputs (LabelEncoder,
Cast to string), and sequence / optional / map inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sparsec import api, report
from sparsec.analysis.inputs import bind_shapes, conform, load_npz, random_inputs
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.validate import output_metrics, validate

ML = "ai.onnx.ml"
SCALAR_FLOAT = helper.make_tensor_type_proto(TensorProto.FLOAT, [])


def _model(nodes, inputs, outputs, *, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "nontensor", inputs, outputs)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ML, 3)]
    )
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _features():
    return helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])


def classifier(labels: str = "int64", seed: int = 0, scale: float = 1.0) -> onnx.ModelProto:
    """LinearClassifier (3 classes, softmax) → label [N] and ZipMap → seq(map(label, float))."""
    coefficients = (
        (scale * np.random.default_rng(seed).standard_normal(12)).astype(np.float32).tolist()
    )
    if labels == "int64":
        classes, label_type = {"classlabels_ints": [0, 1, 2]}, TensorProto.INT64
        zipmap, key_type = {"classlabels_int64s": [0, 1, 2]}, TensorProto.INT64
    else:
        classes, label_type = {"classlabels_strings": ["a", "b", "c"]}, TensorProto.STRING
        zipmap, key_type = {"classlabels_strings": ["a", "b", "c"]}, TensorProto.STRING
    nodes = [
        helper.make_node(
            "LinearClassifier",
            ["X"],
            ["label", "scores"],
            domain=ML,
            coefficients=coefficients,
            intercepts=[0.1, -0.2, 0.3],
            post_transform="SOFTMAX",
            **classes,
        ),
        helper.make_node("ZipMap", ["scores"], ["probabilities"], domain=ML, **zipmap),
    ]
    probabilities = helper.make_sequence_type_proto(
        helper.make_map_type_proto(key_type, SCALAR_FLOAT)
    )
    return _model(
        nodes,
        [_features()],
        [
            helper.make_tensor_value_info("label", label_type, ["N"]),
            helper.make_value_info("probabilities", probabilities),
        ],
    )


def sequence_output() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["X"], ["a"]),
        helper.make_node("Neg", ["X"], ["b"]),
        helper.make_node("SequenceConstruct", ["a", "b"], ["pair"]),
        helper.make_node("Sigmoid", ["X"], ["y"]),
    ]
    pair = helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 4])
    )
    return _model(
        nodes,
        [_features()],
        [
            helper.make_value_info("pair", pair),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
        ],
    )


def optional_output(empty: bool = False) -> onnx.ModelProto:
    element = helper.make_tensor_type_proto(TensorProto.FLOAT, None if empty else ["N", 4])
    first = (
        helper.make_node("Optional", [], ["maybe"], type=element)
        if empty
        else helper.make_node("Optional", ["a"], ["maybe"])
    )
    nodes = [helper.make_node("Relu", ["X"], ["a"]), first, helper.make_node("Abs", ["X"], ["y"])]
    return _model(
        nodes,
        [_features()],
        [
            helper.make_value_info("maybe", helper.make_optional_type_proto(element)),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
        ],
        opset=18,
    )


def string_outputs() -> onnx.ModelProto:
    nodes = [
        helper.make_node("ArgMax", ["X"], ["index"], axis=1, keepdims=0),
        helper.make_node(
            "LabelEncoder",
            ["index"],
            ["name"],
            domain=ML,
            keys_int64s=[0, 1, 2, 3],
            values_strings=["w", "x", "y", "z"],
        ),
        helper.make_node("Cast", ["X"], ["text"], to=TensorProto.STRING),
    ]
    return _model(
        nodes,
        [_features()],
        [
            helper.make_tensor_value_info("name", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 4]),
        ],
    )


def sequence_input() -> onnx.ModelProto:
    parts = helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 4])
    )
    nodes = [
        helper.make_node("ConcatFromSequence", ["parts"], ["joined"], axis=0),
        helper.make_node("Relu", ["joined"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_value_info("parts", parts)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )


def optional_input() -> onnx.ModelProto:
    maybe = helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 4])
    )
    nodes = [
        helper.make_node("OptionalGetElement", ["maybe"], ["value"]),
        helper.make_node("Relu", ["value"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_value_info("maybe", maybe)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        opset=18,
    )


def map_input() -> onnx.ModelProto:
    counts = helper.make_map_type_proto(TensorProto.INT64, SCALAR_FLOAT)
    nodes = [
        helper.make_node(
            "DictVectorizer", ["counts"], ["y"], domain=ML, int64_vocabulary=[0, 1, 2, 3]
        )
    ]
    return _model(
        nodes,
        [helper.make_value_info("counts", counts)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )


# (builder, {value name: onnxruntime's type name} for its non-tensor and string values)
KINDS = {
    "zipmap-int64": (
        lambda: classifier("int64"),
        {"probabilities": "seq(map(int64,tensor(float)))"},
    ),
    "zipmap-string": (
        lambda: classifier("string"),
        {"label": "tensor(string)", "probabilities": "seq(map(string,tensor(float)))"},
    ),
    "sequence-output": (sequence_output, {"pair": "seq(tensor(float))"}),
    "optional-output": (optional_output, {"maybe": "optional(tensor(float))"}),
    "empty-optional-output": (
        lambda: optional_output(empty=True),
        {"maybe": "optional(tensor(float))"},
    ),
    "string-outputs": (string_outputs, {"name": "tensor(string)", "text": "tensor(string)"}),
    "sequence-input": (sequence_input, {"parts": "seq(tensor(float))"}),
    "optional-input": (optional_input, {"maybe": "optional(tensor(float))"}),
    "map-input": (map_input, {"counts": "map(int64,tensor(float))"}),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request, tmp_path):
    """(path of the saved model, its expected type names)."""
    build, types = KINDS[request.param]
    path = tmp_path / f"{request.param}.onnx"
    onnx.save(build(), path)
    return path, types


def _interface_types(path) -> dict[str, onnx.TypeProto]:
    graph = onnx.load(path).graph
    return {value.name: value.type for value in list(graph.input) + list(graph.output)}


def test_each_kind_loads_with_its_type_named_as_onnxruntime_does(kind):
    path, types = kind
    model = Model.load(path)
    values = {v.name: v for v in model.inputs + model.outputs}
    assert {name: model.type_name(values[name]) for name in types} == types
    assert all(
        model.is_tensor(values[name]) == name.startswith(("label", "name", "text"))
        for name in types
    )
    written = {
        v.name: v.type
        for v in list(model.to_proto().graph.input) + list(model.to_proto().graph.output)
    }
    assert written == _interface_types(path)  # every type (a map's scalar value shape too) survives


def test_analyze_lists_each_kind(kind, cli):
    path, types = kind
    code, out, err = cli("analyze", path)
    assert code == 0, err
    assert all(name in out for name in types)
    summary = api.analyze(Model.load(path))
    assert {v["name"] for v in summary["inputs"] + summary["outputs"]} >= set(types)


def test_analyze_names_the_non_tensor_types(cli, tmp_path):
    onnx.save(classifier("int64"), tmp_path / "classifier.onnx")
    code, out, _ = cli("analyze", tmp_path / "classifier.onnx")
    assert code == 0 and "probabilities seq(map(int64,tensor(float)))" in out
    onnx.save(classifier("string"), tmp_path / "strings.onnx")
    code, out, _ = cli("analyze", tmp_path / "strings.onnx")
    assert (
        code == 0
        and "outputs   label string ['N'], probabilities seq(map(string,tensor(float)))" in out
    )


def test_analyze_text_shows_a_non_tensor_type():
    summary = {
        "model": "m.onnx",
        "producer": "?",
        "opsets": {"": 17},
        "nodes": 2,
        "functions": 0,
        "bytes": 10,
        "params": 0,
        "macs": 0,
        "macs_unknown_nodes": [],
        "op_histogram": {},
        "cost_by_op": {},
        "inputs": [{"name": "X", "dtype": "float32", "shape": ["N", 4], "bound_shape": [1, 4]}],
        "outputs": [
            {"name": "label", "dtype": "int64", "shape": ["N"], "type": "tensor(int64)"},
            {
                "name": "probabilities",
                "dtype": "float32",
                "shape": None,
                "type": "seq(map(int64,tensor(float)))",
            },
        ],
    }
    text = report.analyze_text(summary)
    assert "outputs   label int64 ['N'], probabilities seq(map(int64,tensor(float)))" in text


def test_cleanup_writes_each_kind_unchanged_and_it_validates(kind, cli, tmp_path):
    path, _ = kind
    out = tmp_path / "out.onnx"
    code, stdout, err = cli("compress", path, "-o", out, "--latency-runs", "0")
    assert code == 0, err
    assert "validation on random (seed 0) (rtol 0.0001, atol 1e-05): passed" in stdout
    assert _interface_types(out) == _interface_types(path)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    code, stdout, err = cli("validate", path, out, "--latency-runs", "0")
    assert code == 0, err


def test_zipmap_output_is_reported_per_output_with_its_type_and_top1(tmp_path):
    onnx.save(classifier("int64"), tmp_path / "a.onnx")
    feeds = {"X": np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)}
    result = validate(tmp_path / "a.onnx", tmp_path / "a.onnx", feeds, latency_runs=0)
    label, probabilities = result.outputs
    assert result.passed and label.type == "tensor(int64)" and label.shape == [16]
    assert probabilities.type == "seq(map(int64,tensor(float)))" and probabilities.shape == [16]
    assert (
        probabilities.max_abs == 0.0
        and probabilities.cosine == pytest.approx(1.0)
        and probabilities.top1 == 1.0
    )
    assert "probabilities  seq(map(int64,tensor(float)))[16]" in report.validation_text(result)


@pytest.mark.parametrize("labels", ["int64", "string"])
def test_a_candidate_whose_zipmap_probabilities_differ_fails(labels, tmp_path, cli):
    """Coefficients scaled by 1.01: the labels agree on these inputs, the probabilities do not."""
    onnx.save(classifier(labels), tmp_path / "reference.onnx")
    onnx.save(classifier(labels, scale=1.01), tmp_path / "candidate.onnx")
    feeds = {"X": np.random.default_rng(2).standard_normal((32, 4)).astype(np.float32)}
    result = validate(
        tmp_path / "reference.onnx", tmp_path / "candidate.onnx", feeds, latency_runs=0
    )
    label, probabilities = result.outputs
    assert label.passed and not probabilities.passed and not result.passed
    assert 1e-4 < probabilities.max_abs < 0.1 and probabilities.top1 == 1.0
    code, stdout, _ = cli(
        "validate", tmp_path / "reference.onnx", tmp_path / "candidate.onnx", "--latency-runs", "0"
    )
    assert code == 1 and "FAILED" in stdout


def test_a_candidate_with_other_class_labels_fails_on_its_map_keys(tmp_path):
    onnx.save(classifier("string"), tmp_path / "reference.onnx")
    other = classifier("string")
    for node in other.graph.node:
        for attribute in node.attribute:
            if attribute.name in ("classlabels_strings",):
                attribute.strings[:] = [b"a", b"b", b"d"]
    onnx.save(other, tmp_path / "candidate.onnx")
    feeds = {"X": np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)}
    result = validate(
        tmp_path / "reference.onnx", tmp_path / "candidate.onnx", feeds, latency_runs=0
    )
    label, probabilities = result.outputs
    assert not probabilities.passed and "missing 'c'; extra 'd'" in probabilities.problem
    assert probabilities.max_abs == float("inf") and probabilities.cosine is None
    assert not label.passed and "is 'd', the reference's is 'c'" in label.problem  # strings: exact
    assert result.failure_line().startswith("output 'label': [")


def test_non_tensor_values_are_compared_element_by_element():
    one, two = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)
    close = [{0: 0.25, 1: 0.75}, {0: 0.5, 1: 0.5}]
    cases = [  # (reference, candidate, passes, words in the problem)
        ([one, two], [one, two + 1e-7], True, None),
        ([one, two], [one], False, "1 elements in the candidate, 2 in the reference"),
        ([one, two], [one, two.reshape(3, 2)], False, "[1] has shape [3, 2]"),
        ([one, two], [one, two + 0.5], False, None),
        (close, [{0: 0.25, 1: 0.75}, {0: 0.5, 1: 0.5 + 1e-9}], True, None),
        (close, [{0: 0.25, 1: 0.75}, {0: 0.5, 2: 0.5}], False, "[1] has other keys"),
        (
            close,
            [{0: 0.25, 1: 0.75}, {0: 0.5, 1: float("nan")}],
            False,
            "NaN or infinite at 1 of 4",
        ),
        ([{0: float("nan")}], [{0: float("nan")}], False, "the reference is NaN or infinite"),
        (None, None, True, None),
        (None, one, False, "present in the candidate, empty in the reference"),
        ([np.array([100000], np.int64)], [np.array([100001], np.int64)], False, "[0][0] is 100001"),
        ({"k": "a"}, {"k": "b"}, False, "['k'] is 'b'"),
        (np.array(["x", "y"], object), np.array(["x", "y"], object), True, None),
        (
            np.array(["x", "y"], object),
            np.array(["x", "z"], object),
            False,
            "[1] is 'z', the reference's is 'y'",
        ),
    ]
    for reference, candidate, passes, words in cases:
        metrics = output_metrics("v", reference, candidate, rtol=1e-4, atol=1e-5)
        assert metrics.passed is passes, (reference, candidate, metrics)
        assert (metrics.problem is None) if words is None else (words in metrics.problem), (
            metrics.problem
        )
        assert not np.isnan(metrics.max_abs) and (
            metrics.cosine is None or not np.isnan(metrics.cosine)
        )
    oracle = output_metrics(
        "v", close, [{0: 0.25, 1: 0.75}, {0: 0.5, 1: 0.50001}], 0.0, 0.0, peak_tolerance=1e-4
    )
    assert oracle.passed and oracle.max_abs_reference == 0.75


def test_integers_are_compared_exactly_even_where_rtol_would_allow_it():
    reference = np.array([[30000, 1]], np.int64)  # e.g. token ids: 30001 is another token
    assert not output_metrics(
        "ids", reference, reference + np.array([[1, 0]]), rtol=1e-4, atol=1e-5
    ).passed
    assert output_metrics("ids", reference, reference.copy(), rtol=1e-4, atol=1e-5).passed


def test_non_tensor_inputs_get_generated_values_and_are_refused_from_an_npz(tmp_path):
    expected = {"sequence-input": list, "optional-input": np.ndarray, "map-input": dict}
    for name, kind_of_value in expected.items():
        model = Model.from_proto(KINDS[name][0]())
        (value,) = model.inputs
        feeds = random_inputs(model, bind_shapes(model), seed=0)
        assert isinstance(feeds[value.name], kind_of_value)
        np.testing.assert_equal(random_inputs(model, bind_shapes(model), seed=0), feeds)
    feeds = random_inputs(
        Model.from_proto(sequence_input()), bind_shapes(Model.from_proto(sequence_input()))
    )
    assert len(feeds["parts"]) == 2 and all(
        part.shape == (1, 4) and part.dtype == np.float32 for part in feeds["parts"]
    )
    counts = random_inputs(Model.from_proto(map_input()), {"counts": ()})["counts"]
    assert sorted(counts) == [0, 1, 2, 3] and all(isinstance(v, float) for v in counts.values())
    np.savez(tmp_path / "parts.npz", parts=np.zeros((1, 4), np.float32))
    with pytest.raises(
        InputError, match=r"'parts' is a seq\(tensor\(float\)\), which an \.npz cannot hold"
    ):
        load_npz(tmp_path / "parts.npz", Model.from_proto(sequence_input()))
    model = Model.from_proto(sequence_input())
    with pytest.raises(
        InputError,
        match=r"calibration\.npz: array 'parts': the model input is a seq\(tensor\(float\)\)",
    ):
        conform(
            np.zeros((3, 4), np.float32), model.inputs[0], model, "calibration.npz", batched=True
        )
