"""The fuzzing generator's blocks: each ``fn(builder, state, spec) -> state`` appends the nodes of
one block to the running tensor, resolving ``spec``'s parameters against the state so that any
sub-list of blocks still builds a valid graph; ``BLOCKS`` maps a spec's ``op`` to the kinds of
running tensor it applies to (``image``, ``seq``, ``flat``) and its function."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper

from sparsec.testing.blocks_seq import (
    act,
    attention,
    head,
    layernorm,
    linear,
    mlp,
    seq_to_flat,
    swiglu,
    to_flat,
    to_seq,
)
from sparsec.testing.builder import Builder, State, qdq_activation, weight


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
    attrs = {"kernel_shape": [k, k], "dilations": [d, d], "strides": [stride] * 2, "group": group}
    if spec.get("same") and stride == 1 and d == 1:
        attrs["auto_pad"] = "SAME_UPPER"
    else:
        attrs["pads"] = [pad] * 4
    size = [(n + 2 * pad - d * (k - 1) - 1) // stride + 1 for n in (h, w)]
    return State(b.op("Conv", inputs, **attrs), [s.shape[0], c_out, *size], "image")


def _group(group, c_in: int, c_out: int) -> int:
    if isinstance(group, int) and group > 1 and c_in % group == 0 and c_out % group == 0:
        return group
    return 1


def bn(b: Builder, s: State, spec: dict) -> State:
    c = s.shape[1]
    out = b.op(
        "BatchNormalization",
        [s.name, b.vector(c, 0.5, 1.5), b.vector(c), b.vector(c), b.vector(c, 0.5, 1.5)],
    )
    return State(out, s.shape, s.kind)


def groupnorm(b: Builder, s: State, spec: dict) -> State:
    c, groups = s.shape[1], spec.get("groups", 2)
    if b.opset < 21 or c % groups or c // groups * s.shape[2] * s.shape[3] < 4:
        return bn(
            b, s, spec
        )  # GroupNormalization-18 is deprecated; statistics of < 4 values are ill-conditioned
    out = b.op(
        "GroupNormalization", [s.name, b.vector(c, 0.5, 1.5), b.vector(c)], num_groups=groups
    )
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
    return State(
        b.op("Add", [inner.name, s.name] if spec.get("order") else [s.name, inner.name]),
        s.shape,
        "image",
    )


def squeeze_excite(b: Builder, s: State, spec: dict) -> State:
    c = s.shape[1]
    pooled = State(b.op("GlobalAveragePool", [s.name]), [s.shape[0], c, 1, 1], "image")
    mid = act(
        b,
        conv(b, pooled, {"k": 1, "qdq": spec.get("qdq")}, c_out=max(2, c // spec.get("ratio", 2))),
        spec,
    )
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
    first = max(1, min(c - 1, round(c * spec.get("fraction", 0.5))))
    a, z = b.split(s.name, [first, c - first], axis=1)
    a = conv(
        b, State(a, [s.shape[0], first, *s.shape[2:]], "image"), {"k": 1, "out": spec.get("out", 4)}
    )
    z = conv(
        b,
        State(z, [s.shape[0], c - first, *s.shape[2:]], "image"),
        {"k": 3, "out": spec.get("out", 4)},
    )
    if spec.get("merge") == "add":
        return State(b.op("Add", [a.name, z.name]), a.shape, "image")
    return State(
        b.op("Concat", [a.name, z.name], axis=1),
        [s.shape[0], 2 * a.shape[1], *s.shape[2:]],
        "image",
    )


def slice_channels(b: Builder, s: State, spec: dict) -> State:
    """Slice of the channels: forward (``start``, ``step``, an end past the axis or not),
    ``reverse`` (step -1 from the last channel) or ``negative`` (starts counted from the end)."""
    c = s.shape[1]
    start, step = min(spec.get("start", 1), c - 1), spec.get("step", 1)
    end = c if spec.get("to_end", True) else max(start + 1, c - 1)
    if spec.get("form") == "reverse":
        start, end, step = -1, -(2**62), -step
    elif spec.get("form") == "negative":
        start -= c
    elif spec.get("big_end") and end == c:
        end = 2**62
    inputs = [s.name, b.ints([start]), b.ints([end]), b.ints([1])]
    if step != 1:
        inputs.append(b.ints([step]))
    kept = len(range(c)[slice(start, end, step)])
    return State(b.op("Slice", inputs), [s.shape[0], kept, *s.shape[2:]], "image")


def gather_channels(b: Builder, s: State, spec: dict) -> State:
    """Gather of channels at constant indices: a permutation, less ``drop`` of them, sorted or
    not, optionally one repeated (``dup``) and counted from the end (``negative``)."""
    c = s.shape[1]
    order = np.random.default_rng(spec["seed"]).permutation(c)[: max(1, c - spec.get("drop", 1))]
    order = sorted(order) if spec.get("sorted") else list(order)
    if spec.get("dup"):
        order.append(order[0])
    indices = np.array(order, np.int64) - (c if spec.get("negative") else 0)
    out = b.op("Gather", [s.name, b.ints(indices)], axis=1)
    return State(out, [s.shape[0], len(order), *s.shape[2:]], "image")


def concat_self(b: Builder, s: State, spec: dict) -> State:
    """The running tensor concatenated with itself (or added to itself) along the channels."""
    if spec.get("add"):
        return State(b.op("Add", [s.name, s.name]), s.shape, s.kind)
    out = b.op("Concat", [s.name, s.name], axis=1)
    return State(out, [s.shape[0], 2 * s.shape[1], *s.shape[2:]], "image")


def nhwc_flatten(b: Builder, s: State, spec: dict) -> State:
    """Channels-last features: Transpose to NHWC, then Flatten (channel c is every C-th feature)."""
    n, c, h, w = s.shape
    if c * h * w > 512:
        return s
    out = b.op("Flatten", [b.op("Transpose", [s.name], perm=[0, 2, 3, 1])], axis=1)
    return State(out, [n, c * h * w], "flat")


def weight_first(b: Builder, s: State, spec: dict) -> State:
    """y = (W · xᵀ)ᵀ: the constant as MatMul's first operand (seq), or Gemm with transA (flat)."""
    d, out = s.shape[-1], spec.get("out", s.shape[-1])
    if s.kind == "flat":
        xt = b.op("Transpose", [s.name], perm=[1, 0])
        y = b.op("Gemm", [xt, b.weight(d, out), b.vector(out)], transA=1)
        return State(y, [s.shape[0], out], "flat")
    xt = b.op("Transpose", [s.name], perm=[0, 2, 1])
    y = b.op("MatMul", [b.weight(out, d), xt])
    return State(b.op("Transpose", [y], perm=[0, 2, 1]), [*s.shape[:-1], out], "seq")


