"""Fast sensitivity sweeps: a pruned copy run from its cut's frontier gives the full run's errors
(to float rounding) and the same allocation; the cut's frontier; seeded sample subsets with
standard errors; the coarse-to-fine grid; worker processes giving the same table; the frontier
cache's byte budget; ``--jobs`` in the option table."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS

from sparsec.analysis import shapes as shapes_module
from sparsec.analysis.activations import random_samples
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.shapes import value_shapes
from sparsec.ir import Model
from sparsec.ir.compare import changed_nodes
from sparsec.passes import Pipeline
from sparsec.passes.builtin import canonical_passes
from sparsec.pruning import budget, suffix
from sparsec.pruning.selection import lowest_units
from sparsec.pruning.sensitivity import allocate, measure, subset_samples
from sparsec.pruning.surgery import prune_channels
from sparsec.spec.options import OPTION_BY_NAME

RATIOS = (0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def cnn() -> Model:
    return Model.load(MODELS / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return {"input": np.load(MODELS / "digits_calib.npz")["input"][:48]}


@pytest.fixture(scope="module")
def full(cnn, samples):
    return measure(cnn, samples, RATIOS, fast=False)


@pytest.fixture(scope="module")
def fast(cnn, samples):
    return measure(cnn, samples, RATIOS, subset=0)


def _errors(table) -> dict[tuple[int, float], float]:
    return {(g.id, p.ratio): p.error for g in table.groups for p in g.points}


def test_suffix_errors_equal_the_full_runs(full, fast):
    assert _errors(fast).keys() == _errors(full).keys() and len(_errors(full)) == 9
    for key, error in _errors(full).items():
        assert _errors(fast)[key] == pytest.approx(error, rel=1e-5, abs=1e-9), key
    for a, b in zip(full.groups, fast.groups):
        for p, q in zip(a.points, b.points):
            assert np.array_equal(p.units, q.units) and (p.macs, p.params) == (q.macs, q.params)
            assert q.stderr == pytest.approx(p.stderr, rel=1e-4) and p.stderr > 0


@pytest.mark.parametrize("target", [0.9, 0.75, 0.6])
def test_suffix_gives_the_same_allocation(full, fast, target):
    assert allocate(fast, target_macs=target) == allocate(full, target_macs=target)


def test_a_late_group_runs_from_a_late_frontier(cnn):
    analysis = find_channel_groups(cnn)
    prunable = [g for g in analysis.groups if g.prunable]
    inputs = {v.name for v in cnn.inputs}
    cuts = []
    for group in prunable:
        pruned = cnn.copy()
        prune_channels(pruned, find_channel_groups(pruned), {group.id: np.arange(2)})
        cuts.append(suffix.cut_of(cnn, pruned))
        assert cuts[-1].outputs == tuple(v.name for v in cnn.outputs)
    assert set(cuts[0].frontier) == inputs  # the first conv's channels: from the input
    assert not set(cuts[-1].frontier) & inputs  # the last group: from inside the graph
    assert changed_nodes(cnn.copy(), cnn) == []


def test_frontier_activations_are_those_of_the_original(cnn, samples):
    """The suffix fed the original's frontier values computes the original's outputs."""
    group = [g for g in find_channel_groups(cnn).groups if g.prunable][-1]
    pruned = cnn.copy()
    prune_channels(pruned, find_channel_groups(pruned), {group.id: np.arange(2)})
    cut = suffix.cut_of(cnn, pruned)
    reference = suffix.Reference(cnn, samples, 16)
    cache = suffix.FrontierCache(cnn, reference)
    same = suffix.Cut(cut.frontier, cut.outputs)
    batches = cache.batches("g", cut.frontier)
    [(error, stderr)] = suffix.evaluate([cnn], [same], reference, batches)
    assert error == pytest.approx(0.0, abs=1e-12) and stderr == pytest.approx(0.0, abs=1e-12)
    assert "g" in cache.held  # small enough to hold: the next round reuses it


def test_a_frontier_over_the_budget_is_captured_again(cnn, samples, fast):
    reference = suffix.Reference(cnn, samples, 16)
    cache = suffix.FrontierCache(cnn, reference, budget_mb=0)
    name = next(n.outputs[0].name for n in cnn.nodes() if n.op_type == "Relu")
    assert len(list(cache.batches("g", [name]))) == len(reference.feeds)
    assert not cache.held and cache.bytes == 0


def test_subset_is_seeded_and_shows_its_error_bar(cnn, samples, full):
    drawn = subset_samples(samples, 16, seed=3)
    assert np.array_equal(drawn["input"], subset_samples(samples, 16, seed=3)["input"])
    assert not np.array_equal(drawn["input"], subset_samples(samples, 16, seed=4)["input"])
    assert subset_samples(samples, 0, 0)["input"].shape[0] == 48
    table = measure(cnn, samples, RATIOS, subset=16, seed=3)
    assert table.samples == 16 and "+-" in table.text()
    for key, error in _errors(full).items():  # the same points, within a few standard errors
        point = next(p for p in table.group(key[0]).points if p.ratio == key[1])
        assert abs(point.error - error) <= 4 * point.stderr + 1e-9, key


def test_coarse_to_fine_measures_fewer_points_and_lands_close(cnn, samples):
    target = {"target_macs": 0.7}
    coarse, chosen = budget.sweep_allocation(cnn, samples, target, subset=0)
    every, best = budget.sweep_allocation(cnn, samples, target, fast=False)
    assert coarse.points() < every.points() == 3 * len(budget.RATIOS)
    assert coarse.estimate(chosen)["macs"] <= 0.7 + 1e-9
    for gid, ratio in chosen.items():  # every chosen ratio has its measured fine neighbours
        assert budget.neighbours(coarse.group(gid), ratio) == []
    assert coarse.estimate(chosen)["error"] <= 1.25 * every.estimate(best)["error"]


def test_worker_processes_give_the_same_table(cnn, samples, fast):
    table = measure(cnn, samples, RATIOS, subset=0, jobs=2)
    assert _errors(table) == pytest.approx(_errors(fast), rel=1e-6)
    assert [[p.units.tolist() for p in g.points] for g in table.groups] == [
        [p.units.tolist() for p in g.points] for g in fast.groups
    ]


def test_jobs_is_an_option_with_default_one():
    option = OPTION_BY_NAME["jobs"]
    assert option.default == 1 and option.flag == "--jobs"


def test_head_groups_measure_the_same_on_both_paths(samples):
    """Head pruning may add shape nodes (the costs are matched by output name, the point runs
    whole when the node lists differ): the digits ViT's head and MLP groups."""
    vit = Model.load(MODELS / "digits_vit.onnx")
    Pipeline(canonical_passes())(vit)
    kinds = {g.id: g.kind for g in find_channel_groups(vit).groups if g.prunable}
    chosen = {next(i for i, k in kinds.items() if k == "heads"), max(kinds)}
    args = (vit, samples, (0.5,))
    fast = measure(*args, subset=0, groups=chosen)
    full = measure(*args, fast=False, groups=chosen)
    assert {g.kind for g in fast.groups} >= {"heads"} and len(fast.groups) == 2
    assert _errors(fast) == pytest.approx(_errors(full), rel=1e-5)
    assert [g.points[0].macs for g in fast.groups] == [g.points[0].macs for g in full.groups]


