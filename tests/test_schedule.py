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
from sparsec.pruning import channels
from sparsec.pruning.schedule import compose_plans, round_ratio

DIGITS = MODELS / "digits_cnn.onnx"


@pytest.mark.parametrize("total, steps", [(0.5, 4), (0.3, 3), (0.9, 2)])
def test_rounds_compound_to_the_total_ratio(total, steps):
    kept = np.prod([1 - round_ratio(total, k, steps) for k in range(1, steps + 1)])
    assert kept == pytest.approx(1 - total)
    assert round_ratio(-1.0, 2, steps) == -1.0  # "as ratio" stays


def test_plans_compose_to_positions_of_the_first_model():
    first = {
        "format": "sparsec-channel-plan",
        "version": 1,
        "initializers": {"w": [{"axis": 0, "size": 8, "kept": [0, 2, 3, 5, 7]}]},
    }
    second = {
        "format": "sparsec-channel-plan",
        "version": 1,
        "initializers": {
            "w": [{"axis": 0, "size": 5, "kept": [1, 2, 4]}, {"axis": 1, "size": 4, "kept": [0, 3]}]
        },
    }
    composed = compose_plans([first, second])["initializers"]["w"]
    assert composed == [
        {"axis": 0, "size": 8, "kept": [2, 3, 7]},
        {"axis": 1, "size": 4, "kept": [0, 3]},
    ]


def _run(path, **options):
    model = Model.load(path)
    return model, Pipeline([ChannelPrunePass(**options), *cleanup_passes()], fixed_point=True)(
        model
    )


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
    replayed, _ = _run(
        DIGITS, plan=str(plan)
    )  # no refit ran (no calibration): same weights exactly
    for name, value in stepped.initializers().items():
        np.testing.assert_array_equal(
            replayed.constant(replayed.initializers()[name]), stepped.constant(value)
        )


def test_a_round_that_differs_from_its_masked_original_stops_the_schedule(monkeypatch):
    """Each round but the last is held to the exactness oracle before the next one cuts."""
    honest = channels.prune_round

    def round_then_nudge(model, options, samples):
        result = honest(model, options, samples)
        weight = model.initializers()["head.weight"]
        model.set_constant(weight, model.constant(weight) * 1.01)  # not in the round's reference
        return result

    monkeypatch.setattr(channels, "prune_round", round_then_nudge)
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


def _branches(rng, split: bool):
    """Two branches of 2 and 6/8 channels joined by a Concat into a 1x1 Conv: two Convs
    (``split=False``), or one Conv split [2, 6] through Sigmoid and Tanh."""
    if split:
        weights = {"w0": [8, 3, 1, 1], "wc": [4, 8, 1, 1]}
        nodes = [
            helper.make_node("Conv", ["x", "w0"], ["h"]),
            helper.make_node("Split", ["h", "sizes"], ["a0", "b0"], axis=1),
            helper.make_node("Sigmoid", ["a0"], ["a"]),
            helper.make_node("Tanh", ["b0"], ["b"]),
        ]
    else:
        weights = {"wa": [2, 3, 1, 1], "wb": [8, 3, 1, 1], "wc": [4, 10, 1, 1]}
        nodes = [
            helper.make_node("Conv", ["x", "wa"], ["a0"]),
            helper.make_node("Relu", ["a0"], ["a"]),
            helper.make_node("Conv", ["x", "wb"], ["b0"]),
            helper.make_node("Relu", ["b0"], ["b"]),
        ]
    inits = [
        numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
        for n, s in weights.items()
    ]
    inits += [numpy_helper.from_array(np.array([2, 6], np.int64), "sizes")] if split else []
    nodes += [
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Conv", ["c", "wc"], ["y"]),
    ]
    return make_model(
        nodes,
        [("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )


@pytest.mark.parametrize("split, expected", [(False, (5, 5)), (True, (3, 2))])
def test_a_branch_cut_to_one_channel_is_followed_or_its_shortfall_reported(rng, split, expected):
    """Round 1 cuts the 2-channel branch to one channel, which leaves the group (a one-channel
    tensor links no axis). Segments are followed by their weights, so two Convs still reach the
    one-round cut; after a Split the rest of the group changes too, and the rounds fall short by
    one unit: a warning, not silence."""
    proto = _branches(rng, split)
    removed = ChannelPrunePass(ratio=0.5)(Model.from_proto(proto)).stats["channels_removed"]
    stepped = Model.from_proto(proto)
    result = ChannelPrunePass(ratio=0.5, steps=2)(stepped)
    assert (removed, result.stats["channels_removed"]) == expected
    short = [d.message for d in result.diagnostics if d.code == "channel.steps-short"]
    assert short == (
        []
        if expected[0] == expected[1]
        else [
            (
                f"2 rounds removed {expected[1]} of the {expected[0]} units one round removes: a channel group "
                "changed shape between rounds (e.g. a tensor cut to one channel left it); fewer --steps, or one, "
                "removes them all"
            )
        ]
    )
    assert oracle_error(stepped, result.reference()) <= 1e-4


def test_rounds_on_a_model_with_a_fixed_batch_of_one_probe_one_sample_at_a_time():
    """The schedule's probe takes the calibration's first samples; an input declared with a
    fixed batch of 1 takes exactly one (4 at once failed in onnxruntime)."""
    model = Model.load(MODELS / "couplings" / "lrn_stem.onnx")
    assert model.shape_dims(model.inputs[0])[0] == 1
    prune = ChannelPrunePass(ratio=0.5, steps=2, calibration="random", calibration_samples=8)
    result = prune(model)
    assert result.stats["steps"] == 2 and result.stats["channels_removed"] > 0
    assert oracle_error(model, result.reference()) <= 1e-4
