"""Seeded random ONNX graphs for the fuzzing harness, as a list of *block specs*.

A graph is ``{"opset", "batch", "weights", "input", "blocks": [spec, ...]}``; every spec is a
small JSON-ready dict (``{"op": "conv", "seed": 123, ...}``) that :func:`build` turns into nodes
on the running activation (``State``: one tensor, its concrete shape and its kind: ``image``
NCHW, ``seq`` [B, S, D] or ``flat`` [B, F]). A spec whose kind does not match the running state
is skipped, and every parameter is resolved against the state (a group count that no longer
divides the channels falls back to 1), so *any* sub-list of a graph's blocks still builds a
valid graph: that is what the minimizer relies on. Weights come from ``default_rng(spec seed)``:
normal weights, norms with random scale, bias, mean and variance (never an identity).

The block kinds cover the ops sparsec's axis rules know: Conv (grouped, depthwise, dilated,
strided), Gemm and MatMul, Batch/Layer/GroupNormalization and a written-out LayerNorm,
Add/Mul with per-channel constants, Concat, Split, Slice, Gather, Reshape (channel shuffle),
Flatten, Transpose, Squeeze/Unsqueeze, Resize, Pad, Max/Average/GlobalAverage pooling,
activations, residual and squeeze-excite shapes, a shared weight, If and Loop bodies, an
attention block (Q/K/V MatMul, heads by Reshape/Transpose, Softmax, output projection), an
MLP, and (behind ``qdq=True``) QuantizeLinear/DequantizeLinear pairs on weights and activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("Relu", "Sigmoid", "HardSwish", "LeakyRelu", "Tanh", "HardSigmoid", "Elu", "Softplus", "Clip",
               "Gelu", "Mish")
OPSETS = (13, 17, 18, 21)


@dataclass
class State:
    name: str
    shape: list[int]
    kind: str  # image | seq | flat


class Builder:
    """Nodes and initializers of one graph; every helper returns its output name."""

    def __init__(self, graph: dict) -> None:
        self.opset, self.symbolic = graph["opset"], graph["batch"] == "symbolic"
        self.weights = graph["weights"]
        self.nodes: list = []
        self.inits: list = []
        self.outputs: list = []
        self.count = 0
        self.rng = np.random.default_rng(0)

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, array, base: str = "c", weight: bool = False) -> str:
        name = self.name(base)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        as_node = self.weights == "constant" or (self.weights == "mixed" and self.count % 2 == 0)
        if weight and as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("Constant"), value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def ints(self, values) -> str:
        return self.const(np.array(values, np.int64), "i")

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, np.float32), "s")

    def op(self, op_type: str, inputs, outputs: int = 1, nodes: list | None = None, **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attrs)
        (self.nodes if nodes is None else nodes).append(node)
        return names[0] if outputs == 1 else names

    def weight(self, *shape) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return self.const(self.rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32), "w", weight=True)

    def vector(self, size: int, low: float = -0.5, high: float = 0.5) -> str:
        return self.const(self.rng.uniform(low, high, size).astype(np.float32), "v", weight=True)

    # opset-dependent forms
    def reduce_mean(self, x: str, axes: list[int], keepdims: int = 1) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(axes)], keepdims=keepdims)
        return self.op("ReduceMean", [x], axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(axes)])

    def squeeze(self, x: str, axes: list[int]) -> str:
        return self.op("Squeeze", [x, self.ints(axes)])

    def reshape(self, x: str, target: list[int]) -> str:
        """``target``'s batch entry becomes 0 (copy) when the batch is symbolic."""
        target = list(target)
        if self.symbolic:
            target[0] = 0
        return self.op("Reshape", [x, self.ints(target)])


