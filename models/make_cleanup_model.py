"""Build ``cleanup_cnn.onnx``: a small CNN full of what the cleanup passes remove.

It has unfused BatchNormalization after a Conv (no bias), a Conv (with bias), a grouped
ConvTranspose and a Gemm (transB=1, 2-D BN); Identity nodes (one feeding the graph output);
an inference-mode Dropout; a shape-only subgraph (Shape(start=1) → ReduceProd → Concat →
Reshape) that folds while the batch dim stays symbolic; and dead weight: a dead Conv branch,
an unused Constant node, an unused initializer, an unused local function and the opset import
only that function used. Only onnx and numpy are needed; weights are seeded
(``numpy.random.default_rng(0)``) and BN statistics are non-trivial so folding is really tested.

Run from the repository root: ``python models/make_cleanup_model.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).with_name("cleanup_cnn.onnx")
RNG = np.random.default_rng(0)


def weight(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def batchnorm_params(prefix: str, channels: int) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(
            RNG.uniform(0.5, 1.5, channels).astype(np.float32), f"{prefix}_gamma"
        ),
        numpy_helper.from_array(RNG.normal(0, 0.2, channels).astype(np.float32), f"{prefix}_beta"),
        numpy_helper.from_array(RNG.normal(0, 0.5, channels).astype(np.float32), f"{prefix}_mean"),
        numpy_helper.from_array(
            RNG.uniform(0.2, 2.0, channels).astype(np.float32), f"{prefix}_var"
        ),
    ]


def bn(prefix: str, x: str, y: str) -> onnx.NodeProto:
    ins = [x] + [f"{prefix}_{p}" for p in ("gamma", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", ins, [y], name=prefix, epsilon=1e-3)


def nodes() -> list[onnx.NodeProto]:
    make = helper.make_node
    return [
        make("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        bn("bn1", "c1", "b1"),
        make("Relu", ["b1"], ["r1"], name="relu1"),
        make("Identity", ["r1"], ["i1"], name="identity1"),
        make("Conv", ["i1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        bn("bn2", "c2", "bb2"),
        make("Relu", ["bb2"], ["r2"], name="relu2"),
        make("ConvTranspose", ["r2", "wt"], ["ct"], name="deconv", group=2, strides=[2, 2]),
        bn("bn3", "ct", "b3"),
        make("Relu", ["b3"], ["r3"], name="relu3"),
        make("MaxPool", ["r3"], ["p3"], name="pool", kernel_shape=[4, 4], strides=[4, 4]),
        # Shape-only subgraph: [batch, C*H*W] computed from the tensor's static C, H, W.
        make("Shape", ["p3"], ["s_chw"], name="shape_chw", start=1),
        make("ReduceProd", ["s_chw"], ["s_feat"], name="feat_size", keepdims=1),
        make("Concat", ["minus_one", "s_feat"], ["s_target"], name="target", axis=0),
        make("Reshape", ["p3", "s_target"], ["flat"], name="flatten"),
        make("Gemm", ["flat", "wfc", "bfc"], ["fc"], name="fc", transB=1),
        bn("bn4", "fc", "b4"),
        make("Dropout", ["b4"], ["d4"], name="dropout"),
        make("Identity", ["d4"], ["logits"], name="identity_out"),
        # Dead weight.
        make("Conv", ["x", "w_dead"], ["dead1"], name="dead_conv"),
        make("Relu", ["dead1"], ["dead2"], name="dead_relu"),
        make(
            "Constant",
            [],
            ["dead_const"],
            name="dead_constant",
            value=numpy_helper.from_array(np.arange(6, dtype=np.float32), "dead_value"),
        ),
    ]


def unused_function() -> onnx.FunctionProto:
    body = [helper.make_node("Relu", ["a"], ["b"])]
    return helper.make_function(
        "com.example", "Unused", ["a"], ["b"], body, [helper.make_opsetid("", 17)]
    )


def build() -> onnx.ModelProto:
    initializers = [
        weight("w1", 8, 3, 3, 3),
        weight("w2", 8, 8, 3, 3),
        weight("b2", 8, scale=0.1),
        weight("wt", 8, 4, 2, 2),
        weight("wfc", 10, 8 * 4 * 4),
        weight("bfc", 10, scale=0.1),
        weight("w_dead", 4, 3, 1, 1),
        weight("unused_weight", 16, 16),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        *batchnorm_params("bn1", 8),
        *batchnorm_params("bn2", 8),
        *batchnorm_params("bn3", 8),
        *batchnorm_params("bn4", 10),
    ]
    graph = helper.make_graph(
        nodes(),
        "cleanup_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        functions=[unused_function()],
        producer_name="sparsec models/make_cleanup_model.py",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    onnx.save(build(), OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
