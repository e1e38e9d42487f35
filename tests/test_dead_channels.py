"""Dead channels: removed exactly by plain ``compress`` when their weights are all zero (a model
masked before), kept when something after them makes them non-zero, removed with calibration
data when they are zero on every sample (the oracle gate passing), and taken first by a cut."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

from sparsec import api
from sparsec.ir import Model
from sparsec.passes import dead_channels as dead_channels_pass
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.passes.dead_channels import DeadChannelsPass
from sparsec.testing import assert_equivalent, assert_pass_exact, make_model

DIGITS = MODELS / "digits_cnn.onnx"
WITHOUT_IT = "identity-elimination,bn-fold,const-fold-shapes,dead-code"  # the cleanup before


@pytest.fixture(scope="module")
def masked_digits(tmp_path_factory):
    """digits_cnn masked for a 50% cut (the oracle's masked original: the removed channels'
    weight slices zeroed, biases and BatchNorms left alone), and how many channels were cut."""
    result = ChannelPrunePass(ratio=0.5)(Model.load(DIGITS))
    path = tmp_path_factory.mktemp("masked") / "masked.onnx"
    result.reference().save(path)
    return path, result.stats["channels_removed"]


def test_plain_compress_removes_the_all_zero_channels_exactly(masked_digits, tmp_path):
    source, cut = masked_digits
    out = tmp_path / "out.onnx"
    result = api.compress(source, out, latency_runs=0)
    assert result.oracle is None and result.validation.passed  # lossless: gated on the original
    assert result.stats["dead-channels.dead_channels_removed"] == cut == 28
    assert result.stats["dead-channels.dead_groups"] == 3
    assert result.after.params < 0.35 * result.before.params
    lines = [d.message for d in result.diagnostics if d.code == "dead-channels.removed"]
    assert lines == [
        f"removed {cut} dead channels in 3 groups (all-zero weights: {cut}, zero on calibration: 0)"
    ]
    assert_equivalent(Model.load(source), Model.load(out), seed=3)
    metadata = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert "dead-channels" in metadata["sparsec.pipeline"]


def test_the_cli_reports_the_dead_channels(masked_digits, tmp_path, cli):
    source, cut = masked_digits
    code, out, err = cli("compress", source, "-o", tmp_path / "out.onnx", "--latency-runs", "0")
    assert code == 0, err
    assert f"removed {cut} dead channels in 3 groups" in out
    assert "validation on random (seed 0)" in out and "passed" in out


def test_a_model_with_nothing_dead_is_untouched_and_not_analysed(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("no all-zero slice: the groups must not be analysed")

    monkeypatch.setattr(dead_channels_pass, "find_channel_groups", refuse)
    result = api.compress(DIGITS, tmp_path / "out.onnx", latency_runs=0)
    assert "dead-channels.dead_channels_removed" not in result.stats
    assert not [d for d in result.diagnostics if d.code.startswith("dead-channels")]
    without = api.compress(DIGITS, tmp_path / "old.onnx", pipeline=WITHOUT_IT, latency_runs=0)
    assert (result.after.nodes, result.after.params) == (without.after.nodes, without.after.params)


def test_filters_zeroed_as_torch_prunes_them_are_dead_where_the_relu_clips_their_shift(tmp_path):
    """torch's structured pruning zeroes a conv's filters and leaves the BatchNorm after it: the
    channel is then Relu(shift), dead exactly where the shift is not positive."""
    proto = onnx.load(DIGITS)
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    masked = np.arange(8)  # the first 8 of the stem's 16 filters
    for init in proto.graph.initializer:
        if init.name == "stem.weight":
            init.CopyFrom(numpy_helper.from_array(_zeroed(weights[init.name], masked), init.name))
    source = tmp_path / "torch_masked.onnx"
    onnx.save(proto, source)
    bn = {k: weights[f"stem_bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    shift = bn["bias"] - bn["running_mean"] * bn["weight"] / np.sqrt(bn["running_var"] + 1e-5)
    expected = int((shift[masked] <= 0).sum())
    assert 0 < expected < len(masked)
    result = api.compress(source, tmp_path / "out.onnx", latency_runs=0)
    assert result.validation.passed and result.oracle is None
    assert result.stats["dead-channels.dead_channels_removed"] == expected
    out = Model.load(tmp_path / "out.onnx")
    assert out.constant(out.value("stem.weight")).shape[0] == 16 - expected


def _zeroed(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    array = array.copy()
    array[rows] = 0.0
    return array


def _chain(middle: list, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, extra=()) -> Model:
    """x [1,3,8,8] → Conv(w1, b1) → ``middle`` nodes (from 'c1' to 'mid') → Conv(w2) → y."""
    inits = [
        numpy_helper.from_array(a.astype(np.float32), n)
        for n, a in (("w1", w1), ("b1", b1), ("w2", w2), *extra)
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        *middle,
        helper.make_node("Conv", ["mid", "w2"], ["y"], name="conv2"),
    ]
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [("y", TensorProto.FLOAT, [1, 5, 8, 8])],
        inits,
    )
    return Model.from_proto(proto)


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 3, 3, 3)), rng.uniform(0.1, 1, 4), rng.normal(size=(5, 4, 1, 1))


def _relu_bn(shift: float) -> tuple[list, tuple]:
    """Relu then BatchNorm whose shift at channel 2 is ``shift`` (its mean there 0)."""
    rng = np.random.default_rng(1)
    bias, mean = rng.normal(size=4), rng.normal(size=4)
    bias[2], mean[2] = shift, 0.0
    params = (("g", rng.uniform(0.5, 2, 4)), ("b", bias), ("m", mean), ("v", rng.uniform(1, 2, 4)))
    nodes = [
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["mid"], name="bn"),
    ]
    return nodes, params


@pytest.mark.parametrize("shift, removed", [(0.0, 1), (0.7, 0)])
def test_a_zero_producer_is_dead_only_when_nothing_after_it_shifts_it(shift, removed):
    w1, b1, w2 = _weights()
    w1[2], b1[2] = 0.0, 0.0  # channel 2 is written as zero ...
    nodes, params = _relu_bn(shift)  # ... and a BatchNorm after the Relu may shift it
    result = assert_pass_exact(DeadChannelsPass(), _chain(nodes, w1, b1, w2, params))
    assert result.stats.get("dead_channels_removed", 0) == removed
    assert result.model.constant(result.model.value("w1")).shape[0] == 4 - removed


def test_the_onnxruntime_check_keeps_what_the_rules_miss(tmp_path):
    """Sigmoid(0) is 0.5: the zero producer's rule names channel 2, the check refuses it (and
    the default pipeline says so once, though the Identity makes it run a second round)."""
    w1, b1, w2 = _weights()
    w1[2], b1[2] = 0.0, 0.0
    sigmoid = [
        helper.make_node("Identity", ["c1"], ["i"], name="copy"),
        helper.make_node("Sigmoid", ["i"], ["mid"], name="gate"),
    ]
    model = _chain(sigmoid, w1, b1, w2)
    result = assert_pass_exact(DeadChannelsPass(), model)
    assert not result.modified
    assert [d.code for d in result.diagnostics] == ["dead-channels.kept"]
    model.save(tmp_path / "gate.onnx")
    compressed = api.compress(tmp_path / "gate.onnx", tmp_path / "out.onnx", latency_runs=0)
    kept = [d.message for d in compressed.diagnostics if d.code == "dead-channels.kept"]
    assert len(kept) == 1 and "w1[0]" in kept[0]
    assert compressed.stats["identity-elimination.nodes_removed"] == 1  # so two rounds ran


def test_a_group_the_check_refuses_does_not_hold_back_the_others():
    w1, b1, w2 = _weights()
    w1[2], b1[2] = 0.0, 0.0  # group of conv1's outputs: refused (a Sigmoid after it)
    w3 = np.random.default_rng(4).normal(size=(6, 5, 1, 1))
    w3[:, 4] = 0.0  # group of conv2's outputs: nothing reads channel 4
    middle = [helper.make_node("Sigmoid", ["c1"], ["mid"], name="gate")]
    proto = _chain(middle, w1, b1, w2).to_proto()
    proto.graph.node.extend(
        [
            helper.make_node("Relu", ["y"], ["r2"], name="relu2"),
            helper.make_node("Conv", ["r2", "w3"], ["z"], name="conv3"),
        ]
    )
    proto.graph.initializer.append(numpy_helper.from_array(w3.astype(np.float32), "w3"))
    proto.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6, 8, 8])
    )
    result = assert_pass_exact(DeadChannelsPass(), Model.from_proto(proto))
    assert result.stats == {"dead_channels_removed": 1, "dead_groups": 1}
    assert [d.code for d in result.diagnostics] == ["dead-channels.removed", "dead-channels.kept"]
    assert result.model.constant(result.model.value("w3")).shape == (6, 4, 1, 1)


def test_zero_readers_make_a_channel_dead_whatever_writes_it():
    w1, b1, w2 = _weights()
    w2[:, 1] = 0.0  # nothing reads channel 1; its producer and bias are non-zero
    relu = [helper.make_node("Relu", ["c1"], ["mid"], name="relu")]
    result = assert_pass_exact(DeadChannelsPass(), _chain(relu, w1, b1, w2))
    assert result.stats == {"dead_channels_removed": 1, "dead_groups": 1}
    kept = result.model.constant(result.model.value("w1"))
    np.testing.assert_array_equal(kept, w1[[0, 2, 3]].astype(np.float32))


def test_a_group_all_dead_keeps_one_channel():
    w1, b1, w2 = _weights()
    w1[:], b1[:] = 0.0, 0.0
    relu = [helper.make_node("Relu", ["c1"], ["mid"], name="relu")]
    result = assert_pass_exact(DeadChannelsPass(), _chain(relu, w1, b1, w2))
    assert result.stats["dead_channels_removed"] == 3
    assert result.model.constant(result.model.value("w2")).shape[1] == 1


def test_a_model_that_cannot_be_analysed_has_no_dead_channels(monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("an axis rule that raises")

    monkeypatch.setattr(dead_channels_pass, "find_channel_groups", broken)
    w1, b1, w2 = _weights()
    w1[2] = 0.0
    relu = [helper.make_node("Relu", ["c1"], ["mid"], name="relu")]
    result = DeadChannelsPass()(_chain(relu, w1, b1, w2))
    assert not result.modified and not result.diagnostics


def _calibration_dead_model(tmp_path):
    """Channel 1 has the largest filter (l1 keeps it) but, negative with a negative bias, its
    Relu is 0 on every non-negative input: dead on the calibration data, alive on random data."""
    w1, b1, w2 = _weights()
    w1[1], b1[1] = -2.0, -0.5
    relu = [helper.make_node("Relu", ["c1"], ["mid"], name="relu")]
    source, calibration = tmp_path / "calib_dead.onnx", tmp_path / "calib.npz"
    _chain(relu, w1, b1, w2).save(source)
    rng = np.random.default_rng(2)
    np.savez(calibration, x=rng.uniform(0, 1, (16, 3, 8, 8)).astype(np.float32))
    return source, calibration, w1


def test_channels_zero_on_calibration_are_removed_with_the_oracle_passing(tmp_path):
    source, calibration, w1 = _calibration_dead_model(tmp_path)
    plain = api.compress(source, tmp_path / "plain.onnx", latency_runs=0)
    assert "dead-channels.dead_channels_removed" not in plain.stats  # not statically dead
    pipeline = [DeadChannelsPass(calibration=str(calibration))]
    result = api.compress(source, tmp_path / "out.onnx", pipeline=pipeline, latency_runs=0)
    assert result.oracle is not None and result.oracle.passed
    assert result.stats["dead-channels.dead_channels_removed"] == 1
    assert any("zero on calibration: 1" in d.message for d in result.diagnostics)
    kept = Model.load(tmp_path / "out.onnx")
    np.testing.assert_array_equal(kept.constant(kept.value("w1")), w1[[0, 2, 3]].astype(np.float32))
    for sample in np.load(calibration)["x"][:4]:  # equal to the original on calibration data
        assert_equivalent(Model.load(source), kept, {"x": sample[None]})


def test_the_cli_runs_the_pass_with_calibration(tmp_path, cli):
    source, calibration, _ = _calibration_dead_model(tmp_path)
    passes = f'dead-channels(calibration="{calibration}")'
    code, out, err = cli(
        "compress", source, "-o", tmp_path / "o.onnx", "--passes", passes, "--latency-runs", "0"
    )
    assert code == 0, err
    assert "removed 1 dead channels in 1 groups" in out


def test_calibration_alone_removes_channels_zero_on_every_sample(tmp_path, cli):
    """``compress --calibration DATA`` with no pruning flag: the default cleanup, whose
    dead-channels also removes what the data never lights up, gated by the oracle."""
    source, calibration, _ = _calibration_dead_model(tmp_path)
    code, out, err = cli(
        "compress", source, "-o", tmp_path / "o.onnx", "--calibration", calibration,
        "--latency-runs", "0",
    )  # fmt: skip
    assert code == 0, err
    assert "zero on calibration: 1" in out and "oracle" in out
    written = Model.load(tmp_path / "o.onnx")
    assert written.constant_shape(written.value("w1"))[0] == 3  # 4 filters, the dead one gone


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_cut_takes_calibration_dead_channels_first(tmp_path, calibrated):
    source, calibration, w1 = _calibration_dead_model(tmp_path)
    l1 = np.abs(w1).sum(axis=(1, 2, 3))
    assert np.argmax(l1) == 1  # l1 alone would keep channel 1 longest
    passes = api.channel_passes(
        0.25,
        importance="l1",
        calibration=calibration if calibrated else None,
        recover=False,
    )
    api.compress(source, tmp_path / "out.onnx", pipeline=passes, latency_runs=0)
    kept = Model.load(tmp_path / "out.onnx")
    expected = np.delete(w1, 1 if calibrated else int(np.argmin(l1)), axis=0)
    np.testing.assert_array_equal(kept.constant(kept.value("w1")), expected.astype(np.float32))
