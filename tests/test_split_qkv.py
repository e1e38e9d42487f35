"""``split-qkv``: timm's packed QKV attention rewritten as separate Q/K/V projections, bit-exactly,
only when every condition holds; after it ``--heads`` removes heads the packed form kept."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, make_model, oracle_error, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec import api
from sparsec.analysis.heads import attention_blocks
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.canonicalize import TransposeCanonicalizePass
from sparsec.passes.cleanup import DeadCodePass
from sparsec.passes.split_qkv import SplitQkvPass

# 2 blocks, hidden 32, 4 heads of 8 (models/make_packed_qkv_model.py); legacy: Split + Squeeze,
# a Concat target of run-time dims, batch and seq dynamic; dynamo: Slice + Squeeze, constant
# target [-1, 16, 3, 4, 8], seq 16
PACKED = {
    "legacy": (
        MODELS / "attention" / "packed_qkv" / "packed_qkv_legacy.onnx",
        [(1, 1), (2, 16), (3, 7)],
    ),
    "dynamo": (MODELS / "attention" / "packed_qkv" / "packed_qkv_dynamo.onnx", [(1, 16), (3, 16)]),
}


def _outputs(model, shapes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    proto = model.to_proto() if isinstance(model, Model) else model
    return [
        out
        for b, n in shapes
        for out in run_ort(proto, {"input": rng.standard_normal((b, n, 32)).astype(np.float32)})
    ]


def _packed_transposes(model: Model) -> int:
    return sum(
        n.op_type == "Transpose" and len(model.attr(n, "perm", [])) == 5 for n in model.nodes()
    )


@pytest.mark.parametrize("form", PACKED)
def test_split_is_bit_exact_and_fires_once_per_block(form):
    path, shapes = PACKED[form]
    model = Model.load(path)
    matmuls = sum(n.op_type == "MatMul" for n in model.nodes())
    result = SplitQkvPass()(model)
    assert result.stats == {"qkv_split": 2, "qkv_weights_split": 2}
    assert not SplitQkvPass()(model).modified  # the replaced pattern is dead: not matched again
    DeadCodePass()(model)
    assert model.check() is None
    assert _packed_transposes(model) == 0
    assert (
        sum(n.op_type == "MatMul" for n in model.nodes()) == matmuls + 2 * 2
    )  # one packed → three per block
    parts = sorted(
        model.constant_shape(v)
        for n, v in model.initializers().items()
        if n.endswith(("_part0", "_part2"))
    )
    assert parts == [(32,)] * 4 + [(32, 32)] * 4  # weights and biases of the Q and V parts
    for expected, actual in zip(_outputs(Model.load(path), shapes), _outputs(model, shapes)):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("form", PACKED)
def test_heads_are_removed_after_the_split(form):
    path, shapes = PACKED[form]
    unsplit = Model.load(path)
    Pipeline([TransposeCanonicalizePass(), DeadCodePass()])(unsplit)
    assert all(
        b.heads == 4 and b.reason for b in attention_blocks(unsplit)
    )  # packed: every head kept
    assert any(
        isinstance(p, SplitQkvPass) for p in api.channel_passes(0.0, heads=0.5)
    )  # so --heads splits first

    split = Model.load(path)
    Pipeline([SplitQkvPass(), TransposeCanonicalizePass(), DeadCodePass()])(
        split
    )  # dynamo: the SDPA Kᵀ idiom too
    blocks = attention_blocks(split)
    assert len(blocks) == 2 and all(
        b.reason is None and (b.heads, b.head_dim) == (4, 8) for b in blocks
    )
    model = Model.load(path)
    result = Pipeline(api.channel_passes(0.0, heads=0.5), fixed_point=True)(model)
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    weights = model.initializers()
    for block in blocks:  # read back from the weights: 2 heads of 8 left in Q, K, V and O
        assert [model.constant_shape(weights[name])[1] for name in block.q + block.k + block.v] == [
            16,
            16,
            16,
        ]
        assert model.constant_shape(weights[block.o[0]])[0] == 16
    assert [(b.heads, b.head_dim) for b in attention_blocks(model)] == [(2, 8), (2, 8)]
    before, after = _outputs(Model.load(path), shapes), _outputs(model, shapes)
    assert (
        max(float(np.abs(a - b).max()) for a, b in zip(before, after)) > 1e-2
    )  # the oracle is not vacuous


# ------------------------------------------------------------------ inline graphs: variants, near-misses
def _packed_block(perm=(2, 0, 3, 1, 4), gather_axis=0, extra_use=False, weight_input=False):
    """x [B, N, 32] → MatMul W [32, 96] → Add b → Reshape [0, 0, 3, 4, 8] → Transpose(perm) →
    Gather 0/1/2 (graph outputs q, k, v; with ``extra_use`` the packed value is an output too)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(96).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([0, 0, 3, 4, 8], np.int64), "target"),
    ]
    inits += [numpy_helper.from_array(np.array(i, np.int64), f"i{i}") for i in range(3)]
    inputs = [("x", TensorProto.FLOAT, ["batch", "seq", 32])]
    if weight_input:
        inputs.append(("w", TensorProto.FLOAT, [32, 96]))
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((32, 96)).astype(np.float32), "w"))
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["packed"]),
        helper.make_node("Reshape", ["packed", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=list(perm)),
    ]
    nodes += [
        helper.make_node("Gather", ["t", f"i{i}"], [name], axis=gather_axis)
        for i, name in enumerate("qkv")
    ]
    outputs = [(name, TensorProto.FLOAT, ["batch", 4, "seq", 8]) for name in "qkv"]
    outputs += [("packed", TensorProto.FLOAT, ["batch", "seq", 96])] * extra_use
    return make_model(nodes, inputs, outputs, inits)


def _feeds(weight_input: bool) -> dict:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 5, 32)).astype(np.float32)}
    if weight_input:
        feeds["w"] = rng.standard_normal((32, 96)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("weight_input", [False, True], ids=["split-weight", "slice"])
def test_gather_form_is_split_exactly_and_a_non_constant_weight_is_sliced(weight_input):
    proto = _packed_block(weight_input=weight_input)
    model = Model.from_proto(proto)
    assert SplitQkvPass()(model).stats == {
        "qkv_split": 1,
        "qkv_weights_split": int(not weight_input),
    }
    DeadCodePass()(model)
    assert model.check() is None and _packed_transposes(model) == 0
    assert [v.name for v in model.outputs] == ["q", "k", "v"]  # the interface keeps its names
    ops = [n.op_type for n in model.nodes()]
    assert ops.count("Slice") == 3 * weight_input and ops.count("MatMul") == (
        1 if weight_input else 3
    )
    feeds = _feeds(weight_input)
    for expected, actual in zip(run_ort(proto, feeds), run_ort(model.to_proto(), feeds)):
        assert actual.shape == expected.shape == (2, 4, 5, 8)
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(
    "variant",
    [{"perm": (2, 0, 1, 3, 4)}, {"gather_axis": 1}, {"extra_use": True}],
    ids=["other-permutation", "gather-axis-1", "packed-has-another-use"],
)
def test_near_misses_are_left_alone(variant):
    proto = _packed_block(**variant)
    model = Model.from_proto(proto)
    result = SplitQkvPass()(model)
    assert not result.modified and result.stats["qkv_split"] == 0
    after = model.to_proto().graph

    def nodes(graph):
        return [(n.op_type, list(n.input), list(n.output)) for n in graph.node]

    assert nodes(after) == nodes(proto.graph)
    assert sorted(i.name for i in after.initializer) == sorted(
        i.name for i in proto.graph.initializer
    )
