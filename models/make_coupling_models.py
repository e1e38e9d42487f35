"""Small graphs, one per channel-coupling kind, for the channel-pruning oracle tests.

Each model is built with ``onnx.helper`` from seeded random weights (BatchNorm and LayerNorm
parameters randomised too, so no layer is an identity) and written to ``models/couplings/``.
They are committed (a few KB each); rerun to rebuild: ``python models/make_coupling_models.py``.

Kinds: residual Add, Concat + Split, grouped + depthwise Conv, squeeze-excite, conv → Flatten →
Gemm, LayerNorm over channels between Transposes (ConvNeXt-style), a written-out LayerNorm,
Slice / Gather / Reshape on the channel axis, GroupNorm + ConvTranspose + Resize + Pad, a
CNN with a custom-domain node in the middle (a barrier), and an AlexNet-style stem with two LRNs
(lossy couplings: prunable with --lossy-couplings only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "couplings"


class Builder:
    """Appends nodes and seeded initializers; every op returns its output name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array, base: str = "w") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return self.const(self.rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32))

    def vector(self, size: int, low: float = -0.5, high: float = 0.5) -> str:
        return self.const(self.rng.uniform(low, high, size).astype(np.float32), "v")

    def op(self, op_type: str, inputs, outputs: int = 1, domain: str = "", **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), names, name=self.name(op_type), domain=domain, **attrs
            )
        )
        return names[0] if outputs == 1 else names

    def conv(
        self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1, bias: bool = True
    ) -> str:
        inputs = [x, self.weight(c_out, c_in // group, k, k)] + (
            [self.vector(c_out)] if bias else []
        )
        return self.op("Conv", inputs, pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        return self.op(
            "BatchNormalization",
            [x, self.vector(c, 0.5, 1.5), self.vector(c), self.vector(c), self.vector(c, 0.5, 1.5)],
        )

    def model(self, x_shape, out: str, opset: int = 17, domains=()) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "coupling",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 5])],
            self.inits,
        )
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
        model = helper.make_model(
            graph, opset_imports=opsets, producer_name="sparsec make_coupling_models"
        )
        model.ir_version = 8 if opset < 21 else 10
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def head(b: Builder, x: str, c: int) -> str:
    """Global pool → Flatten → Gemm to 5 classes (the graph output keeps 5 channels)."""
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    return b.op("Gemm", [pooled, b.weight(5, c), b.vector(5)], transB=1)


def residual_add() -> onnx.ModelProto:
    b = Builder(1)
    stem = b.op("Relu", [b.bn(b.conv("input", 3, 16, bias=False), 16)])
    branch = b.op("Relu", [b.bn(b.conv(stem, 16, 16), 16)])
    out = b.op("Relu", [b.op("Add", [b.conv(branch, 16, 16), stem])])
    return b.model([1, 3, 8, 8], head(b, b.conv(out, 16, 12), 12))


def concat_split() -> onnx.ModelProto:
    b = Builder(2)
    left, right = b.conv("input", 3, 8), b.conv("input", 3, 12)
    joined = b.op("Relu", [b.op("Concat", [left, right], axis=1)])
    mixed = b.conv(joined, 20, 16)
    first, second = b.op(
        "Split", [mixed, b.const(np.array([6, 10], np.int64), "split")], outputs=2, axis=1
    )
    merged = b.op("Concat", [b.conv(first, 6, 8), b.conv(second, 10, 8)], axis=1)
    return b.model([1, 3, 8, 8], head(b, b.op("Relu", [merged]), 16))


def grouped_depthwise() -> onnx.ModelProto:
    b = Builder(3)
    x = b.op("Relu", [b.conv("input", 3, 16)])
    grouped = b.op("Relu", [b.conv(x, 16, 16, group=4)])
    depthwise = b.op("Relu", [b.conv(grouped, 16, 32, group=16)])  # channel multiplier 2
    return b.model([1, 3, 8, 8], head(b, b.conv(depthwise, 32, 16, k=1), 16))


def squeeze_excite() -> onnx.ModelProto:
    b = Builder(4)
    x = b.op("Relu", [b.conv("input", 3, 16)])
    squeezed = b.op("Relu", [b.conv(b.op("GlobalAveragePool", [x]), 16, 8, k=1)])
    gate = b.op("Sigmoid", [b.conv(squeezed, 8, 16, k=1)])
    return b.model([1, 3, 8, 8], head(b, b.conv(b.op("Mul", [x, gate]), 16, 12), 12))


def conv_flatten_gemm() -> onnx.ModelProto:
    b = Builder(5)
    x = b.op("Relu", [b.conv("input", 3, 8)])
    pooled = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 8 x 4 x 4
    hidden = b.op(
        "Relu",
        [b.op("Gemm", [b.op("Flatten", [pooled]), b.weight(32, 128), b.vector(32)], transB=1)],
    )
    return b.model([1, 3, 8, 8], b.op("Gemm", [hidden, b.weight(32, 5), b.vector(5)]))


def layernorm_transpose() -> onnx.ModelProto:
    """ConvNeXt-style block: LayerNorm and the MLP run channels-last between Transposes."""
    b = Builder(6)
    x = b.conv("input", 3, 16)
    last = b.op("Transpose", [x], perm=[0, 2, 3, 1])
    normed = b.op("LayerNormalization", [last, b.vector(16, 0.5, 1.5), b.vector(16)], axis=-1)
    hidden = b.op("Relu", [b.op("Add", [b.op("MatMul", [normed, b.weight(16, 48)]), b.vector(48)])])
    back = b.op("Transpose", [b.op("MatMul", [hidden, b.weight(48, 16)])], perm=[0, 3, 1, 2])
    return b.model([1, 3, 8, 8], head(b, b.op("Add", [x, back]), 16))


