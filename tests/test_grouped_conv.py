"""Grouped convolutions (issue 18, class 3): every group of a grouped conv loses the same
*number* of channels on each side, each group its own least important ones, and the weight's
per-group axis is cut group by group (``rules.core.GroupedWeight``); the oracle zeroes what each
group's removed channels read, so the cut stays exact."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import make_model, oracle_error, prune
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.pruning.selection import balance, lowest_units

F = TensorProto.FLOAT
GROUPS, PER_GROUP = 3, 4  # the grouped conv reads 12 channels, 4 per group


def expand_then_group(rng, row_scale: np.ndarray, op: str = "Conv"):
    """x → 1×1 Conv to 12 channels (row ``c`` scaled by ``row_scale[c]``) → Relu → a grouped
    ``op`` (3 groups) → Relu → 1×1 Conv to 5 outputs: the 12 channels' group is balanced over the
    grouped op's 3 groups."""
    w0 = rng.standard_normal([12, 3, 1, 1]).astype(np.float32)
    w0 *= row_scale.astype(np.float32)[:, None, None, None]
    if op == "Conv":
        w = rng.standard_normal([6, PER_GROUP, 3, 3]).astype(np.float32)
    else:  # ConvTranspose: W [C_in, C_out / groups, kh, kw]
        w = rng.standard_normal([12, 2, 2, 2]).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node(op, ["r", "w"], ["g"], group=GROUPS),
        helper.make_node("Relu", ["g"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(w0, "w0"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(rng.standard_normal([5, 6, 1, 1]).astype(np.float32), "w2"),
    ]
    size = 4 if op == "Conv" else 7
    return make_model(nodes, [("x", F, [1, 3, 6, 6])], [("y", F, [1, 5, size, size])], inits)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_each_group_loses_its_own_weakest_channels_exactly(rng, op):
    """Rows scaled so that the two weakest channels of each group sit at different local
    positions (group 0: 0, 1; group 1: 2, 3; group 2: 1, 2): a tile (the same local positions in
    every group) could not remove them; the balanced cut removes exactly those six."""
    weak = [0, 1, 4 + 2, 4 + 3, 8 + 1, 8 + 2]
    scale = np.full(12, 10.0)
    scale[weak] = 0.01
    proto = expand_then_group(rng, scale, op)
    model, result = prune(Model.from_proto(proto), ratio=0.5, importance="l1")
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-5
    kept_rows = model.constant(model.initializers()["w0"])
    original = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w0"))
    survivors = [c for c in range(12) if any(np.array_equal(r, original[c]) for r in kept_rows)]
    assert survivors == sorted(set(range(12)) - set(weak))
    w = model.constant(model.initializers()["w"])
    assert (w.shape[1] if op == "Conv" else w.shape[0]) == (2 if op == "Conv" else 6)


def test_balance_gives_back_the_best_scored_units_of_the_fullest_class(rng):
    """Removing 2 + 1 + 1 units of the three groups is uneven: the better-scored of group 0's two
    comes back, the rest stays removed."""
    proto = expand_then_group(rng, np.ones(12))
    group = next(g for g in find_channel_groups(Model.from_proto(proto)).groups if g.balanced)
    member = next(m for m, _ in group.balanced if m[0] == "r")
    unit = group.atoms[member]  # position → unit
    scores = np.arange(12, dtype=float)[np.argsort(unit)]  # unit of position p scores p
    removed = np.sort(unit[[0, 1, 5, 9]])
    assert sorted(balance(group, removed, scores).tolist()) == sorted(unit[[0, 5, 9]].tolist())


def test_lowest_units_removes_as_many_from_every_group(rng):
    """Whatever the scores, a ratio's cut removes the same number from each group (never more
    than asked)."""
    proto = expand_then_group(rng, np.ones(12))
    group = next(g for g in find_channel_groups(Model.from_proto(proto)).groups if g.balanced)
    member = next(m for m, _ in group.balanced if m[0] == "r")
    for seed in range(20):
        scores = np.random.default_rng(seed).random(group.units)
        for ratio in (0.25, 0.5, 0.75):
            removed = lowest_units(group, scores, ratio)
            positions = np.flatnonzero(group.removed_mask(removed)[group.atoms[member]])
            per_group = np.bincount(positions // PER_GROUP, minlength=GROUPS)
            assert len(set(per_group)) == 1 and len(removed) <= int(ratio * 12)


def test_a_plan_repeats_a_grouped_cut_and_refuses_an_uneven_one(rng, cli, tmp_path):
    """``--plan-out`` lists the per-group cut of the grouped weight (``grouped``), ``--plan-in``
    repeats it to the same weights, and a plan edited to remove 2 + 1 + 1 channels of the three
    groups is refused in one line, writing nothing."""
    scale = np.full(12, 10.0)
    scale[[0, 1, 6, 7, 9, 10]] = 0.01
    source = tmp_path / "grouped.onnx"
    source.write_bytes(expand_then_group(rng, scale).SerializeToString())
    plan, first, second = tmp_path / "plan.json", tmp_path / "a.onnx", tmp_path / "b.onnx"
    code, _, err = cli("compress", source, "--channels", "0.5", "--plan-out", plan, "-o", first)
    assert code == 0, err
    written = json.loads(plan.read_text())
    assert written["grouped"]["w"]["kept"] == [[2, 3], [0, 1], [0, 3]]
    code, _, err = cli("compress", source, "--plan-in", plan, "-o", second)
    assert code == 0, err
    assert all(
        np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(onnx.load(first).graph.initializer, onnx.load(second).graph.initializer)
    )
    w0 = written["initializers"]["w0"][0]
    w0["kept"] = [2, 3, 4, 5, 7, 8, 10, 11]  # group 0 loses 2, groups 1 and 2 lose 1
    plan.write_text(json.dumps(written))
    third = tmp_path / "c.onnx"
    code, _, err = cli("compress", source, "--plan-in", plan, "-o", third)
    assert code != 0 and "unequal numbers of channels" in err and len(err.strip().splitlines()) == 1
    assert not third.exists()
