"""bn-fold: BatchNormalization folded into Conv, grouped ConvTranspose and Gemm, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir import Model
from sparsec.passes.bn_fold import BatchNormFoldPass
from sparsec.testing import assert_pass_exact, make_model

F = TensorProto.FLOAT


def _bn_inits(rng, channels):
    return [
        numpy_helper.from_array(a.astype(np.float32), n)
        for n, a in (
            ("g", rng.uniform(0.5, 1.5, channels)),
            ("b", rng.normal(0, 0.3, channels)),
            ("m", rng.normal(0, 0.5, channels)),
            ("v", rng.uniform(0.2, 2.0, channels)),
        )
    ]


# producer node, weight shape, bias shape, input shape, output shape
CASES = {
    "conv_no_bias": (
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        (6, 4, 3, 3),
        None,
        [1, 4, 5, 5],
        [1, 6, 5, 5],
    ),
    "conv_bias": (
        helper.make_node("Conv", ["x", "w", "bias"], ["c"]),
        (6, 4, 1, 1),
        (6,),
        [1, 4, 5, 5],
        [1, 6, 5, 5],
    ),
    "conv_transpose_grouped": (
        helper.make_node("ConvTranspose", ["x", "w", "bias"], ["c"], group=2, strides=[2, 2]),
        (4, 3, 2, 2),
        (6,),
        [1, 4, 5, 5],
        [1, 6, 10, 10],
    ),
    "gemm_transb": (
        helper.make_node("Gemm", ["x", "w", "bias"], ["c"], transB=1, beta=0.5, alpha=2.0),
        (6, 4),
        (6,),
        [3, 4],
        [3, 6],
    ),
    "gemm_no_bias": (helper.make_node("Gemm", ["x", "w"], ["c"]), (4, 6), None, [3, 4], [3, 6]),
}


@pytest.mark.parametrize("case", CASES)
def test_fold_is_exact(case, rng):
    producer, w_shape, b_shape, x_shape, y_shape = CASES[case]
    inits = [
        numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w")
    ] + _bn_inits(rng, y_shape[1])
    if b_shape:
        inits.append(
            numpy_helper.from_array(rng.standard_normal(b_shape).astype(np.float32), "bias")
        )
    nodes = [
        producer,
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-3),
    ]
    proto = make_model(nodes, [("x", F, x_shape)], [("y", F, y_shape)], inits)
    result = assert_pass_exact(BatchNormFoldPass(), proto, seed=int(rng.integers(1000)))
    assert result.stats["batchnorms_folded"] == 1
    assert [n.op_type for n in result.model.nodes()] == [producer.op_type]
    assert result.model.outputs[0].name == "y"


def test_no_fold_when_the_conv_output_has_another_consumer(rng):
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 4, 1, 1)).astype(np.float32), "w")
    ] + _bn_inits(rng, 6)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"]),
        helper.make_node("Add", ["bn", "c"], ["y"]),
    ]
    model = Model.from_proto(
        make_model(nodes, [("x", F, [1, 4, 3, 3])], [("y", F, [1, 6, 3, 3])], inits)
    )
    assert not BatchNormFoldPass()(model).modified


def test_shared_weight_is_not_corrupted(rng):
    # Two convs share w; only one is followed by BN: the other must keep the original weight.
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    ] + _bn_inits(rng, 4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"]),
        helper.make_node("Conv", ["bn", "w"], ["y"]),
    ]
    proto = make_model(nodes, [("x", F, [1, 4, 3, 3])], [("y", F, [1, 4, 3, 3])], inits)
    result = assert_pass_exact(BatchNormFoldPass(), proto)
    assert result.modified
    weights = {n.inputs[1].name for n in result.model.nodes()}
    assert len(weights) == 2 and "w" in weights


def test_digits_cnn_stem_batchnorm_folds_and_accuracy_holds():
    data = np.load(MODELS / "digits_test.npz")
    result = assert_pass_exact(
        BatchNormFoldPass(), MODELS / "digits_cnn.onnx", feeds={"input": data["input"]}
    )
    assert result.stats["batchnorms_folded"] == 1  # the two others follow Concat and Add


def test_constant_of_shape_weights_are_not_materialised(tmp_path):
    from fill_light_models import light_path

    model = Model.load(light_path("resnet50"))
    assert not BatchNormFoldPass()(model).modified  # folding would turn 80 KB into ~100 MB