@pytest.mark.parametrize(
    "path, carried",
    [
        ("digits_cnn.onnx", True),
        ("couplings/concat_split.onnx", True),
        ("attention/paddle/svtr_split.onnx", False),  # heads' cuts add shape nodes
    ],
)
def test_a_pruned_copy_takes_the_original_shapes_and_its_cut_dims(path, carried, monkeypatch):
    """A point's copy is analysed with the original's shapes (no inference or measuring run),
    and costed with them less the cut's channels: the same shapes and costs as a fresh
    analysis of the pruned copy, for every prunable group (a cut that adds nodes, heads' shape
    Concats, has its shapes computed)."""
    model = Model.load(MODELS / path)
    Pipeline(canonical_passes())(model)
    samples = random_samples(model, 2, 0)
    measurer = suffix.PointMeasurer(model, samples, 2, fast=True, lossy=True)
    runs, compute = [], shapes_module._compute
    monkeypatch.setattr(shapes_module, "_compute", lambda *a: runs.append(1) or compute(*a))
    checked = 0
    for group in (g for g in measurer.groups.values() if g.prunable):
        units = lowest_units(group, np.arange(group.units, dtype=float), 0.5)
        pruned, point = measurer._pruned(group, units, 0.5)
        fresh = pruned.copy()  # no cached analysis: everything computed again
        assert value_shapes(pruned, measurer.shapes) == value_shapes(fresh, measurer.shapes)
        cost = analyze_cost(fresh, measurer.shapes)
        assert (point.macs, point.params) == (cost.macs, cost.params)
        checked += 1
    assert checked >= 2 and len(runs) >= checked  # the fresh copies' analyses, at least
    if carried:
        assert len(runs) == checked  # the fresh copies' only: none for the points themselves
