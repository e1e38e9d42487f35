"""Sparse encodings (bitmask, nm, coo): bit-identical to the dense form in onnxruntime, no
decoder left after basic optimization, the expected size, on MatMul and Conv weights at opsets
11 to 21 and for fp16 weights; densify round-trips; coo files are real sparse initializers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, make_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec import api
from sparsec.ir import Model, runtime
from sparsec.passes.sparse_format import DECODER_PREFIX, SparseEncodePass, bitmask_bytes, densify
from sparsec.passes.sparsity import WeightSparsityPass
from sparsec.validate import check_encoded


def _matmul_model(rng, opset: int, dtype=np.float32) -> Model:
    """x[2, 256] · W[256, 128] (32 K weights) → y."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    weight = numpy_helper.from_array(rng.normal(size=(256, 128)).astype(dtype), "w")
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", elem, [2, 256])],
        [("y", elem, [2, 128])],
        [weight],
        opset=opset,
    )
    return Model.from_proto(proto)


def _conv_model(rng, opset: int, dtype=np.float32) -> Model:
    """x[2, 64, 6, 6] * W[128, 64, 3, 3] (72 K weights, reduction axis 1) → y[2, 128, 4, 4]."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    weight = numpy_helper.from_array(rng.normal(size=(128, 64, 3, 3)).astype(dtype), "w")
    proto = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [("x", elem, [2, 64, 6, 6])],
        [("y", elem, [2, 128, 4, 4])],
        [weight],
        opset=opset,
    )
    return Model.from_proto(proto)


BUILDERS = {"matmul": (_matmul_model, (2, 256)), "conv": (_conv_model, (2, 64, 6, 6))}
# format -> the sparsity it is tested with (coo only shrinks above 2/3 sparsity)
FORMAT_SPARSITY = {"bitmask": {"nm": "2:4"}, "nm": {"nm": "2:4"}, "coo": {"ratio": 0.9}}


def _encode(model: Model, sparse_format: str = "bitmask", **sparsity) -> tuple[Model, Model]:
    WeightSparsityPass(**sparsity)(model)
    dense = model.copy()
    assert (
        SparseEncodePass(format=sparse_format, nm=sparsity.get("nm", ""))(model).stats[
            "tensors_encoded"
        ]
        == 1
    )
    assert model.check() is None
    return model, dense


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("sparse_format", list(FORMAT_SPARSITY))
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_encoding_is_bit_identical_and_folds_away(rng, opset, dtype, sparse_format, kind):
    build, input_shape = BUILDERS[kind]
    encoded, dense = _encode(
        build(rng, opset, dtype), sparse_format, **FORMAT_SPARSITY[sparse_format]
    )
    feeds = {"x": rng.normal(size=input_shape).astype(dtype)}
    assert check_encoded(encoded, dense, feeds, DECODER_PREFIX) is None
    assert not [n for n in runtime.optimized_op_names(encoded) if n.startswith(DECODER_PREFIX)]
    np.testing.assert_array_equal(
        run_ort(encoded.to_proto(), feeds)[0], run_ort(dense.to_proto(), feeds)[0]
    )


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize(
    "sparse_format, sparsity, limit",
    [
        ("bitmask", {"nm": "2:4"}, 0.55),
        ("bitmask", {"ratio": 0.9}, 0.15),
        ("nm", {"nm": "2:4"}, 0.56),  # 53.1 % of the data, plus the decoder nodes
        ("coo", {"ratio": 0.9}, 0.31),
    ],
)  # coo: 10 % of the weights x (4 + 8) bytes / 4
def test_encoded_file_size(rng, kind, sparse_format, sparsity, limit):
    encoded, dense = _encode(BUILDERS[kind][0](rng, 17), sparse_format, **sparsity)
    size, dense_size = (
        len(encoded.to_proto().SerializeToString()),
        len(dense.to_proto().SerializeToString()),
    )
    assert size <= limit * dense_size


def test_tensors_that_would_not_shrink_stay_dense(rng):
    model = _matmul_model(rng, 17)
    WeightSparsityPass(ratio=0.02)(model)  # 98 % kept: values + bits take more than dense
    weight = model.constant(model.initializers()["w"])
    assert bitmask_bytes(weight) > weight.nbytes
    assert SparseEncodePass()(model).stats["tensors_encoded"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "sparse_format, sparsity",
    [
        ("bitmask", {"ratio": 0.7}),
        ("nm", {"nm": "1:4"}),
        ("nm", {"nm": "2:4"}),
        ("coo", {"ratio": 0.9}),
    ],
)
def test_densify_round_trips_to_the_dense_initializers(rng, dtype, sparse_format, sparsity):
    encoded, dense = _encode(_matmul_model(rng, 17, dtype), sparse_format, **sparsity)
    densify(encoded)
    np.testing.assert_array_equal(
        encoded.constant(encoded.initializers()["w"]), dense.constant(dense.initializers()["w"])
    )


def test_cli_bitmask_and_densify(cli, tmp_path, rng):
    source = tmp_path / "m.onnx"
    _matmul_model(rng, 17).save(source)
    encoded, back = tmp_path / "bm.onnx", tmp_path / "back.onnx"
    code, stdout, stderr = cli(
        "compress",
        source,
        "--nm",
        "2:4",
        "--sparse-format",
        "bitmask",
        "-o",
        encoded,
        "--latency-runs",
        "0",
    )
    assert code == 0, stderr
    assert encoded.stat().st_size <= 0.55 * source.stat().st_size
    code, stdout, stderr = cli("densify", encoded, "-o", back)
    assert code == 0 and "decoded 1 weight;" in stdout, stderr
    weight = Model.load(back).constant(Model.load(back).initializers()["w"])
    assert ((np.moveaxis(weight, 0, -1).reshape(-1, 4) != 0).sum(axis=1) == 2).all()
    assert api.Model.load(back).metadata("sparsec.sparse_format") == "dense"


def test_nm_format_refuses_patterns_whose_positions_do_not_fit(rng):
    from sparsec.passes.base import PassError

    with pytest.raises(PassError, match="use bitmask"):
        SparseEncodePass(format="nm", nm="4:8").check_options()  # 4 positions x 4 bits > 8


def test_densify_refuses_a_model_without_encoded_weights(cli, tmp_path):
    code, _, stderr = cli("densify", MODELS / "digits_mlp.onnx", "-o", tmp_path / "x.onnx")
    assert (
        code == 2 and "no sparse-encoded weights" in stderr and not (tmp_path / "x.onnx").exists()
    )


def test_coo_file_holds_sparse_initializers_and_round_trips(cli, tmp_path, rng):
    import onnx

    source, encoded, again, back = (tmp_path / f"{n}.onnx" for n in ("m", "coo", "again", "back"))
    _matmul_model(rng, 17).save(source)
    code, _, stderr = cli(
        "compress",
        source,
        "--sparsity",
        "0.9",
        "--sparse-format",
        "coo",
        "-o",
        encoded,
        "--latency-runs",
        "0",
    )
    assert code == 0, stderr
    proto = onnx.load(str(encoded))
    assert [s.values.name for s in proto.graph.sparse_initializer] == [
        "w"
    ] and not proto.graph.initializer
    assert (
        len(
            proto.graph.sparse_initializer[0].values.float_data
            or proto.graph.sparse_initializer[0].values.raw_data
        )
        > 0
    )
    loaded = Model.load(encoded)  # dense in memory, sparse again when written
    dense_w = loaded.constant(loaded.initializers()["w"])
    assert np.count_nonzero(dense_w) == round(0.1 * dense_w.size)
    loaded.save(again)
    assert [s.values.name for s in onnx.load(str(again)).graph.sparse_initializer] == ["w"]
    code, _stdout, stderr = cli("densify", encoded, "-o", back)
    assert code == 0, stderr
    plain = onnx.load(str(back))
    assert not plain.graph.sparse_initializer
    np.testing.assert_array_equal(numpy_helper.to_array(plain.graph.initializer[0]), dense_w)


def test_a_foreign_sparse_initializer_with_coordinate_indices_loads_dense(tmp_path, rng):
    import onnx

    weight = np.zeros((4, 6), np.float32)
    weight[1, 2], weight[3, 5] = 1.5, -2.0
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "w"),
        numpy_helper.from_array(np.array([[1, 2], [3, 5]], np.int64), "w_idx"),
        [4, 6],
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        sparse_initializer=[sparse],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    model = Model.load(tmp_path / "foreign.onnx")
    np.testing.assert_array_equal(model.constant(model.initializers()["w"]), weight)
    assert model.sparse_initializer_names() == ["w"]
    x = rng.normal(size=(1, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(model.to_proto(), {"x": x})[0], x @ weight, rtol=1e-6)


def _external_data_model(folder, rng, with_bias: bool):
    """x · w (+ b), every initializer saved in ``folder/m.onnx.data``."""
    import onnx

    inits = [numpy_helper.from_array(rng.normal(size=(256, 128)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    if with_bias:  # weight-sparsity leaves the bias alone: it stays in the .data file
        inits.append(numpy_helper.from_array(rng.normal(size=128).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["h", "b"], ["y"]))
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [2, 256])],
        [(nodes[-1].output[0], TensorProto.FLOAT, [2, 128])],
        inits,
    )
    onnx.save(
        proto,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    return folder / "m.onnx"


@pytest.mark.parametrize(
    "with_bias", [True, False], ids=["a weight stays in the file", "every weight changed"]
)
def test_coo_is_refused_for_an_external_data_model(cli, tmp_path, rng, with_bias):
    """External data in means external data out (even when every weight changed), and COO is
    never written with external data."""
    source = _external_data_model(tmp_path, rng, with_bias=with_bias)
    code, _, stderr = cli(
        "compress",
        source,
        "--sparsity",
        "0.9",
        "--sparse-format",
        "coo",
        "-o",
        tmp_path / "out.onnx",
        "--latency-runs",
        "0",
    )
    assert code == 2 and "format coo is not written with external data" in stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("sparse_format", list(FORMAT_SPARSITY))
def test_an_encoding_that_decodes_to_other_weights_is_rejected(rng, sparse_format):
    """check_encoded, the gate before an encoded model is written, catches one wrong stored value."""
    encoded, dense = _encode(
        _matmul_model(rng, 17), sparse_format, **FORMAT_SPARSITY[sparse_format]
    )
    values = next(
        v
        for name, v in encoded.initializers().items()
        if encoded.constant(v).dtype == np.float32 and encoded.constant(v).size > 1000
    )  # the stored nonzeros
    array = encoded.constant(values).copy()
    array[7] += 1.0
    encoded.set_constant(values, array)
    feeds = {"x": rng.normal(size=(2, 256)).astype(np.float32)}
    assert (
        check_encoded(encoded, dense, feeds, DECODER_PREFIX)
        == "output 'y' is not bit-identical to the dense model's"
    )


def test_densify_refuses_a_decoding_that_changes_the_outputs(cli, tmp_path, rng, monkeypatch):
    """The densify gate: outputs must equal the encoded model's bit for bit, or nothing is written."""
    source, encoded, back = tmp_path / "m.onnx", tmp_path / "bm.onnx", tmp_path / "back.onnx"
    _matmul_model(rng, 17).save(source)
    assert (
        cli(
            "compress",
            source,
            "--nm",
            "2:4",
            "--sparse-format",
            "bitmask",
            "-o",
            encoded,
            "--latency-runs",
            "0",
        )[0]
        == 0
    )

    def decode_then_nudge(model):
        count = densify(model)
        weight = model.initializers()["w"]
        model.set_constant(weight, model.constant(weight) * 1.001)
        return count

    monkeypatch.setattr(api, "densify_weights", decode_then_nudge)
    code, _, err = cli("densify", encoded, "-o", back)
    assert (
        code == 1
        and "differ from the encoded model's (nothing written)" in err
        and not back.exists()
    )


def test_a_model_too_small_to_encode_says_so_once(cli, tmp_path, rng):
    """An 8x8 weight at 2:4 saves less than its decoder costs: nothing is encoded, one info
    line says so (not one per fixed-point round), and the output carries no encoding metadata."""
    source, out = tmp_path / "tiny.onnx", tmp_path / "x.onnx"
    weight = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w")
    Model.from_proto(
        make_model(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [("x", TensorProto.FLOAT, [1, 8])],
            [("y", TensorProto.FLOAT, [1, 8])],
            [weight],
        )
    ).save(source)
    code, stdout, stderr = cli(
        "compress", source, "--nm", "2:4", "--sparse-format", "bitmask", "-o", out,
        "--latency-runs", "0",
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout.count("info: sparse.nothing-encoded: no weight was bitmask-encoded") == 1
    assert Model.load(out).metadata("sparsec.sparse_format") is None
