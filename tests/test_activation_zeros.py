"""The activation-sparsity report (``analyze --activations``): zeros per ReLU against a direct
count in onnxruntime, near-zeros, dead channels and the MACs saved on a model built to have
them, the running counts across batches, JSON, the CLI and its plot."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

from sparsec import inspection
from sparsec.analysis.activation_zeros import (
    ActivationReport,
    _Counts,
    activation_report,
    dead_channels,
)
from sparsec.analysis.activations import load_calibration
from sparsec.ir import Model

DIGITS = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npz"


def _relu_outputs_in_onnxruntime(path, feeds) -> dict[str, np.ndarray]:
    """{ReLU output: its values}, run on the model with every ReLU output exposed."""
    proto = onnx.load(path)
    relus = [n.output[0] for n in proto.graph.node if n.op_type == "Relu"]
    proto.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in relus
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(relus, session.run(relus, feeds)))


def _relu_counts_in_onnxruntime(path, feeds) -> dict[str, tuple[int, int]]:
    """{ReLU output: (zeros, elements)}, counted directly."""
    arrays = _relu_outputs_in_onnxruntime(path, feeds)
    return {name: (int(np.sum(a == 0)), a.size) for name, a in arrays.items()}


def test_zeros_per_relu_match_a_direct_count_in_onnxruntime():
    feeds = {"input": np.load(CALIB)["input"].astype(np.float32)}
    expected = _relu_counts_in_onnxruntime(DIGITS, feeds)
    report = inspection.activations(Model.load(DIGITS), CALIB)
    rows = {row.name: row for row in report.rows if row.producer == "Relu"}
    assert set(rows) == set(expected) and len(rows) == 5 and report.samples == 256
    for name, (zeros, elements) in expected.items():
        assert rows[name].elements == elements
        assert round(rows[name].zero_fraction * elements) == zeros, name
    assert 0 < report.macs_saved < report.macs


def test_counts_run_batch_by_batch_add_up():
    model = Model.load(DIGITS)
    samples = load_calibration(CALIB, model)
    whole = activation_report(model, samples, batch_size=256)
    batched = activation_report(model, samples, batch_size=7)  # 36 full batches and one of 4
    assert batched == whole


def _dead_channel_model(tmp_path):
    """x [N,2,5,5] >= 0 -> Conv(3 filters, pad 1) -> Relu -> Conv 1x1 (4 filters) -> y.

    Filter 0 is positive with bias 0.5: output > 0. Filter 1 is zero with bias -1: its ReLU is 0
    everywhere (dead). Filter 2 is zero with bias 1e-8: near zero, never exactly zero."""
    w1 = np.zeros((3, 2, 3, 3), np.float32)
    w1[0] = 0.1
    b1 = np.array([0.5, -1.0, 1e-8], np.float32)
    w2 = np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "dead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    path = tmp_path / "dead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.random.default_rng(1).uniform(0.1, 1.0, size=(40, 2, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return path, tmp_path / "calib.npz"


def test_a_dead_channel_is_reported_and_the_macs_saved_match_a_hand_count(tmp_path):
    path, calib = _dead_channel_model(tmp_path)
    report = inspection.activations(Model.load(path), calib, threshold=1e-6)
    rows = {row.name: row for row in report.rows}
    assert list(rows) == ["x", "r1"]  # what conv1 reads, the ReLU (read by conv2)
    relu = rows["r1"]
    assert (relu.axis, relu.channels, relu.dead_channels) == (1, 3, [1])
    assert relu.zero_fraction == pytest.approx(1 / 3) and relu.near_zero_fraction == 2 / 3
    # conv2 at batch 1: 4 x 5 x 5 outputs x 3 inputs = 300 MACs; channel 1 of 3 is skipped
    assert (relu.macs, relu.macs_saved) == (300, 100)
    # conv1: 3 x 5 x 5 outputs x 2 x 3 x 3 = 1350 MACs, its input has no zeros
    assert (rows["x"].macs, rows["x"].macs_saved, rows["x"].zero_fraction) == (1350, 0, 0.0)
    assert (report.macs, report.macs_saved, report.samples) == (1650, 100, 40)
    assert relu.producer == "Relu" and relu.node == "relu1" and relu.consumers == ["conv2"]
    tight = inspection.activations(Model.load(path), calib, threshold=1e-9)
    assert tight.rows[1].near_zero_fraction == pytest.approx(1 / 3)


def test_dead_channels_for_the_dead_channel_pass(tmp_path):
    path, calib = _dead_channel_model(tmp_path)
    model = Model.load(path)
    samples = load_calibration(calib, model)
    for values in (None, ["r1", "x"], {"r1": 1}):
        found = dead_channels(model, samples, values)
        assert list(found) == ["r1"] and found["r1"][0] == 1
        assert found["r1"][1].tolist() == [1]
    assert dead_channels(model, samples, ["x"]) == {}
    on_digits = dead_channels(Model.load(DIGITS), load_calibration(CALIB, Model.load(DIGITS)))
    outputs = _relu_outputs_in_onnxruntime(DIGITS, {"input": np.load(CALIB)["input"]})
    direct = {  # channels (axis 1) zero on every sample and position, counted directly
        name: np.flatnonzero(np.all(a == 0, axis=tuple(i for i in range(a.ndim) if i != 1)))
        for name, a in outputs.items()
    }
    expected = {name: dead.tolist() for name, dead in direct.items() if len(dead)}
    found = {name: dead.tolist() for name, (_, dead) in on_digits.items() if name in outputs}
    assert expected and found == expected


def test_linear_layers_read_their_channels_on_the_contraction_axis():
    """x [N, 6] -> MatMul [6, 4] -> Relu -> Gemm(transB) [3, 4]: column 2 of the MatMul is zero,
    so feature 2 of the ReLU is dead; the Gemm spends 3 x 4 MACs per sample, a quarter skipped."""
    w1 = np.full((6, 4), 0.2, np.float32)
    w1[:, 2] = 0
    w2 = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
            helper.make_node("Relu", ["m"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    samples = {"x": np.random.default_rng(5).uniform(0.5, 1, size=(9, 6)).astype(np.float32)}
    report = activation_report(model, samples)
    rows = {row.name: row for row in report.rows}
    assert (rows["r"].axis, rows["r"].channels, rows["r"].dead_channels) == (1, 4, [2])
    assert (rows["r"].macs, rows["r"].macs_saved, rows["x"].macs) == (12, 3, 24)
    found = dead_channels(model, samples)
    assert list(found) == ["r"] and found["r"][0] == 1 and found["r"][1].tolist() == [2]


def test_counts_fold_into_one_cell_when_channels_change_size():
    """Padded batches cut to their longest row change a positions axis between batches: a
    value whose 'channels' do so is counted whole, nothing lost."""
    counts = _Counts(axis=2)
    counts.add(np.array([[[0.0, 1.0, 0.0]], [[0.0, 2.0, 0.0]]]), 0.5)
    assert counts.dead().tolist() == [0, 2] and counts.elements == 6
    counts.add(np.array([[[0.0, 1.0, 0.0, 0.0]]]), 0.5)
    assert counts.axis is None and counts.dead().size == 0
    assert (int(counts.zeros), counts.elements) == (7, 10)


def test_gated_activations_are_measured_on_their_channel_axis():
    """SiLU as Mul(x, Sigmoid(x)) with no compute layer after it: its axis comes from the conv
    producing x, through the elementwise Mul."""
    w = np.random.default_rng(2).normal(size=(3, 2, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
            helper.make_node("Mul", ["c", "s"], ["y"], name="silu"),
        ],
        "silu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    samples = {"x": np.random.default_rng(3).normal(size=(5, 2, 4, 4)).astype(np.float32)}
    report = activation_report(model, samples)
    rows = {row.name: (row.producer, row.axis, row.channels) for row in report.rows}
    assert rows == {"x": ("input", 1, 2), "s": ("Sigmoid", 1, 3), "y": ("Mul", 1, 3)}


def test_json_round_trip():
    report = inspection.activations(Model.load(DIGITS), CALIB, samples=32)
    data = json.loads(json.dumps(report.to_json()))
    assert ActivationReport.from_json(data) == report
    assert data["macs_saved"] == sum(row["macs_saved"] for row in data["values"])
    assert data["samples"] == 32 and data["threshold"] == 1e-6


def test_cli_text_and_json(cli):
    args = ("analyze", DIGITS, "--activations", "--calibration", CALIB)
    code, out, err = cli(*args, "--calibration-samples", "64")
    assert code == 0, err
    assert "activations: 9 values on 64 calibration samples" in out
    assert "/Relu_3_output_0" in out and "MACs a zero-skipping runtime would save" in out
    code, out, _ = cli(*args, "--json", "--zero-threshold", "0.01")
    summary = json.loads(out)["activations"]
    assert code == 0 and summary["threshold"] == 0.01 and summary["samples"] == 256
    relus = [row for row in summary["values"] if row["producer"] == "Relu"]
    assert len(relus) == 5
    assert all(row["near_zero_fraction"] >= row["zero_fraction"] for row in relus)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_cli_plot(cli, tmp_path, suffix):
    pytest.importorskip("matplotlib")
    plot = tmp_path / f"zeros{suffix}"
    code, _, err = cli("analyze", DIGITS, "--activations", "--calibration", CALIB, "--plot", plot)
    assert code == 0, err
    head = plot.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in plot.read_bytes()


def test_cli_plot_without_matplotlib_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    plot = tmp_path / "zeros.png"
    code, out, err = cli("analyze", DIGITS, "--activations", "--calibration", CALIB, "--plot", plot)
    assert code != 0 and not out and not plot.exists()
    assert len(err.strip().splitlines()) == 1 and "pip install 'sparsec[plot]'" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--activations", "--calibration", CALIB, "--zero-threshold", "-1"], "--zero-threshold"),
        (["--activations"], "give --calibration"),
        (["--calibration", CALIB], "go with --sensitivity, --activations or --blocks"),
        (["--plot", "zeros.png"], "go with --activations"),
        (["--activations", "--calibration", CALIB, "--plot", "zeros.jpg"], ".png or .svg"),
        (["--activations", "--calibration", "missing.npz"], "not found"),
    ],
)
def test_bad_values_are_one_line(cli, extra, message):
    code, out, err = cli("analyze", DIGITS, *extra)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and message in err