def passthrough(b: Builder, s: State, spec: dict) -> State:
    """Identity, inference Dropout, or a Cast to double, Neg and back (cleanup bypasses the first
    two; onnxruntime drops a Cast pair even unoptimized and then an If reading its output fails)."""
    kind = spec.get("kind", "Identity")
    if kind == "Cast":
        wide = b.op(
            "Neg", [b.op("Cast", [s.name], to=TensorProto.DOUBLE)]
        )  # a bare Cast pair trips
        return State(
            b.op("Cast", [wide], to=TensorProto.FLOAT), s.shape, s.kind
        )  # an onnxruntime bug
    return State(b.op(kind, [s.name]), s.shape, s.kind)


def channel_shuffle(b: Builder, s: State, spec: dict) -> State:
    """A channel shuffle (``groups``, 2 by default; targets spelled out, or with ``infer`` a
    -1 in them); with ``unit``, a ShuffleNet unit around it: grouped 1×1 conv to ``mid``
    channels → BatchNorm → Relu → shuffle → depthwise 3×3 → BatchNorm → grouped 1×1 conv back
    → BatchNorm, then (``add``) added to the input."""
    groups = spec.get("groups", 2)
    if not spec.get("unit"):
        return _shuffle(b, s, groups, spec.get("infer", False))
    grouped = {"k": 1, "group": groups, "bias": False}
    x = conv(b, s, grouped, c_out=spec.get("mid", 12))
    x = _shuffle(b, act(b, bn(b, x, spec), {"act": "Relu"}), groups, spec.get("infer", False))
    x = bn(b, conv(b, x, {"k": 3, "group": "depthwise", "bias": False}), spec)
    x = bn(b, conv(b, x, grouped, c_out=s.shape[1]), spec)
    return State(b.op("Add", [x.name, s.name]), s.shape, "image") if spec.get("add") else x


