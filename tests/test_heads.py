"""Attention heads and MLP neurons: detection (``attention_blocks``), ``--heads`` / ``--ffn``
pruning checked against the exactness oracle, counts read back from the output graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, oracle_error, prune, run_ort

from sparsec import api
from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.heads import attention_blocks
from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.analysis.weight_sites import weight_sites
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.canonicalize import ShapeCanonicalizePass, TransposeCanonicalizePass
from sparsec.passes.cleanup import DeadCodePass

VIT = MODELS / "digits_vit.onnx"  # 2 blocks, 4 heads of 8, MLP 32 -> 64 -> 32 (legacy exporter)
ATTENTION = sorted(
    (MODELS / "attention").rglob("*.onnx")
)  # packed_qkv/ and paddle/ too; committed (models/README.md, models/attention/paddle/README.md)


def test_the_committed_attention_models_are_all_there():
    """The parametrized tests below run over them: a missing folder must fail, not shrink them."""
    assert len(ATTENTION) == 14


def _shape(model: Model, name: str) -> tuple[int, ...]:
    return model.constant_shape(model.initializers()[name])


def test_written_out_attention_is_found_with_its_weights():
    model = Model.load(VIT)
    blocks = attention_blocks(model)
    assert len(blocks) == 2
    axes = {site.name: site.axis for site in weight_sites(model)[0]}
    for block in blocks:
        assert (block.heads, block.kv_heads, block.head_dim) == (4, 4, 8)
        q, k, v, o = block.q[0], block.k[0], block.v[0], block.o[0]
        assert len({q, k, v, o}) == 4
        # Q/K/V project the 32-wide stream to heads x head_dim; O reduces heads x head_dim back
        assert (
            _shape(model, q)[1]
            == _shape(model, k)[1]
            == _shape(model, v)[1]
            == block.heads * block.head_dim
        )
        assert _shape(model, o)[axes[o]] == block.heads * block.head_dim
        assert block.reason is None


@pytest.mark.parametrize("ratio, kept", [(0.5, 2), (0.25, 3), (0.9, 1)])
def test_heads_ratio_removes_that_share_of_every_block_and_never_all(ratio, kept):
    original = Model.load(VIT)
    before = attention_blocks(original)
    mlp = [
        m
        for g in find_channel_groups(original).groups
        if g.kind == "ffn" and g.prunable
        for m in g.compute
    ]
    model, result = prune(VIT, ratio=0.0, heads=ratio)
    assert oracle_error(model, result.reference()) <= 1e-4
    assert model.check() is None
    for block in before:  # the weights really shrank: head_dim stays, heads go
        assert all(_shape(model, name)[1] == kept * 8 for name in block.q + block.k + block.v)
    if kept > 1:  # a single head has no head axis left to find
        assert [(b.heads, b.head_dim) for b in attention_blocks(model)] == [(kept, 8), (kept, 8)]
    assert len(mlp) == 4 and all(
        _shape(model, name) == _shape(original, name) for name, _ in mlp
    )  # MLPs untouched


def test_ffn_ratio_halves_every_mlp_and_leaves_heads():
    model, result = prune(VIT, ratio=0.0, ffn=0.5)
    assert oracle_error(model, result.reference()) <= 1e-4
    groups = [g for g in find_channel_groups(model).groups if g.prunable]
    assert sorted(g.units for g in groups if g.kind == "ffn") == [32, 32]
    assert [b.heads for b in attention_blocks(model)] == [4, 4]


def test_ffn_ratio_halves_a_gated_swiglu_mlp_exactly():
    """Llama's MLP: down(silu(gate(x)) * up(x)); gate and up columns go with down's rows."""
    path = MODELS / "attention" / "llama_gqa_legacy.onnx"
    original = Model.load(path)
    widths = {
        name: _shape(original, name)
        for name, _ in (
            m
            for g in find_channel_groups(original).groups
            if g.kind == "ffn" and g.prunable
            for m in g.compute
        )
    }
    model = Model.load(path)
    result = Pipeline(api.channel_passes(0.0, ffn=0.5), fixed_point=True)(model)
    assert model.check() is None and oracle_error(model, result.reference()) <= 1e-4
    assert len(widths) == 6  # gate, up and down of both blocks
    for (
        name,
        shape,
    ) in widths.items():  # the hidden axis (64, the wider one) halves; the model width (32) stays
        assert _shape(model, name) == tuple(d // 2 if d == 64 else d for d in shape)


def test_heads_and_ffn_override_channels_per_kind():
    model, result = prune(VIT, ratio=0.25, heads=0.5, ffn=0.75)
    assert oracle_error(model, result.reference()) <= 1e-4
    kinds = {}
    for group in find_channel_groups(model).groups:
        if group.prunable:
            kinds.setdefault(group.kind, []).append(group.units)
    assert kinds["heads"] == [2, 2] and kinds["ffn"] == [16, 16] and kinds["channels"] == [24]


def test_global_heads_ranks_heads_of_all_blocks_together_and_keeps_one_per_block():
    before = attention_blocks(Model.load(VIT))
    model, result = prune(VIT, ratio=0.0, heads=0.5, scope="global")
    assert oracle_error(model, result.reference()) <= 1e-4
    heads = [
        _shape(model, block.q[0])[1] // block.head_dim for block in before
    ]  # read from the weights
    assert sum(heads) == 4 and min(heads) >= 1


def test_cli_heads_report_and_analyze(cli, tmp_path):
    out, report = tmp_path / "h.onnx", tmp_path / "r.json"
    code, stdout, stderr = cli(
        "compress", VIT, "--heads", "0.5", "-o", out, "--report", report, "--latency-runs", "0"
    )
    assert code == 0, stderr
    assert "heads=0.5" in json.loads(report.read_text())["pipeline"]
    code, stdout, _ = cli("analyze", out, "--heads", "--json")
    blocks = json.loads(stdout)["attention_blocks"]
    assert [(b["heads"], b["kv_heads"], b["head_dim"]) for b in blocks] == [(2, 2, 8), (2, 2, 8)]
    code, stdout, _ = cli("analyze", MODELS / "digits_cnn.onnx", "--heads")
    assert code == 0 and "no attention heads found" in stdout


def test_heads_on_a_model_without_attention_warns(cli, tmp_path):
    """Nothing to prune is a warning, not an error: the model is written with every channel."""
    out = tmp_path / "x.onnx"
    code, stdout, stderr = cli(
        "compress", MODELS / "digits_cnn.onnx", "--heads", "0.5", "-o", out, "--latency-runs", "0"
    )
    assert code == 0 and "no attention-head group was found" in stdout + stderr
    original = Model.load(MODELS / "digits_cnn.onnx")
    assert _shape(Model.load(out), "head.weight") == _shape(
        original, "head.weight"
    )  # its 32 inputs all kept


def test_head_pruning_really_changes_the_function():
    """The oracle is not vacuous here either: removing heads changes the logits."""
    model, _ = prune(VIT, ratio=0.0, heads=0.5)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    before, after = (
        run_ort(Model.load(VIT).to_proto(), {"input": x})[0],
        run_ort(model.to_proto(), {"input": x})[0],
    )
    assert np.abs(before - after).max() > 1e-2


@pytest.mark.parametrize("path", [VIT] + ATTENTION, ids=lambda p: p.stem)
def test_every_attention_form_loses_half_its_heads_exactly(path):
    original = Model.load(path)
    Pipeline(api.channel_passes(0.0, heads=0.0))(
        original
    )  # the canonicalization --heads runs first; prunes nothing
    before = attention_blocks(original)
    assert before and all(b.reason is None for b in before)
    model = Model.load(path)
    result = Pipeline(api.channel_passes(0.0, heads=0.5), fixed_point=True)(model)
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    after = attention_blocks(model)
    assert [(b.heads, b.kv_heads, b.head_dim) for b in after] == [
        (b.heads // 2, b.kv_heads // 2, b.head_dim) for b in before
    ]
    feeds = random_inputs(original, bind_shapes(original), 0)  # and the removal is not vacuous
    assert (
        np.abs(run_ort(original.to_proto(), feeds)[0] - run_ort(model.to_proto(), feeds)[0]).max()
        > 1e-3
    )


def test_legacy_run_time_expand_idiom_is_removed_bit_exactly():
    """Llama's repeat_kv as the legacy exporter writes it: Reshape(sizes, [-1]) and the
    expand(-1 → 1) Where go, in every block; the model computes the same bits."""
    path = MODELS / "attention" / "llama_gqa_legacy.onnx"
    model = Model.load(path)
    wheres = sum(n.op_type == "Where" for n in model.nodes())
    assert (
        ShapeCanonicalizePass()(model).stats["shape_idioms_removed"] == 9
    )  # 2 blocks x K, V x 2 + the mask's Reshape
    DeadCodePass()(model)
    assert (
        sum(n.op_type == "Where" for n in model.nodes()) == wheres - 4
    )  # the mask's Where keeps its -1 entry
    feeds = random_inputs(model, bind_shapes(model), 0)
    np.testing.assert_array_equal(run_ort(model.to_proto(), feeds)[0], run_ort(str(path), feeds)[0])


def test_sdpa_transpose_idiom_is_canonicalized_bit_exactly():
    path = MODELS / "attention" / "vit_sdpa_dynamo18.onnx"
    model = Model.load(path)
    reshapes = sum(n.op_type == "Reshape" for n in model.nodes())
    assert (
        TransposeCanonicalizePass()(model).stats["transposes_canonicalized"] == 2
    )  # one per block
    DeadCodePass()(model)
    assert sum(n.op_type == "Reshape" for n in model.nodes()) == reshapes - 4
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(
        run_ort(model.to_proto(), {"input": x})[0], run_ort(str(path), {"input": x})[0]
    )


def test_packed_qkv_weight_gives_the_head_dim_of_one_part():
    path = MODELS / "attention" / "com_microsoft_attention.onnx"  # qkv weight [32, 3 x 4 heads x 8]
    model = Model.load(path)
    (block,) = attention_blocks(model)
    assert block.q == block.k == block.v
    width = _shape(model, block.q[0])[1]
    assert (block.heads, block.head_dim) == (4, width // 3 // 4)
