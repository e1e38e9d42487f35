"""Lossy couplings (``rules.core.Coupling.lossy``): LRN mixes neighbouring channels, so pruning
through it is prunable only with ``lossy_couplings``; the oracle then runs each LRN on the kept
channels (exact), and the report gives the difference from the plain masked original."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, oracle_error, prune
from fill_light_models import fill, light_path

from sparsec import api
from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.passes.sparsity import WeightSparsityPass
from sparsec.pruning.oracle import put_back_index
from sparsec.testing import GraphBuilder, assert_pass_exact, random_feeds, run

STEM = MODELS / "couplings" / "lrn_stem.onnx"


def lrn_groups(model: Model, lossy: bool) -> list:
    """The groups holding an LRN's input channels."""
    lrn_inputs = {node.inputs[0].name for node in model.nodes() if node.op_type == "LRN"}
    analysis = find_channel_groups(model, lossy=lossy)
    return [g for g in analysis.groups if {m[0] for m in g.members} & lrn_inputs]


def test_lrn_blocks_without_the_option_and_says_which_option():
    model = Model.load(STEM)
    blocked = lrn_groups(model, lossy=False)
    assert len(blocked) == 2
    for group in blocked:
        assert not group.prunable
        assert "LRN '" in group.reason and "pass --lossy-couplings" in group.reason
    allowed = lrn_groups(model, lossy=True)
    assert all(g.prunable for g in allowed)
    assert [[use.op_type for use in g.lossy] for g in allowed] == [["LRN"], ["LRN"]]
    assert "; lossy: LRN '" in allowed[0].describe()
    # cached per setting: asking again without the option gives the blocked analysis back
    assert find_channel_groups(model) is find_channel_groups(model, lossy=False)
    assert find_channel_groups(model) is not find_channel_groups(model, lossy=True)
    assert not lrn_groups(model, lossy=False)[0].prunable


def test_put_back_index_reads_kept_part_then_full_part():
    assert put_back_index(np.array([1, 3]), 5).tolist() == [2, 0, 4, 1, 6]


def test_pruned_through_lrn_equals_the_reference_but_not_the_plain_masked_original():
    plain_model, plain_result = prune(STEM, ratio=0.5)
    model, result = prune(STEM, ratio=0.5, lossy_couplings=True)
    pruned = result.stats["channel-prune.groups_pruned"]
    assert pruned == plain_result.stats["channel-prune.groups_pruned"] + 2
    assert result.artifacts["lossy_couplings"] == {"LRN": 2}
    assert "lossy_couplings" not in plain_result.artifacts
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    assert oracle_error(model, result.reference(plain=True)) > 1e-3  # the coupling's real loss
    params = sum(int(np.prod(v.shape)) for v in model.initializers().values())
    plain_params = sum(int(np.prod(v.shape)) for v in plain_model.initializers().values())
    assert params < 0.8 * plain_params


def test_the_testing_kit_gates_a_lossy_cut_on_its_reference():
    result = assert_pass_exact(ChannelPrunePass(ratio=0.5, lossy_couplings=True), STEM)
    assert result.artifacts["lossy_couplings"] == {"LRN": 2}


def test_refit_keeps_the_oracle_exact_and_the_plain_reference_buildable():
    model, result = prune(STEM, ratio=0.5, calibration="random", calibration_samples=16)
    assert result.artifacts["lossy_couplings"] == {"LRN": 2}  # on by default with calibration
    assert result.stats["channel-prune.layers_refit"] >= 1
    assert oracle_error(model, result.reference()) <= 1e-4
    assert oracle_error(model, result.reference(plain=True)) > 1e-4


def test_default_follows_calibration_and_describe_records_only_a_non_default():
    assert not ChannelPrunePass().lossy_couplings
    assert ChannelPrunePass(calibration="random").lossy_couplings
    assert not ChannelPrunePass(calibration="random", lossy_couplings=False).lossy_couplings
    assert "lossy_couplings" not in ChannelPrunePass(calibration="random").describe()
    assert "lossy_couplings=true" in ChannelPrunePass(lossy_couplings=True).describe()
    assert (
        "lossy_couplings=false"
        in ChannelPrunePass(calibration="random", lossy_couplings=False).describe()
    )
    prune_pass = next(p for p in api.channel_passes(0.5) if isinstance(p, ChannelPrunePass))
    assert not prune_pass.lossy_couplings


