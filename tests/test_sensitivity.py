"""Sensitivity: one group pruned at a time on the digits CNN (calibration from its training
split), the error and cost of each point, and the per-group ratios ``allocate`` picks for a MACs
or params target."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS

from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.pruning.channels import ChannelOptions, select
from sparsec.pruning.sensitivity import (
    SUBSET,
    GroupSensitivity,
    Point,
    SensitivityTable,
    allocate,
    measure,
)
from sparsec.pruning.surgery import prune_channels

SHAPES = {"input": (1, 1, 8, 8)}  # where the table counts MACs: one sample


@pytest.fixture(scope="module")
def cnn() -> Model:
    return Model.load(MODELS / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return {"input": np.load(MODELS / "digits_calib.npz")["input"][:32]}


@pytest.fixture(scope="module")
def table(cnn, samples) -> SensitivityTable:
    lines: list[str] = []
    table = measure(cnn, samples, progress=lines.append)
    assert len(lines) == len(table.groups)
    return table


def _pruned_cost(model: Model, table: SensitivityTable, allocation: dict[int, float]):
    pruned = model.copy()
    prune_channels(pruned, find_channel_groups(pruned), table.removed(allocation))
    return analyze_cost(pruned, SHAPES)


def test_every_prunable_group_is_measured_at_every_ratio(cnn, table):
    prunable = [g for g in find_channel_groups(cnn).groups if g.prunable]
    assert [g.id for g in table.groups] == [g.id for g in prunable] and len(prunable) == 3
    assert table.macs == analyze_cost(cnn, SHAPES).macs and table.samples == min(SUBSET, 32)
    for group in table.groups:
        assert [p.ratio for p in group.points] == [0.25, 0.5, 0.75]
        assert all(0 < len(p.units) < group.units for p in group.points)


def test_error_grows_and_cost_falls_with_the_ratio(table):
    for group in table.groups:
        low, mid, high = group.points
        assert high.error >= low.error > 0, group.id
        assert low.macs >= mid.macs >= high.macs and high.macs < low.macs < table.macs, group.id
        assert low.params > mid.params > high.params, group.id
        assert len(low.units) < len(mid.units) < len(high.units)


def test_units_are_those_channel_prune_removes(cnn, table):
    groups = [g for g in find_channel_groups(cnn).groups if g.prunable]
    for ratio in (0.25, 0.5, 0.75):
        chosen = select(cnn, ChannelOptions(ratio=ratio), groups)
        for group in table.groups:
            assert np.array_equal(group.point(ratio).units, chosen[group.id]), (group.id, ratio)


def test_measure_leaves_the_model_alone(cnn, samples, table):
    version = cnn.version
    again = measure(cnn, samples, ratios=(0.5,))
    assert cnn.version == version
    assert [g.points[0].error for g in again.groups] == [g.point(0.5).error for g in table.groups]


def test_allocation_reaches_the_macs_target(cnn, table):
    allocation = allocate(table, target_macs=0.66)
    assert set(allocation) == {g.id for g in table.groups}
    assert set(allocation.values()) <= {0.0, 0.25, 0.5, 0.75} and any(allocation.values())
    cost = _pruned_cost(cnn, table, allocation)
    assert cost.macs <= 0.66 * table.macs
    estimate = table.estimate(allocation)  # the product form is exact for counts
    assert estimate["macs"] == pytest.approx(cost.macs / table.macs, rel=1e-12)
    assert estimate["params"] == pytest.approx(cost.params / table.params, rel=1e-12)


def test_allocation_reaches_a_params_target(cnn, table):
    allocation = allocate(table, target_params=0.5)
    assert _pruned_cost(cnn, table, allocation).params <= 0.5 * table.params


def test_joint_cost_of_two_groups_is_exact(cnn, table):
    """Two groups around one conv: their savings overlap, the product form still holds."""
    allocation = {g.id: 0.5 for g in table.groups}
    cost = _pruned_cost(cnn, table, allocation)
    separate = sum(table.macs - g.point(0.5).macs for g in table.groups)
    assert table.macs - cost.macs < separate  # the additive estimate would overstate the saving
    assert table.estimate(allocation)["macs"] == pytest.approx(cost.macs / table.macs, rel=1e-12)


def test_unreachable_target_says_what_is_reachable(table):
    with pytest.raises(
        InputError, match=r"target macs 0.01 cannot be reached .* best reachable is 0\.\d+"
    ):
        allocate(table, target_macs=0.01)
    with pytest.raises(InputError, match="exactly one target"):
        allocate(table)
    with pytest.raises(InputError, match="exactly one target"):
        allocate(table, target_macs=0.5, target_params=0.5)
    with pytest.raises(InputError, match=r"in \(0, 1\]"):
        allocate(table, target_macs=1.5)
    assert allocate(table, target_macs=1.0) == {g.id: 0.0 for g in table.groups}


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_allocation_is_no_worse_than_uniform_ratios(table, ratio):
    uniform = {g.id: ratio for g in table.groups}
    reached = table.estimate(uniform)
    chosen = table.estimate(allocate(table, target_macs=reached["macs"]))
    assert chosen["macs"] <= reached["macs"] + 1e-12
    assert chosen["error"] <= reached["error"]


def _synthetic(costly_error: float) -> SensitivityTable:
    """Two groups on two nodes of 100 MACs each; pruning either at 0.5 saves 50 MACs, group 0
    costs ``costly_error``, group 1 costs 0.1."""

    def group(gid: int, error: float) -> GroupSensitivity:
        nodes = np.array([[100.0, 100.0], [10.0, 10.0]])
        nodes[:, gid] /= 2
        return GroupSensitivity(
            gid, "channels", 8, f"group {gid}", [Point(0.5, np.arange(4), error, 150, 15, nodes)]
        )

    return SensitivityTable(
        (0.5,),
        "l1",
        4,
        200,
        20,
        np.array([[100.0, 100.0], [10.0, 10.0]]),
        [group(0, costly_error), group(1, 0.1)],
    )


def test_allocation_prefers_the_group_with_less_error_per_mac():
    assert allocate(_synthetic(0.3), target_macs=0.75) == {0: 0.0, 1: 0.5}
    assert allocate(_synthetic(0.05), target_macs=0.75) == {0: 0.5, 1: 0.0}
    assert allocate(_synthetic(0.3), target_macs=0.5) == {0: 0.5, 1: 0.5}
    assert _synthetic(0.3).estimate({0: 0.5, 1: 0.5}) == pytest.approx(
        {"macs": 0.5, "params": 0.5, "error": 0.4}
    )


def test_table_renders(table):
    report = json.loads(json.dumps(table.to_json()))
    assert report["format"] == "sparsec-sensitivity" and report["ratios"] == [0.25, 0.5, 0.75]
    assert [len(g["points"]) for g in report["groups"]] == [3, 3, 3]
    point = report["groups"][0]["points"][0]
    assert (
        point["removed"] == len(point["units"])
        and point["error"] == table.groups[0].points[0].error
    )
    text = table.text().splitlines()
    assert len(text) == 2 + len(table.groups) and "err@0.25" in text[1] and "MACs-@0.75" in text[1]
    assert text[2].split()[:3] == [str(table.groups[0].id), "channels", "16"]


def test_bad_ratios_are_refused(cnn, samples):
    with pytest.raises(InputError, match=r"ratios must lie in \(0, 1\)"):
        measure(cnn, samples, ratios=(0.5, 1.0))
    with pytest.raises(InputError, match=r"not measured at ratio 0\.3"):
        SensitivityTable.removed(_synthetic(0.1), {0: 0.3})
