"""Quality of a candidate against its reference on labelled data; every expectation is computed
here with numpy from the weights and the data, not by the code under test."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import make_model
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import InputError
from sparsec.evaluate import (
    EvalData,
    data_from_calibration,
    evaluate,
    load_eval_data,
    random_eval_data,
)
from sparsec.ir import Model

FEATURES, CLASSES = 4, 3


def _weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((FEATURES, CLASSES)).astype(np.float32)


def _classifier(weight: np.ndarray, batch="N", nan_rows: bool = False) -> Model:
    """logits = x · W ([batch, classes]) and score = the row sums of logits ([batch]); with
    ``nan_rows`` logits are multiplied by x[:, :1] / x[:, :1]: 1, or NaN in rows where x[i, 0]
    is 0."""
    logits = "raw" if nan_rows else "logits"
    nodes = [
        helper.make_node("MatMul", ["x", "W"], [logits]),
        helper.make_node("ReduceSum", [logits, "axes"], ["score"], keepdims=0),
    ]
    if nan_rows:
        nodes += [
            helper.make_node("Slice", ["x", "zero", "axes", "axes"], ["first"]),
            helper.make_node("Div", ["first", "first"], ["one"]),
            helper.make_node("Mul", ["raw", "one"], ["logits"]),
        ]
    return Model.from_proto(
        make_model(
            nodes,
            [("x", TensorProto.FLOAT, [batch, FEATURES])],
            [
                ("logits", TensorProto.FLOAT, [batch, weight.shape[1]]),
                ("score", TensorProto.FLOAT, [batch]),
            ],
            [
                numpy_helper.from_array(weight, "W"),
                numpy_helper.from_array(np.array([1], np.int64), "axes"),
                numpy_helper.from_array(np.array([0], np.int64), "zero"),
            ],
        )
    )


def _data(count: int = 10, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, count).astype(np.int64)


def _mean_cosine(r: np.ndarray, c: np.ndarray) -> float:
    """Sample by sample, written out: <c_i, r_i> / (|c_i| |r_i|), averaged."""
    values = []
    rows_r, rows_c = r.reshape(len(r), -1), c.reshape(len(c), -1)
    for a, b in zip(rows_r.astype(np.float64), rows_c.astype(np.float64)):
        values.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(values))


def _by_name(evaluation) -> dict:
    return {output.name: output for output in evaluation.outputs}


def test_a_perturbed_classifier_against_labels_in_uneven_batches(tmp_path):
    w, w2 = _weights(0), _weights(0) + 0.8 * _weights(5)
    x, labels = _data(count=10)
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    data = load_eval_data(tmp_path / "data.npz", _classifier(w))
    result = evaluate(_classifier(w), _classifier(w2), data, batch_size=4)  # 4 + 4 + 2
    r, c = x @ w, x @ w2
    before, after = np.mean(r.argmax(1) == labels), np.mean(c.argmax(1) == labels)
    agreement = np.mean(r.argmax(1) == c.argmax(1))
    assert agreement < 1.0  # the perturbation moves some argmax: the test can tell
    logits = _by_name(result)["logits"]
    assert (result.samples, result.labelled) == (10, True)
    assert logits.accuracy_before == pytest.approx(before)
    assert logits.accuracy_after == pytest.approx(after)
    assert logits.agreement == pytest.approx(agreement)
    assert logits.cosine == pytest.approx(_mean_cosine(r, c), rel=1e-5)
    assert logits.max_abs == pytest.approx(np.abs(c - r).max(), rel=1e-5)
    assert logits.top1_drop_points() == pytest.approx(100 * (before - after))


def test_two_outputs_each_get_their_metrics(tmp_path):
    w, w2 = _weights(0), _weights(0) + 0.8 * _weights(5)
    x, labels = _data(count=9)
    result = evaluate(_classifier(w), _classifier(w2), EvalData({"x": x}, labels, "x"))
    score = _by_name(result)["score"]
    r, c = (x @ w).sum(1), (x @ w2).sum(1)
    # a rank-1 float output: no classes, so no agreement, and labels do not score it
    assert score.agreement is None and score.accuracy_before is None
    assert score.accuracy_after is None and score.top1_drop_points() is None
    assert score.cosine == pytest.approx(np.mean(np.sign(r) * np.sign(c)))  # scalars: ±1
    assert score.max_abs == pytest.approx(np.abs(c - r).max(), rel=1e-5)
    assert _by_name(result)["logits"].agreement == pytest.approx(
        np.mean((x @ w).argmax(1) == (x @ w2).argmax(1))
    )


def test_max_rel_takes_its_floor_from_the_peak_over_all_batches():
    reference = _classifier(np.eye(FEATURES, CLASSES, dtype=np.float32))  # logits = x[:, :3]
    shifted = np.eye(FEATURES, CLASSES, dtype=np.float32)
    shifted[3] = 1e-3  # candidate logits = x[:, :3] + 1e-3 · x[:, 3]
    x = np.zeros((4, FEATURES), np.float32)
    x[:, 3] = 1.0
    x[0, :3] = [0.0, 0.01, 2.0]  # batch 1: a zero and a small value
    x[2, :3] = [1000.0, 5.0, 3.0]  # batch 2 holds the peak: floor 1e-6 · 1000
    result = evaluate(reference, _classifier(shifted), EvalData({"x": x}, None, "x"), batch_size=2)
    r = x[:, :3].astype(np.float64)
    c = (x @ shifted).astype(np.float64)
    floor = 1e-6 * np.abs(r).max()
    expected = (np.abs(c - r) / np.maximum(np.abs(r), floor)).max()
    assert expected == pytest.approx(1.0, rel=1e-3)  # the zero over the global floor: 1e-3 / 1e-3
    assert _by_name(result)["logits"].max_rel == pytest.approx(expected, rel=1e-4)


def test_a_candidate_equal_to_the_reference(tmp_path):
    w = _weights(0)
    x, labels = _data(count=7)
    reference_path = tmp_path / "reference.onnx"
    onnx.save(_classifier(w).to_proto(), reference_path)
    result = evaluate(reference_path, _classifier(w), EvalData({"x": x}, labels, "x"))
    logits = _by_name(result)["logits"]
    assert logits.agreement == 1.0 and logits.cosine == pytest.approx(1.0)
    assert logits.top1_drop_points() == 0.0 and logits.max_abs == 0.0 and logits.max_rel == 0.0
    assert (
        logits.accuracy_before
        == logits.accuracy_after
        == pytest.approx(np.mean((x @ w).argmax(1) == labels))
    )


def test_a_fixed_batch_model_leaves_the_remainder_out():
    w, w2 = _weights(0), _weights(0) + 0.8 * _weights(5)
    x, labels = _data(count=10)
    result = evaluate(
        _classifier(w, batch=4), _classifier(w2, batch=4), EvalData({"x": x}, labels, "x")
    )
    assert result.samples == 8  # two batches of 4; 2 samples left out
    logits = _by_name(result)["logits"]
    r, c = x[:8] @ w, x[:8] @ w2
    assert logits.accuracy_before == pytest.approx(np.mean(r.argmax(1) == labels[:8]))
    assert logits.accuracy_after == pytest.approx(np.mean(c.argmax(1) == labels[:8]))
    assert logits.cosine == pytest.approx(_mean_cosine(r, c), rel=1e-5)
    with pytest.raises(InputError, match="batches of 4"):
        evaluate(
            _classifier(w, batch=4), _classifier(w, batch=4), EvalData({"x": x[:3]}, None, "x")
        )


def test_non_finite_candidate_values_are_unbounded_errors_and_never_agree():
    w = _weights(0)
    x, labels = _data(count=12)
    x[:4, 0] = 0.0  # the candidate's rows 0-3 are NaN
    r = x @ w
    labels[:4] = 0  # an all-NaN row's argmax is 0: it must still count as wrong
    assert (r[:4].argmax(1) == 0).any()  # ... and as disagreeing where the reference says 0
    result = evaluate(
        _classifier(w), _classifier(w, nan_rows=True), EvalData({"x": x}, labels, "x")
    )
    logits = _by_name(result)["logits"]
    assert logits.max_abs == logits.max_rel == float("inf") and logits.cosine is None
    assert logits.agreement == pytest.approx(8 / 12)
    assert logits.accuracy_before == pytest.approx(np.mean(r.argmax(1) == labels))
    assert logits.accuracy_after == pytest.approx(np.sum(r[4:].argmax(1) == labels[4:]) / 12)
    figures = result.to_json()
    json.dumps(figures, allow_nan=False)
    assert figures["outputs"][0]["max_abs"] is None and figures["outputs"][0]["cosine"] is None


def test_outputs_of_other_shapes_are_unbounded_errors_but_keep_their_accuracy():
    w, narrow = _weights(0), _weights(0)[:, :2]  # the candidate scores two classes
    x, labels = _data(count=10)
    result = evaluate(_classifier(w), _classifier(narrow), EvalData({"x": x}, labels, "x"))
    logits = _by_name(result)["logits"]
    assert logits.max_abs == logits.max_rel == float("inf")
    assert logits.cosine is None and logits.agreement is None
    assert logits.accuracy_before == pytest.approx(np.mean((x @ w).argmax(1) == labels))
    assert logits.accuracy_after == pytest.approx(np.mean((x @ narrow).argmax(1) == labels))


def test_labels_by_key_or_default_name(tmp_path):
    x, labels = _data(count=5)
    model = _classifier(_weights(0))
    for name, key in (("labels", None), ("label", None), ("y", "y")):
        np.savez(tmp_path / "d.npz", x=x, **{name: labels})
        data = load_eval_data(tmp_path / "d.npz", model, labels=key)
        assert data.count == 5 and np.array_equal(data.labels, labels)
        assert f"labels '{name}'" in data.label and "5 samples" in data.label
    np.savez(tmp_path / "d.npz", x=x)
    data = load_eval_data(tmp_path / "d.npz", model)
    assert data.labels is None and "no labels" in data.label
    result = evaluate(model, model, data)
    assert not result.labelled and result.outputs[0].accuracy_before is None


@pytest.mark.parametrize(
    "arrays, key, message",
    [
        ({"labels": np.zeros(5, np.int64)}, "target", "no labels array 'target'.*x, labels"),
        ({"labels": np.zeros(5, np.int64), "z": np.zeros(5)}, None, "z that are neither"),
        ({"labels": np.zeros(5, np.float32)}, None, "must be integers"),
        ({"labels": np.zeros(4, np.int64)}, None, "one label per sample"),
        ({"labels": np.array(3)}, None, "one label per sample"),
    ],
)
def test_bad_labels_or_arrays_are_input_errors(tmp_path, arrays, key, message):
    np.savez(tmp_path / "d.npz", x=_data(count=5)[0], **arrays)
    with pytest.raises(InputError, match=message):
        load_eval_data(tmp_path / "d.npz", _classifier(_weights(0)), labels=key)


def test_a_missing_input_and_an_unreadable_file_are_input_errors(tmp_path):
    np.savez(tmp_path / "d.npz", image=np.zeros((3, FEATURES), np.float32))
    with pytest.raises(InputError, match=r"no array for input.*x.*has image"):
        load_eval_data(tmp_path / "d.npz", _classifier(_weights(0)))
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(InputError, match="not a readable"):
        load_eval_data(tmp_path / "empty.npz", _classifier(_weights(0)))


def _token_model(weight: np.ndarray) -> Model:
    """Per position logits = (x · W) masked by attention_mask: x [N, T, 4], mask [N, T]."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["scores"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["scores", "mask3"], ["logits"]),
    ]
    return Model.from_proto(
        make_model(
            nodes,
            [
                ("x", TensorProto.FLOAT, ["N", "T", FEATURES]),
                ("attention_mask", TensorProto.INT64, ["N", "T"]),
            ],
            [("logits", TensorProto.FLOAT, ["N", "T", CLASSES])],
            [
                numpy_helper.from_array(weight, "W"),
                numpy_helper.from_array(np.array([-1], np.int64), "last"),
            ],
        )
    )


