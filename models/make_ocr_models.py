"""Small graphs of the forms OCR exporters write, for the channel-pruning oracle tests.

``db_detector.onnx``: a PP-OCR-style DB text detector as paddle2onnx writes it at opset 11: a
MobileNetV3-like backbone (Conv → BatchNorm → hardswish, written ``x · HardSigmoid(x)`` below
opset 14; inverted residuals with a depthwise Conv and squeeze-excite: ``GlobalAveragePool`` →
Conv → Relu → Conv → ``HardSigmoid`` (slope 0.2) → ``Mul``), an RSE-FPN neck (1×1 laterals with
a squeeze-excite shortcut, nearest ``Resize`` by ``scales`` with an empty ``roi`` input, ``Add``,
then per-level 3×3 convs upsampled by a constant ``sizes`` vector that names the channel count,
and a channel ``Concat``), and the DB head: Conv → BatchNorm → Relu → ``ConvTranspose`` (stride
2, bias) → BatchNorm → Relu → ``ConvTranspose`` (stride 2, one map) → ``Sigmoid``.

Built with ``onnx.helper`` from seeded random weights (BatchNorm statistics randomised, so no
layer is an identity) and written to ``models/ocr/`` (a few hundred KB). Rerun to rebuild:
``python models/make_ocr_models.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from make_coupling_models import Builder as SeededBuilder
from make_coupling_models import write_models
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent / "ocr"
OPSET = 11


class Builder(SeededBuilder):
    """The coupling models' seeded builder with Paddle's naming (``conv_3``) and the detector's
    blocks."""

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def floats(self, values) -> str:
        return self.const(np.array(values, np.float32), "c")

    def op(self, op_type: str, inputs, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def conv(self, x, c_in, c_out, k=1, stride=1, group=1, bias=False) -> str:
        fan_in = c_in // group * k * k
        w = self.rng.normal(0, np.sqrt(2 / fan_in), (c_out, c_in // group, k, k))
        inputs = [x, self.const(w.astype(np.float32))] + ([self.vector(c_out)] if bias else [])
        attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [k // 2] * 4}
        return self.op("Conv", inputs, group=group, **attrs)

    def conv_transpose(self, x, c_in, c_out) -> str:
        w = self.rng.normal(0, np.sqrt(2 / c_in), (c_in, c_out, 2, 2)).astype(np.float32)
        inputs = [x, self.const(w), self.vector(c_out)]
        return self.op("ConvTranspose", inputs, kernel_shape=[2, 2], strides=[2, 2])

    def bn(self, x, c) -> str:
        params = [
            self.vector(c, 0.5, 1.5),
            self.vector(c),
            self.vector(c),
            self.vector(c, 0.5, 1.5),
        ]
        return self.op("BatchNormalization", [x, *params], epsilon=1e-5)

    def hardswish(self, x) -> str:
        return self.op("Mul", [x, self.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])

    def relu(self, x) -> str:
        return self.op("Relu", [x])

    def se(self, x, c) -> str:
        pooled = self.op("GlobalAveragePool", [x])
        mid = self.relu(self.conv(pooled, c, c // 4, bias=True))
        gate = self.op("HardSigmoid", [self.conv(mid, c // 4, c, bias=True)], alpha=0.2, beta=0.5)
        return self.op("Mul", [x, gate])

    def resize_scales(self, x, factor: int) -> str:
        scales = self.floats([1, 1, factor, factor])
        return self.op("Resize", [x, self.floats([]), scales], mode="nearest")

    def resize_sizes(self, x, shape) -> str:
        sizes = self.const(np.array(shape, np.int64), "sizes")
        return self.op("Resize", [x, self.floats([]), self.floats([]), sizes], mode="nearest")


def block(b: Builder, x, c_in, expand, c_out, k, stride, se, act) -> str:
    """An inverted residual: 1×1 expand → depthwise k×k → (squeeze-excite) → 1×1 project."""
    y = act(b.bn(b.conv(x, c_in, expand), expand))
    y = act(b.bn(b.conv(y, expand, expand, k, stride, group=expand), expand))
    y = b.se(y, expand) if se else y
    y = b.bn(b.conv(y, expand, c_out), c_out)
    return b.op("Add", [x, y]) if c_in == c_out and stride == 1 else y


def backbone(b: Builder, x) -> list[str]:
    """Stride 4, 8 and 16 features of 16, 24 and 32 channels."""
    y = b.hardswish(b.bn(b.conv(x, 3, 8, 3, 2), 8))
    y = block(b, y, 8, 16, 16, 3, 2, True, b.relu)
    c2 = block(b, y, 16, 32, 16, 3, 1, False, b.relu)
    y = block(b, c2, 16, 48, 24, 5, 2, True, b.hardswish)
    c3 = block(b, y, 24, 48, 24, 5, 1, True, b.hardswish)
    c4 = block(b, c3, 24, 64, 32, 3, 2, True, b.hardswish)
    return [c2, c3, c4]


def rse(b: Builder, x, c_in, c_out, k) -> str:
    """A conv whose output adds its own squeeze-excite (RSE layer with shortcut)."""
    y = b.conv(x, c_in, c_out, k)
    return b.op("Add", [y, b.se(y, c_out)])


def neck(b: Builder, features, size: int, width: int = 32) -> str:
    c2, c3, c4 = features
    i2, i3, i4 = rse(b, c2, 16, width, 1), rse(b, c3, 24, width, 1), rse(b, c4, 32, width, 1)
    p3 = b.op("Add", [i3, b.resize_scales(i4, 2)])
    p2 = b.op("Add", [i2, b.resize_scales(p3, 2)])
    quarter, full = width // 4, [1, width // 4, size // 4, size // 4]
    o4, o3, o2 = (rse(b, p, width, quarter, 3) for p in (i4, p3, p2))
    up4, up3 = b.resize_sizes(o4, full), b.resize_sizes(o3, full)
    return b.op("Concat", [up4, up3, o2], axis=1)


def db_head(b: Builder, x, c_in: int) -> str:
    mid = c_in // 4
    y = b.relu(b.bn(b.conv(x, c_in, mid, 3), mid))
    y = b.relu(b.bn(b.conv_transpose(y, mid, mid), mid))
    return b.op("Sigmoid", [b.conv_transpose(y, mid, 1)])


def db_detector(size: int = 64) -> onnx.ModelProto:
    b = Builder(0)
    fused = neck(b, backbone(b, "x"), size)
    out = db_head(b, fused, 24)
    graph = helper.make_graph(
        b.nodes,
        "db_detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 1, size, size])],
        b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sparsec"
    )
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


MODELS = {"db_detector": db_detector}


def main() -> None:
    write_models(OUT, MODELS)


if __name__ == "__main__":
    main()
