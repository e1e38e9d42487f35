"""Depth pruning (``drop-blocks``, ``--drop-blocks``): exact against its reference (the original
with the dropped branches times zero), the choice by score, the refusals, recovery, and the
composition with channel pruning (one reference: the original with both cuts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS

from sparsec.analysis.activations import capture, load_calibration
from sparsec.analysis.blocks import find_blocks
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.builtin import canonical_passes
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.passes.drop_blocks import DropBlocksPass
from sparsec.pruning.blocks import influence_scores
from sparsec.results import PassError
from sparsec.testing import GraphBuilder, assert_pass_exact, oracle_error, random_feeds, run

CALIB = MODELS / "digits_calib.npz"
VIT, CNN = MODELS / "digits_vit.onnx", MODELS / "digits_cnn.onnx"


def residual_stack(blocks: int = 3, quiet: int | None = None) -> Model:
    """stem, ``blocks`` residual MLP blocks x + fc2(relu(fc1(x))), head; block ``quiet``'s fc2
    scaled by 1e-3 (it changes its input least)."""
    g = GraphBuilder((2, 8), seed=1)
    g.linear(16, name="stem").relu()
    for i in range(blocks):
        skip = g.current
        g.linear(32, name=f"b{i}.fc1").relu().linear(16, name=f"b{i}.fc2")
        if i == quiet:
            g.op("Mul", np.float32(1e-3), name=f"b{i}.quiet")
        g.add(skip, name=f"b{i}.add")
    return g.linear(4, name="head").model()


def calibration(model: Model, folder, count: int = 16) -> str:
    """A .npz of ``count`` seeded samples in ``folder``; its path."""
    feeds = [random_feeds(model, seed) for seed in range(count)]
    path = str(folder / "calib.npz")
    np.savez(path, **{name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})
    return path


def weights(model: Model) -> set[str]:
    return set(model.initializers())


def test_residual_blocks_are_dropped_exactly():
    model = residual_stack(3)
    assert [b.kind for b in find_blocks(model)] == ["residual"] * 3
    result = assert_pass_exact(DropBlocksPass(count=2, importance="norm"), model)
    assert result.stats["blocks_dropped"] == 2 and result.stats["blocks"] == 3
    gone = {f"b{i}.fc1" for i in range(3)} - {n.name for n in result.model.nodes()}
    assert len(gone) == 2  # their branches are dead code, removed
    assert "drop-blocks.dropped" in [d.code for d in result.diagnostics]


def test_consecutive_blocks_rewire_to_the_first_skip():
    model = residual_stack(3)
    result = assert_pass_exact(DropBlocksPass(count=3, importance="random", seed=1), model)
    assert [n.op_type for n in result.model.nodes()] == ["Gemm", "Relu", "Gemm"]


@pytest.mark.parametrize("importance", ["norm", "influence", "output"])
def test_the_quiet_block_goes_first(importance, tmp_path):
    model = residual_stack(3, quiet=1)
    data = calibration(model, tmp_path) if importance != "norm" else ""
    quiet = find_blocks(model)[1].exit  # the stem is a plain layer, block 0
    assert "b1.quiet" in find_blocks(model)[1].nodes
    result = DropBlocksPass(count=1, importance=importance, calibration=data, recover=False)(model)
    assert [b["exit"] for b in result.artifacts["blocks"]] == [quiet]


def test_influence_is_one_minus_cosine_per_sample():
    model = residual_stack(2)
    blocks = find_blocks(model)
    feeds = random_feeds(model, 0, batch=2)
    got = influence_scores(model, blocks, feeds)
    session_outputs = {}
    for batch in capture(model, feeds, [blocks[0].skip, blocks[0].exit]):
        session_outputs = batch
    x, y = session_outputs[blocks[0].skip], session_outputs[blocks[0].exit]
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert got[blocks[0].id] == pytest.approx(float(np.mean(1 - cos)), rel=1e-5)


def test_fraction_of_blocks():
    model = residual_stack(4)
    result = assert_pass_exact(DropBlocksPass(count=0.5, importance="norm"), model)
    assert result.stats["blocks_dropped"] == 2


def test_refuses_without_data_in_one_line():
    with pytest.raises(PassError, match=r"block importance needs data.*--calibration"):
        DropBlocksPass(count=1)(residual_stack(2))


def test_too_many_blocks_is_one_error_line():
    with pytest.raises(PassError, match=r"5 block.*asked.*3 removable"):
        DropBlocksPass(count=5, importance="norm")(residual_stack(3))


def test_a_block_ending_in_a_graph_output_is_kept():
    g = GraphBuilder((2, 8), seed=2)
    g.linear(16, name="stem").relu()
    skip = g.current
    model = g.linear(16, name="fc").relu().add(skip, name="out").model()
    with pytest.raises(PassError, match="0 removable"):
        DropBlocksPass(count=1, importance="norm")(model)


def test_digits_cnn_exact_with_recovery():
    model = Model.load(CNN)
    result = assert_pass_exact(DropBlocksPass(count=1, calibration=str(CALIB)), model)
    assert result.stats["blocks_dropped"] == 1
    assert result.stats["calibration_error_after"] <= result.stats["calibration_error_before"]


def test_digits_vit_recovery_lowers_the_calibration_error():
    model = Model.load(VIT)
    canonical = Pipeline(canonical_passes())
    canonical(model)
    result = assert_pass_exact(DropBlocksPass(count=2, calibration=str(CALIB)), model)
    assert result.stats["blocks_dropped"] == 2
    assert result.stats["layers_refit"] > 0
    assert result.stats["calibration_error_after"] < 0.7 * result.stats["calibration_error_before"]


def test_output_importance_keeps_some_attention_in_the_digits_vit():
    """Influence (1 - cos averaged over tokens) ranks both attention blocks lowest; without any
    the class token sees no patch. The output error of each removal alone sees it: the two
    units it drops are the second transformer layer."""
    model = Model.load(VIT)
    Pipeline(canonical_passes())(model)
    result = assert_pass_exact(
        DropBlocksPass(count=2, importance="output", calibration=str(CALIB), recover=False), model
    )
    dropped = result.artifacts["blocks"]
    assert [(b["kind"], b["scope"]) for b in dropped] == [("transformer-layer", "blocks.1")]
    assert result.stats["blocks_dropped"] == 2


def test_drop_then_channels_is_checked_against_the_original_with_both_cuts():
    """The pipeline's reference is channel-prune's masks replayed on drop-blocks' reference: it
    holds every original weight (a channel-only reference, the masked dropped model, would not),
    the dropped branch matters there only through its zero, and the channel masks are in it."""
    original = Model.load(VIT)
    Pipeline(canonical_passes())(original)
    model = original.copy()
    data = str(CALIB)
    result = Pipeline(
        [DropBlocksPass(count=1, calibration=data), ChannelPrunePass(ratio=0.25, calibration=data)]
    )(model)
    reference = result.reference()
    assert oracle_error(model, reference) < 1e-4
    assert weights(original) <= weights(reference)
    values = reference.values_by_name()
    masked = [
        name
        for name in weights(original)
        if np.count_nonzero(reference.constant(values[name]) == 0)
        > np.count_nonzero(original.constant(original.value(name)) == 0)
    ]
    assert masked  # channel-prune's masks reached the original's weights
    for name in [n for n in values if n.startswith("drop_blocks_zero")]:
        reference.set_constant(values[name], np.ones((), np.float32))
    assert oracle_error(model, reference) > 1e-2  # the zeroed branch is really computed there


def test_cli_end_to_end(cli, tmp_path):
    out = tmp_path / "vit_drop2.onnx"
    code, text, err = cli("compress", VIT, "--drop-blocks", "2", "--calibration", CALIB, "-o", out)
    assert code == 0, err
    assert "dropped 2 block(s)" in text and "oracle" in text and "passed" in text
    assert "blocks.0.attn" in text
    before, after = Model.load(VIT), Model.load(out)
    assert len(after.nodes()) < len(before.nodes())
    feeds = random_feeds(after, 0)
    assert np.isfinite(run(after, feeds)["logits"]).all()


def test_cli_refuses_without_data(cli, tmp_path):
    code, _, err = cli("compress", VIT, "--drop-blocks", "1", "-o", tmp_path / "o.onnx")
    assert code == 2
    assert "block importance needs data" in err and len(err.strip().splitlines()) == 1


def test_analyze_blocks_scores_are_what_drop_blocks_ranks_by(cli):
    code, text, err = cli("analyze", VIT, "--blocks", "--calibration", CALIB, "--json")
    assert code == 0, err
    rows = json.loads(text)["blocks"]
    model = Model.load(VIT)
    Pipeline(canonical_passes())(model)
    expected = influence_scores(model, find_blocks(model), load_calibration(str(CALIB), model))
    assert [row["score"] for row in rows] == pytest.approx([expected[r["id"]] for r in rows])
    finest = [r for r in rows if not r["parts"]]
    lowest = min(finest, key=lambda r: r["score"])
    assert lowest["scope"] == "blocks.0.attn"  # what --drop-blocks 1 removes (test_cli_end_to_end)


def test_cli_drop_blocks_with_heads_one_gated_run(cli, tmp_path):
    out, report = tmp_path / "vit.onnx", tmp_path / "report.json"
    args = ["--drop-blocks", "1", "--heads", "0.5", "--calibration", CALIB, "--report", report]
    args += ["--recover", "layer"]  # the least-squares refit (block reconstruction: its own tests)
    code, text, err = cli("compress", VIT, *args, "-o", out)
    assert code == 0, err
    assert "drop-blocks(" in text and "channel-prune(" in text and "passed" in text
    data = json.loads(report.read_text())
    assert data["oracle"]["passed"] and len(data["blocks_dropped"]) == 1
    assert data["stats"]["channel-prune.channels_removed"] > 0
