"""Calibration data: a .npz, a folder of .npz/.npy files, or ``random``; the sample count;
one clear error for data that does not fit the model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, make_model, run_ort
from onnx import TensorProto, helper

from sparsec.analysis.activations import (
    RANDOM_SAMPLES,
    Frontier,
    calibration_batches,
    capture,
    load_calibration,
)
from sparsec.errors import InputError
from sparsec.ir import Model

DIGITS = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npz"


@pytest.fixture(scope="module")
def model():
    return Model.load(DIGITS)


def test_npz_and_a_sample_count(model):
    full = load_calibration(CALIB, model)
    assert list(full) == ["input"] and full["input"].shape == (256, 1, 8, 8)
    assert load_calibration(CALIB, model, samples=10)["input"].shape[0] == 10


def test_a_folder_of_npz_and_npy_files_is_joined_in_file_name_order(model, tmp_path):
    data = np.load(CALIB)["input"]
    np.savez(tmp_path / "a.npz", input=data[:100])
    np.save(
        tmp_path / "b_input.npy", data[100:150]
    )  # an .npy is named by its file: this one is not an input
    (tmp_path / "input").mkdir()
    with pytest.raises(InputError, match=r"holds no \.npz or \.npy file"):
        load_calibration(tmp_path / "input", model)  # an empty folder: one line, not a traceback
    np.save(tmp_path / "input.npy", data[100:150])
    joined = load_calibration(tmp_path, model)["input"]
    np.testing.assert_array_equal(joined, data[:150])


def test_random_is_seeded_and_sized(model):
    a, b = load_calibration("random", model, seed=3), load_calibration("random", model, seed=3)
    assert a["input"].shape == (RANDOM_SAMPLES, 1, 8, 8)
    np.testing.assert_array_equal(a["input"], b["input"])
    assert load_calibration("random", model, samples=5)["input"].shape[0] == 5


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 1, 8, 8), np.float32)}, "no array for input"),
        ({"input": np.zeros((4, 8, 8), np.float32)}, "has rank 3"),
        (
            {"input": np.zeros((4, 1, 4, 16), np.float32)},
            r"has shape \[4, 1, 4, 16\], the model input is \['batch', 1, 8, 8\]",
        ),
        ({"input": np.full((4, 1, 8, 8), np.nan, np.float32)}, "holds NaN or infinite values"),
        ({"input": np.full((4, 1, 8, 8), np.inf, np.float64)}, "holds NaN or infinite values"),
        ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "is empty"),
        ({"input": np.array([["a"] * 8] * 8)[None, None].repeat(2, 0)}, "has dtype <U1"),
    ],
)
def test_data_that_does_not_fit_is_refused_in_one_line(model, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load_calibration(path, model)


@pytest.mark.parametrize("content", [b"", b"not an archive"])
def test_an_unreadable_file_is_one_line(model, tmp_path, content):
    (tmp_path / "broken.npz").write_bytes(
        content
    )  # an empty file made numpy raise EOFError, read as Ctrl-C
    with pytest.raises(
        InputError, match=r"calibration data .*broken\.npz: not a readable \.npz/\.npy file"
    ):
        load_calibration(tmp_path / "broken.npz", model)


def test_asking_for_more_samples_than_the_data_holds_is_refused(model, tmp_path):
    np.savez(tmp_path / "three.npz", input=np.ones((3, 1, 8, 8), np.float32))
    assert load_calibration(tmp_path / "three.npz", model, samples=2)["input"].shape[0] == 2
    with pytest.raises(InputError, match="holds 3 samples; --calibration-samples asks for 4"):
        load_calibration(tmp_path / "three.npz", model, samples=4)


def test_float64_data_is_cast_to_the_input_dtype(model, tmp_path):
    np.savez(tmp_path / "f64.npz", input=np.ones((3, 1, 8, 8)))
    loaded = load_calibration(tmp_path / "f64.npz", model)["input"]
    assert loaded.dtype == np.float32 and loaded.shape == (3, 1, 8, 8)


def _masked_sum(positions, mask_positions=None) -> Model:
    """y [B, 4] = Σ over positions of x [B, S, 4] · attention_mask [B, S] (the padding ignored);
    the mask's positions dim may be named differently (per-input dynamic axes)."""
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
        helper.make_node("Mul", ["x", "m3"], ["xm"]),
        helper.make_node("ReduceSum", ["xm", "one"], ["y"], keepdims=0),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [2]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    ]
    return Model.from_proto(
        make_model(
            nodes,
            [
                ("x", TensorProto.FLOAT, ["B", positions, 4]),
                ("attention_mask", TensorProto.INT64, ["B", mask_positions or positions]),
            ],
            [("y", TensorProto.FLOAT, ["B", 4])],
            inits,
        )
    )