def test_token_labels_stay_aligned_when_padded_batches_are_sorted_and_cut():
    rng = np.random.default_rng(4)
    count, width = 7, 6
    lengths = np.array([6, 2, 4, 1, 5, 3, 2])  # not sorted: batches reorder the samples
    mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    x = rng.standard_normal((count, width, FEATURES)).astype(np.float32)
    labels = np.where(mask == 1, rng.integers(0, CLASSES, (count, width)), -100)
    w, w2 = _weights(0), _weights(0) + 0.8 * _weights(5)
    data = EvalData({"x": x, "attention_mask": mask}, labels, "tokens")
    result = evaluate(_token_model(w), _token_model(w2), data, batch_size=3)
    real = mask == 1
    before = np.mean((x @ w).argmax(-1)[real] == labels[real])
    after = np.mean((x @ w2).argmax(-1)[real] == labels[real])
    assert before != after
    logits = result.outputs[0]
    assert result.samples == count
    agreement = np.mean((x @ w).argmax(-1)[real] == (x @ w2).argmax(-1)[real])
    assert logits.agreement == pytest.approx(agreement)  # padding positions left out
    assert logits.accuracy_before == pytest.approx(before)
    assert logits.accuracy_after == pytest.approx(after)


def test_random_and_calibration_data():
    model = _classifier(_weights(0))
    first, again, other = (random_eval_data(model, 5, seed) for seed in (0, 0, 1))
    assert first.count == 5 and first.labels is None
    assert first.label == "random inputs (5 samples, seed 0)"
    assert np.array_equal(first.samples["x"], again.samples["x"])
    assert not np.array_equal(first.samples["x"], other.samples["x"])
    x = _data(count=10)[0]
    data = data_from_calibration({"x": x}, "calibration data c.npz", limit=4)
    assert data.count == 4 and data.labels is None and "calibration data c.npz" in data.label
    assert np.array_equal(data.samples["x"], x[:4])


