"""A model of one Conv / Gemm / MatMul node with a random constant weight, as an onnxruntime
session (what ``pruning.fast_widths`` times at candidate widths).

The node reads one float32 graph input of ``input_shape`` and its weight (and a zero bias for
Conv and Gemm) as initializers, so that onnxruntime optimizes and prepacks it as it would the
same layer inside a model (NCHWc layouts for a Conv included). Weights are seeded: a timing
does not depend on values, and the model is the same on every call.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir.runtime import Session

OPSET = 17


def one_op_session(
    op_type: str,
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    attributes: dict | None = None,
    *,
    threads: int = 1,
) -> Session:
    """A ``threads``-thread session running ``op_type`` on input ``x`` with weight ``w``."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(weight_shape).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if op_type in ("Conv", "Gemm"):
        out = (
            weight_shape[0]
            if op_type == "Conv" or (attributes or {}).get("transB")
            else weight_shape[-1]
        )
        initializers.append(numpy_helper.from_array(np.zeros(out, np.float32), "b"))
        inputs.append("b")
    node = helper.make_node(op_type, inputs, ["y"], **(attributes or {}))
    graph = helper.make_graph(
        [node],
        "one_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return Session(model.SerializeToString(), threads=threads)