def _padded_samples(rng, count: int = 40, width: int = 12) -> dict[str, np.ndarray]:
    lengths = rng.integers(0, width + 1, count)
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
    return {"x": rng.normal(size=(count, width, 4)).astype(np.float32), "attention_mask": mask}


@pytest.mark.parametrize(
    "mask_positions", [None, "mask_positions"], ids=["one-symbol", "per-input-symbols"]
)
def test_padded_batches_run_sorted_by_length_and_cut_to_it(rng, mask_positions):
    """With a symbolic positions axis, every batch is cut to its longest real row (rows of
    similar length together), in every input that has it, and the model's outputs on it are
    those of the padded rows."""
    model, samples = _masked_sum("S", mask_positions), _padded_samples(rng)
    lengths = samples["attention_mask"].sum(axis=1)
    batches = list(calibration_batches(model, samples, batch_size=8))
    assert [b["x"].shape[1] for b in batches] == [
        max(1, int(np.sort(lengths)[i : i + 8].max())) for i in range(0, 40, 8)
    ]
    assert all(b["attention_mask"].shape[1] == b["x"].shape[1] for b in batches)
    assert sum(b["x"].size for b in batches) < samples["x"].size
    full = run_ort(model.to_proto(), samples)[0]
    order = np.argsort(lengths, kind="stable")
    got = np.concatenate([out["y"] for out in capture(model, samples, ["y"], batch_size=8)])
    np.testing.assert_allclose(got, full[order], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions, mask_positions", [(12, None), (12, "S"), ("S", 12)])
def test_a_static_positions_axis_is_not_cut(rng, positions, mask_positions):
    samples = _padded_samples(rng)
    batches = list(
        calibration_batches(_masked_sum(positions, mask_positions), samples, batch_size=8)
    )
    assert all(b["x"].shape[1] == 12 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), samples["x"])


def _chain(rng) -> Model:
    """x [B, 6] → MatMul w1 → Relu = h1 → MatMul w2 → Relu = h2; s = h1 + h2 → MatMul w3 = y
    (h1 is on the frontier of stage 2 twice: read by w2's MatMul and by the Add)."""
    inits = [
        helper.make_tensor(
            f"w{i}", TensorProto.FLOAT, [6, 6], rng.normal(size=36).astype(np.float32)
        )
        for i in (1, 2, 3)
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["h2"]),
        helper.make_node("Add", ["h1", "h2"], ["s"]),
        helper.make_node("MatMul", ["s", "w3"], ["y"]),
    ]
    return Model.from_proto(
        make_model(
            nodes, [("x", TensorProto.FLOAT, ["B", 6])], [("y", TensorProto.FLOAT, ["B", 6])], inits
        )
    )


