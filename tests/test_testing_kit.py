"""The public testing kit (``sparsec.testing``): its builder is seeded and valid, its feeds are
``sparsec compress``'s, and its asserts pass on exact passes and fail, with a message naming the
output and the error, on a perturbed model, a wrong cleanup pass, a pruning pass whose result is
not its oracle reference, a lossy pass without one, and an output the ONNX checker rejects."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
import pytest
from conftest import MODELS

import sparsec
from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.testing import (
    GraphBuilder,
    as_model,
    assert_equivalent,
    assert_pass_exact,
    fuzz,
    oracle_error,
    random_feeds,
    run,
)


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder((1, 3, 8, 8), seed=seed)
    skip = g.conv(8, name="stem").relu().current
    g.conv(8, name="block.conv").batchnorm(name="block.bn").add(skip).relu()
    return g.flatten().linear(5, name="head").build()


def first(model: sparsec.Model, op_type: str):
    return next(n for n in model.nodes() if n.op_type == op_type)


# ---------------------------------------------------------------- builder and feeds
def test_the_builder_is_seeded_named_and_valid():
    a, b, other = small_cnn(0), small_cnn(0), small_cnn(1)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.initializer[0].raw_data != other.graph.initializer[0].raw_data
    names = [n.name for n in a.graph.node]
    assert {"stem", "block.conv", "block.bn", "head"} <= set(names)
    assert len(set(names)) == len(names)
    onnx.checker.check_model(a, full_check=True)
    (out,) = run(a, random_feeds(a)).values()
    assert out.shape == (1, 5) and np.isfinite(out).all()


def test_the_builder_makes_sequences_and_dynamic_batches():
    g = GraphBuilder((1, 4, 6), dynamic_batch=True).linear(6, name="proj").act("Tanh")
    model = g.output().linear(3).build()
    assert len(model.graph.output) == 2
    feeds = random_feeds(model, batch=3)
    assert feeds["input"].shape == (3, 4, 6)
    assert [v.shape for v in run(model, feeds).values()] == [(3, 4, 6), (3, 4, 3)]
    with pytest.raises(ValueError, match="image"):
        GraphBuilder((1, 4, 6)).conv(4)


def test_random_feeds_are_the_compress_feeds_and_the_fuzzers():
    model = small_cnn()
    m = as_model(model)
    ours = random_feeds(model, seed=3)
    theirs = random_inputs(m, bind_shapes(m), 3)
    np.testing.assert_array_equal(ours["input"], theirs["input"])
    np.testing.assert_array_equal(fuzz.feeds_for(model, 3)["input"], ours["input"])
    assert not np.array_equal(random_feeds(model, seed=4)["input"], ours["input"])


# ---------------------------------------------------------------- assert_equivalent
def test_assert_equivalent_accepts_the_same_model_in_every_form(tmp_path):
    model = small_cnn()
    onnx.save(model, tmp_path / "m.onnx")
    metrics = assert_equivalent(model, tmp_path / "m.onnx")
    assert_equivalent(as_model(model), str(tmp_path / "m.onnx"), seed=5)
    assert [m.max_abs for m in metrics] == [0.0]


def test_assert_equivalent_names_the_output_error_and_place_of_a_difference():
    model = as_model(small_cnn())
    perturbed = model.copy()
    head = first(perturbed, "Gemm")
    weight = perturbed.constant(head.inputs[1]).copy()
    weight[2, :] *= 1.5  # only output column 2 changes
    perturbed.set_constant(head.inputs[1], weight)
    with pytest.raises(AssertionError) as failure:
        assert_equivalent(model, perturbed)
    message = str(failure.value)
    output = model.outputs[0].name
    assert f"output '{output}'" in message
    assert "max abs error" in message and "at index (0, 2)" in message
    assert "reference" in message and "candidate" in message
    # a looser rule lets it through; the peak rule of the oracle is checked too
    assert_equivalent(model, perturbed, atol=1e3)
    with pytest.raises(AssertionError, match="max \\|ref\\|"):
        assert_equivalent(model, perturbed, peak=1e-4)


def test_assert_equivalent_fails_on_a_shape_difference():
    a = GraphBuilder((1, 6)).linear(4).build()
    b = GraphBuilder((1, 6)).linear(3).build()
    with pytest.raises(AssertionError, match="shape"):
        assert_equivalent(a, b)


# ---------------------------------------------------------------- assert_pass_exact
class DropEveryRelu(sparsec.InPlacePass):
    """Wrong on purpose: Relu is not the identity."""

    name: ClassVar[str] = "drop-every-relu"

    def call(self, model):
        for node in model.nodes():
            if node.op_type == "Relu" and model.can_replace(node.outputs[0], node.inputs[0]):
                model.replace_all_uses(node.outputs[0], node.inputs[0])
                model.remove_node(node)
        return sparsec.PassResult(model, modified=True)


class PruneThenNudge(sparsec.InPlacePass):
    """Prunes correctly, then changes a kept weight: no longer its oracle reference."""

    name: ClassVar[str] = "prune-then-nudge"
    lossy: ClassVar[bool] = True

    def call(self, model):
        analysis = sparsec.find_channel_groups(model)
        group = next(g for g in analysis.groups if g.prunable)
        result = sparsec.prune_channels(model, analysis, {group.id: np.array([0])})
        head = first(model, "Gemm")
        model.set_constant(head.inputs[1], model.constant(head.inputs[1]) * 1.01)
        return result


class ScaleHead(sparsec.InPlacePass):
    """Lossy without a reference: must then equal the original, and does not."""

    name: ClassVar[str] = "scale-head"

    def call(self, model):
        head = first(model, "Gemm")
        model.set_constant(head.inputs[1], model.constant(head.inputs[1]) * 2)
        return sparsec.PassResult(model, modified=True)


class BreakTheChecker(sparsec.InPlacePass):
    name: ClassVar[str] = "break-the-checker"

    def call(self, model):
        model.set_attr(first(model, "Relu"), "bogus", 1)
        return sparsec.PassResult(model, modified=True)


def test_assert_pass_exact_passes_exact_passes_and_leaves_the_model_alone():
    model = small_cnn()
    before = model.SerializeToString()
    cleanup = assert_pass_exact(sparsec.create("bn-fold"), model)
    assert cleanup.stats == {"batchnorms_folded": 1} and cleanup.reference is None
    pruned = assert_pass_exact("channel-prune", model)
    assert pruned.reference is not None and pruned.stats["channels_removed"] > 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize(
    ("pass_", "expected"),
    [
        (DropEveryRelu(), "gives no oracle reference, so it must keep the outputs"),
        (ScaleHead(), "gives no oracle reference, so it must keep the outputs"),
        (PruneThenNudge(), "differs from its oracle reference"),
        (BreakTheChecker(), "fails the ONNX checker"),
    ],
    ids=lambda p: getattr(p, "name", ""),
)
def test_assert_pass_exact_fails_a_wrong_pass(pass_, expected):
    # inputs of both signs so that a dropped Relu shows
    with pytest.raises(AssertionError) as failure:
        assert_pass_exact(pass_, small_cnn())
    assert expected in str(failure.value) and f"pass '{pass_.name}'" in str(failure.value)


def test_assert_pass_exact_runs_an_onnx_ir_pass():
    from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass

    cleanup = MODELS / "cleanup_cnn.onnx"
    result = assert_pass_exact(RemoveUnusedNodesPass(), cleanup, batch=2)
    assert result.modified and "dead_conv" not in {n.name for n in result.model.nodes()}
    assert assert_pass_exact(IdentityEliminationPass(), cleanup, batch=2).modified


def test_the_oracle_measure_on_a_committed_model():
    model = sparsec.Model.load(MODELS / "digits_cnn.onnx")
    result = assert_pass_exact(sparsec.create("channel-prune", {"ratio": 0.5}), model)
    reference = result.reference()
    assert oracle_error(result.model, reference) < 1e-4
    assert oracle_error(result.model, model) > 1e-3  # the cut is lossy against the original


class _ScaleInPlace(sparsec.InPlacePass):
    """Wrong on purpose: multiplies the first Conv weight's array in place, claims exactness."""

    name = "scale-in-place"

    def call(self, model) -> sparsec.PassResult:
        conv = next(node for node in model.nodes() if node.op_type == "Conv")
        model.constant(conv.inputs[1])[...] *= 3  # writes into the shared array
        return sparsec.PassResult(model, modified=True)


def test_a_pass_writing_into_a_weight_in_place_is_caught_and_the_model_kept():
    model = sparsec.Model.load(MODELS / "digits_cnn.onnx")
    model.resize_initializer(  # numpy-backed weights, as after any sparsec edit
        model.value("stem.weight"), model.constant(model.value("stem.weight"))
    )
    before = model.constant(model.value("stem.weight")).copy()
    with pytest.raises(AssertionError, match="scale-in-place"):
        assert_pass_exact(_ScaleInPlace(), model)
    np.testing.assert_array_equal(model.constant(model.value("stem.weight")), before)