# ---------------------------------------------------------------- weights, optionally quantized
def weight(b: Builder, spec: dict, shape: tuple[int, ...], axis: int = 0) -> str:
    """A float weight, or with ``spec["qdq"]`` an int8 one through DequantizeLinear (per-axis
    scales along ``axis`` when ``spec["per_axis"]``)."""
    if not spec.get("qdq"):
        return b.weight(*shape)
    real = b.rng.normal(0, np.sqrt(2 / max(1, int(np.prod(shape[1:])))), shape).astype(np.float32)
    if spec.get("per_axis"):
        other = tuple(i for i in range(len(shape)) if i != axis)
        scale = (np.abs(real).max(axis=other) / 127 + 1e-3).astype(np.float32)
        expanded = scale.reshape([-1 if i == axis else 1 for i in range(len(shape))])
        q = np.clip(np.round(real / expanded), -127, 127).astype(np.int8)
        zero = np.zeros(shape[axis], np.int8)
        return b.op("DequantizeLinear", [b.const(q, "q"), b.const(scale, "qs"), b.const(zero, "qz")], axis=axis)
    scale = np.float32(np.abs(real).max() / 127 + 1e-3)
    q = np.clip(np.round(real / scale), -127, 127).astype(np.int8)
    return b.op("DequantizeLinear", [b.const(q, "q"), b.const(np.array(scale), "qs"), b.const(np.array(0, np.int8), "qz")])


def qdq_activation(b: Builder, x: str, scale: float) -> str:
    q = b.op("QuantizeLinear", [x, b.scalar(scale), b.const(np.array(128, np.uint8), "qz")])
    return b.op("DequantizeLinear", [q, b.scalar(scale), b.const(np.array(128, np.uint8), "qz")])


