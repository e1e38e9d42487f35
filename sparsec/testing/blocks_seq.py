"""The fuzzing generator's blocks that apply to any running tensor or to sequences and flat
features: activations, the transitions between image, sequence and flat tensors, and the
sequence/flat blocks (linear, LayerNorm, MLP, attention, SwiGLU, the classifier head). Same
contract as ``blocks``: ``fn(builder, state, spec) -> state`` appends one block's nodes, with
``spec`` resolved against the state so any sub-list of blocks still builds a valid graph."""

from __future__ import annotations

import numpy as np

from sparsec.testing.builder import Builder, State, weight


def act(b: Builder, s: State, spec: dict) -> State:
    kind = spec.get("act", "Relu")
    if (
        (kind == "Gelu" and b.opset < 20)
        or (kind == "Mish" and b.opset < 18)
        or (kind == "HardSwish" and b.opset < 14)
    ):
        kind = "HardSigmoid"
    if kind == "Clip":
        out = b.op("Clip", [s.name, b.scalar(-1.0), b.scalar(2.0)])
    elif kind == "LeakyRelu":
        out = b.op("LeakyRelu", [s.name], alpha=0.1)
    else:
        out = b.op(kind, [s.name])
    return State(out, s.shape, s.kind)


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
    hidden = act(
        b, linear(b, s, {**spec, "gemm": False}, out=spec.get("hidden", 2 * s.shape[-1])), spec
    )
    down = linear(b, hidden, {**spec, "gemm": False}, out=s.shape[-1])
    return State(b.op("Add", [s.name, down.name]), s.shape, s.kind)


def attention(b: Builder, s: State, spec: dict) -> State:
    """Pre-LN self-attention as exporters write it: Q/K/V MatMul + bias, Reshape/Transpose into
    heads, QKᵀ scaled (once, or q and k each by dh^-¼ as dynamo writes it), an optional causal
    mask, Softmax, ·V, merge heads, output projection, residual Add."""
    n, t, d = s.shape
    heads = spec.get("heads", 2)
    if d % heads or d // heads < 2:
        return s
    dh = d // heads
    x = layernorm(b, s, spec).name if spec.get("pre_ln", True) else s.name
    q, k, v = (linear(b, s, {"out": d, "bias": spec.get("bias", True)}, x=x).name for _ in range(3))
    q, v = (b.op("Transpose", [b.reshape(y, [n, t, heads, dh])], perm=[0, 2, 1, 3]) for y in (q, v))
    k = _key_heads(b, k, [n, t, heads, dh], spec)
    context = b.op("MatMul", [b.op("Softmax", [_scores(b, q, k, dh, t, spec)], axis=-1), v])
    merged = b.reshape(b.op("Transpose", [context], perm=[0, 2, 1, 3]), [n, t, d])
    out = linear(
        b,
        State(merged, [n, t, d], "seq"),
        {"out": d, "qdq": spec.get("qdq"), "per_axis": spec.get("per_axis")},
    )
    return State(b.op("Add", [s.name, out.name]), s.shape, "seq")


def _key_heads(b: Builder, k: str, shape: list[int], spec: dict) -> str:
    """Kᵀ per head: one Transpose [0, 2, 3, 1], or two ([0, 2, 1, 3] then the last two axes)."""
    split = b.reshape(k, shape)
    if spec.get("two_transposes"):
        return b.op("Transpose", [b.op("Transpose", [split], perm=[0, 2, 1, 3])], perm=[0, 1, 3, 2])
    return b.op("Transpose", [split], perm=[0, 2, 3, 1])


def _scores(b: Builder, q: str, k: str, dh: int, t: int, spec: dict) -> str:
    if spec.get("split_scale"):
        quarter = b.scalar(float(dh**-0.25))
        scores = b.op("MatMul", [b.op("Mul", [q, quarter]), b.op("Mul", [k, quarter])])
    elif spec.get("div"):
        scores = b.op("Div", [b.op("MatMul", [q, k]), b.scalar(float(np.sqrt(dh)))])
    else:
        scores = b.op("Mul", [b.op("MatMul", [q, k]), b.scalar(float(1 / np.sqrt(dh)))])
    if spec.get("causal"):
        mask = np.triu(np.full((t, t), -1e4, np.float32), 1)
        scores = b.op("Add", [scores, b.const(mask, "mask")])
    return scores


def swiglu(b: Builder, s: State, spec: dict) -> State:
    """x + down(act(gate(x)) · up(x)) on the last axis (Llama's MLP)."""
    hidden = spec.get("hidden", 2 * s.shape[-1])
    gated = act(
        b,
        linear(b, s, {"gemm": False, "bias": False}, out=hidden),
        {"act": spec.get("act", "Sigmoid")},
    )
    up = linear(b, s, {"gemm": False, "bias": False}, out=hidden)
    product = State(b.op("Mul", [gated.name, up.name]), up.shape, s.kind)
    down = linear(b, product, {"gemm": False, "bias": False}, out=s.shape[-1])
    return State(b.op("Add", [s.name, down.name]), s.shape, s.kind)


def head(b: Builder, s: State, spec: dict) -> State:
    """A classifier to ``classes`` outputs, so inner channel groups do not reach the output."""
    if s.kind == "image":
        s = to_flat(b, s, {"pool": True})
    elif s.kind == "seq":
        s = seq_to_flat(b, s, spec)
    return linear(b, s, {"gemm": spec.get("gemm", True), "out": spec.get("classes", 5)})
