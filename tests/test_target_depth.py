"""--target-macs with depth (``pruning.depth_width``): removable blocks compete with the channel
groups in the sensitivity allocation; a block is dropped where it is cheaper in error than width,
and the run is exact against the composed reference (the masked original, blocks zeroed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import MODELS
from test_drop_blocks import calibration as drop_blocks_calibration
from test_drop_blocks import residual_stack

from sparsec.analysis.blocks import find_blocks
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.pruning import budget, depth_width
from sparsec.pruning.sensitivity import allocate
from sparsec.testing import GraphBuilder, assert_pass_exact


def calibration(model: Model, folder) -> str:
    """test_drop_blocks' seeded calibration file, with the sweep's 32-sample subset filled."""
    return drop_blocks_calibration(model, folder, count=32)


def macs(model: Model) -> int:
    return analyze_cost(model).macs


def prune(model: Model, data: str, target: float, **options):
    """channel-prune for a MACs target, checked against its oracle reference."""
    pass_ = ChannelPrunePass(target_macs=target, calibration=data, recover=False, **options)
    return assert_pass_exact(pass_, model)


def allocation_line(result) -> str:
    return next(d.message for d in result.diagnostics if d.code == "channel.allocation")


def test_items_group_a_transformer_layer_with_its_parts():
    vit = Model.load(MODELS / "digits_vit.onnx")
    items = depth_width.exclusive_items([b for b in find_blocks(vit) if b.removable])
    assert [[b.kind for b in item] for item in items] == [
        ["residual", "residual", "transformer-layer"]
    ] * 2


def test_the_nearly_useless_block_is_dropped_rather_than_channels(tmp_path):
    model = residual_stack(3, quiet=1)
    data = calibration(model, tmp_path)
    result = prune(model, data, 0.7)
    (dropped,) = result.artifacts["blocks"]
    assert {"b1.fc1", "b1.fc2", "b1.quiet"} <= set(dropped["nodes"])
    assert result.stats["channels_removed"] == 0
    assert "chosen group:ratio none" in allocation_line(result)
    assert "b1.fc1" not in {n.name for n in result.model.nodes()}
    assert macs(result.model) <= 0.7 * macs(model)


def test_when_every_block_matters_none_is_dropped(tmp_path):
    model = residual_stack(3)
    data = calibration(model, tmp_path)
    result = prune(model, data, 0.8)
    assert "blocks" not in result.artifacts
    assert result.stats["channels_removed"] > 0
    assert "dropped: none" in allocation_line(result)


def test_the_estimate_is_the_measured_macs_of_the_result(tmp_path):
    model = residual_stack(3, quiet=1)
    data = calibration(model, tmp_path)
    result = prune(model, data, 0.5)  # one block is not enough: channels too
    assert result.artifacts["blocks"] and result.stats["channels_removed"] > 0
    estimated = float(re.search(r"estimated MACs ([0-9.]+)", allocation_line(result))[1])
    assert macs(result.model) / macs(model) == pytest.approx(estimated, abs=1e-3)
    assert estimated <= 0.5


def test_the_joint_table_estimates_a_dropped_block_and_its_channels_by_the_product_form(
    tmp_path,
):
    """A block dropped with its own hidden group cut too: the nodes it frees count 0 once."""
    model = residual_stack(2, quiet=0)
    samples = dict(np.load(calibration(model, tmp_path)))
    blocks = depth_width.candidate_blocks(model)
    table, _ = budget.sweep_allocation(model, samples, {"target_macs": 0.9}, blocks=blocks)
    block = next(g for g in table.groups if g.id < 0)
    hidden = table.group(2)  # b0's 32 hidden units (group 1 is the residual stream)
    assert hidden.units == 32 and hidden.kind != depth_width.KIND
    alone = table.estimate({block.id: 1.0})["macs"]
    both = table.estimate({block.id: 1.0, hidden.id: hidden.points[0].ratio})["macs"]
    assert both == pytest.approx(alone)
    chosen = allocate(table, target_macs=alone + 1e-3)
    assert chosen == {**dict.fromkeys(_ids(table), 0.0), block.id: 1.0}
    idle = depth_width.without_idle(table, {**chosen, hidden.id: hidden.points[0].ratio})
    assert idle == chosen  # a cut inside the dropped block saves nothing more: undone


def test_depth_off_is_the_channel_only_result(tmp_path):
    model = residual_stack(3, quiet=1)
    data = calibration(model, tmp_path)
    off = prune(model, data, 0.7, depth=False, importance="l1")
    assert "blocks" not in off.artifacts and off.stats["channels_removed"] > 0
    assert "dropped" not in allocation_line(off)
    samples = dict(np.load(data))
    _, channel_only = budget.sweep_allocation(model, samples, {"target_macs": 0.7})
    assert re.search(r"chosen group:ratio ([^;]*);", allocation_line(off))[1] == ", ".join(
        f"{gid}:{r:g}" for gid, r in sorted(channel_only.items()) if r
    )


def test_recovery_refits_after_the_dropped_block_and_stays_exact(tmp_path):
    model = residual_stack(3, quiet=1)
    data = calibration(model, tmp_path)
    pass_ = ChannelPrunePass(target_macs=0.5, calibration=data, recover="layer")
    result = assert_pass_exact(pass_, model)
    assert result.artifacts["blocks"] and result.stats["layers_refit"] > 0


def test_cli_no_depth_needs_a_target(cli, tmp_path):
    code, _, err = cli(
        "compress", MODELS / "digits_cnn.onnx", "--channels", "0.3", "--no-depth",
        "-o", tmp_path / "o.onnx",
    )  # fmt: skip
    assert code == 2 and "--target-macs" in err


def _ids(table) -> list[int]:
    return [g.id for g in table.groups]


def test_cli_target_drops_the_quiet_block_and_passes_the_oracle(cli, tmp_path):
    model = residual_stack(3, quiet=1)
    source, out = tmp_path / "quiet.onnx", tmp_path / "out.onnx"
    model.save(str(source))
    data = calibration(model, tmp_path)
    code, text, err = cli(
        "compress", source, "--target-macs", "0.7", "--calibration", data,
        "--recover", "layer", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"dropped: \S+ \(residual, error", text) and "passed" in text
    pruned = Model.load(str(out))
    assert "b1.fc1" not in {n.name for n in pruned.nodes()}
    assert macs(pruned) <= 0.7 * macs(model)


def test_plan_out_keeps_depth_off_and_refuses_it_asked(cli, tmp_path):
    model = residual_stack(3, quiet=1)
    source, out, plan = tmp_path / "quiet.onnx", tmp_path / "out.onnx", tmp_path / "plan.json"
    model.save(str(source))
    data = calibration(model, tmp_path)
    common = ("--target-macs", "0.7", "--calibration", data, "--recover", "layer")
    code, _, err = cli("compress", source, *common, "--depth", "--plan-out", plan, "-o", out)
    assert code == 2 and "--plan-out" in err
    code, text, err = cli("compress", source, *common, "--plan-out", plan, "-o", out)
    assert code == 0, err
    assert "dropped:" not in text  # channels only: the plan can say everything that was cut
    assert "b1.fc1" in {n.name for n in Model.load(str(out)).nodes()}


def plain_stack() -> Model:
    """stem Gemm 8->16, Relu, a Gemm 16->16 that is the identity on Relu outputs (dropping it
    costs no error), Relu, a third 16->16, Relu, head: no residual, so the middle layer's input
    and output widths are separate channel groups."""
    g = GraphBuilder((2, 8), seed=1)
    g.linear(16, name="stem").relu()
    g.linear(16, name="mid").relu()
    model = g.linear(16, name="last").relu().linear(4, name="head").model()
    mid = next(node for node in model.nodes() if node.name == "mid")
    model.set_constant(mid.inputs[1], np.eye(16, dtype=np.float32))
    model.set_constant(mid.inputs[2], np.zeros(16, np.float32))
    return model


def test_a_plain_layer_between_two_cut_groups_is_not_dropped(tmp_path):
    """Dropping ``mid`` makes ``last`` read the stem's output: with both widths cut first (the
    joint order), ``last`` would get the stem's kept channels, not its own (the old result:
    a model onnxruntime refused). Such a layer is no candidate; the residual blocks stay."""
    model = plain_stack()
    (layer,) = [b for b in find_blocks(model) if b.removable and "mid" in b.nodes]
    groups = [g for g in find_channel_groups(model).groups if g.prunable]
    assert depth_width.apart_from_cuts([layer], groups) == []
    assert depth_width.apart_from_cuts([layer], []) == [layer]  # no group cut: droppable
    stack = residual_stack(3)
    residuals = [b for b in find_blocks(stack) if b.removable]
    assert depth_width.apart_from_cuts(residuals, find_channel_groups(stack).groups) == residuals
    result = prune(model, calibration(model, tmp_path), 0.3)  # before: a Gemm of 16 and 10
    assert "blocks" not in result.artifacts and result.stats["channels_removed"] > 0
    assert macs(result.model) <= 0.3 * macs(model)
