"""bitmask encoding: bit-identical to the dense form in onnxruntime, no decoder left after basic
optimization, the expected size, at opsets 11 to 21 and for fp16 weights; densify round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec import api
from sparsec.ir import Model, runtime
from sparsec.passes.sparse_format import DECODER_PREFIX, SparseEncodePass, densify, bitmask_bytes
from sparsec.passes.sparsity import WeightSparsityPass
from sparsec.validate import check_encoded


def _matmul_model(rng, opset: int, dtype=np.float32) -> Model:
    """x[2, 256] · W[256, 128] (32 K weights) → y."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    weight = numpy_helper.from_array(rng.normal(size=(256, 128)).astype(dtype), "w")
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", elem, [2, 256])], [("y", elem, [2, 128])],
                       [weight], opset=opset)
    return Model.from_proto(proto)


def _encode(model: Model, sparse_format: str = "bitmask", **sparsity) -> tuple[Model, Model]:
    WeightSparsityPass(**sparsity)(model)
    dense = model.copy()
    assert SparseEncodePass(format=sparse_format, nm=sparsity.get("nm", ""))(model).stats["tensors_encoded"] == 1
    assert model.check() is None
    return model, dense


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("sparse_format", ["bitmask", "nm"])
def test_encoding_is_bit_identical_and_folds_away(rng, opset, dtype, sparse_format):
    encoded, dense = _encode(_matmul_model(rng, opset, dtype), sparse_format, nm="2:4")
    feeds = {"x": rng.normal(size=(2, 256)).astype(dtype)}
    assert check_encoded(encoded, dense, feeds, DECODER_PREFIX) is None
    assert not [n for n in runtime.optimized_op_names(encoded) if n.startswith(DECODER_PREFIX)]
    np.testing.assert_array_equal(run_ort(encoded.to_proto(), feeds)[0], run_ort(dense.to_proto(), feeds)[0])


@pytest.mark.parametrize("sparsity, limit", [({"nm": "2:4"}, 0.55), ({"ratio": 0.9}, 0.15)])
def test_bitmask_file_size(rng, sparsity, limit):
    encoded, dense = _encode(_matmul_model(rng, 17), **sparsity)
    size, dense_size = len(encoded.to_proto().SerializeToString()), len(dense.to_proto().SerializeToString())
    assert size <= limit * dense_size


def test_tensors_that_would_not_shrink_stay_dense(rng):
    model = _matmul_model(rng, 17)
    WeightSparsityPass(ratio=0.05)(model)  # 95 % kept: values + bits is more than 0.9 x dense
    weight = model.constant(model.initializers()["w"])
    assert bitmask_bytes(weight) > 0.9 * weight.nbytes
    assert SparseEncodePass()(model).stats["tensors_encoded"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("sparse_format, sparsity", [("bitmask", {"ratio": 0.7}), ("nm", {"nm": "1:4"}), ("nm", {"nm": "2:4"})])
def test_densify_round_trips_to_the_dense_initializers(rng, dtype, sparse_format, sparsity):
    encoded, dense = _encode(_matmul_model(rng, 17, dtype), sparse_format, **sparsity)
    densify(encoded)
    np.testing.assert_array_equal(encoded.constant(encoded.initializers()["w"]), dense.constant(dense.initializers()["w"]))


def test_cli_bitmask_and_densify(cli, tmp_path, rng):
    source = tmp_path / "m.onnx"
    _matmul_model(rng, 17).save(source)
    encoded, back = tmp_path / "bm.onnx", tmp_path / "back.onnx"
    code, stdout, stderr = cli("compress", source, "--nm", "2:4", "--sparse-format", "bitmask", "-o", encoded,
                               "--latency-runs", "0")
    assert code == 0, stderr
    assert encoded.stat().st_size <= 0.55 * source.stat().st_size
    code, stdout, stderr = cli("densify", encoded, "-o", back)
    assert code == 0 and "decoded 1 weights" in stdout, stderr
    weight = Model.load(back).constant(Model.load(back).initializers()["w"])
    assert ((np.moveaxis(weight, 0, -1).reshape(-1, 4) != 0).sum(axis=1) == 2).all()
    assert api.Model.load(back).metadata("sparsec.sparse_format") == "dense"


def test_nm_format_refuses_patterns_whose_positions_do_not_fit(rng):
    from sparsec.passes.base import PassError
    with pytest.raises(PassError, match="use bitmask"):
        SparseEncodePass(format="nm", nm="4:8").check_options()  # 4 positions x 4 bits > 8


def test_nm_format_size_at_2_4(rng):
    encoded, dense = _encode(_matmul_model(rng, 17), "nm", nm="2:4")
    assert len(encoded.to_proto().SerializeToString()) <= 0.55 * len(dense.to_proto().SerializeToString())


def test_densify_refuses_a_model_without_encoded_weights(cli, tmp_path):
    from conftest import MODELS
    code, _, stderr = cli("densify", MODELS / "digits_mlp.onnx", "-o", tmp_path / "x.onnx")
    assert code == 2 and "no sparse-encoded weights" in stderr and not (tmp_path / "x.onnx").exists()
