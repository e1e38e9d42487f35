"""Work MACs leave out: other operations (elementwise, normalization, pooling, LRN, Resize,
Softmax, reductions) and bytes moved by data-movement ops, counted by hand on small graphs;
reported by ``analyze`` (JSON and text) without changing params or MACs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from conftest import make_model
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.cost import analyze_cost
from sparsec.inspection import analyze
from sparsec.ir import Model
from sparsec.report import _other_work_rows, analyze_text

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _cnn_tail() -> Model:
    """x[1,4,8,8] → Conv(8, 3x3, pad 1) → BN → Relu → MaxPool 2/2 → LRN(3) → Resize ×2 nearest
    → Transpose → Reshape [1, 512] → Softmax."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("LRN", ["p"], ["l"], size=3),
        helper.make_node("Resize", ["l", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Transpose", ["u"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("Softmax", ["f"], ["y"], axis=-1),
    ]
    ones = np.ones(8, np.float32)
    inits = [
        _const("w", np.ones((8, 4, 3, 3), np.float32)),
        *(_const(name, ones) for name in "gbmv"),
        _const("scales", np.array([1, 1, 2, 2], np.float32)),
        _const("shape", np.array([1, 512], np.int64)),
    ]
    return Model.from_proto(
        make_model(nodes, [("x", F, [1, 4, 8, 8])], [("y", F, [1, 512])], inits)
    )


# conv out 1x8x8x8 = 512; pooled 1x8x4x4 = 128; resized back to 512.
EXPECTED_OTHER = {
    "Conv": 0,  # its work is MACs
    "BatchNormalization": 512 * 2,
    "Relu": 512,
    "MaxPool": 128 * 2 * 2,
    "LRN": 128 * 3,
    "Resize": 512 * 1,  # nearest: one tap
    "Transpose": 0,
    "Reshape": 0,
    "Softmax": 512 * 4,
}
EXPECTED_MOVED = {"Transpose": 512 * 4, "Reshape": 512 * 4}  # fp32 outputs


def test_other_ops_and_bytes_moved_per_op_by_hand():
    cost = analyze_cost(_cnn_tail())
    assert {n.op_type: n.other_ops for n in cost.nodes} == EXPECTED_OTHER
    assert {n.op_type: n.bytes_moved for n in cost.nodes if n.bytes_moved} == EXPECTED_MOVED
    assert cost.other_ops == sum(EXPECTED_OTHER.values()) == 4992
    assert cost.bytes_moved == 4096 and not cost.other_unknown
    assert cost.macs == 512 * 4 * 3 * 3  # unchanged: the conv alone
    by_op = cost.by_op()
    assert by_op["Softmax"]["other_ops"] == 2048 and by_op["Transpose"]["bytes_moved"] == 2048
    assert by_op["Conv"]["macs"] == cost.macs and by_op["Conv"]["other_ops"] == 0


def test_linear_resize_variadic_reductions_and_fp16_movement():
    """Linear Resize on two axes: 4 taps per output; Sum of 3 inputs: 2 per element; ReduceMean
    and GlobalAveragePool: one per input element; Concat/Split of fp16: 2 bytes per element."""
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["u"], mode="linear"),  # 1x2x8x8
        helper.make_node("Sum", ["u", "u", "u"], ["s"]),
        helper.make_node("ReduceMean", ["s", "axes"], ["m"], keepdims=1),  # 1x1x8x8
        helper.make_node("GlobalAveragePool", ["s"], ["g"]),  # 1x2x1x1
        helper.make_node("Cast", ["s"], ["h"], to=H),
        helper.make_node("Concat", ["h", "h"], ["c"], axis=1),  # 1x4x8x8 fp16
        helper.make_node("Split", ["c"], ["a", "b"], axis=1, num_outputs=2),
    ]
    model = Model.from_proto(
        make_model(
            nodes,
            [("x", F, [1, 2, 4, 4])],
            [
                ("m", F, [1, 1, 8, 8]),
                ("g", F, [1, 2, 1, 1]),
                ("a", H, [1, 2, 8, 8]),
                ("b", H, [1, 2, 8, 8]),
            ],
            [
                _const("scales", np.array([1, 1, 2, 2], np.float32)),
                _const("axes", np.array([1], np.int64)),
            ],
            opset=18,
        )
    )
    cost = analyze_cost(model)
    other = {n.op_type: n.other_ops for n in cost.nodes}
    moved = {n.op_type: n.bytes_moved for n in cost.nodes}
    assert other == {
        "Resize": 128 * 4,
        "Sum": 128 * 2,
        "ReduceMean": 128,
        "GlobalAveragePool": 128,
        "Cast": 128,
        "Concat": 0,
        "Split": 0,
    }
    assert moved["Concat"] == 256 * 2 and moved["Split"] == 2 * 128 * 2 and moved["Sum"] == 0


def test_analyze_reports_other_ops_in_json_and_text():
    summary = analyze(_cnn_tail())
    assert summary["other_ops"] == 4992 and summary["bytes_moved"] == 4096
    assert summary["cost_by_op"]["LRN"]["other_ops"] == 384
    text = analyze_text(summary)
    assert "other ops 4.99 K" in text and "bytes moved 4.1 K" in text
    lrn_row = next(line for line in text.splitlines() if line.startswith("LRN"))
    assert lrn_row.split()[-2:] == ["384", "0"]  # its other ops, no bytes moved


def test_compress_report_rows_when_the_figures_carry_other_work():
    before = SimpleNamespace(other_ops=4992, bytes_moved=4096)
    after = SimpleNamespace(other_ops=2496, bytes_moved=4096)
    assert _other_work_rows(before, after) == [
        ["other ops", "4.99 K", "2.5 K", "0.500"],
        ["bytes moved", "4.1 K", "4.1 K", "1.000"],
    ]
    assert _other_work_rows(SimpleNamespace(), SimpleNamespace()) == []  # figures without them


def test_an_encoded_model_counts_stored_values_and_no_decoder_work(tmp_path):
    """A sparse encoding's decoder is folded by onnxruntime at session creation: its nodes do
    no per-run work and its zero fill is no parameter, so nm and bitmask give the same figures
    (the stored values), and the per-run work is the dense model's."""
    from pathlib import Path

    from sparsec import api
    from sparsec.analysis.cost import analyze_cost
    from sparsec.ir import Model

    source = Path(__file__).resolve().parents[1] / "models" / "digits_mlp.onnx"
    dense = analyze_cost(Model.load(source))
    costs = {}
    for encoding in ("nm", "bitmask"):
        out = tmp_path / f"{encoding}.onnx"
        api.compress(source, out, pipeline=api.sparsity_passes(nm="2:4", sparse_format=encoding))
        costs[encoding] = analyze_cost(Model.load(out))
    nm, bitmask = costs["nm"].params, costs["bitmask"].params
    assert max(nm, bitmask) < 0.6 * dense.params  # the stored values: half, and their scales
    assert abs(nm - bitmask) <= 4  # the same values; the decoders' float scalars aside
    for cost in costs.values():
        assert (cost.macs, cost.other_ops, cost.bytes_moved) == (
            dense.macs,
            dense.other_ops,
            dense.bytes_moved,
        )
