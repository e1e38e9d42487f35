"""Quantized (QDQ) models: cleanup keeps them exact and quantized, channel pruning slices per-axis
scales and zero points with their weights (per-tensor ones stay) and passes the exactness
oracle, and N:M sparsity sparsifies the stored integers through their DequantizeLinear.

The models are built here in the form onnxruntime's static quantizer writes: activations go
through QuantizeLinear → DequantizeLinear (uint8, per tensor); a weight is an int8 initializer
read by DequantizeLinear with a per-channel scale and zero point (axis 0 for Conv W and Gemm B
with transB=1, axis 1 for MatMul B [K, N]); a bias is int32 with scale = input scale · weight
scale. Their *float twin* is the same graph with every weight's DequantizeLinear replaced by a
float initializer holding the dequantized values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS, oracle_error, prune, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.ir import cleanup as ir_cleanup
from sparsec.passes.const_fold import ConstantFoldShapesPass

OPSETS = (13, 17, 19, 21)
ACTIVATION_SCALE = 0.05


class QdqBuilder:
    """Collects nodes and initializers of a QDQ graph (and, with ``float_twin``, of its twin)."""

    def __init__(
        self, rng: np.random.Generator, zero_points: bool = False, float_twin: bool = False
    ) -> None:
        self.rng, self.zero_points, self.float_twin = rng, zero_points, float_twin
        self.nodes, self.initializers = [], []

    def init(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def activation(self, x: str, tag: str) -> str:
        """Per-tensor uint8 QuantizeLinear → DequantizeLinear, as on every quantized activation."""
        scale = self.init(f"{tag}_scale", np.array(ACTIVATION_SCALE, np.float32))
        zero = self.init(f"{tag}_zero", np.array(128, np.uint8))
        return self.node(
            "DequantizeLinear",
            [self.node("QuantizeLinear", [x, scale, zero], f"{tag}_q"), scale, zero],
            f"{tag}_dq",
        )

    def weight(self, tag: str, w: np.ndarray, axis: int | None, dtype=np.int8) -> str:
        """``w`` quantized to int8 (int32 for a bias) per axis (``axis``) or per tensor (None),
        read through DequantizeLinear; the twin gets the dequantized float values."""
        bound = 127 if dtype == np.int8 else 2**20
        reduce = tuple(k for k in range(w.ndim) if k != axis) if axis is not None else None
        scale = (np.abs(w).max(axis=reduce) / (bound - 12)).astype(np.float32)
        zero = (
            self.rng.integers(-10, 11, scale.shape) if self.zero_points else np.zeros(scale.shape)
        ).astype(dtype)
        view = [1] * w.ndim
        if axis is not None:
            view[axis] = -1
        q = np.clip(
            np.round(w / scale.reshape(view)) + zero.reshape(view), -bound - 1, bound
        ).astype(dtype)
        if self.float_twin:
            dequantized = (q.astype(np.float32) - zero.reshape(view)) * scale.reshape(view)
            return self.init(f"{tag}_dq", dequantized.astype(np.float32))
        attributes = {} if axis is None else {"axis": axis}
        return self.node(
            "DequantizeLinear",
            [self.init(tag, q), self.init(f"{tag}_scale", scale), self.init(f"{tag}_zero", zero)],
            f"{tag}_dq",
            **attributes,
        )

    def conv(self, x: str, cin: int, cout: int, tag: str, group: int = 1) -> str:
        shape = (cout, cin // group, 3, 3)
        w = self.weight(f"{tag}_w", self.rng.standard_normal(shape).astype(np.float32), axis=0)
        b = self.weight(
            f"{tag}_b", self.rng.standard_normal(cout).astype(np.float32), axis=0, dtype=np.int32
        )
        conv = self.node("Conv", [x, w, b], f"{tag}_y", pads=[1, 1, 1, 1], group=group)
        return self.node("Relu", [conv], f"{tag}_relu")

    def model(self, opset: int, x_shape: list[int], y_shape: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "qdq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8 if opset < 21 else 10
        onnx.checker.check_model(model, full_check=True)
        return model


def qdq_cnn(
    opset: int, seed: int = 0, zero_points: bool = False, float_twin: bool = False
) -> onnx.ModelProto:
    """x [1,3,8,8] → conv 3→8 → conv 8→16 → global pool → Gemm 16→4 (transB, per-tensor weight)."""
    b = QdqBuilder(np.random.default_rng(seed), zero_points, float_twin)
    x = b.activation(b.conv(b.activation("x", "in"), 3, 8, "c1"), "a1")
    x = b.activation(b.conv(x, 8, 16, "c2"), "a2")
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flat")
    fc = b.weight("fc_w", b.rng.standard_normal((4, 16)).astype(np.float32), axis=None)
    b.node("Gemm", [flat, fc], "y", transB=1)
    return b.model(opset, [1, 3, 8, 8], [1, 4])


def qdq_mlp(opset: int, seed: int = 0, zero_points: bool = False) -> onnx.ModelProto:
    """x [2,16] → MatMul B [16,32] (per axis 1) + bias → Relu → Gemm B [8,32] (transB, per axis 0)."""
    b = QdqBuilder(np.random.default_rng(seed), zero_points)
    w1 = b.weight("fc1_w", b.rng.standard_normal((16, 32)).astype(np.float32), axis=1)
    h = b.node("MatMul", [b.activation("x", "in"), w1], "fc1_mm")
    h = b.node(
        "Relu",
        [
            b.node(
                "Add",
                [h, b.init("fc1_bias", b.rng.standard_normal(32).astype(np.float32))],
                "fc1_y",
            )
        ],
        "fc1_relu",
    )
    w2 = b.weight("fc2_w", b.rng.standard_normal((8, 32)).astype(np.float32), axis=0)
    b.node("Gemm", [b.activation(h, "a1"), w2], "y", transB=1)
    return b.model(opset, [2, 16], [2, 8])


def _save(proto: onnx.ModelProto, path) -> str:
    onnx.save(proto, str(path))
    return str(path)


def _feeds(shape, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _weight_dequantizers(proto: onnx.ModelProto) -> dict[str, int]:
    """DequantizeLinear nodes reading an initializer: data name → its element type."""
    types = {i.name: i.data_type for i in proto.graph.initializer}
    return {
        n.input[0]: types[n.input[0]]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in types
    }


def _shapes(model: Model) -> dict[str, tuple[int, ...]]:
    return {name: model.constant_shape(value) for name, value in model.initializers().items()}


# ---------------------------------------------------------------- cleanup
@pytest.mark.parametrize("opset", OPSETS)
def test_cleanup_keeps_a_qdq_model_exact_and_quantized(cli, tmp_path, opset):
    """Bit-equal outputs, every weight still int8/int32 behind its DequantizeLinear, the file
    no bigger than the same model saved unchanged (but for the pipeline's metadata line), and
    the int8 weights counted as params."""
    source = _save(qdq_cnn(opset), tmp_path / "qdq.onnx")
    out, report, unchanged = (
        tmp_path / "clean.onnx",
        tmp_path / "report.json",
        tmp_path / "unchanged.onnx",
    )
    code, _, err = cli("compress", source, "-o", out, "--report", report)
    assert code == 0, err
    original, cleaned = onnx.load(source), onnx.load(str(out))
    assert _weight_dequantizers(cleaned) == _weight_dequantizers(original)
    assert len(_weight_dequantizers(cleaned)) == 5  # 2 conv weights, 2 biases, the Gemm weight
    for want, got in zip(
        run_ort(original, _feeds([1, 3, 8, 8])), run_ort(cleaned, _feeds([1, 3, 8, 8]))
    ):
        np.testing.assert_array_equal(got, want)
    Model.load(source).save(unchanged)
    del cleaned.metadata_props[:]  # the pipeline's description, which the unchanged copy lacks
    assert len(cleaned.SerializeToString()) <= unchanged.stat().st_size
    data = json.loads(report.read_text())
    stored = _weight_dequantizers(original)
    params = sum(
        int(np.prod(i.dims))
        for i in original.graph.initializer  # the float scales and the stored weights
        if i.data_type == TensorProto.FLOAT or i.name in stored
    )
    assert data["params_before"] == data["params_after"] == params


def test_const_fold_leaves_quantization_alone_and_skips_ops_it_cannot_evaluate():
    """DequantizeLinear of a weight is float compute; QuantizeLinear of a float weight (fake
    quantization) has integer output but changes stored precision: neither folds, at any
    opset, and an op ONNX's reference lacks at the opset (DequantizeLinear-13) is not folded."""
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wdq"]),
        helper.make_node("MatMul", ["x", "wdq"], ["y"]),
    ]
    for opset in OPSETS:
        graph = helper.make_graph(
            nodes,
            "fake_quant",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
            [w, scale, zero],
        )
        model = Model.from_proto(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        )
        assert not ConstantFoldShapesPass()(model).modified
        assert [n.op_type for n in model.nodes()] == [
            "QuantizeLinear",
            "DequantizeLinear",
            "MatMul",
        ]
    dequantize = next(
        n for n in Model.from_proto(qdq_cnn(13)).nodes() if n.op_type == "DequantizeLinear"
    )
    arrays = [np.ones((2, 2), np.int8), np.array(0.5, np.float32), np.array(0, np.int8)]
    assert ir_cleanup.evaluate_node(Model.from_proto(qdq_cnn(13)), dequantize, arrays) is None