# ---------------------------------------------------------------- image blocks
def conv(b: Builder, s: State, spec: dict, c_out: int | None = None, x: str | None = None) -> State:
    """Conv with ``spec``'s kernel, dilation, stride and grouping, resolved against ``s``."""
    c_in, (h, w) = s.shape[1], s.shape[2:]
    c_out = c_out or spec.get("out", c_in)
    group = _group(spec.get("group", 1), c_in, c_out)
    if spec.get("group") == "depthwise":
        c_out = c_in * spec.get("multiplier", 1)
        group = c_in
    k, d = spec.get("k", 3), spec.get("dilation", 1)
    stride = spec.get("stride", 1) if min(h, w) >= 4 else 1
    pad = d * (k - 1) // 2
    inputs = [x or s.name, weight(b, spec, (c_out, c_in // group, k, k))]
    if spec.get("bias", True):
        inputs.append(b.vector(c_out))
    out = b.op("Conv", inputs, kernel_shape=[k, k], pads=[pad] * 4, dilations=[d, d], strides=[stride] * 2,
               group=group)
    size = [(n + 2 * pad - d * (k - 1) - 1) // stride + 1 for n in (h, w)]
    return State(out, [s.shape[0], c_out, *size], "image")


def _group(group, c_in: int, c_out: int) -> int:
    if isinstance(group, int) and group > 1 and c_in % group == 0 and c_out % group == 0:
        return group
    return 1


def act(b: Builder, s: State, spec: dict) -> State:
    kind = spec.get("act", "Relu")
    if kind == "Gelu" and b.opset < 20 or kind == "Mish" and b.opset < 18 or kind == "HardSwish" and b.opset < 14:
        kind = "HardSigmoid"
    if kind == "Clip":
        out = b.op("Clip", [s.name, b.scalar(-1.0), b.scalar(2.0)])
    elif kind == "LeakyRelu":
        out = b.op("LeakyRelu", [s.name], alpha=0.1)
    else:
        out = b.op(kind, [s.name])
    return State(out, s.shape, s.kind)


def bn(b: Builder, s: State, spec: dict) -> State:
    c = s.shape[1]
    out = b.op("BatchNormalization", [s.name, b.vector(c, 0.5, 1.5), b.vector(c), b.vector(c), b.vector(c, 0.5, 1.5)])
    return State(out, s.shape, s.kind)


def groupnorm(b: Builder, s: State, spec: dict) -> State:
    c, groups = s.shape[1], spec.get("groups", 2)
    if b.opset < 21 or c % groups:  # GroupNormalization-18 (per-group scale) is deprecated
        return bn(b, s, spec)
    out = b.op("GroupNormalization", [s.name, b.vector(c, 0.5, 1.5), b.vector(c)], num_groups=groups)
    return State(out, s.shape, s.kind)


def layernorm_nhwc(b: Builder, s: State, spec: dict) -> State:
    """LayerNorm over channels between Transposes (ConvNeXt)."""
    last = b.op("Transpose", [s.name], perm=[0, 2, 3, 1])
    normed = layernorm(b, State(last, [s.shape[i] for i in (0, 2, 3, 1)], "seq"), spec)
    return State(b.op("Transpose", [normed.name], perm=[0, 3, 1, 2]), s.shape, "image")


def pool(b: Builder, s: State, spec: dict) -> State:
    kind, k = spec.get("pool", "MaxPool"), spec.get("k", 2)
    h, w = s.shape[2:]
    if min(h, w) < k + 1:
        return s
    stride, pad = spec.get("stride", 2), (k // 2 if spec.get("pad") else 0)
    attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [pad] * 4}
    if kind == "AveragePool":
        attrs["count_include_pad"] = spec.get("include_pad", 0)
    out = b.op(kind, [s.name], **attrs)
    size = [(n + 2 * pad - k) // stride + 1 for n in (h, w)]
    return State(out, [*s.shape[:2], *size], "image")


def residual(b: Builder, s: State, spec: dict) -> State:
    same = {**spec, "stride": 1, "multiplier": 1}
    inner = act(b, bn(b, conv(b, s, same, c_out=s.shape[1]), spec), spec)
    inner = conv(b, inner, same, c_out=s.shape[1])
    return State(b.op("Add", [inner.name, s.name] if spec.get("order") else [s.name, inner.name]), s.shape, "image")


def squeeze_excite(b: Builder, s: State, spec: dict) -> State:
    c = s.shape[1]
    pooled = State(b.op("GlobalAveragePool", [s.name]), [s.shape[0], c, 1, 1], "image")
    mid = act(b, conv(b, pooled, {"k": 1, "qdq": spec.get("qdq")}, c_out=max(2, c // spec.get("ratio", 2))), spec)
    gate = b.op(spec.get("gate", "Sigmoid"), [conv(b, mid, {"k": 1}, c_out=c).name])
    return State(b.op("Mul", [s.name, gate]), s.shape, "image")


def concat_branches(b: Builder, s: State, spec: dict) -> State:
    left = conv(b, s, {"k": 1, "out": spec.get("left", 4)})
    right = conv(b, s, {"k": 3, "out": spec.get("right", 6), "dilation": spec.get("dilation", 1)})
    parts = [left.name, right.name] + ([s.name] if spec.get("keep_input") else [])
    c = left.shape[1] + right.shape[1] + (s.shape[1] if spec.get("keep_input") else 0)
    return State(b.op("Concat", parts, axis=1), [s.shape[0], c, *s.shape[2:]], "image")


def split_merge(b: Builder, s: State, spec: dict) -> State:
    c = s.shape[1]
    if c < 2:
        return s
    first = max(1, min(c - 1, int(round(c * spec.get("fraction", 0.5)))))
    a, z = b.op("Split", [s.name, b.ints([first, c - first])], outputs=2, axis=1)
    a = conv(b, State(a, [s.shape[0], first, *s.shape[2:]], "image"), {"k": 1, "out": spec.get("out", 4)})
    z = conv(b, State(z, [s.shape[0], c - first, *s.shape[2:]], "image"), {"k": 3, "out": spec.get("out", 4)})
    if spec.get("merge") == "add":
        return State(b.op("Add", [a.name, z.name]), a.shape, "image")
    return State(b.op("Concat", [a.name, z.name], axis=1), [s.shape[0], 2 * a.shape[1], *s.shape[2:]], "image")


def slice_channels(b: Builder, s: State, spec: dict) -> State:
    c = s.shape[1]
    start, step = min(spec.get("start", 1), c - 1), spec.get("step", 1)
    end = c if spec.get("to_end", True) else max(start + 1, c - 1)
    inputs = [s.name, b.ints([start]), b.ints([2**62 if spec.get("big_end") and end == c else end]), b.ints([1])]
    if step != 1:
        inputs.append(b.ints([step]))
    kept = len(range(start, end, step))
    return State(b.op("Slice", inputs), [s.shape[0], kept, *s.shape[2:]], "image")


def gather_channels(b: Builder, s: State, spec: dict) -> State:
    c = s.shape[1]
    order = np.random.default_rng(spec["seed"]).permutation(c)[: max(1, c - spec.get("drop", 1))]
    out = b.op("Gather", [s.name, b.ints(sorted(order) if spec.get("sorted") else order)], axis=1)
    return State(out, [s.shape[0], len(order), *s.shape[2:]], "image")


def channel_shuffle(b: Builder, s: State, spec: dict) -> State:
    n, c, h, w = s.shape
    groups = 2 if c % 2 == 0 else 1
    split = b.reshape(s.name, [n, groups, c // groups, h, w])
    swapped = b.op("Transpose", [split], perm=[0, 2, 1, 3, 4])
    return State(b.reshape(swapped, [n, c, h, w]), s.shape, "image")


def resize(b: Builder, s: State, spec: dict) -> State:
    mode = spec.get("mode", "nearest")
    scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
    out = b.op("Resize", [s.name, "", scales], mode=mode)
    return State(out, [*s.shape[:2], s.shape[2] * 2, s.shape[3] * 2], "image")


def pad(b: Builder, s: State, spec: dict) -> State:
    p, mode = spec.get("pad", 1), spec.get("mode", "constant")
    if mode == "reflect":  # reflect pads must be shorter than the axis
        p = min(p, min(s.shape[2:]) - 1)
        mode = mode if p > 0 else "constant"
        p = max(p, 1)
    inputs = [s.name, b.ints([0, 0, p, p, 0, 0, p, p])]
    if mode == "constant" and spec.get("value"):
        inputs.append(b.scalar(0.5))
    out = b.op("Pad", inputs, mode=mode)
    return State(out, [*s.shape[:2], s.shape[2] + 2 * p, s.shape[3] + 2 * p], "image")


def affine(b: Builder, s: State, spec: dict) -> State:
    """Mul and/or Add by a per-channel constant [C, 1, 1] (or [C] on seq/flat)."""
    c = s.shape[1] if s.kind == "image" else s.shape[-1]
    shape = (c, 1, 1) if s.kind == "image" else (c,)
    vec = b.const(np.random.default_rng(spec["seed"]).uniform(0.5, 1.5, shape).astype(np.float32), "a", weight=True)
    return State(b.op(spec.get("binary", "Mul"), [s.name, vec]), s.shape, s.kind)


def unsqueeze_squeeze(b: Builder, s: State, spec: dict) -> State:
    axis = spec.get("axis", len(s.shape))
    return State(b.squeeze(b.unsqueeze(s.name, [axis]), [axis]), s.shape, s.kind)


def shared_weight(b: Builder, s: State, spec: dict) -> State:
    """One initializer read by two convs in a row (C → C)."""
    c = s.shape[1]
    w = b.weight(c, c, 1, 1)
    first = b.op("Relu", [b.op("Conv", [s.name, w])])
    return State(b.op("Conv", [first, w]), s.shape, "image")


def if_block(b: Builder, s: State, spec: dict) -> State:
    """If on a data-dependent condition; each branch reads the running tensor from outer scope."""
    cond = b.op("Greater", [b.op("ReduceSum", [s.name], keepdims=0), b.scalar(0.0)])
    branches = []
    for kind in (spec.get("then", "Relu"), spec.get("else", "Sigmoid")):
        nodes: list = []
        out = b.op(kind, [s.name], nodes=nodes)
        info = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        branches.append(helper.make_graph(nodes, b.name("branch"), [], [info]))
    return State(b.op("If", [cond], then_branch=branches[0], else_branch=branches[1]), s.shape, s.kind)


def loop_block(b: Builder, s: State, spec: dict) -> State:
    """A two-trip Loop whose body scales the carried tensor by an outer per-channel constant."""
    c = s.shape[1] if s.kind == "image" else s.shape[-1]
    shape = (c, 1, 1) if s.kind == "image" else (c,)
    scale = b.const(np.random.default_rng(spec["seed"]).uniform(0.5, 1.0, shape).astype(np.float32), "loop_scale")
    i, cond_in, v_in = b.name("i"), b.name("cond"), b.name("v")
    nodes: list = []
    cond_out = b.op("Identity", [cond_in], nodes=nodes)
    v_out = b.op(spec.get("act", "Tanh"), [b.op("Mul", [v_in, scale], nodes=nodes)], nodes=nodes)
    body = helper.make_graph(
        nodes, b.name("body"),
        [helper.make_tensor_value_info(i, TensorProto.INT64, []), helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
         helper.make_tensor_value_info(v_in, TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []), helper.make_tensor_value_info(v_out, TensorProto.FLOAT, None)])
    trips, true = b.const(np.array(2, np.int64), "trips"), b.const(np.array(True), "true")
    return State(b.op("Loop", [trips, true, s.name], body=body), s.shape, s.kind)


def qdq_act(b: Builder, s: State, spec: dict) -> State:
    return State(qdq_activation(b, s.name, spec.get("scale", 0.05)), s.shape, s.kind)


def tap(b: Builder, s: State, spec: dict) -> State:
    """Make the running tensor an extra graph output too."""
    b.outputs.append((s.name, list(s.shape)))
    return s


# ---------------------------------------------------------------- transitions
def to_flat(b: Builder, s: State, spec: dict) -> State:
    if spec.get("pool") or s.shape[2] * s.shape[3] * s.shape[1] > 512:
        s = State(b.op("GlobalAveragePool", [s.name]), [*s.shape[:2], 1, 1], "image")
    out = b.op("Flatten", [s.name], axis=1)
    return State(out, [s.shape[0], int(np.prod(s.shape[1:]))], "flat")


def to_seq(b: Builder, s: State, spec: dict) -> State:
    """[N, C, H, W] → [N, H·W, C] tokens (Reshape + Transpose)."""
    n, c, h, w = s.shape
    if h * w > 64:
        return s
    tokens = b.op("Transpose", [b.reshape(s.name, [n, c, h * w])], perm=[0, 2, 1])
    return State(tokens, [n, h * w, c], "seq")


def seq_to_flat(b: Builder, s: State, spec: dict) -> State:
    if spec.get("how") == "first":
        out = b.op("Gather", [s.name, b.const(np.array(0, np.int64), "cls")], axis=1)
    else:
        out = b.reduce_mean(s.name, [1], keepdims=0)
    return State(out, [s.shape[0], s.shape[2]], "flat")


# ---------------------------------------------------------------- seq and flat blocks
def linear(b: Builder, s: State, spec: dict, out: int | None = None, x: str | None = None) -> State:
    """MatMul (+ Add bias) on the last axis, or Gemm (transB as ``spec`` says) on flat input."""
    d, out = s.shape[-1], out or spec.get("out", s.shape[-1])
    if s.kind == "flat" and spec.get("gemm"):
        trans = spec.get("trans_b", 1)
        w = weight(b, spec, (out, d) if trans else (d, out), axis=0 if trans else 1)
        inputs = [x or s.name, w] + ([b.vector(out)] if spec.get("bias", True) else [])
        return State(b.op("Gemm", inputs, transB=trans), [s.shape[0], out], "flat")
    y = b.op("MatMul", [x or s.name, weight(b, spec, (d, out), axis=1)])
    if spec.get("bias", True):
        y = b.op("Add", [y, b.vector(out)])
    return State(y, [*s.shape[:-1], out], s.kind)


def layernorm(b: Builder, s: State, spec: dict) -> State:
    d = s.shape[-1]
    if b.opset >= 17 and not spec.get("written_out"):
        out = b.op("LayerNormalization", [s.name, b.vector(d, 0.5, 1.5), b.vector(d)], axis=-1)
        return State(out, s.shape, s.kind)
    mean = b.reduce_mean(s.name, [-1])
    centred = b.op("Sub", [s.name, mean])
    variance = b.reduce_mean(b.op("Pow", [centred, b.scalar(2.0)]), [-1])
    std = b.op("Sqrt", [b.op("Add", [variance, b.scalar(1e-5)])])
    normed = b.op("Mul", [b.op("Div", [centred, std]), b.vector(d, 0.5, 1.5)])
    return State(b.op("Add", [normed, b.vector(d)]), s.shape, s.kind)


def mlp(b: Builder, s: State, spec: dict) -> State:
    """x + down(act(up(x))) on the last axis."""
    hidden = act(b, linear(b, s, {**spec, "gemm": False}, out=spec.get("hidden", 2 * s.shape[-1])), spec)
    down = linear(b, hidden, {**spec, "gemm": False}, out=s.shape[-1])
    return State(b.op("Add", [s.name, down.name]), s.shape, s.kind)


def attention(b: Builder, s: State, spec: dict) -> State:
    """Pre-LN self-attention as exporters write it: Q/K/V MatMul + bias, Reshape/Transpose into
    heads, QKᵀ·scale, Softmax, ·V, merge heads, output projection, residual Add."""
    n, t, d = s.shape
    heads = spec.get("heads", 2)
    if d % heads or d // heads < 2:
        return s
    dh = d // heads
    x = layernorm(b, s, spec).name if spec.get("pre_ln", True) else s.name
    q, k, v = (linear(b, s, {"out": d, "bias": spec.get("bias", True)}, x=x).name for _ in range(3))
    q, v = (b.op("Transpose", [b.reshape(y, [n, t, heads, dh])], perm=[0, 2, 1, 3]) for y in (q, v))
    k = b.op("Transpose", [b.reshape(k, [n, t, heads, dh])], perm=[0, 2, 3, 1])
    scores = b.op("MatMul", [q, k])
    scores = b.op("Div", [scores, b.scalar(float(np.sqrt(dh)))]) if spec.get("div") else \
        b.op("Mul", [scores, b.scalar(float(1 / np.sqrt(dh)))])
    context = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    merged = b.reshape(b.op("Transpose", [context], perm=[0, 2, 1, 3]), [n, t, d])
    out = linear(b, State(merged, [n, t, d], "seq"), {"out": d, "qdq": spec.get("qdq"), "per_axis": spec.get("per_axis")})
    return State(b.op("Add", [s.name, out.name]), s.shape, "seq")


def head(b: Builder, s: State, spec: dict) -> State:
    """A classifier to ``classes`` outputs, so inner channel groups do not reach the output."""
    if s.kind == "image":
        s = to_flat(b, s, {"pool": True})
    elif s.kind == "seq":
        s = seq_to_flat(b, s, spec)
    return linear(b, s, {"gemm": spec.get("gemm", True), "out": spec.get("classes", 5)})


BLOCKS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "conv": (("image",), conv), "act": (("image", "seq", "flat"), act), "bn": (("image", "flat"), bn),
    "groupnorm": (("image",), groupnorm), "layernorm_nhwc": (("image",), layernorm_nhwc), "pool": (("image",), pool),
    "residual": (("image",), residual), "se": (("image",), squeeze_excite), "concat": (("image",), concat_branches),
    "split": (("image",), split_merge), "slice": (("image",), slice_channels), "gather": (("image",), gather_channels),
    "shuffle": (("image",), channel_shuffle), "resize": (("image",), resize), "pad": (("image",), pad),
    "affine": (("image", "seq", "flat"), affine), "unsqueeze": (("image", "seq", "flat"), unsqueeze_squeeze),
    "shared": (("image",), shared_weight), "if": (("image", "seq", "flat"), if_block),
    "loop": (("image", "seq", "flat"), loop_block), "qdq_act": (("image", "seq", "flat"), qdq_act),
    "tap": (("image", "seq", "flat"), tap), "to_flat": (("image",), to_flat), "to_seq": (("image",), to_seq),
    "seq_to_flat": (("seq",), seq_to_flat), "linear": (("seq", "flat"), linear),
    "layernorm": (("seq", "flat"), layernorm), "mlp": (("seq", "flat"), mlp), "attention": (("seq",), attention),
    "head": (("image", "seq", "flat"), head),
}


# ---------------------------------------------------------------- building
def build(graph: dict) -> onnx.ModelProto:
    """The model of a graph description (see the module docstring); checked, shapes inferred."""
    b = Builder(graph)
    s = _input_state(graph["input"])
    for spec in graph["blocks"]:
        kinds, fn = BLOCKS[spec["op"]]
        if s.kind in kinds:
            b.rng = np.random.default_rng(spec["seed"])
            s = fn(b, s, spec)
    return _finish(b, graph, s)


def _input_state(spec: dict) -> State:
    return State("input", list(spec["shape"]), spec["kind"])


def _finish(b: Builder, graph: dict, s: State) -> onnx.ModelProto:
    dims = list(graph["input"]["shape"])
    if b.symbolic:
        dims[0] = "batch"
    outputs, seen = [], set()
    for name, shape in [*b.outputs, (s.name, s.shape)]:
        if name not in seen:
            seen.add(name)
            shape = ["batch", *shape[1:]] if b.symbolic else shape
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph_proto = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                                    outputs, b.inits)
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", graph["opset"])],
                              producer_name="sparsec fuzz")
    model.ir_version = 8 if graph["opset"] < 21 else 10
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


# ---------------------------------------------------------------- sampling
def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _conv_params(rng, s: State) -> dict:
    return {"out": int(_choice(rng, (4, 6, 8, 12, 16))), "k": int(_choice(rng, (1, 3, 3))),
            "group": _choice(rng, (1, 1, 1, 2, 4, "depthwise")), "multiplier": int(_choice(rng, (1, 1, 2))),
            "dilation": int(_choice(rng, (1, 1, 2))), "stride": int(_choice(rng, (1, 1, 1, 2))),
            "bias": bool(rng.random() < 0.7)}


SAMPLERS: dict[str, Callable] = {
    "conv": _conv_params,
    "act": lambda rng, s: {"act": _choice(rng, ACTIVATIONS)},
    "groupnorm": lambda rng, s: {"groups": int(_choice(rng, (1, 2, 4)))},
    "pool": lambda rng, s: {"pool": _choice(rng, ("MaxPool", "AveragePool")), "k": int(_choice(rng, (2, 3))),
                            "stride": int(_choice(rng, (1, 2))), "pad": bool(rng.random() < 0.5),
                            "include_pad": int(rng.integers(2))},
    "residual": lambda rng, s: {**_conv_params(rng, s), "order": int(rng.integers(2)), "act": _choice(rng, ACTIVATIONS)},
    "se": lambda rng, s: {"ratio": int(_choice(rng, (2, 4))), "gate": _choice(rng, ("Sigmoid", "HardSigmoid")),
                          "act": _choice(rng, ("Relu", "HardSwish"))},
    "concat": lambda rng, s: {"left": int(_choice(rng, (2, 4, 6))), "right": int(_choice(rng, (4, 6, 8))),
                              "dilation": int(_choice(rng, (1, 2))), "keep_input": bool(rng.random() < 0.4)},
    "split": lambda rng, s: {"fraction": float(_choice(rng, (0.25, 0.5, 0.75))), "out": int(_choice(rng, (4, 6))),
                             "merge": _choice(rng, ("add", "concat"))},
    "slice": lambda rng, s: {"start": int(_choice(rng, (1, 2, 3))), "step": int(_choice(rng, (1, 1, 2))),
                             "to_end": bool(rng.random() < 0.6), "big_end": bool(rng.random() < 0.3)},
    "gather": lambda rng, s: {"drop": int(_choice(rng, (0, 1, 2))), "sorted": bool(rng.random() < 0.5)},
    "resize": lambda rng, s: {"mode": _choice(rng, ("nearest", "linear"))},
    "pad": lambda rng, s: {"pad": int(_choice(rng, (1, 2))), "mode": _choice(rng, ("constant", "reflect", "edge")),
                           "value": bool(rng.random() < 0.3)},
    "affine": lambda rng, s: {"binary": _choice(rng, ("Mul", "Add"))},
    "unsqueeze": lambda rng, s: {"axis": int(_choice(rng, (1, len(s.shape))))},
    "if": lambda rng, s: {"then": _choice(rng, ("Relu", "Neg")), "else": _choice(rng, ("Sigmoid", "Abs"))},
    "loop": lambda rng, s: {"act": _choice(rng, ("Tanh", "Relu"))},
    "qdq_act": lambda rng, s: {"scale": float(_choice(rng, (0.02, 0.05)))},
    "to_flat": lambda rng, s: {"pool": bool(rng.random() < 0.5)},
    "seq_to_flat": lambda rng, s: {"how": _choice(rng, ("mean", "first"))},
    "linear": lambda rng, s: {"out": int(_choice(rng, (8, 12, 16, 24))), "gemm": bool(rng.random() < 0.5),
                              "trans_b": int(rng.integers(2)), "bias": bool(rng.random() < 0.8)},
    "layernorm": lambda rng, s: {"written_out": bool(rng.random() < 0.3)},
    "mlp": lambda rng, s: {"hidden": int(_choice(rng, (16, 24, 32))), "act": _choice(rng, ("Relu", "Gelu", "Sigmoid"))},
    "attention": lambda rng, s: {"heads": int(_choice(rng, (2, 4))), "pre_ln": bool(rng.random() < 0.7),
                                 "div": bool(rng.random() < 0.5), "bias": bool(rng.random() < 0.7),
                                 "written_out": bool(rng.random() < 0.2)},
    "head": lambda rng, s: {"classes": int(_choice(rng, (3, 5))), "gemm": bool(rng.random() < 0.6),
                            "how": _choice(rng, ("mean", "first"))},
}

# relative frequencies of the blocks per running kind
WEIGHTS = {
    "image": {"conv": 8, "act": 4, "bn": 3, "groupnorm": 1, "layernorm_nhwc": 1, "pool": 2, "residual": 3, "se": 2,
              "concat": 2, "split": 2, "slice": 1, "gather": 1, "shuffle": 1, "resize": 1, "pad": 1, "affine": 1,
              "unsqueeze": 1, "shared": 1, "if": 1, "loop": 1, "qdq_act": 1, "tap": 1, "to_flat": 1, "to_seq": 1},
    "seq": {"attention": 4, "mlp": 3, "linear": 2, "layernorm": 2, "act": 1, "affine": 1, "unsqueeze": 1, "if": 1,
            "loop": 1, "qdq_act": 1, "tap": 1, "seq_to_flat": 1},
    "flat": {"linear": 4, "act": 2, "bn": 1, "layernorm": 1, "mlp": 1, "affine": 1, "unsqueeze": 1, "if": 1, "loop": 1,
             "qdq_act": 1, "tap": 1},
}
QDQ_WEIGHT_BLOCKS = ("conv", "residual", "se", "linear", "attention")


def generate(seed: int, qdq: bool = False, max_blocks: int = 9) -> dict:
    """A random graph description: opset, batch, weight storage, input and blocks, all from
    ``default_rng(seed)``; with ``qdq`` some weights are int8 + DequantizeLinear and
    ``qdq_act`` blocks quantize activations. The blocks end with a classifier head most times."""
    rng = np.random.default_rng(seed)
    graph = {"seed": seed, "opset": int(_choice(rng, OPSETS)), "batch": _choice(rng, ("1", "2", "symbolic")),
             "weights": _choice(rng, ("initializer", "initializer", "constant", "mixed")),
             "input": _sample_input(rng), "blocks": []}
    graph["input"]["shape"][0] = 2 if graph["batch"] == "2" else 1
    b, s = Builder(graph), _input_state(graph["input"])
    for _ in range(int(rng.integers(2, max_blocks + 1))):
        spec = _sample_block(rng, s, qdq)
        b.rng = np.random.default_rng(spec["seed"])
        s = BLOCKS[spec["op"]][1](b, s, spec)
        graph["blocks"].append(spec)
    if rng.random() < 0.8:
        graph["blocks"].append({"op": "head", "seed": int(rng.integers(2**31)), **SAMPLERS["head"](rng, s)})
    return graph


def _sample_input(rng: np.random.Generator) -> dict:
    kind = _choice(rng, ("image", "image", "image", "seq", "seq", "flat"))
    if kind == "image":
        return {"kind": kind, "shape": [1, int(_choice(rng, (3, 4, 8))), int(_choice(rng, (6, 8))), 8]}
    if kind == "seq":
        return {"kind": kind, "shape": [1, int(_choice(rng, (4, 6))), int(_choice(rng, (8, 16, 24)))]}
    return {"kind": kind, "shape": [1, int(_choice(rng, (8, 12, 16)))]}


def _sample_block(rng: np.random.Generator, s: State, qdq: bool) -> dict:
    table = {op: w for op, w in WEIGHTS[s.kind].items() if qdq or op != "qdq_act"}
    ops = list(table)
    probs = np.array([table[op] for op in ops], float)
    op = ops[int(rng.choice(len(ops), p=probs / probs.sum()))]
    spec = {"op": op, "seed": int(rng.integers(2**31))}
    spec.update(SAMPLERS.get(op, lambda r, st: {})(rng, s))
    if qdq and op in QDQ_WEIGHT_BLOCKS and rng.random() < 0.5:
        spec.update(qdq=True, per_axis=bool(rng.random() < 0.5))
    return spec
