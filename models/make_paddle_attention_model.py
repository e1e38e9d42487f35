"""SVTR attention as paddle2onnx writes it (PP-OCRv4 recognizer), and the part-taking forms of
other exporters, for the head- and channel-pruning oracle tests.

Every model: input ``x`` [N, 3, 8, 32] → a Conv stem (3×3, stride 2) to C = 32 channels →
Paddle's ``flatten(2)`` (``Shape`` → ``Cast`` int32 → ``Slice`` [0:2] → ``Cast`` int64 →
``Concat`` with [-1] → ``Reshape``) → ``Transpose`` to [N, T, C] (T = 64) → two pre-norm SVTR
blocks → a written-out LayerNorm → a ``MatMul`` head to 10 classes → ``Softmax``. A block is,
node for node as in ``ch_PP-OCRv4_rec_infer.onnx``: the LayerNorm written out (ReduceMean, Sub,
Pow, ReduceMean, Add eps, Sqrt, Div, Mul γ, Add β); a packed QKV ``MatMul`` + ``Add`` bias; a
``Reshape`` to [0, T, 3, 4, 8] whose target is ``Concat`` of int32 ``Constant`` nodes each
``Cast`` to int64, T read at run time (``Slice(Cast(Shape(x), int32), 1, 2)``); ``Transpose``
[2, 0, 3, 1, 4]; the q, k, v parts; ``Transpose`` [0, 1, 3, 2] on k; the score ``MatMul``,
``Softmax`` (axis 3), the ``MatMul`` with v, ``Transpose`` [0, 2, 1, 3], a ``Reshape`` to
[0, T, 32] built the same way; the projection ``MatMul`` + ``Add``, the residual ``Add``, then
LayerNorm → ``MatMul`` 32 → 64 + bias → swish (``Mul(x, Sigmoid(x · 1))``) → ``MatMul`` + bias →
residual ``Add``. The first block multiplies q by the scale before the score ``MatMul``
(Paddle's form), the second multiplies the scores after it. 4 heads of dim 8.

Variants (``models/attention/paddle/``):

- ``svtr_block.onnx``: parts taken with ``Slice`` (axis 0, [k, k+1]) + ``Squeeze`` (axes [0]);
- ``svtr_gather.onnx``: parts taken with ``Gather`` (axis 0, scalar index k);
- ``svtr_split.onnx``: parts taken with one ``Split`` (axis 0) + a ``Squeeze`` each;
- ``svtr_shared_qkv.onnx``: the Slice form, both blocks reading one packed QKV weight and bias
  (the same initializer names consumed by two ``MatMul`` / ``Add`` nodes).

numpy + ``onnx.helper`` only (no paddle), opset 12 as paddle2onnx writes the recognizer, seeded
random weights (LayerNorm γ/β and every bias random: fresh ones hide bugs). Every file passes
``onnx.checker`` (full check), is < 200 KB and gives the same bytes on every run (a sha256
prefix is printed). Rerun to rebuild: ``python models/make_paddle_attention_model.py``.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from make_coupling_models import write_models
from make_ocr_models import Builder as OcrBuilder
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent / "attention" / "paddle"
OPSET, SEED = 12, 0
DIM, HEADS, HEAD_DIM, MLP, CLASSES = 32, 4, 8, 64, 10
MAX_FILE_BYTES = 200_000


class Builder(OcrBuilder):
    """The OCR models' seeded builder, with Paddle's constants (``Constant`` nodes) and the
    SVTR block's pieces, written for ``opset`` (axes as attributes or as inputs)."""

    def __init__(self, seed: int, opset: int = OPSET) -> None:
        super().__init__(seed)
        self.opset = opset

    def with_axes(self, op_type: str, x, axes: list[int], since: int) -> str:
        """``op_type`` over ``axes``: an attribute before opset ``since``, an input from it."""
        if self.opset < since:
            return self.op(op_type, [x], axes=axes)
        return self.op(op_type, [x, self.int64(axes)])

    def constant(self, values, dtype=np.int32) -> str:
        """A ``Constant`` node (paddle2onnx's ``fill_constant``), not an initializer."""
        out = self.name("fill_constant")
        tensor = onnx.numpy_helper.from_array(np.array(values, dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def int64(self, values) -> str:
        return self.constant(values, np.int64)

    def cast(self, x, to) -> str:
        return self.op("Cast", [x], to=to)

    def slice(self, x, start: int, end: int, axis: int = 0) -> str:
        starts, ends, axes = (self.int64([v]) for v in (start, end, axis))
        return self.op("Slice", [x, starts, ends, axes])

    def split(self, x, parts: int, axis: int = 0) -> list[str]:
        outs = [self.name("split") for _ in range(parts)]
        node = self.name("Split")
        counted = {"num_outputs": parts} if self.opset >= 18 else {}
        self.nodes.append(helper.make_node("Split", [x], outs, name=node, axis=axis, **counted))
        return outs

    def linear(self, x, c_in: int, c_out: int, weights=None) -> str:
        """``MatMul`` + ``Add`` bias (a Paddle ``Linear``); ``weights`` names shared ones."""
        w, b = weights or self.linear_weights(c_in, c_out)
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def linear_weights(self, c_in: int, c_out: int) -> tuple[str, str]:
        w = self.rng.normal(0, np.sqrt(1 / c_in), (c_in, c_out)).astype(np.float32)
        return self.const(w), self.vector(c_out)

    def layer_norm(self, x, c: int) -> str:
        """LayerNorm over the last axis, written out as paddle2onnx does."""
        centred = self.op("Sub", [x, self.with_axes("ReduceMean", x, [-1], 18)])
        power = self.op("Pow", [centred, self.const(np.array(2.0, np.float32), "c")])
        variance = self.with_axes("ReduceMean", power, [-1], 18)
        eps = self.const(np.array(1e-5, np.float32), "c")
        normed = self.op("Div", [centred, self.op("Sqrt", [self.op("Add", [variance, eps])])])
        gamma = self.op("Mul", [normed, self.vector(c, 0.5, 1.5)])
        return self.op("Add", [gamma, self.vector(c)])

    def swish(self, x) -> str:
        one = self.const(np.array([1.0], np.float32), "c")
        return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, one])])])

    def run_time_target(self, seq: str, before: list[int], after: list[int]) -> str:
        """``Concat(Cast(c), ..., Cast(T), Cast(c), ...)`` with int32 constants (a Reshape target
        holding the run-time sequence length ``seq``, an int32 [1])."""
        pieces = [self.constant([v]) for v in before] + [seq] + [self.constant([v]) for v in after]
        return self.op("Concat", [self.cast(p, TensorProto.INT64) for p in pieces], axis=0)


