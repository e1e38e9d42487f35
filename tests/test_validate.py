"""Validation metrics and input generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, make_model, oracle_error
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.inputs import bind_shapes, load_npz, parse_input_shapes, random_inputs
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.validate import (
    ORACLE_FLOOR,
    ORACLE_TOLERANCE,
    oracle_limit,
    oracle_limit_text,
    output_metrics,
    peak_gap,
    validate,
)


def test_metrics_of_a_known_perturbation():
    reference = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, -1.0]])
    candidate = reference.copy()
    candidate[0, 0] += 0.01
    candidate[1] = [0.0, 5.0, 0.0]  # row 2's argmax moves
    metrics = output_metrics("y", reference, candidate, rtol=1e-4, atol=1e-5)
    assert metrics.max_abs == pytest.approx(5.0)
    assert metrics.top1 == 0.5 and not metrics.passed
    expected_cos = (
        reference.ravel()
        @ candidate.ravel()
        / (np.linalg.norm(reference) * np.linalg.norm(candidate))
    )
    assert metrics.cosine == pytest.approx(expected_cos)
    assert output_metrics("y", reference, reference.copy(), 1e-4, 1e-5).passed


def test_peak_tolerance_is_relative_to_the_reference_peak_and_fails_on_nan():
    reference = np.array([[10.0, -2.0], [0.5, 0.0]])
    limit = 1e-4 * 10.0  # the oracle's rule: max |diff| <= 1e-4 x max |reference|
    for shift, passed in ((0.9 * limit, True), (1.1 * limit, False)):
        candidate = reference.copy()
        candidate[1, 1] += shift  # off by more than rtol at a zero: only the peak scale matters
        assert (
            output_metrics("y", reference, candidate, 0.0, 0.0, peak_tolerance=1e-4).passed
            is passed
        )
    candidate = reference.copy()
    candidate[0, 1] = np.nan
    assert not output_metrics("y", reference, candidate, 1.0, 1.0, peak_tolerance=1e-4).passed


def _scaled(weight: float) -> Model:
    """y = x · w, w a scalar initializer."""
    return Model.from_proto(
        make_model(
            [helper.make_node("Mul", ["x", "w"], ["y"])],
            [("x", TensorProto.FLOAT, [2, 3])],
            [("y", TensorProto.FLOAT, [2, 3])],
            [numpy_helper.from_array(np.array(weight, np.float32), "w")],
        )
    )


def test_the_oracle_helper_of_the_tests_reports_nan_outputs_as_infinite_error():
    assert oracle_error(_scaled(1.0), _scaled(1.0)) == 0.0
    assert oracle_error(_scaled(1.5), _scaled(1.0)) == pytest.approx(
        0.5, rel=1e-6
    )  # |1.5x − x| / |x|
    assert oracle_error(_scaled(np.nan), _scaled(1.0)) == float("inf")


def test_shape_mismatch_fails():
    assert not output_metrics("y", np.zeros((2, 3)), np.zeros((2, 4)), 1e-4, 1e-5).passed


def test_identical_files_pass_with_latency_measured():
    result = validate(
        MODELS / "digits_mlp.onnx",
        MODELS / "digits_mlp.onnx",
        {"input": np.load(MODELS / "digits_test.npz")["input"][:32]},
        latency_runs=3,
    )
    assert result.passed and result.outputs[0].top1 == 1.0
    assert result.latency_ms_reference > 0 and result.latency_ms_candidate > 0


def test_symbolic_dims_bind_to_defaults_and_overrides():
    model = Model.load(MODELS / "digits_cnn.onnx")
    assert bind_shapes(model) == {"input": (1, 1, 8, 8)}
    assert bind_shapes(model, parse_input_shapes(["input:4x1x8x8"], model)) == {
        "input": (4, 1, 8, 8)
    }
    with pytest.raises(InputError, match="no input 'image'"):
        parse_input_shapes(["image:1x1x8x8"], model)
    with pytest.raises(InputError, match="rank 4, not 2"):
        parse_input_shapes(["input:1x64"], model)


def test_integer_inputs_index_their_embedding_table():
    table = numpy_helper.from_array(np.arange(70, dtype=np.float32).reshape(7, 10), "table")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Relu", ["emb"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("ids", TensorProto.INT64, ["B", "S"]), ("attention_mask", TensorProto.INT64, ["B", "S"])],
        [("y", TensorProto.FLOAT, ["B", "S", 10])],
        [table],
    )
    model = Model.from_proto(proto)
    feeds = random_inputs(model, bind_shapes(model), seed=3)
    assert feeds["ids"].shape == (1, 128) and feeds["ids"].min() >= 0 and feeds["ids"].max() < 7
    assert feeds["ids"].max() > 0  # really random, not all zeros
    assert (feeds["attention_mask"] == 1).all()
    np.testing.assert_array_equal(
        random_inputs(model, bind_shapes(model), seed=3)["ids"], feeds["ids"]
    )


def test_npz_inputs_are_checked_against_the_model(tmp_path):
    model = Model.load(MODELS / "digits_cnn.onnx")
    assert load_npz(MODELS / "digits_test.npz", model)["input"].shape == (360, 1, 8, 8)
    np.savez(tmp_path / "wrong.npz", image=np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="no array for model input 'input'"):
        load_npz(tmp_path / "wrong.npz", model)
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(InputError, match=r"not a readable \.npz"):
        load_npz(tmp_path / "text.npz", model)


DOUBLING_PASS = '''
from typing import ClassVar

import numpy as np
import sparsec


class DoubleWeightsPass(sparsec.InPlacePass):
    """A wrong 'lossless' pass: every floating-point weight doubled."""

    name: ClassVar[str] = "double-weights"

    def call(self, model):
        for value in model.initializers().values():
            array = model.constant(value)
            if array.dtype.kind == "f":
                model.resize_initializer(value, 2 * array)
        return sparsec.PassResult(model, modified=True)
'''


def _doubled(path, tmp_path):
    model = Model.load(path)
    for value in model.initializers().values():
        array = model.constant(value)
        if array.dtype.kind == "f":
            model.resize_initializer(value, 2 * array)
    model.save(tmp_path / "doubled.onnx")
    return tmp_path / "doubled.onnx"


def test_all_nan_inputs_fail_a_model_with_doubled_weights(tmp_path, cli):
    """NaN in gives NaN out for the original and for a model with every weight doubled: that
    agreement means nothing, so validation fails with a line asking for finite inputs."""
    reference = MODELS / "digits_mlp.onnx"
    nan = np.full((4, 1, 8, 8), np.nan, np.float32)
    np.savez(tmp_path / "nan.npz", input=nan)
    result = validate(reference, _doubled(reference, tmp_path), {"input": nan}, latency_runs=0)
    (logits,) = result.outputs
    assert not result.passed and not logits.passed
    assert logits.max_abs == float("inf") and logits.cosine is None and logits.top1 is None
    assert result.failure_line() == (
        "output 'logits': the reference is NaN or infinite at 40 of 40 values on these "
        "inputs, so it cannot be validated on them: give inputs (--inputs) on which it is finite"
    )
    code, out, _ = cli(
        "validate",
        reference,
        tmp_path / "doubled.onnx",
        "--inputs",
        tmp_path / "nan.npz",
        "--latency-runs",
        "0",
    )
    assert code == 1 and "FAILED" in out and "the reference is NaN or infinite" in out
    code, out, _ = cli(
        "validate",
        reference,
        tmp_path / "doubled.onnx",
        "--inputs",
        tmp_path / "nan.npz",
        "--latency-runs",
        "0",
        "--json",
    )
    figures = json.loads(
        out, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}")
    )
    assert (
        code == 1
        and figures["outputs"][0]["max_abs"] is None
        and "NaN or infinite" in figures["outputs"][0]["problem"]
    )
    (tmp_path / "double.py").write_text(DOUBLING_PASS)
    code, _, err = cli(
        "compress",
        reference,
        "-o",
        tmp_path / "out.onnx",
        "--passes",
        f"{tmp_path / 'double.py'}:DoubleWeightsPass",
        "--inputs",
        tmp_path / "nan.npz",
        "--latency-runs",
        "0",
    )
    assert code == 1 and not (tmp_path / "out.onnx").exists()
    assert err.count("sparsec: error:") == 1


def test_a_non_finite_reference_never_counts_as_agreement():
    reference = np.array([[np.inf, 1.0, 2.0], [3.0, -np.inf, 4.0]])
    for candidate in (
        reference.copy(),
        2 * reference,
    ):  # equal, or equally infinite where the reference is
        metrics = output_metrics("y", reference, candidate, rtol=1e-4, atol=1e-5)
        assert (
            not metrics.passed
            and "the reference is NaN or infinite at 2 of 6 values" in metrics.problem
        )
        assert metrics.max_abs == metrics.max_rel == float("inf") and metrics.cosine is None
    partly = np.array([[np.nan, 1.0], [2.0, 3.0]])
    assert not output_metrics(
        "y", partly, partly.copy(), 1.0, 1.0
    ).passed  # a NaN hides what the rest cannot show
    finite = np.array([[1.0, 2.0], [3.0, 4.0]])
    broken = finite.copy()
    broken[1, 0] = np.nan
    metrics = output_metrics("y", finite, broken, rtol=1.0, atol=1.0)
    assert (
        not metrics.passed
        and metrics.problem
        == "the candidate is NaN or infinite at 1 of 4 values where the reference is finite"
    )
    assert metrics.max_abs == float("inf") and metrics.top1 is None


def test_the_oracle_rule_refuses_a_non_finite_reference():
    """max |c − r| ≤ 1e-4 · max |r| held for any candidate once the reference had an Inf (inf ≤ inf)."""
    reference = np.array([[np.inf, 1.0], [0.5, 2.0]])
    candidate = np.array([[3.0, 5.0], [0.5, 2.0]])
    metrics = output_metrics("y", reference, candidate, 0.0, 0.0, peak_tolerance=1e-4)
    assert (
        not metrics.passed
        and "the reference is NaN or infinite at 1 of 4 values" in metrics.problem
    )
    assert metrics.max_abs_reference == 2.0  # the finite peak: a number the report can print
    for peak_tolerance in (1e-4, None):  # both rules: an all-NaN pair fails, and no metric is NaN
        nan = np.full((2, 3), np.nan)
        metrics = output_metrics("y", nan, nan.copy(), 1e-4, 1e-5, peak_tolerance=peak_tolerance)
        assert (
            not metrics.passed
            and not np.isnan([metrics.max_abs, metrics.max_rel, metrics.max_abs_reference]).any()
        )


def test_the_error_line_says_the_reference_is_not_finite(tmp_path, cli):
    np.savez(tmp_path / "nan.npz", input=np.full((4, 1, 8, 8), np.nan, np.float32))
    for flags in ([], ["--channels", "0.5"]):  # gated against the original; gated by the oracle
        code, _, err = cli(
            "compress",
            MODELS / "digits_cnn.onnx",
            "-o",
            tmp_path / "out.onnx",
            *flags,
            "--inputs",
            tmp_path / "nan.npz",
            "--latency-runs",
            "0",
        )
        assert (
            code == 1
            and "the reference is NaN or infinite" in err
            and "give inputs (--inputs)" in err
        )


def test_peak_gap_is_infinite_on_non_finite_or_mismatched_outputs():
    """The measure of a --steps round: max |c − r| / max |r| over the outputs, never NaN."""
    reference = {"y": np.array([[2.0, -4.0]]), "labels": np.array([1, 2])}
    assert peak_gap(
        reference, {"y": np.array([[2.0, -4.2]]), "labels": np.array([1, 2])}
    ) == pytest.approx(0.05)
    assert peak_gap({"y": np.zeros(2)}, {"y": np.array([0.0, 1e-3])}) == pytest.approx(1e-3)
    nan = {"y": np.full((1, 2), np.nan), "labels": np.array([1, 2])}
    for candidate in (
        nan,
        {"y": reference["y"], "labels": np.array([1, 3])},
        {"y": reference["y"]},
    ):
        assert peak_gap(reference, candidate) == float("inf")
    assert peak_gap(nan, nan) == float("inf")
    assert peak_gap({"p": [{0: 0.5, 1: 0.5}]}, {"p": [{0: 0.25, 1: 0.75}]}) == pytest.approx(0.5)


def test_the_oracle_has_an_absolute_floor_at_float32_accuracy_near_zero():
    """A detector's probabilities on random inputs peak at ~1e-6, where onnxruntime's float32
    Sigmoid is accurate to ~1e-7 absolute (1.13e-6 vs 9.83e-7 for inputs 1e-6 apart): the
    relative limit would be 1e-10, below what the runtime can compute."""
    reference = np.array([1.07e-6, 5.0e-7, 1.0e-8], np.float32)
    near = reference + np.array([1.5e-7, 0, 0], np.float32)
    far = reference + np.array([2.0e-6, 0, 0], np.float32)
    assert output_metrics("p", reference, near, 0.0, 0.0, peak_tolerance=ORACLE_TOLERANCE).passed
    assert not output_metrics("p", reference, far, 0.0, 0.0, peak_tolerance=ORACLE_TOLERANCE).passed
    assert oracle_limit(1.0) == ORACLE_TOLERANCE and oracle_limit(1e-5) == ORACLE_FLOOR
    assert oracle_limit(1e-6) == pytest.approx(0.25e-6)  # never a quarter of the peak or more
    assert "float32 floor" in oracle_limit_text(1e-6)
    assert oracle_limit_text(10.0) == "0.0001 x max |output| = 0.001"
    # a real cut error is of the output's own size: it fails at any scale
    tiny = reference * 0.5
    wrong = tiny[::-1].copy()
    assert not output_metrics("p", tiny, wrong, 0.0, 0.0, peak_tolerance=ORACLE_TOLERANCE).passed


def test_peak_gap_agrees_with_the_oracle_verdict_at_every_scale():
    for scale in (10.0, 1e-3, 1e-5, 1e-6):
        reference = {"y": np.array([scale, scale / 2], np.float64)}
        for error in (1e-5 * scale, 0.1 * scale, 2.0 * scale):
            candidate = {"y": reference["y"] + np.array([error, 0.0])}
            passed = output_metrics(
                "y", reference["y"], candidate["y"], 0.0, 0.0, peak_tolerance=ORACLE_TOLERANCE
            ).passed
            assert (peak_gap(reference, candidate) <= ORACLE_TOLERANCE) == passed, (scale, error)