# ---------------------------------------------------------------- channel pruning
def test_per_axis_scales_are_group_members_per_tensor_ones_are_not():
    groups = find_channel_groups(Model.from_proto(qdq_cnn(13))).groups
    c1 = next(g for g in groups if ("c1_w", 0) in g.members)
    assert c1.prunable and {
        ("c1_w_scale", 0),
        ("c1_w_zero", 0),
        ("c1_b", 0),
        ("c1_b_scale", 0),
    } <= set(c1.members)
    assert (
        ("c1_w_dq", 0) in c1.compute
        and ("c2_w_dq", 1) in c1.compute
        and ("c2_w", 1) in c1.constants
    )
    assert not any(name.startswith(("a1_", "in_", "fc_w_scale")) for name, _ in c1.constants)


@pytest.mark.parametrize("opset", OPSETS)
def test_channels_prune_a_qdq_cnn_like_its_float_twin(opset):
    """Same channels removed as in the float twin (importance reads dequantized weights), the
    pruned QDQ model equals the pruned twin and its own masked original, per-axis scales and
    zero points sliced with their weights, per-tensor ones untouched, weights still int8."""
    original = Model.from_proto(qdq_cnn(opset))
    model, result = prune(Model.from_proto(qdq_cnn(opset)), ratio=0.5)
    twin, twin_result = prune(Model.from_proto(qdq_cnn(opset, float_twin=True)), ratio=0.5)
    assert (
        result.stats["channel-prune.groups_pruned"]
        == twin_result.stats["channel-prune.groups_pruned"]
        == 2
    )
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    assert analyze_cost(model).params < 0.6 * analyze_cost(original).params
    shapes, before = _shapes(model), _shapes(original)
    for tag, kept in (("c1", 4), ("c2", 8)):
        assert shapes[f"{tag}_w"][0] == kept
        for name in (
            f"{tag}_w_scale",
            f"{tag}_w_zero",
            f"{tag}_b",
            f"{tag}_b_scale",
            f"{tag}_b_zero",
        ):
            assert shapes[name] == (kept,), name
        assert _shapes(twin)[f"{tag}_w_dq"] == shapes[f"{tag}_w"]
    assert shapes["c2_w"][1] == 4 and shapes["fc_w"] == (4, 8)
    for name in ("in_scale", "a1_scale", "a2_scale", "fc_w_scale", "fc_w_zero"):
        assert shapes[name] == before[name]
        assert model.constant(model.value(name)) == original.constant(original.value(name))
    assert model.constant(model.value("c2_w")).dtype == np.int8
    feeds = _feeds([1, 3, 8, 8])
    for want, got in zip(run_ort(twin.to_proto(), feeds), run_ort(model.to_proto(), feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_quantized_grouped_conv_prunes_by_whole_tiles_exactly():
    """A grouped conv whose weight is int8 through DequantizeLinear keeps its per-group axis a
    member (a tile: the same local positions in each group), unlike a float one, which is
    gathered group by group: the cut is exact, each group keeps as many inputs, weights int8."""
    b = QdqBuilder(np.random.default_rng(3))
    x = b.activation(b.conv(b.activation("x", "in"), 3, 8, "c1"), "a1")
    x = b.activation(b.conv(x, 8, 8, "c2", group=2), "a2")
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flat")
    fc = b.weight("fc_w", b.rng.standard_normal((4, 8)).astype(np.float32), axis=None)
    b.node("Gemm", [flat, fc], "y", transB=1)
    proto = b.model(17, [1, 3, 8, 8], [1, 4])
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    assert result.stats["channel-prune.groups_pruned"] == 2
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    shapes = _shapes(model)
    assert shapes["c1_w"][0] == 4 and shapes["c2_w"][:2] == (4, 2)  # 2 groups of 2 inputs
    assert shapes["c2_w_scale"] == (4,) and model.constant(model.value("c2_w")).dtype == np.int8
    conv = next(n for n in model.nodes() if n.op_type == "Conv" and n.name == "c2_y")
    assert model.attr(conv, "group", 1) == 2


def test_oracle_masks_a_quantized_weight_to_its_zero_point():
    """With nonzero zero points, the masked original holds the zero point (not 0) in the int8
    slices that read removed channels, so they dequantize to 0.0; it differs from the original."""
    model, result = prune(Model.from_proto(qdq_cnn(13, zero_points=True)), ratio=0.5)
    reference, original = result.reference(), Model.from_proto(qdq_cnn(13, zero_points=True))
    assert oracle_error(model, reference) <= 1e-4
    assert oracle_error(original, reference) > 1e-2
    kept = next(
        e["kept"] for e in result.artifacts["plan"]["initializers"]["c2_w"] if e["axis"] == 1
    )  # c1's channels
    removed = sorted(set(range(8)) - set(kept))
    masked = reference.constant(reference.value("c2_w"))
    zero = original.constant(original.value("c2_w_zero"))
    assert np.any(zero != 0)
    expected = np.broadcast_to(zero[:, None, None, None], masked[:, removed].shape)
    np.testing.assert_array_equal(masked[:, removed], expected)


def test_cli_channels_on_a_qdq_cnn_at_opset_13(cli, tmp_path):
    source, out = _save(qdq_cnn(13), tmp_path / "qdq.onnx"), tmp_path / "small.onnx"
    code, stdout, err = cli("compress", source, "-o", out, "--channels", "0.5")
    assert code == 0, err
    assert "oracle" in stdout and "passed" in stdout
    written = onnx.load(str(out))
    assert _weight_dequantizers(written) == _weight_dequantizers(onnx.load(source))
    dims = {i.name: list(i.dims) for i in written.graph.initializer}
    assert (
        dims["c1_w"] == [4, 3, 3, 3] and dims["c2_w"] == [8, 4, 3, 3] and dims["c2_w_scale"] == [8]
    )


@pytest.mark.parametrize("opset", (13, 21))
def test_channels_prune_a_qdq_mlp_with_per_axis_matmul_scales(opset):
    """MatMul B [K, N] quantized per axis 1: its scale [N] shrinks with the hidden units, as does
    the Gemm B [8, N] (transB) on axis 1, whose per-axis-0 scale [8] stays (it feeds the output)."""
    model, result = prune(Model.from_proto(qdq_mlp(opset, zero_points=True)), ratio=0.5)
    assert result.stats["channel-prune.groups_pruned"] == 1
    assert oracle_error(model, result.reference()) <= 1e-4
    shapes = _shapes(model)
    assert shapes["fc1_w"] == (16, 16) and shapes["fc1_w_scale"] == shapes["fc1_w_zero"] == shapes[
        "fc1_bias"
    ] == (16,)
    assert shapes["fc2_w"] == (8, 16) and shapes["fc2_w_scale"] == shapes["fc2_w_zero"] == (8,)


# ---------------------------------------------------------------- N:M sparsity
def _dequantized(model: Model, name: str) -> np.ndarray:
    """(q − zero point) · scale of a conv/Gemm weight built by ``QdqBuilder`` (per axis 0 or per tensor)."""
    q = model.constant(model.value(name)).astype(np.float32)
    view = [-1] + [1] * (q.ndim - 1)
    zero, scale = (
        model.constant(model.value(f"{name}_{part}")).astype(np.float32)
        for part in ("zero", "scale")
    )
    return (q - (zero.reshape(view) if zero.ndim else zero)) * (
        scale.reshape(view) if scale.ndim else scale
    )


def _runs_of_four(array: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(array, axis, -1).reshape(-1, 4)


def test_nm_sparsifies_quantized_weights_through_their_dequantize(cli, tmp_path):
    """--nm 2:4 on a QDQ CNN (nonzero zero points): the int8 weights stay int8 behind their
    DequantizeLinear; dropped entries hold the zero point, so every run of 4 along the
    reduction axis dequantizes to two exact zeros, and the two kept are the run's largest
    dequantized magnitudes, unchanged."""
    source, out = (
        _save(qdq_cnn(17, zero_points=True), tmp_path / "qdq.onnx"),
        tmp_path / "sparse.onnx",
    )
    code, stdout, err = cli("compress", source, "-o", out, "--nm", "2:4")
    assert code == 0, err
    before, after = Model.load(source), Model.load(out)
    assert _weight_dequantizers(onnx.load(str(out))) == _weight_dequantizers(onnx.load(source))
    for name, axis in (("c2_w", 1), ("fc_w", 1)):
        assert after.constant(after.value(name)).dtype == np.int8
        dense, sparse = (
            _runs_of_four(_dequantized(before, name), axis),
            _runs_of_four(_dequantized(after, name), axis),
        )
        kept = sparse != 0
        assert np.all(kept.sum(axis=1) == 2) and np.array_equal(sparse[kept], dense[kept])
        assert np.all(
            np.abs(np.where(kept, dense, np.inf)).min(axis=1)
            >= np.abs(np.where(kept, 0, dense)).max(axis=1)
        )
    assert "weight 'c1_w' left dense" in stdout + err  # reduction length 3 is not a multiple of 4
    assert np.array_equal(
        after.constant(after.value("c1_w")), before.constant(before.value("c1_w"))
    )
    run_ort(onnx.load(str(out)), _feeds([1, 3, 8, 8]))


def qdq_blocked_mlp(block: int = 8) -> onnx.ModelProto:
    """Opset 21: x [2,16] → MatMul B1 [16,32] (per axis 1) → Relu → MatMul B2 [32,8] quantized in
    blocks of ``block`` along axis 0 (scale and zero point [32/block, 8])."""
    b = QdqBuilder(np.random.default_rng(0))
    w1 = b.weight("w1", b.rng.standard_normal((16, 32)).astype(np.float32), axis=1)
    h = b.node("Relu", [b.node("MatMul", ["x", w1], "mm1")], "relu")
    q = b.init("w2", b.rng.integers(-100, 100, (32, 8)).astype(np.int8))
    scale = b.init("w2_scale", (b.rng.random((32 // block, 8)) * 0.01 + 0.01).astype(np.float32))
    zero = b.init("w2_zero", b.rng.integers(-5, 6, (32 // block, 8)).astype(np.int8))
    w2 = b.node("DequantizeLinear", [q, scale, zero], "w2_dq", axis=0, block_size=block)
    b.node("MatMul", [h, w2], "y")
    return b.model(21, [2, 16], [2, 8])


def test_block_quantized_weight_loses_whole_blocks():
    """Positions p of a blocked axis share scale entry p // B: the B hidden units of a block are
    one unit, so pruning removes whole blocks and the scale/zero point lose whole rows."""
    model, result = prune(Model.from_proto(qdq_blocked_mlp()), ratio=0.5)
    assert result.stats["channel-prune.channels_removed"] == 2  # 2 of 4 blocks of 8
    assert oracle_error(model, result.reference()) <= 1e-4
    shapes = _shapes(model)
    assert (
        shapes["w2"] == (16, 8)
        and shapes["w2_scale"] == shapes["w2_zero"] == (2, 8)
        and shapes["w1"] == (16, 16)
    )
    kept = np.array(
        next(e["kept"] for e in result.artifacts["plan"]["initializers"]["w2"] if e["axis"] == 0)
    )
    assert set(np.unique(kept // 8)) == set(kept[::8] // 8) and np.all(
        np.bincount(kept // 8)[kept[::8] // 8] == 8
    )


def fake_quantized_cnn() -> onnx.ModelProto:
    """Float weights written QuantizeLinear → DequantizeLinear (fake quantization): conv 3→8
    per-axis, conv 8→4 per tensor with a nonzero zero point."""
    b = QdqBuilder(np.random.default_rng(0))
    w1 = b.rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = b.rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    scale1 = b.init("s1", (np.abs(w1).reshape(8, -1).max(1) / 127).astype(np.float32))
    zero1 = b.init("z1", np.zeros(8, np.int8))
    q1 = b.node("QuantizeLinear", [b.init("w1", w1), scale1, zero1], "w1_q", axis=0)
    h = b.node(
        "Relu",
        [
            b.node(
                "Conv",
                ["x", b.node("DequantizeLinear", [q1, scale1, zero1], "w1_dq", axis=0)],
                "c1",
                pads=[1, 1, 1, 1],
            )
        ],
        "relu",
    )
    scale2, zero2 = b.init("s2", np.array(0.02, np.float32)), b.init("z2", np.array(3, np.int8))
    q2 = b.node("QuantizeLinear", [b.init("w2", w2), scale2, zero2], "w2_q")
    b.node(
        "Conv",
        [h, b.node("DequantizeLinear", [q2, scale2, zero2], "w2_dq")],
        "y",
        pads=[1, 1, 1, 1],
    )
    return b.model(13, [1, 3, 8, 8], [1, 4, 8, 8])


def test_fake_quantized_float_weights_prune_through_quantize_dequantize():
    """W → QuantizeLinear → DequantizeLinear is a weight stored as W: surgery slices W and its
    per-axis scale, the oracle zeroes W (0 quantizes to the zero point and comes back as 0.0)."""
    original = Model.from_proto(fake_quantized_cnn())
    model, result = prune(Model.from_proto(fake_quantized_cnn()), ratio=0.5)
    assert (
        oracle_error(model, result.reference()) <= 1e-4 < oracle_error(original, result.reference())
    )
    shapes = _shapes(model)
    assert (
        shapes["w1"] == (4, 3, 3, 3)
        and shapes["s1"] == shapes["z1"] == (4,)
        and shapes["w2"] == (4, 4, 3, 3)
    )
    assert shapes["s2"] == shapes["z2"] == ()


def test_refit_names_quantized_layers_it_leaves_alone():
    """With calibration the refit would fit float weights; a quantized layer it cut is listed as
    skipped with the reason, and stays int8."""
    model, result = prune(Model.from_proto(qdq_cnn(13)), ratio=0.5, calibration="random")
    reasons = {row["node"]: row["reason"] for row in result.artifacts["recovery"]["skipped"]}
    assert {"c1_y", "c2_y", "y"} <= set(reasons) and all("quantized" in r for r in reasons.values())
    assert model.constant(model.value("c2_w")).dtype == np.int8
    assert oracle_error(model, result.reference()) <= 1e-4


QUANTIZED = MODELS / "qdq"  # onnxruntime's static quantizer's output (models/make_qdq_models.py)


def _fused_quantized_convs(path, folder) -> int:
    """QLinearConv nodes in onnxruntime's optimized graph (written into ``folder``): the QDQ
    convs it runs in int8."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / f"{Path(path).stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sum(
        n.op_type == "QLinearConv" for n in onnx.load(options.optimized_model_filepath).graph.node
    )


def test_a_model_quantized_by_onnxruntime_prunes_and_stays_quantized(tmp_path):
    """The quantizer's real output (per-channel convs, per-tensor BatchNorm parameters, a
    squeeze-excite block, a Concat): the oracle passes, params and MACs drop, and onnxruntime
    still fuses every conv into QLinearConv (the pruned model runs in int8 like the original)."""
    source = str(QUANTIZED / "digits_cnn_qdq.onnx")
    original = Model.load(source)
    model, result = prune(source, ratio=0.5)
    assert result.stats["channel-prune.groups_pruned"] >= 2
    assert oracle_error(model, result.reference()) <= 1e-4
    before, after = analyze_cost(original), analyze_cost(model)
    assert after.params < 0.5 * before.params and after.macs < 0.5 * before.macs
    pruned = tmp_path / "pruned.onnx"
    model.save(pruned)
    assert _fused_quantized_convs(pruned, tmp_path) == _fused_quantized_convs(source, tmp_path) == 7


def test_a_vit_quantized_by_onnxruntime_loses_heads_like_its_float_twin():
    """--heads on the quantizer's output of the committed ViT: the same heads go as in the float
    model (importance reads dequantized weights): every projection keeps the same positions."""
    source = MODELS / "attention" / "vit_dynamo18.onnx"
    model, result = prune(QUANTIZED / "vit_dynamo18_qdq.onnx", ratio=0.0, heads=0.5)
    _, twin = prune(source, ratio=0.0, heads=0.5)
    assert (
        result.stats["channel-prune.channels_removed"]
        == twin.stats["channel-prune.channels_removed"]
        > 0
    )
    quantized, floats = (
        result.artifacts["plan"]["initializers"],
        twin.artifacts["plan"]["initializers"],
    )
    weights = [
        name for name in floats if name + "_quantized" in quantized
    ]  # the quantizer's naming
    assert len(weights) == len(floats) >= 8
    assert all(quantized[name + "_quantized"] == floats[name] for name in weights)
    assert oracle_error(model, result.reference()) <= 1e-4