def take_slice(b: Builder, packed: str, k: int) -> str:
    return b.with_axes("Squeeze", b.slice(packed, k, k + 1), [0], 13)


def take_gather(b: Builder, packed: str, k: int) -> str:
    return b.op("Gather", [packed, b.int64(k)], axis=0)


def parts_of(b: Builder, packed: str, form: str) -> list[str]:
    """q, k, v from the [3, N, H, T, D] tensor, taken the way ``form`` writes it."""
    if form == "split":
        return [b.with_axes("Squeeze", part, [0], 13) for part in b.split(packed, 3)]
    take = take_slice if form == "slice" else take_gather
    return [take(b, packed, k) for k in range(3)]


def attention(b: Builder, x: str, form: str, scale_first: bool, qkv=None) -> str:
    """SVTR ``Attention``: packed QKV, heads split by Reshape + Transpose, proj."""
    seq = b.slice(b.cast(b.op("Shape", [x]), TensorProto.INT32), 1, 2)
    packed = b.linear(x, DIM, 3 * DIM, qkv)
    split = b.op("Reshape", [packed, b.run_time_target(seq, [0], [3, HEADS, HEAD_DIM])])
    q, k, v = parts_of(b, b.op("Transpose", [split], perm=[2, 0, 3, 1, 4]), form)
    scale = b.const(np.array([HEAD_DIM**-0.5], np.float32), "c")
    q = b.op("Mul", [q, scale]) if scale_first else q
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = scores if scale_first else b.op("Mul", [scores, scale])
    context = b.op("MatMul", [b.op("Softmax", [scores], axis=3), v])
    heads = b.op("Transpose", [context], perm=[0, 2, 1, 3])
    merged = b.op("Reshape", [heads, b.run_time_target(seq, [0], [DIM])])
    return b.linear(merged, DIM, DIM)


def svtr_block(b: Builder, x: str, form: str, scale_first: bool, qkv=None) -> str:
    """Pre-norm: x + attention(norm1(x)), then x + mlp(norm2(x))."""
    x = b.op("Add", [x, attention(b, b.layer_norm(x, DIM), form, scale_first, qkv)])
    hidden = b.swish(b.linear(b.layer_norm(x, DIM), DIM, MLP))
    return b.op("Add", [x, b.linear(hidden, MLP, DIM)])


def flatten2(b: Builder, x: str) -> str:
    """Paddle's ``x.flatten(2)`` with the shape's int32 round trip."""
    dims = b.cast(b.slice(b.cast(b.op("Shape", [x]), TensorProto.INT32), 0, 2), TensorProto.INT64)
    return b.op("Reshape", [x, b.op("Concat", [dims, b.int64([-1])], axis=0)])


def svtr(form: str = "slice", shared: bool = False, opset: int = OPSET) -> onnx.ModelProto:
    """The model of ``form``; the committed files are at opset 12, the tests build 13 and 18."""
    b = Builder(SEED, opset)
    stem = b.swish(b.bn(b.conv("x", 3, DIM, 3, 2), DIM))
    x = b.op("Transpose", [flatten2(b, stem)], perm=[0, 2, 1])
    qkv = b.linear_weights(DIM, 3 * DIM) if shared else None
    x = svtr_block(b, x, form, True, qkv)
    x = svtr_block(b, x, form, False, qkv)
    w = b.rng.normal(0, np.sqrt(1 / DIM), (DIM, CLASSES)).astype(np.float32)
    out = b.op("Softmax", [b.op("MatMul", [b.layer_norm(x, DIM), b.const(w)])], axis=2)
    return _model(b, out, f"svtr_{form}" + ("_shared_qkv" if shared else ""))


def _model(b: Builder, out: str, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        b.nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 32])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 64, CLASSES])],
        b.inits,
    )
    opsets = [helper.make_opsetid("", b.opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="sparsec")
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


MODELS = {
    "svtr_block": partial(svtr, "slice"),
    "svtr_gather": partial(svtr, "gather"),
    "svtr_split": partial(svtr, "split"),
    "svtr_shared_qkv": partial(svtr, "slice", shared=True),
}


def main() -> None:
    write_models(OUT, MODELS)
    for name in MODELS:
        path = OUT / f"{name}.onnx"
        data = path.read_bytes()
        assert len(data) < MAX_FILE_BYTES, (path, len(data))
        print(
            f"{path.name:<22}{len(data):>8} bytes  sha256 {hashlib.sha256(data).hexdigest()[:12]}"
        )


if __name__ == "__main__":
    main()