def written_out_layernorm() -> onnx.ModelProto:
    """Token MLP with LayerNorm written out (ReduceMean, Sub, Pow, Sqrt, Div) over channels."""
    b = Builder(7)
    tokens = b.op("Reshape", ["input", b.const(np.array([1, 4, 12], np.int64), "shape")])
    x = b.op("Add", [b.op("MatMul", [tokens, b.weight(12, 24)]), b.vector(24)])
    mean = b.op("ReduceMean", [x], axes=[-1])
    centred = b.op("Sub", [x, mean])
    variance = b.op(
        "ReduceMean", [b.op("Pow", [centred, b.const(np.array(2.0, np.float32), "two")])], axes=[-1]
    )
    std = b.op("Sqrt", [b.op("Add", [variance, b.const(np.array(1e-5, np.float32), "eps")])])
    normed = b.op(
        "Add", [b.op("Mul", [b.op("Div", [centred, std]), b.vector(24, 0.5, 1.5)]), b.vector(24)]
    )
    hidden = b.op("Relu", [b.op("MatMul", [normed, b.weight(24, 32)])])
    out = b.op("Add", [x, b.op("MatMul", [hidden, b.weight(32, 24)])])
    pooled = b.op("ReduceMean", [out], axes=[1], keepdims=0)
    return b.model([1, 48], b.op("MatMul", [pooled, b.weight(24, 5)]))


def slice_gather_reshape() -> onnx.ModelProto:
    b = Builder(8)
    x = b.op("Relu", [b.conv("input", 3, 16)])
    upper = b.op(
        "Slice",
        [
            x,
            b.const(np.array([4], np.int64)),
            b.const(np.array([16], np.int64)),
            b.const(np.array([1], np.int64)),
        ],
    )
    picked = b.op("Gather", [x, b.const(np.array([0, 2, 3, 5], np.int64), "idx")], axis=1)
    joined = b.op("Concat", [b.conv(upper, 12, 8), b.conv(picked, 4, 8)], axis=1)
    flat = b.op("Reshape", [joined, b.const(np.array([1, 16, 64], np.int64), "shape")])
    pooled = b.op("ReduceMean", [flat], axes=[2], keepdims=0)
    return b.model([1, 3, 8, 8], b.op("MatMul", [pooled, b.weight(16, 5)]))


def groupnorm_upsample() -> onnx.ModelProto:
    b = Builder(9)
    x = b.op(
        "GroupNormalization",
        [b.conv("input", 3, 16), b.vector(16, 0.5, 1.5), b.vector(16)],
        num_groups=4,
    )
    up = b.op(
        "ConvTranspose", [b.op("Relu", [x]), b.weight(16, 8, 2, 2), b.vector(8)], strides=[2, 2]
    )
    resized = b.op(
        "Resize", [up, "", b.const(np.array([1, 1, 2, 2], np.float32), "scales")], mode="nearest"
    )
    padded = b.op("Pad", [resized, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")])
    return b.model([1, 3, 4, 4], head(b, b.conv(padded, 8, 12), 12), opset=21)


def custom_barrier() -> onnx.ModelProto:
    """A CNN with a custom-domain node between two convs (onnxruntime knows it as com.microsoft
    FusedConv-free ``Gelu``): channels through it must stay untouched."""
    b = Builder(10)
    x = b.op("Relu", [b.conv("input", 3, 16)])
    custom = b.op("Gelu", [b.conv(x, 16, 16)], domain="com.microsoft")
    y = b.op("Relu", [b.conv(custom, 16, 16)])
    return b.model([1, 3, 8, 8], head(b, b.conv(y, 16, 12), 12), domains=("com.microsoft",))


def lrn_stem() -> onnx.ModelProto:
    """AlexNet / ZFNet's stem: Conv → Relu → LRN → MaxPool → Conv → Relu → LRN → Conv, then
    MaxPool → Flatten → Gemm → Relu → Gemm. The LRNs mix neighbouring channels strongly (alpha
    0.5, unlike AlexNet's 1e-4), so pruning through them changes the kept channels measurably."""
    b = Builder(11)
    lrn = {"size": 5, "alpha": 0.5, "beta": 0.75, "bias": 2.0}
    x = b.op("LRN", [b.op("Relu", [b.conv("input", 3, 16)])], **lrn)
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("LRN", [b.op("Relu", [b.conv(x, 16, 24)])], **lrn)
    x = b.op("MaxPool", [b.op("Relu", [b.conv(x, 24, 32)])], kernel_shape=[2, 2], strides=[2, 2])
    hidden = b.op("Gemm", [b.op("Flatten", [x]), b.weight(16, 32 * 4 * 4), b.vector(16)], transB=1)
    return b.model(
        [1, 3, 16, 16],
        b.op("Gemm", [b.op("Relu", [hidden]), b.weight(5, 16), b.vector(5)], transB=1),
    )


MODELS = {
    fn.__name__: fn
    for fn in (
        residual_add,
        concat_split,
        grouped_depthwise,
        squeeze_excite,
        conv_flatten_gemm,
        layernorm_transpose,
        written_out_layernorm,
        slice_gather_reshape,
        groupnorm_upsample,
        custom_barrier,
        lrn_stem,
    )
}


def write_models(out: Path, models: dict) -> None:
    """Build, check (full) and save every ``{name: build}`` of ``models`` into ``out``."""
    out.mkdir(exist_ok=True)
    for name, build in models.items():
        model = build()
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, out / f"{name}.onnx")
        print(f"{name}: {len(model.graph.node)} nodes")


def main() -> None:
    write_models(OUT, MODELS)


if __name__ == "__main__":
    main()
