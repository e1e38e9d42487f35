"""weight-sparsity: property tests on the dense output (pattern along the right axis, exact
counts, whole blocks, shared weights pruned once) and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, make_model, oracle_error
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.passes.sparsity import WeightSparsityPass
from sparsec.pruning.weights import block_scores, expand_blocks, nm_keep

F = TensorProto.FLOAT


def _model(rng) -> Model:
    """MatMul B [16, 8] (axis 0), Gemm transB=1 B [8, 16] (axis 1), Conv W [8, 8, 3, 3] (axis 1),
    and one weight shared by two MatMuls."""
    inits = [
        numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
        for n, s in [("mm", [16, 8]), ("gemm", [8, 16]), ("conv", [8, 8, 3, 3]), ("shared", [8, 8])]
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "mm"], ["a"]),
        helper.make_node("Gemm", ["x", "gemm"], ["b"], transB=1),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("MatMul", ["c", "shared"], ["d"]),
        helper.make_node("MatMul", ["d", "shared"], ["e"]),
        helper.make_node("Reshape", ["e", "shape"], ["img"]),
        helper.make_node("Conv", ["img", "conv"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 8, 1, 1], np.int64), "shape"))
    return Model.from_proto(make_model(nodes, [("x", F, [1, 16])], [("y", F, [1, 8, 1, 1])], inits))


AXES = {"mm": 0, "gemm": 1, "conv": 1, "shared": 0}


def _weights(model: Model) -> dict[str, np.ndarray]:
    return {name: model.constant(model.initializers()[name]) for name in AXES}


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_holds_along_the_reduction_axis(rng, n, m):
    model = _model(rng)
    result = WeightSparsityPass(nm=f"{n}:{m}")(model)
    for name, weight in _weights(model).items():
        groups = np.moveaxis(weight != 0, AXES[name], -1).reshape(-1, m)
        assert (groups.sum(axis=1) == n).all(), name
    assert result.stats["tensors"] == 4


def test_nm_skips_weights_whose_reduction_length_does_not_divide(rng):
    model = _model(rng)
    before = _weights(model)
    result = WeightSparsityPass(nm="2:16")(
        model
    )  # mm and gemm reduce over 16, conv and shared over 8
    skipped = {d.message.split("'")[1] for d in result.diagnostics if d.code == "sparsity.skipped"}
    assert skipped == {"conv", "shared"}
    after = _weights(model)
    assert all(np.array_equal(before[n], after[n]) for n in skipped)
    assert (after["mm"] == 0).mean() == pytest.approx(14 / 16)


@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.33])
def test_unstructured_local_hits_the_ratio_within_one_element(rng, ratio):
    model = _model(rng)
    WeightSparsityPass(ratio=ratio)(model)
    for name, weight in _weights(model).items():
        assert abs(int((weight == 0).sum()) - ratio * weight.size) <= 1, name


def test_unstructured_global_hits_the_ratio_overall_and_drops_the_smallest(rng):
    model = _model(rng)
    before = _weights(model)
    WeightSparsityPass(ratio=0.6, scope="global")(model)
    after = _weights(model)
    total = sum(w.size for w in after.values())
    assert abs(sum(int((w == 0).sum()) for w in after.values()) - 0.6 * total) <= 1
    largest_dropped = max(np.abs(before[n])[after[n] == 0].max() for n in after)
    smallest_kept = min(np.abs(before[n])[after[n] != 0].min() for n in after)
    assert largest_dropped <= smallest_kept


@pytest.mark.parametrize("block", ["1x8", "4x4", "2x2"])
def test_block_sparsity_zeroes_whole_blocks(rng, block):
    rows, cols = map(int, block.split("x"))
    model = _model(rng)
    WeightSparsityPass(ratio=0.5, block=block)(model)
    for name, weight in _weights(model).items():
        view = np.moveaxis(weight, AXES[name], -1).reshape(-1, weight.shape[AXES[name]])
        tiles = view.reshape(view.shape[0] // rows, rows, view.shape[1] // cols, cols)
        zero = (tiles == 0).all(axis=(1, 3))
        assert ((tiles != 0).all(axis=(1, 3)) | zero).all(), (
            name
        )  # a block is all zero or untouched
        assert zero.mean() == pytest.approx(0.5, abs=1 / zero.size), name


def test_shared_weight_is_pruned_once_and_consistently(rng):
    model = _model(rng)
    WeightSparsityPass(nm="2:4")(model)
    shared = model.initializers()["shared"]
    assert len(list(shared.uses())) == 2  # still one tensor, read by both MatMuls
    assert (model.constant(shared) == 0).mean() == 0.5


def test_block_mask_round_trip():
    scores = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)
    blocks = block_scores(scores, 1, 2, 4)  # view [6, 8] → blocks [3, 2]
    assert blocks.shape == (3, 2)
    keep = expand_blocks(blocks > blocks.mean(), scores.shape, 1, 2, 4)
    assert keep.shape == scores.shape
    assert nm_keep(np.array([[1.0, 4, 2, 3]]), 1, 2, 4).tolist() == [[False, True, False, True]]


def test_cli_nm_writes_a_dense_model_with_a_per_tensor_report(cli, tmp_path):
    out, report = tmp_path / "nm.onnx", tmp_path / "r.json"
    code, stdout, stderr = cli(
        "compress",
        MODELS / "digits_mlp.onnx",
        "--nm",
        "2:4",
        "-o",
        out,
        "--report",
        report,
        "--latency-runs",
        "0",
    )
    assert code == 0, stderr
    tensors = json.loads(report.read_text())["sparsity"]
    assert {t["name"] for t in tensors} == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(t["sparsity"] == 0.5 for t in tensors) and "zeros" in stdout
    written = Model.load(out)
    weight = written.constant(written.initializers()["fc1.weight"])
    assert (
        (weight.reshape(-1, 4) != 0).sum(axis=1) == 2
    ).all()  # Gemm transB=1: groups along axis 1


def test_a_block_no_weight_tiles_prunes_nothing_and_warns(rng):
    model = _model(rng)
    before = _weights(model)
    result = WeightSparsityPass(ratio=0.5, block="100x100")(model)
    assert not result.modified and all(
        np.array_equal(before[n], w) for n, w in _weights(model).items()
    )
    assert "sparsity.nothing-pruned" in {
        d.code for d in result.diagnostics if d.severity == "warning"
    }


def test_exclude_leaves_matching_weights_dense_by_initializer_or_node_name(rng):
    model = _model(rng)
    before = _weights(model)
    result = WeightSparsityPass(nm="2:4", exclude="mm|nomatch*")(model)
    after = _weights(model)
    assert np.array_equal(after["mm"], before["mm"]) and all(
        (after[n] == 0).mean() == 0.5 for n in AXES if n != "mm"
    )
    messages = {d.code: d.message for d in result.diagnostics}
    assert (
        messages["sparsity.skipped"]
        == "weight 'mm' left dense: excluded by --exclude 'mm' (matches 'mm')"
    )
    assert (
        messages["sparsity.exclude-unmatched"]
        == "--exclude 'nomatch*' matches no node or initializer"
    )
    mlp = Model.load(MODELS / "digits_mlp.onnx")
    dense = mlp.constant(mlp.initializers()["fc3.weight"])
    result = WeightSparsityPass(nm="2:4", exclude="/fc3/*")(
        mlp
    )  # a node name: the Gemm reading fc3.weight
    assert (
        np.array_equal(mlp.constant(mlp.initializers()["fc3.weight"]), dense)
        and result.stats["tensors"] == 2
    )
    assert oracle_error(mlp, result.reference()) <= 1e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nm", "4:2"], "N:M with 0 < N < M"),
        (["--nm", "2:4", "--sparsity", "0.5"], "give one"),
        (["--block", "4x4"], "--block needs --sparsity"),
        (["--sparsity", "0.5", "--block", "4by4"], "block must be RxC"),
        (["--nm", "2:4", "--channels", "0.5"], "prune on their own"),
        (
            ["--nm", "2:4", "--round-to", "8"],
            "--round-to and --max-layer-ratio shape channel pruning",
        ),
        (
            ["--sparsity", "0.5", "--max-layer-ratio", "0.5"],
            "--round-to and --max-layer-ratio shape channel pruning",
        ),
        (["--exclude", "fc1*"], "--exclude chooses what a pruning flag removes: it needs"),
        (
            ["--importance-scope", "global"],
            "--importance-scope chooses what a pruning flag removes",
        ),
        (["--importance", "l2"], "--importance chooses what a pruning flag removes"),
        (
            ["--nm", "2:4", "--seed", "3"],
            "--seed seeds --calibration random and --importance random of channel pruning",
        ),
    ],
)
def test_cli_bad_sparsity_flags(cli, tmp_path, args, message):
    out = tmp_path / "x.onnx"
    code, _, stderr = cli("compress", MODELS / "digits_mlp.onnx", "-o", out, *args)
    assert code == 2 and message in stderr and not out.exists()


def test_channel_norms_match_numpy_in_any_batch_size(rng, tmp_path):
    from sparsec.analysis.activations import channel_norms

    model = Model.load(MODELS / "digits_mlp.onnx")
    samples = {"input": rng.normal(size=(37, 1, 8, 8)).astype(np.float32)}
    flatten = next(n for n in model.nodes() if n.op_type == "Flatten").outputs[0].name
    expected = np.sqrt(np.square(samples["input"].reshape(37, 64).astype(np.float64)).sum(axis=0))
    for batch in (1, 8, 64):
        norms = channel_norms(model, samples, [(flatten, 1)], batch_size=batch)
        np.testing.assert_allclose(norms[(flatten, 1)], expected, rtol=1e-6)


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external-data"])
def test_wanda_weighs_weights_by_their_input_channel_norm(rng, tmp_path, external):
    """Two input channels with equal weights: Wanda drops the one whose activation (here a
    graph input, read from the calibration run in both session paths) is small."""
    import onnx

    weight = np.ones((2, 4), np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", F, ["batch", 2])],
        [("y", F, ["batch", 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    calibration = tmp_path / "calib.npz"
    np.savez(
        calibration,
        x=np.stack([rng.normal(size=64) * 10, rng.normal(size=64) * 0.1], axis=1).astype(
            np.float32
        ),
    )
    onnx.save(
        proto,
        str(tmp_path / "m.onnx"),
        save_as_external_data=external,
        location="m.onnx.data",
        size_threshold=0,
    )
    model = Model.load(tmp_path / "m.onnx")
    assert model.has_external_data() == external
    WeightSparsityPass(ratio=0.5, score="wanda", calibration=str(calibration))(model)
    pruned = model.constant(model.initializers()["w"])
    assert (pruned[0] != 0).all() and (
        pruned[1] == 0
    ).all()  # every output row keeps the loud channel


def test_wanda_without_calibration_is_refused(cli, tmp_path):
    code, _, stderr = cli(
        "compress",
        MODELS / "digits_cnn.onnx",
        "--sparsity",
        "0.5",
        "--importance",
        "wanda",
        "-o",
        tmp_path / "x.onnx",
    )
    assert code == 2 and "needs calibration data" in stderr


def test_cli_wanda_on_digits_keeps_more_accuracy_than_magnitude(cli, tmp_path):
    """Unstructured 50 % on the trained digits CNN, scored on its held-out set."""
    data = np.load(MODELS / "digits_test.npz")
    accuracy = {}
    for score in ("magnitude", "wanda"):
        out = tmp_path / f"{score}.onnx"
        extra = ["--calibration", MODELS / "digits_calib.npz"] if score == "wanda" else []
        code, _, stderr = cli(
            "compress",
            MODELS / "digits_cnn.onnx",
            "--sparsity",
            "0.5",
            "--importance",
            score,
            *extra,
            "-o",
            out,
            "--latency-runs",
            "0",
        )
        assert code == 0, stderr
        from conftest import run_ort

        accuracy[score] = (
            run_ort(out, {"input": data["input"]})[0].argmax(1) == data["label"]
        ).mean()
    assert accuracy["wanda"] > accuracy["magnitude"] + 0.2


def test_wanda_calibrates_a_fixed_batch_model_one_batch_at_a_time(rng, tmp_path):
    weight = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w")
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", F, [1, 8])],
        [("y", F, [1, 4])],
        [weight],
    )
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=rng.normal(size=(5, 8)).astype(np.float32))
    model = Model.from_proto(proto)
    WeightSparsityPass(ratio=0.5, score="wanda", calibration=str(calibration))(model)
    assert (model.constant(model.initializers()["w"]) == 0).mean() == 0.5
    np.savez(calibration, x=rng.normal(size=(5, 1, 8)).astype(np.float32))
    with pytest.raises(InputError, match="has rank 3, the model input has rank 2"):
        WeightSparsityPass(ratio=0.5, score="wanda", calibration=str(calibration))(
            Model.from_proto(proto)
        )


def _embedding_model(rng) -> Model:
    """ids → Gather(table [32, 16]) → MatMul(w [16, 8])."""
    inits = [
        numpy_helper.from_array(rng.normal(size=(32, 16)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"]),
        helper.make_node("MatMul", ["e", "w"], ["y"]),
    ]
    return Model.from_proto(
        make_model(nodes, [("ids", TensorProto.INT64, [1, 5])], [("y", F, [1, 5, 8])], inits)
    )


@pytest.mark.parametrize("embeddings", [False, True])
def test_embedding_tables_are_sparsified_only_when_asked_along_each_row(rng, embeddings):
    model = _embedding_model(rng)
    original = model.constant(model.initializers()["table"])
    WeightSparsityPass(nm="2:4", embeddings=embeddings)(model)
    table = model.constant(model.initializers()["table"])
    if embeddings:
        assert (
            (table.reshape(32, 4, 4) != 0).sum(axis=2) == 2
        ).all()  # every gathered row keeps 2 of 4
        np.testing.assert_array_equal(table[table != 0], original[table != 0])
    else:
        np.testing.assert_array_equal(table, original)
    w = model.constant(model.initializers()["w"])
    assert ((w.T.reshape(8, 4, 4) != 0).sum(axis=2) == 2).all()


def test_cli_embeddings_needs_a_sparsity_flag(cli, tmp_path):
    code, _, stderr = cli(
        "compress", MODELS / "digits_mlp.onnx", "--embeddings", "-o", tmp_path / "x.onnx"
    )
    assert code == 2 and "--embeddings needs --nm or --sparsity" in stderr
