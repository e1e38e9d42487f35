"""A small CRNN-style text recognizer, and the forms its conv-to-sequence step takes in exports.

A CRNN is a conv backbone (Conv → BatchNorm → Relu, MaxPool 2×2 then (2, 1) so the height
shrinks and the width stays a sequence), a height-pooling step that turns ``[N, C, H, W]`` into
a sequence ``[N, W, C·H]``, a sequence model (here two MatMul + Relu layers, or Gemm on tokens)
and a CTC head (MatMul to ``CLASSES`` classes → Softmax over the classes). The channels of the
backbone reach the sequence model through the height-pooling step, so that step decides whether
they can be pruned. ``build(form, ...)`` writes each form exporters produce:

- ``squeeze``: H = 1, ``Squeeze(axis 2)`` → ``Transpose [0, 2, 1]`` (PaddleOCR's Im2Seq);
  Squeeze takes its axes as an attribute at opset ≤ 12, as an input from 13.
- ``reshape``: H = 1, ``Reshape [0, C, -1]`` → ``Transpose`` (a constant C entry to rewrite).
- ``merge``: H = 2, ``Reshape [0, C·H, -1]`` → ``Transpose`` (C merged with H, C outer).
- ``transpose_merge``: H = 2, ``Transpose [0, 3, 1, 2]`` → ``Reshape [0, -1, C·H]``.
- ``nhwc``: H = 2, ``Transpose [0, 3, 2, 1]`` → ``[N, W, H, C]`` → ``Reshape [0, -1, H·C]``
  (Keras / tf2onnx: C is the *inner* part of the merged axis).
- ``view``: H = 2, PyTorch's ``b, c, h, w = x.size(); x.view(b, c * h, w)`` exported with
  dynamic shapes: ``Shape`` → ``Gather`` → ``Mul(c, h)`` → ``Concat`` → ``Reshape``.
- ``tnc``: H = 1, ``Squeeze`` → ``Transpose [2, 0, 1]`` → ``[W, N, C]`` (time-major).
- ``tnc_view``: ``tnc``, then each layer as crnn.pytorch writes it: ``T, n, h = x.size();
  linear(x.view(T * n, h)).view(T, n, -1)`` (run-time dims: ``Mul(T, n)``, ``Concat``).
- ``pool_h``: H = 2, clovaai's ``AdaptiveAvgPool2d((None, 1))(x.permute(0, 3, 1, 2))
  .squeeze(3)``: ``Transpose [0, 3, 1, 2]`` → ``[N, W, C, H]`` → ``AveragePool`` kernel
  (1, H) → ``Squeeze(3)`` (C is a *spatial* axis of that pool, of kernel 1).
- ``tokens``: H = 2, ``Transpose [0, 3, 1, 2]`` → ``Reshape [-1, C·H]`` → Gemm layers on 2-D
  tokens.

Weights are seeded (``numpy.random.default_rng(seed)``, He-normal; BatchNorm statistics random,
never an identity). ``python models/make_crnn_model.py`` writes ``models/crnn.onnx``: the
``view`` form at opset 13 with a symbolic batch and width (input ``image`` [batch, 1, 16,
width], output ``probs`` [batch, width / 4, 37]). Only onnx and numpy are needed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from make_coupling_models import Builder as SeededBuilder
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent / "crnn.onnx"
FORMS = (
    "squeeze",
    "reshape",
    "merge",
    "transpose_merge",
    "nhwc",
    "view",
    "tnc",
    "tnc_view",
    "tokens",
    "pool_h",
)
CLASSES = 37  # CTC: blank + 10 digits + 26 letters
HEIGHT, WIDTH = 16, 32  # the input image (the width is a bound example when it is symbolic)


class Builder(SeededBuilder):
    """The coupling models' seeded builder, with the opset: Squeeze/Unsqueeze axes by opset."""

    def __init__(self, seed: int, opset: int) -> None:
        super().__init__(seed)
        self.opset = opset

    def ints(self, values) -> str:
        return self.const(np.array(values, np.int64), "i")

    def op(self, op_type: str, inputs, **attrs) -> str:
        """One node without a domain field (the committed model's bytes)."""
        out = self.name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=self.name(op_type), **attrs)
        )
        return out

    def axes_op(self, op_type: str, x: str, axes: list[int]) -> str:
        """Squeeze / Unsqueeze: axes as an attribute up to opset 12, an input from 13."""
        if self.opset >= 13:
            return self.op(op_type, [x, self.ints(axes)])
        return self.op(op_type, [x], axes=axes)


def conv_block(b: Builder, x: str, c_in: int, c_out: int, pool: tuple[int, int] | None) -> str:
    """Conv 3×3 → BatchNorm → Relu (→ MaxPool ``pool``, stride = kernel)."""
    y = b.op("Conv", [x, b.weight(c_out, c_in, 3, 3), b.vector(c_out)], pads=[1, 1, 1, 1])
    stats = [b.vector(c_out, 0.5, 1.5), b.vector(c_out), b.vector(c_out), b.vector(c_out, 0.5, 1.5)]
    y = b.op("Relu", [b.op("BatchNormalization", [y, *stats])])
    return y if pool is None else b.op("MaxPool", [y], kernel_shape=list(pool), strides=list(pool))


def backbone(b: Builder, height: int) -> tuple[str, int]:
    """[N, 1, 16, W] → [N, 48, height, W / 4] (height 1 or 2); returns (value, channels)."""
    x = conv_block(b, "image", 1, 16, (2, 2))
    x = conv_block(b, x, 16, 32, (2, 2))
    x = conv_block(b, x, 32, 48, (2, 1))
    return conv_block(b, x, 48, 48, (2, 1) if height == 1 else None), 48


