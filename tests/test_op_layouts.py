"""The op layout table states what onnxruntime computes: for every compute op and attribute
setting, summing activation x weight over the table's contraction axes (``numpy.tensordot``)
and putting the weight's kept axis at the output's channel axis gives the op's output (times
Gemm's alpha, plus beta x C)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.op_layouts import COMPUTE_OPS, layout
from sparsec.ir import Model

F = TensorProto.FLOAT
CASES = [  # op, attributes, activation shape, weight shape (1x1 kernels: a conv is a product per pixel)
    ("MatMul", {}, (2, 3, 4), (4, 5)),
    ("Gemm", {}, (3, 4), (4, 5)),
    ("Gemm", {"transA": 1, "alpha": 0.5, "beta": 2.0}, (4, 3), (4, 5)),
    ("Gemm", {"transB": 1}, (3, 4), (5, 4)),
    ("Gemm", {"transA": 1, "transB": 1}, (4, 3), (5, 4)),
    ("Conv", {}, (1, 4, 3, 3), (5, 4, 1, 1)),
    ("ConvTranspose", {}, (1, 4, 3, 3), (4, 5, 1, 1)),
]


def _model(op_type: str, attrs: dict, x_shape, w_shape, rng):
    weight = rng.normal(size=w_shape).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "w")]
    initializers += [] if op_type == "MatMul" else [numpy_helper.from_array(bias, "b")]
    node = helper.make_node(op_type, ["x"] + [i.name for i in initializers], ["y"], **attrs)
    y_shape = _out_shape(op_type, attrs, x_shape, w_shape)
    return make_model([node], [("x", F, x_shape)], [("y", F, y_shape)], initializers), weight, bias


def _out_shape(op_type, attrs, x_shape, w_shape):
    if op_type == "MatMul":
        return [*x_shape[:-1], w_shape[-1]]
    if op_type == "Gemm":
        return [x_shape[1 if attrs.get("transA") else 0], 5]
    return [x_shape[0], 5, *x_shape[2:]]


@pytest.mark.parametrize("op_type, attrs, x_shape, w_shape", CASES)
def test_the_table_contracts_what_onnxruntime_contracts(op_type, attrs, x_shape, w_shape, rng):
    proto, weight, bias = _model(op_type, attrs, x_shape, w_shape, rng)
    model = Model.from_proto(proto)
    entry = layout(model, model.nodes()[0])
    x = rng.normal(size=x_shape).astype(np.float32)
    w = weight.reshape(weight.shape[:2]) if entry.role == "conv" else weight
    product = np.tensordot(x, w, axes=(entry.activation.contraction, entry.weight.contraction))
    expected = (
        np.moveaxis(product, -1, entry.output_channels) * entry.scale
    )  # the kept axis comes last
    if entry.bias is not None:
        shape = [1] * expected.ndim
        shape[entry.output_channels] = -1
        expected = expected + entry.bias_scale * bias.reshape(shape)
    np.testing.assert_allclose(run_ort(proto, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_every_standard_layout_has_a_case():  # com.microsoft Attention's: tests/test_rules.py, test_cost.py
    assert sorted(COMPUTE_OPS) == sorted({op for op, *_ in CASES})