def masked_by_plan(original: Model, plan: dict) -> Model:
    """The plain masked original built by hand from the plan: every weight (rank ≥ 2) of the
    stem zeroed at the removed positions, biases left alone (no kept-positions wrapper)."""
    masked = original.copy()
    values = masked.values_by_name()
    for name, entries in plan["initializers"].items():
        array = masked.constant(values[name]).copy()
        if array.ndim < 2:
            continue
        for entry in entries:
            drop = np.ones(array.shape[entry["axis"]], dtype=bool)
            drop[np.asarray(entry["kept"], dtype=np.int64)] = False
            index = [slice(None)] * array.ndim
            index[entry["axis"]] = drop
            array[tuple(index)] = 0
        masked.set_constant(values[name], array)
    return masked


def test_reported_lossy_error_matches_a_direct_onnxruntime_run(tmp_path):
    feeds = random_feeds(STEM, seed=3)
    np.savez(tmp_path / "feeds.npz", **feeds)
    out, plan = tmp_path / "small.onnx", tmp_path / "plan.json"
    result = api.compress(
        STEM,
        out,
        pipeline=api.channel_passes(0.5, lossy_couplings=True),
        inputs=tmp_path / "feeds.npz",
        plan_out=plan,
        latency_runs=0,
    )
    lossy = result.lossy_couplings
    assert lossy is not None and lossy["nodes"] == 2 and lossy["ops"] == {"LRN": 2}
    assert result.oracle is not None and result.oracle.passed
    masked = masked_by_plan(Model.load(STEM), json.loads(plan.read_text()))
    want = run(masked, feeds)[lossy["output"]]
    got = run(Model.load(out), feeds)[lossy["output"]]
    direct = float(np.max(np.abs(got - want)))
    assert direct > 1e-4 * float(np.max(np.abs(want)))
    assert lossy["max_abs_error"] == pytest.approx(direct, rel=1e-3)
    assert lossy["max_abs_output"] == pytest.approx(float(np.max(np.abs(want))), rel=1e-6)
    assert result.to_json()["lossy_couplings"] == lossy


def test_cli_flag_report_and_the_off_switch(cli, tmp_path):
    base = ("compress", STEM, "--channels", "0.5", "--latency-runs", "0")
    code, out, err = cli(
        *base, "-o", tmp_path / "a.onnx", "--lossy-couplings", "--report", tmp_path / "a.json"
    )
    assert code == 0, err
    assert "lossy couplings pruned through (--lossy-couplings): 2 node(s) (LRN x2)" in out
    assert "their loss, pruned vs the plain masked original: max abs" in out
    report = json.loads((tmp_path / "a.json").read_text())
    assert (
        report["lossy_couplings"]["nodes"] == 2 and report["lossy_couplings"]["max_abs_error"] > 0
    )
    code, out, err = cli(
        *base, "-o", tmp_path / "b.onnx", "--calibration", "random", "--no-lossy-couplings",
        "--report", tmp_path / "b.json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["lossy_couplings"] is None and report["recipe_keys"]["lossy_couplings"] is False
    assert "pass --lossy-couplings" in out  # the kept groups say why
    code, _, err = cli("compress", STEM, "-o", tmp_path / "c.onnx", "--lossy-couplings")
    assert code == 2 and "--lossy-couplings" in err and "--channels" in err


def test_calibration_turns_it_on_and_a_recipe_key_turns_it_off(cli, tmp_path):
    code, out, err = cli(
        "compress", STEM, "-o", tmp_path / "a.onnx", "--channels", "0.5", "--calibration",
        "random", "--calibration-samples", "8", "--latency-runs", "0",
    )  # fmt: skip
    assert code == 0, err
    assert "lossy couplings pruned through" in out
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[[job]]\nname = "stem"\nsource = "{STEM}"\noutput = "b.onnx"\nchannels = 0.5\n'
        'calibration = "random"\ncalibration_samples = 8\nlossy_couplings = false\n'
        'latency_runs = 0\nreport = "b.json"\n'
    )
    code, _, err = cli("run", recipe)
    assert code == 0, err
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["lossy_couplings"] is None
    assert report["groups"]["pruned"] < 4