def view_target(b: Builder, x: str) -> str:
    """``[b, c * h, w]`` from ``Shape(x)`` at run time (PyTorch's traced ``x.size()``)."""
    shape = b.op("Shape", [x])
    dims = [b.op("Gather", [shape, b.const(np.array(k, np.int64), "i")], axis=0) for k in range(4)]
    pieces = [dims[0], b.op("Mul", [dims[1], dims[2]]), dims[3]]
    return b.op("Concat", [b.axes_op("Unsqueeze", p, [0]) for p in pieces], axis=0)


def to_sequence(b: Builder, form: str) -> tuple[str, int, int]:
    """Backbone then the form's height-pooling step: (sequence, features, its rank)."""
    x, c = backbone(b, 1 if form in ("squeeze", "reshape", "tnc", "tnc_view") else 2)
    steps = {
        "squeeze": lambda: b.op("Transpose", [b.axes_op("Squeeze", x, [2])], perm=[0, 2, 1]),
        "reshape": lambda: b.op(
            "Transpose", [b.op("Reshape", [x, b.ints([0, c, -1])])], perm=[0, 2, 1]
        ),
        "merge": lambda: b.op(
            "Transpose", [b.op("Reshape", [x, b.ints([0, 2 * c, -1])])], perm=[0, 2, 1]
        ),
        "transpose_merge": lambda: b.op(
            "Reshape", [b.op("Transpose", [x], perm=[0, 3, 1, 2]), b.ints([0, -1, 2 * c])]
        ),
        "nhwc": lambda: b.op(
            "Reshape", [b.op("Transpose", [x], perm=[0, 3, 2, 1]), b.ints([0, -1, 2 * c])]
        ),
        "view": lambda: b.op(
            "Transpose", [b.op("Reshape", [x, view_target(b, x)])], perm=[0, 2, 1]
        ),
        "tnc": lambda: b.op("Transpose", [b.axes_op("Squeeze", x, [2])], perm=[2, 0, 1]),
        "tnc_view": lambda: b.op("Transpose", [b.axes_op("Squeeze", x, [2])], perm=[2, 0, 1]),
        "pool_h": lambda: b.axes_op(
            "Squeeze",
            b.op(
                "AveragePool",
                [b.op("Transpose", [x], perm=[0, 3, 1, 2])],
                kernel_shape=[1, 2],
                strides=[1, 2],
            ),
            [3],
        ),
        "tokens": lambda: b.op(
            "Reshape", [b.op("Transpose", [x], perm=[0, 3, 1, 2]), b.ints([-1, 2 * c])]
        ),
    }
    features = c if form in ("squeeze", "reshape", "tnc", "tnc_view", "pool_h") else 2 * c
    return steps[form](), features, 2 if form == "tokens" else 3


def time_major_linear(b: Builder, x: str, d_in: int, d_out: int) -> str:
    """``T, n, h = x.size(); linear(x.view(T * n, h)).view(T, n, -1)`` with run-time dims."""
    shape = b.op("Shape", [x])
    dims = [b.op("Gather", [shape, b.const(np.array(k, np.int64), "i")], axis=0) for k in range(3)]
    pieces = [b.op("Mul", [dims[0], dims[1]]), dims[2]]
    flat = b.op("Concat", [b.axes_op("Unsqueeze", p, [0]) for p in pieces], axis=0)
    y = b.op("Gemm", [b.op("Reshape", [x, flat]), b.weight(d_out, d_in), b.vector(d_out)], transB=1)
    back = [
        b.axes_op("Unsqueeze", dims[0], [0]),
        b.axes_op("Unsqueeze", dims[1], [0]),
        b.ints([-1]),
    ]
    return b.op("Reshape", [y, b.op("Concat", back, axis=0)])


def dense(b: Builder, x: str, d_in: int, d_out: int, rank: int, form: str) -> str:
    """MatMul + Add on the last axis of a sequence, Gemm (transB) on 2-D tokens."""
    if form == "tnc_view":
        return time_major_linear(b, x, d_in, d_out)
    if rank == 2:
        return b.op("Gemm", [x, b.weight(d_out, d_in), b.vector(d_out)], transB=1)
    return b.op("Add", [b.op("MatMul", [x, b.weight(d_in, d_out)]), b.vector(d_out)])


def build(
    form: str = "view", opset: int = 13, dynamic: bool = True, seed: int = 0, hidden: int = 64
) -> onnx.ModelProto:
    """The CRNN with ``form``'s height-pooling step; checked, shapes inferred."""
    b = Builder(seed, opset)
    seq, features, rank = to_sequence(b, form)
    for d_in, d_out in ((features, hidden), (hidden, hidden)):
        seq, features = b.op("Relu", [dense(b, seq, d_in, d_out, rank, form)]), d_out
    b.op("Softmax", [dense(b, seq, hidden, CLASSES, rank, form)], axis=rank - 1)
    b.nodes[-1].output[0] = "probs"
    batch, width = ("batch", "width") if dynamic else (1, WIDTH)
    steps = "steps" if dynamic else WIDTH // 4
    out_shape = {
        "tnc": [steps, batch],
        "tnc_view": [steps, batch],
        "tokens": ["tokens" if dynamic else steps],
    }
    graph = helper.make_graph(
        b.nodes,
        f"crnn_{form}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, HEIGHT, width])],
        [
            helper.make_tensor_value_info(
                "probs", TensorProto.FLOAT, [*out_shape.get(form, [batch, steps]), CLASSES]
            )
        ],
        b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="sparsec make_crnn_model",
    )
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    model = build("view", opset=13, dynamic=True, seed=0)
    onnx.save(model, OUT)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()[:12]
    print(f"{OUT.name}: {len(model.graph.node)} nodes, {OUT.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