def test_a_frontier_restarts_each_capture_from_the_values_already_done(rng):
    """Stages 1, 2, 3 = w1, w2, w3 edited after their capture (as recovery refits a round):
    each capture equals a full capture of the model as edited so far, and a capture reads the
    values held rather than recomputing them from x (fed zeros, y is still right)."""
    model = _chain(rng)
    stages = {"a1": 1, "h1": 1, "a2": 2, "h2": 2, "s": 2, "y": 3}
    frontier = Frontier(model, stages)
    samples = {"x": rng.normal(size=(20, 6)).astype(np.float32)}
    for stage, name in [(1, "a1"), (2, "a2"), (3, "y")]:
        got = np.concatenate([out[name] for out in frontier.capture(samples, [name], 8, stage)])
        want = np.concatenate([out[name] for out in capture(model, samples, [name], 8)])
        np.testing.assert_array_equal(got, want)
        weight = model.initializers()[f"w{stage}"]
        model.set_constant(weight, model.constant(weight) * 0.5)  # the edit of this stage
    assert [sorted(batch) for batch in frontier.batches] == [
        ["s"]
    ] * 3  # done, read by w3's MatMul; 3 batches
    zeros = {"x": np.zeros_like(samples["x"])}
    got = np.concatenate([out["y"] for out in frontier.capture(zeros, ["y"], 8, 3)])
    want = np.concatenate([out["y"] for out in capture(model, samples, ["y"], 8)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _constant_weights_with_a_branch(rng) -> Model:
    """x [B, 6] → MatMul (w1 from a Constant node) = h1 → If (both branches read h1 from the outer
    graph) = o → MatMul (w2, Constant) = t → s = o + t → MatMul (w3, Constant) = y."""

    def constant(name):
        return helper.make_node(
            "Constant",
            [],
            [name],
            value=helper.make_tensor(
                f"{name}_value", TensorProto.FLOAT, [6, 6], rng.normal(size=36).astype(np.float32)
            ),
        )

    def branch(name):
        return helper.make_graph(
            [helper.make_node("Identity", ["h1"], [name])],
            name,
            [],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)],
        )

    nodes = [
        constant("w1"),
        constant("w2"),
        constant("w3"),
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("If", ["cond"], ["o"], then_branch=branch("a"), else_branch=branch("b")),
        helper.make_node("MatMul", ["o", "w2"], ["t"]),
        helper.make_node("Add", ["o", "t"], ["s"]),
        helper.make_node("MatMul", ["s", "w3"], ["y"]),
    ]
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return Model.from_proto(
        make_model(
            nodes,
            [("x", TensorProto.FLOAT, ["B", 6])],
            [("y", TensorProto.FLOAT, ["B", 6])],
            [cond],
        )
    )


def test_a_frontier_holds_no_constant_and_sees_what_a_subgraph_reads(rng):
    """Weights from Constant nodes are edited after their stage: held, they would be fed back
    stale. Every capture equals a fresh one of the model as edited so far, and only values
    computed from x are held (the stages of a subgraph's reads: test_recovery's _stages test)."""
    model = _constant_weights_with_a_branch(rng)
    stages = {"h1": 1, "o": 1, "t": 2, "s": 2, "y": 3}
    frontier = Frontier(model, stages)
    samples = {"x": rng.normal(size=(20, 6)).astype(np.float32)}
    # held after each stage: nothing (no value is done at stage 1; the Constant outputs are never
    # held), then o (done, read by w2's MatMul and the Add), then s (read by w3's MatMul)
    for stage, name, held in [(1, "h1", []), (2, "t", ["o"]), (3, "y", ["s"])]:
        got = np.concatenate([out[name] for out in frontier.capture(samples, [name], 8, stage)])
        want = np.concatenate([out[name] for out in capture(model, samples, [name], 8)])
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert [sorted(batch) for batch in frontier.batches] == ([held] * 3 if held else [])
        weight = model.values_by_name()[f"w{stage}"]
        model.set_constant(weight, model.constant(weight) * 0.5)


def test_a_capture_read_in_part_leaves_no_frontier(rng):
    model = _chain(rng)
    frontier = Frontier(model, {"a1": 1, "h1": 1, "a2": 2, "h2": 2, "s": 2, "y": 3})
    samples = {"x": rng.normal(size=(20, 6)).astype(np.float32)}
    list(frontier.capture(samples, ["a1"], 8, 1))
    next(iter(frontier.capture(samples, ["a2"], 8, 2)))  # one batch of three read
    got = np.concatenate([out["y"] for out in frontier.capture(samples, ["y"], 8, 3)])
    np.testing.assert_array_equal(
        got, np.concatenate([out["y"] for out in capture(model, samples, ["y"], 8)])
    )
