"""channel-prune in K rounds (``steps``): the schedule's arithmetic, the composed plan, and
that K rounds reach the same cut shapes as one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, make_model, oracle_error
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.base import PassError
from sparsec.passes.builtin import cleanup_passes
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.passes.schedule import compose_plans, round_ratio

DIGITS = MODELS / "digits_cnn.onnx"


@pytest.mark.parametrize("total, steps", [(0.5, 4), (0.3, 3), (0.9, 2)])
def test_rounds_compound_to_the_total_ratio(total, steps):
    kept = np.prod([1 - round_ratio(total, k, steps) for k in range(1, steps + 1)])
    assert kept == pytest.approx(1 - total)
    assert round_ratio(-1.0, 2, steps) == -1.0  # "as ratio" stays


def test_plans_compose_to_positions_of_the_first_model():
    first = {"format": "sparsec-channel-plan", "version": 1,
             "initializers": {"w": [{"axis": 0, "size": 8, "kept": [0, 2, 3, 5, 7]}]}}
    second = {"format": "sparsec-channel-plan", "version": 1,
              "initializers": {"w": [{"axis": 0, "size": 5, "kept": [1, 2, 4]}, {"axis": 1, "size": 4, "kept": [0, 3]}]}}
    composed = compose_plans([first, second])["initializers"]["w"]
    assert composed == [{"axis": 0, "size": 8, "kept": [2, 3, 7]}, {"axis": 1, "size": 4, "kept": [0, 3]}]


def _run(path, **options):
    model = Model.load(path)
    return model, Pipeline([ChannelPrunePass(**options), *cleanup_passes()], fixed_point=True)(model)


def test_four_rounds_reach_the_one_round_widths_and_their_plan_replays_the_cut(tmp_path):
    one, _ = _run(DIGITS, ratio=0.5)
    stepped, result = _run(DIGITS, ratio=0.5, steps=4)
    assert oracle_error(stepped, result.reference()) <= 1e-4  # the last round's oracle
    assert result.stats["channel-prune.steps"] == 4
    assert [d.code for d in result.diagnostics].count("channel.step") == 4
    shapes = {name: stepped.constant_shape(v) for name, v in stepped.initializers().items()}
    assert shapes == {name: one.constant_shape(v) for name, v in one.initializers().items()}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(result.artifacts["plan"]))
    replayed, _ = _run(DIGITS, plan=str(plan))  # no refit ran (no calibration): same weights exactly
    for name, value in stepped.initializers().items():
        np.testing.assert_array_equal(replayed.constant(replayed.initializers()[name]), stepped.constant(value))


def test_a_round_that_differs_from_its_masked_original_stops_the_schedule(monkeypatch):
    """Each round but the last is held to the exactness oracle before the next one cuts."""
    honest = ChannelPrunePass._round

    def round_then_nudge(self, model, samples):
        result = honest(self, model, samples)
        weight = model.initializers()["head.weight"]
        model.set_constant(weight, model.constant(weight) * 1.01)  # not in the round's reference
        return result
    monkeypatch.setattr(ChannelPrunePass, "_round", round_then_nudge)
    with pytest.raises(PassError, match="channel-prune: round 1 differs from its masked original"):
        _run(DIGITS, ratio=0.5, steps=4)


@pytest.mark.parametrize("steps", [3, 6, 10, 20])
def test_any_number_of_rounds_removes_exactly_what_one_round_does(steps):
    """Rounding each round's share of what remains drifted (3 rounds left stem 7 of 16 channels,
    20 rounds 10): the schedule spreads the one-round cut, in units, over the rounds."""
    one, _ = _run(DIGITS, ratio=0.5)
    stepped, result = _run(DIGITS, ratio=0.5, steps=steps)
    shapes = {name: stepped.constant_shape(v) for name, v in stepped.initializers().items()}
    assert shapes == {name: one.constant_shape(v) for name, v in one.initializers().items()}
    codes = [d.code for d in result.diagnostics]
    assert codes.count("channel.step") == steps and "channel.nothing-pruned" not in codes
    assert oracle_error(stepped, result.reference()) <= 1e-4


def test_rounds_that_cannot_follow_a_group_say_how_many_units_they_missed(rng):
    """A Concat of a 2-channel and an 8-channel branch: round 1 cuts the small branch to one
    channel, which leaves the group (a one-channel tensor links no axis), so the rounds after it
    cannot finish the one-round cut; the shortfall is a warning, not silence."""
    weights = {"wa": [2, 3, 1, 1], "wb": [8, 3, 1, 1], "wc": [4, 10, 1, 1]}
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a0"]), helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node("Conv", ["x", "wb"], ["b0"]), helper.make_node("Relu", ["b0"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("Conv", ["c", "wc"], ["y"])]
    proto = make_model(nodes, [("x", TensorProto.FLOAT, [1, 3, 4, 4])], [("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    one = Model.from_proto(proto)
    removed = ChannelPrunePass(ratio=0.5)(one).stats["channels_removed"]
    stepped = Model.from_proto(proto)
    result = ChannelPrunePass(ratio=0.5, steps=2)(stepped)
    assert (removed, result.stats["channels_removed"]) == (5, 3)  # 1 of wa's 2 and 4 of wb's 8; then wa's 1 is unlinked
    short = [d.message for d in result.diagnostics if d.code == "channel.steps-short"]
    assert short == ["2 rounds removed 3 of the 5 units one round removes: a channel group changed shape between rounds "
                     "(e.g. a tensor cut to one channel left it); fewer --steps, or one, removes them all"]
    assert oracle_error(stepped, result.reference()) <= 1e-4