def _shuffle(b: Builder, s: State, groups: int, infer: bool) -> State:
    """Reshape [N, g, C/g, H, W] → Transpose [0, 2, 1, 3, 4] → Reshape [N, C, H, W]."""
    n, c, h, w = s.shape
    groups = groups if c % groups == 0 else 1
    split = b.reshape(s.name, [n, groups, -1 if infer else c // groups, h, w])
    swapped = b.op("Transpose", [split], perm=[0, 2, 1, 3, 4])
    return State(b.reshape(swapped, [n, -1 if infer else c, h, w]), s.shape, "image")


def unfold(b: Builder, s: State, spec: dict) -> State:
    """MobileViT's transformer block: a 1×1 conv to ``mid`` channels, unfolded into
    ``patch``×``patch`` patches ([N, C, H, W] → [N·C·nh, ph, nw, pw] → T(1, 2) → [N, C, nh·nw,
    ph·pw] → T(1, 3) → [N·P, nh·nw, C]), a token MatMul and an activation, folded back the same
    way, a 1×1 conv back to the input's channels. Each target's first entry (the batch, alone or
    merged) is spelled out, or -1 with ``infer`` or a symbolic batch; a patch that does not
    divide H and W leaves the input as it is."""
    n, c, h, w = s.shape
    p, mid = spec.get("patch", 2), spec.get("mid", 8)
    if h % p or w % p:
        return s
    nh, nw = h // p, w // p
    first = (lambda k: -1) if spec.get("infer") or b.symbolic else (lambda k: n * k)
    x = conv(b, s, {"k": 1, "bias": False}, c_out=mid).name
    for target, perm in (
        ([first(mid * nh), p, nw, p], [0, 2, 1, 3]),
        ([first(1), mid, nh * nw, p * p], [0, 3, 2, 1]),
        ([first(p * p), nh * nw, mid], None),
    ):
        x = _reshaped(b, x, target, perm)
    tokens = State(x, [n * p * p, nh * nw, mid], "seq")
    x = act(b, linear(b, tokens, {"bias": True}, out=mid), spec).name
    for target, perm in (
        ([first(1), p * p, nh * nw, mid], [0, 3, 2, 1]),
        ([first(mid * nh), nw, p, p], [0, 2, 1, 3]),
        ([first(1), mid, h, w], None),
    ):
        x = _reshaped(b, x, target, perm)
    return conv(b, State(x, [n, mid, h, w], "image"), {"k": 1, "bias": False}, c_out=c)


def _reshaped(b: Builder, x: str, target: list[int], perm: list[int] | None) -> str:
    """Reshape ``x`` to ``target`` as written (no batch rewrite), then Transpose by ``perm``."""
    y = b.op("Reshape", [x, b.ints(target)])
    return y if perm is None else b.op("Transpose", [y], perm=perm)


def resize(b: Builder, s: State, spec: dict) -> State:
    """Resize ×``factor`` on H and W: by ``scales`` (with an empty ``roi`` input, as Paddle and
    tf2onnx write it), by a constant ``sizes`` vector that names the channel count, or by
    ``sizes`` computed at run time from ``Shape`` (``form``: scales / sizes / shape)."""
    f, form = spec.get("factor", 2), spec.get("form", "scales")
    shape = [*s.shape[:2], s.shape[2] * f, s.shape[3] * f]
    attrs = {"mode": spec.get("mode", "nearest")}
    roi = b.const(np.array([], np.float32), "roi") if spec.get("roi") else ""
    if form == "scales":
        inputs = [s.name, roi, b.const(np.array([1, 1, f, f], np.float32), "scales")]
    elif form == "sizes":
        inputs = [s.name, roi, _no_scales(b), b.ints(shape)]
    else:
        dims = b.op("Shape", [s.name])
        nc = b.op("Slice", [dims, b.ints([0]), b.ints([2])])
        hw = b.op("Mul", [b.op("Slice", [dims, b.ints([2]), b.ints([4])]), b.ints([f, f])])
        inputs = [s.name, roi, _no_scales(b), b.op("Concat", [nc, hw], axis=0)]
    if inputs[1] == "" and b.opset < 13:  # roi is required before opset 13
        inputs[1] = b.const(np.array([], np.float32), "roi")
    return State(b.op("Resize", inputs, **attrs), shape, "image")


def _no_scales(b: Builder) -> str:
    """Resize's scales input when sizes are given: empty (a required input before opset 13)."""
    return b.const(np.array([], np.float32), "scales") if b.opset < 13 else ""


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
    vec = b.const(
        np.random.default_rng(spec["seed"]).uniform(0.5, 1.5, shape).astype(np.float32),
        "a",
        weight=True,
    )
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
    """If on a data-dependent condition; each branch reads the running tensor from outer scope:
    one op, or (``Unsqueeze``) Unsqueeze then Squeeze of a new last axis."""
    cond = b.op("Greater", [b.op("ReduceSum", [s.name], keepdims=0), b.scalar(0.0)])
    branches = []
    for kind in (spec.get("then", "Relu"), spec.get("else", "Sigmoid")):
        nodes: list = []
        if kind == "Unsqueeze":
            last = [len(s.shape)]
            out = b.squeeze(b.unsqueeze(s.name, last, nodes), last, nodes)
        else:
            out = b.op(kind, [s.name], nodes=nodes)
        info = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        branches.append(helper.make_graph(nodes, b.name("branch"), [], [info]))
    return State(
        b.op("If", [cond], then_branch=branches[0], else_branch=branches[1]), s.shape, s.kind
    )


def loop_block(b: Builder, s: State, spec: dict) -> State:
    """A two-trip Loop whose body scales the carried tensor by an outer per-channel constant."""
    c = s.shape[1] if s.kind == "image" else s.shape[-1]
    shape = (c, 1, 1) if s.kind == "image" else (c,)
    scale = b.const(
        np.random.default_rng(spec["seed"]).uniform(0.5, 1.0, shape).astype(np.float32),
        "loop_scale",
    )
    i, cond_in, v_in = b.name("i"), b.name("cond"), b.name("v")
    nodes: list = []
    cond_out = b.op("Identity", [cond_in], nodes=nodes)
    v_out = b.op(spec.get("act", "Tanh"), [b.op("Mul", [v_in, scale], nodes=nodes)], nodes=nodes)
    body = helper.make_graph(
        nodes,
        b.name("body"),
        [
            helper.make_tensor_value_info(i, TensorProto.INT64, []),
            helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
            helper.make_tensor_value_info(v_in, TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
            helper.make_tensor_value_info(v_out, TensorProto.FLOAT, None),
        ],
    )
    trips, true = b.const(np.array(2, np.int64), "trips"), b.const(np.array(True), "true")
    return State(b.op("Loop", [trips, true, s.name], body=body), s.shape, s.kind)


def qdq_act(b: Builder, s: State, spec: dict) -> State:
    return State(qdq_activation(b, s.name, spec.get("scale", 0.05)), s.shape, s.kind)


def tap(b: Builder, s: State, spec: dict) -> State:
    """Make the running tensor an extra graph output too."""
    b.outputs.append((s.name, list(s.shape)))
    return s


def nhwc_mlp(b: Builder, s: State, spec: dict) -> State:
    """ConvNeXt's channels-last MLP: Transpose, MatMul up, activation, MatMul down, Transpose
    back, residual Add."""
    last = b.op("Transpose", [s.name], perm=[0, 2, 3, 1])
    tokens = State(last, [s.shape[i] for i in (0, 2, 3, 1)], "seq")
    hidden = act(
        b,
        linear(b, tokens, {"bias": spec.get("bias", True)}, out=spec.get("hidden", 2 * s.shape[1])),
        spec,
    )
    down = linear(b, hidden, {"bias": spec.get("bias", True)}, out=s.shape[1])
    back = b.op("Transpose", [down.name], perm=[0, 3, 1, 2])
    return State(b.op("Add", [s.name, back]), s.shape, "image")


def fork(b: Builder, s: State, spec: dict) -> State:
    """Remember the running tensor for a later ``join`` (a long skip connection)."""
    b.saved.append(s)
    return s


def join(b: Builder, s: State, spec: dict) -> State:
    """Merge the latest remembered tensor of the same kind and spatial/sequence shape back in:
    Add (through a 1×1 projection when the channels differ) or Concat along the channels."""
    axis = 1 if s.kind == "image" else -1
    fits = [old for old in b.saved if old.kind == s.kind and _same_but(old.shape, s.shape, axis)]
    if not fits or fits[-1].name == s.name:
        return s
    old = fits[-1]
    if spec.get("concat"):
        shape = list(s.shape)
        shape[axis] += old.shape[axis]
        return State(b.op("Concat", [s.name, old.name], axis=axis), shape, s.kind)
    if old.shape[axis] != s.shape[axis]:
        old = (
            conv(b, old, {"k": 1}, c_out=s.shape[1])
            if s.kind == "image"
            else linear(b, old, {}, out=s.shape[-1])
        )
    return State(b.op("Add", [old.name, s.name]), s.shape, s.kind)


def _same_but(a: list[int], b: list[int], axis: int) -> bool:
    return len(a) == len(b) and all(
        x == y for i, (x, y) in enumerate(zip(a, b)) if i != axis % len(a)
    )


def dead_branch(b: Builder, s: State, spec: dict) -> State:
    """Nodes whose result nobody reads (the cleanup removes them)."""
    if s.kind == "image":
        conv(b, s, {"k": 1, "out": 4})
    else:
        linear(b, s, {"out": 4})
    return s


def conv_transpose(b: Builder, s: State, spec: dict) -> State:
    """ConvTranspose, kernel 2 stride 2 (or kernel 3 stride 1 padded), optionally grouped
    (``group`` = "depthwise": one input channel per group), then optionally BatchNorm and an
    activation (``bn``, ``act``), as a detector's upsampling head writes it."""
    c_in, c_out = s.shape[1], spec.get("out", s.shape[1])
    group = _group(spec.get("group", 1), c_in, c_out)
    if spec.get("group") == "depthwise":
        group, c_out = c_in, c_in * spec.get("multiplier", 1)
    k, stride = (2, 2) if spec.get("up", True) else (3, 1)
    pads = [0] * 4 if stride == 2 else [1] * 4
    inputs = [s.name, b.weight(c_in, c_out // group, k, k)] + (
        [b.vector(c_out)] if spec.get("bias", True) else []
    )
    out = b.op(
        "ConvTranspose", inputs, kernel_shape=[k, k], strides=[stride] * 2, pads=pads, group=group
    )
    s = State(out, [s.shape[0], c_out, *(n * stride for n in s.shape[2:])], "image")
    if spec.get("bn"):
        s = bn(b, s, spec)
    return act(b, s, spec) if spec.get("act") else s


def fpn(b: Builder, s: State, spec: dict) -> State:
    """A feature pyramid: a stride-2 branch, 1×1 laterals to ``width`` channels, the coarse one
    upsampled (``resize`` spec: form, roi) and added to the fine one, then (``concat``) the
    upsampled coarse output and the fine one concatenated along the channels, as a DB text
    detector's neck does (on an odd-sized image the coarse branch cannot come back: skipped)."""
    if s.shape[2] % 2 or s.shape[3] % 2 or min(s.shape[2:]) < 4:
        return s
    width, up_spec = spec.get("width", 8), {**spec.get("resize", {}), "factor": 2}
    coarse = conv(b, s, {"k": 3, "stride": 2, "out": spec.get("out", 8), "bias": False})
    fine_lat = conv(b, s, {"k": 1, "bias": False}, c_out=width)
    coarse_lat = conv(b, coarse, {"k": 1, "bias": False}, c_out=width)
    up = resize(b, coarse_lat, up_spec)
    fine = State(b.op("Add", [fine_lat.name, up.name]), fine_lat.shape, "image")
    if not spec.get("concat", True):
        return fine
    parts = [
        resize(b, conv(b, coarse_lat, {"k": 3, "bias": False}, c_out=width // 2), up_spec),
        conv(b, fine, {"k": 3, "bias": False}, c_out=width // 2),
    ]
    shape = [s.shape[0], sum(p.shape[1] for p in parts), *s.shape[2:]]
    return State(b.op("Concat", [p.name for p in parts], axis=1), shape, "image")


def db_head(b: Builder, s: State, spec: dict) -> State:
    """A DB text detector's head: Conv → BatchNorm → Relu → ConvTranspose (stride 2) →
    BatchNorm → Relu → ConvTranspose (stride 2) to one map → Sigmoid."""
    mid = spec.get("mid", max(2, s.shape[1] // 4))
    x = act(b, bn(b, conv(b, s, {"k": 3, "bias": False}, c_out=mid), spec), {"act": "Relu"})
    up = {"bias": spec.get("bias", True), "bn": True, "act": "Relu", "out": mid}
    x = conv_transpose(b, x, {**up, "group": spec.get("group", 1)})
    x = conv_transpose(b, x, {"bias": spec.get("bias", True), "out": spec.get("maps", 1)})
    return act(b, x, {"act": "Sigmoid"})


def other_norm(b: Builder, s: State, spec: dict) -> State:
    """InstanceNormalization (random scale and bias) or LRN across channels."""
    c = s.shape[1]
    if spec.get("norm") == "LRN":
        return State(
            b.op("LRN", [s.name], size=3, alpha=1e-3, beta=0.75, bias=1.0), s.shape, "image"
        )
    if (
        s.shape[2] * s.shape[3] < 4
    ):  # the variance of < 4 values amplifies rounding: a test of nothing
        return bn(b, s, spec)
    out = b.op("InstanceNormalization", [s.name, b.vector(c, 0.5, 1.5), b.vector(c)])
    return State(out, s.shape, "image")


def gate(b: Builder, s: State, spec: dict) -> State:
    """x · σ(conv1x1(x)): a product of two activations along the channels (GLU-like)."""
    gated = b.op(spec.get("gate", "Sigmoid"), [conv(b, s, {"k": 1}, c_out=s.shape[1]).name])
    return State(
        b.op("Mul", [gated, s.name] if spec.get("swap") else [s.name, gated]), s.shape, "image"
    )


def reduce_spatial(b: Builder, s: State, spec: dict) -> State:
    """ReduceMean, ReduceMax or ReduceSum over H and W, keepdims: [N, C, 1, 1]."""
    out = b.reduce(spec.get("reduce", "ReduceMean"), s.name, [2, 3])
    return State(out, [*s.shape[:2], 1, 1], "image")


def channel_softmax(b: Builder, s: State, spec: dict) -> State:
    """Softmax or LogSoftmax with axis 1: over the channels from opset 13, over C·H·W before;
    with ``implicit`` and an opset before 13, axis 1 as the attribute's default."""
    attrs = {} if spec.get("implicit") and b.opset < 13 else {"axis": 1}
    return State(b.op(spec.get("softmax", "Softmax"), [s.name], **attrs), s.shape, "image")


def divide(b: Builder, s: State, spec: dict) -> State:
    """Sub then Div by per-channel constants (a divisor can never be zeroed by a mask)."""
    c = s.shape[1] if s.kind == "image" else s.shape[-1]
    shape = (c, 1, 1) if s.kind == "image" else (c,)
    rng = np.random.default_rng(spec["seed"])
    shifted = b.op(
        "Sub",
        [s.name, b.const(rng.uniform(-0.5, 0.5, shape).astype(np.float32), "sub", weight=True)],
    )
    out = b.op(
        "Div",
        [shifted, b.const(rng.uniform(0.5, 2.0, shape).astype(np.float32), "div", weight=True)],
    )
    return State(out, s.shape, s.kind)


def concat_spatial(b: Builder, s: State, spec: dict) -> State:
    """Concat along H of the input and a same-width conv of it (no channel coupling)."""
    other = conv(b, s, {"k": 3, "stride": 1, "multiplier": 1}, c_out=s.shape[1])
    out = b.op("Concat", [s.name, other.name], axis=2)
    return State(out, [s.shape[0], s.shape[1], 2 * s.shape[2], s.shape[3]], "image")


def split_three(b: Builder, s: State, spec: dict) -> State:
    """Split the channels in three, a conv on each branch, Concat. With ``num_outputs`` and
    channels that divide: equal parts by the ``num_outputs`` attribute (opset 18 on) or by no
    sizes at all (before)."""
    c = s.shape[1]
    if c < 3:
        return s
    sizes = [c // 3, c // 3, c - 2 * (c // 3)]
    if c % 3 == 0 and spec.get("num_outputs"):
        attrs = {"num_outputs": 3} if b.opset >= 18 else {}
        parts = b.op("Split", [s.name], outputs=3, axis=1, **attrs)
    else:
        parts = b.split(s.name, sizes, axis=1)
    outs = [
        conv(
            b, State(p, [s.shape[0], n, *s.shape[2:]], "image"), {"k": 1, "out": spec.get("out", 4)}
        )
        for p, n in zip(parts, sizes)
    ]
    return State(
        b.op("Concat", [o.name for o in outs], axis=1),
        [s.shape[0], 3 * outs[0].shape[1], *s.shape[2:]],
        "image",
    )


def side_input(b: Builder, s: State, spec: dict) -> State:
    """A second graph input of the running shape, added or multiplied in."""
    name = b.name("side")
    b.inputs.append((name, list(s.shape)))
    return State(b.op(spec.get("binary", "Add"), [s.name, name]), s.shape, s.kind)


def expand_bias(b: Builder, s: State, spec: dict) -> State:
    """A per-channel constant Expand-ed to the running shape, then added."""
    c = s.shape[1] if s.kind == "image" else s.shape[-1]
    shape = (1, c, 1, 1) if s.kind == "image" else (1,) * (len(s.shape) - 1) + (c,)
    vec = b.const(
        np.random.default_rng(spec["seed"]).uniform(-1, 1, shape).astype(np.float32),
        "e",
        weight=True,
    )
    target = b.op("Shape", [s.name]) if spec.get("dynamic") else b.ints(s.shape)
    return State(b.op("Add", [s.name, b.op("Expand", [vec, target])]), s.shape, s.kind)


def reshape_flat(b: Builder, s: State, spec: dict) -> State:
    """[N, C, H, W] → [N, C·H·W] by Reshape (-1 or the explicit size)."""
    n, c, h, w = s.shape
    if c * h * w > 512:
        return s
    return State(
        b.reshape(s.name, [n, -1 if spec.get("infer") else c * h * w]), [n, c * h * w], "flat"
    )


BLOCKS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "conv": (("image",), conv),
    "act": (("image", "seq", "flat"), act),
    "bn": (("image", "flat"), bn),
    "groupnorm": (("image",), groupnorm),
    "layernorm_nhwc": (("image",), layernorm_nhwc),
    "pool": (("image",), pool),
    "residual": (("image",), residual),
    "se": (("image",), squeeze_excite),
    "concat": (("image",), concat_branches),
    "split": (("image",), split_merge),
    "slice": (("image",), slice_channels),
    "gather": (("image",), gather_channels),
    "shuffle": (("image",), channel_shuffle),
    "unfold": (("image",), unfold),
    "resize": (("image",), resize),
    "pad": (("image",), pad),
    "affine": (("image", "seq", "flat"), affine),
    "unsqueeze": (("image", "seq", "flat"), unsqueeze_squeeze),
    "shared": (("image",), shared_weight),
    "if": (("image", "seq", "flat"), if_block),
    "loop": (("image", "seq", "flat"), loop_block),
    "qdq_act": (("image", "seq", "flat"), qdq_act),
    "tap": (("image", "seq", "flat"), tap),
    "to_flat": (("image",), to_flat),
    "to_seq": (("image",), to_seq),
    "seq_to_flat": (("seq",), seq_to_flat),
    "linear": (("seq", "flat"), linear),
    "layernorm": (("seq", "flat"), layernorm),
    "mlp": (("seq", "flat"), mlp),
    "attention": (("seq",), attention),
    "head": (("image", "seq", "flat"), head),
    "convt": (("image",), conv_transpose),
    "fpn": (("image",), fpn),
    "db_head": (("image",), db_head),
    "other_norm": (("image",), other_norm),
    "gate": (("image",), gate),
    "reduce": (("image",), reduce_spatial),
    "channel_softmax": (("image",), channel_softmax),
    "divide": (("image", "seq", "flat"), divide),
    "concat_spatial": (("image",), concat_spatial),
    "split3": (("image",), split_three),
    "side_input": (("image", "seq", "flat"), side_input),
    "expand": (("image", "seq", "flat"), expand_bias),
    "reshape_flat": (("image",), reshape_flat),
    "swiglu": (("seq", "flat"), swiglu),
    "nhwc_mlp": (("image",), nhwc_mlp),
    "concat_self": (("image",), concat_self),
    "nhwc_flatten": (("image",), nhwc_flatten),
    "weight_first": (("seq", "flat"), weight_first),
    "passthrough": (("image", "seq", "flat"), passthrough),
    "fork": (("image", "seq", "flat"), fork),
    "join": (("image", "seq", "flat"), join),
    "dead": (("image", "seq", "flat"), dead_branch),
}