def test_json_is_strict_and_carries_the_drop():
    w, w2 = _weights(0), _weights(0) + 0.8 * _weights(5)
    x, labels = _data(count=10)
    result = evaluate(_classifier(w), _classifier(w2), EvalData({"x": x}, labels, "d"))
    figures = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert figures["samples"] == 10 and figures["labelled"] is True and figures["data"] == "d"
    logits = figures["outputs"][0]
    r, c = x @ w, x @ w2
    drop = 100 * (np.mean(r.argmax(1) == labels) - np.mean(c.argmax(1) == labels))
    assert logits["name"] == "logits" and logits["top1_drop_points"] == pytest.approx(drop)


def _three_inputs() -> Model:
    """Inputs a (float16 [N, 5, 3]), ids (int64 [N, 4], indexing a 10-row table) and b (float
    [N, 2]): the random draws of b come after those of a and ids from one generator."""
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    return Model.from_proto(
        make_model(
            [
                helper.make_node("Gather", ["T", "ids"], ["rows"]),
                helper.make_node("ReduceSum", ["a", "axes"], ["a_sum"], keepdims=0),
                helper.make_node("Cast", ["a_sum"], ["y"], to=TensorProto.FLOAT),
            ],
            [
                ("a", TensorProto.FLOAT16, ["N", 5, 3]),
                ("ids", TensorProto.INT64, ["N", 4]),
                ("b", TensorProto.FLOAT, ["N", 2]),
            ],
            [("y", TensorProto.FLOAT, ["N", 3]), ("rows", TensorProto.FLOAT, ["N", 4, 2])],
            [
                numpy_helper.from_array(table, "T"),
                numpy_helper.from_array(np.array([1], np.int64), "axes"),
            ],
        )
    )