def test_analyze_groups_reads_right(cli):
    code, out, _ = cli("analyze", STEM, "--groups")
    assert code == 0 and out.count("pass --lossy-couplings") == 2
    code, out, _ = cli("analyze", STEM, "--groups", "--lossy-couplings")
    assert code == 0 and out.count("prunable (lossy: LRN '") == 2


@pytest.mark.parametrize("name", ["zfnet512", "bvlc_alexnet"])
def test_light_zoo_stems_block_their_lrn_groups_without_the_option(name):
    model = Model.load(light_path(name))
    assert [g.prunable for g in lrn_groups(model, lossy=False)] == [False, False]
    assert [g.prunable for g in lrn_groups(model, lossy=True)] == [True, True]


def test_alexnet_pruned_through_its_lrns_passes_the_oracle(tmp_path):
    path = fill(light_path("bvlc_alexnet"), tmp_path / "alexnet.onnx")  # seeded weights
    model, result = prune(path, ratio=0.5, lossy_couplings=True)
    assert result.artifacts["lossy_couplings"] == {"LRN": 2}
    assert result.stats["channel-prune.groups_pruned"] == 7
    assert oracle_error(model, result.reference()) <= 1e-4


def test_a_plan_through_lrn_needs_the_option_again(cli, tmp_path):
    plan = tmp_path / "plan.json"
    base = ("compress", STEM, "--latency-runs", "0")
    code, _, err = cli(
        *base,
        "-o",
        tmp_path / "a.onnx",
        "--channels",
        "0.5",
        "--lossy-couplings",
        "--plan-out",
        plan,
    )
    assert code == 0, err
    code, _, err = cli(*base, "-o", tmp_path / "b.onnx", "--plan-in", plan)
    assert code != 0 and "pass --lossy-couplings" in err
    code, out, err = cli(*base, "-o", tmp_path / "c.onnx", "--plan-in", plan, "--lossy-couplings")
    assert code == 0, err
    assert "2 node(s) (LRN x2)" in out
    code, _, err = cli("analyze", STEM, "--lossy-couplings")
    assert code == 2 and "--groups" in err


def test_a_later_lossy_pass_takes_the_lossy_figures_with_the_reference_it_replaces():
    """The lossy-coupling count describes channel-prune's reference: once a later pass's
    reference is the oracle, it is gone (the report would measure the wrong plain original)."""
    alone = Pipeline([ChannelPrunePass(lossy_couplings=True)])(Model.load(STEM))
    assert alone.artifacts["lossy_couplings"] == {"LRN": 2}
    passes = [ChannelPrunePass(lossy_couplings=True), WeightSparsityPass(ratio=0.5)]
    assert "lossy_couplings" not in Pipeline(passes)(Model.load(STEM)).artifacts


@pytest.mark.parametrize(("op", "opset"), [("Softmax", 17), ("LogSoftmax", 17), ("Softmax", 11)])
def test_softmax_over_channels_is_a_lossy_coupling(op, opset):
    """Conv → Softmax over the channels → Conv: blocked without the option; with it, pruned,
    exact against the reference that normalizes over the kept channels only, and not equal to
    the plain masked original (the removed channels' exponentials are gone from the sum)."""
    g = GraphBuilder((1, 3, 6, 6), opset=opset, seed=opset).conv(12, kernel=1)
    source = g.op(op, axis=1).conv(5, kernel=1).build()
    reasons = [g.reason or "" for g in find_channel_groups(Model.from_proto(source)).groups]
    assert sum(f"{op} '" in r and "pass --lossy-couplings" in r for r in reasons) == 1
    model, result = prune(Model.from_proto(source), ratio=0.5, lossy_couplings=True)
    assert result.artifacts["lossy_couplings"] == {op: 1}
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    assert oracle_error(model, result.reference(plain=True)) > 1e-3