def test_random_samples_drawn_by_batch_are_the_whole_draws():
    from sparsec.analysis.activations import random_samples

    model = _three_inputs()
    eager = random_samples(model, 9, seed=3)
    drawn = random_eval_data(model, 9, seed=3).samples
    assert type(drawn["ids"]) is np.ndarray and drawn["a"].shape == (9, 5, 3)
    for name, rows in (("b", slice(2, 5)), ("b", slice(7, 9)), ("b", slice(0, 1))):
        np.testing.assert_array_equal(drawn[name][rows], eager[name][rows])  # forward, back
    np.testing.assert_array_equal(drawn["a"][np.array([4, 6])], eager["a"][[4, 6]])
    np.testing.assert_array_equal(drawn["a"][8], eager["a"][8])
    for name, array in eager.items():
        assert np.asarray(drawn[name]).dtype == array.dtype
        np.testing.assert_array_equal(np.asarray(drawn[name]), array)


def test_evaluation_on_drawn_samples_equals_the_held_ones():
    model = _classifier(_weights(0))
    candidate = _classifier(_weights(0) + 0.3 * _weights(1))
    data = random_eval_data(model, 50, seed=2)
    held = EvalData({name: np.asarray(a) for name, a in data.samples.items()}, None, data.label)
    for batch_size in (7, None):
        drawn = evaluate(model, candidate, data, batch_size=batch_size).to_json()
        assert drawn == evaluate(model, candidate, held, batch_size=batch_size).to_json()


def test_padded_outputs_are_kept_only_within_their_budget(monkeypatch):
    """Padded batches are sorted shortest first: the first batch's outputs (length 1) say little
    about the last's (length 64); the reference's outputs are kept only while their bytes, as
    recorded, stay within ``EVAL_RECORD_BYTES``, and the figures do not change either way."""
    import sparsec.evaluate as evaluate_module
    from sparsec.ir import runtime

    rng = np.random.default_rng(7)
    count, width = 12, 64
    lengths = np.array([1] * 4 + [width] * 8)
    mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    x = rng.standard_normal((count, width, FEATURES)).astype(np.float32)
    data = EvalData({"x": x, "attention_mask": mask}, None, "tokens")
    models = (_token_model(_weights(0)), _token_model(_weights(0) + 0.5 * _weights(3)))
    first_batch = 4 * 1 * CLASSES * 4  # four samples of length 1, float32 logits
    kept = []
    recorded = runtime.Recorded

    def counted(session, feeds, done=()):
        done = list(done)
        kept.append(sum(o.nbytes for outputs in done for o in outputs.values()))
        return recorded(session, feeds, done)

    monkeypatch.setattr(runtime, "Recorded", counted)
    figures = []
    for budget in (1 << 24, 4 * first_batch):  # all kept; over the budget by the second batch
        monkeypatch.setattr(evaluate_module, "EVAL_RECORD_BYTES", budget)
        figures.append(evaluate(*models, data, batch_size=4).to_json())
    assert len(kept) == 1 and kept[0] > 4 * first_batch  # the second run kept nothing
    assert figures[0] == figures[1]
