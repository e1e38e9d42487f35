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
strided, SAME padding), ConvTranspose, Gemm (transA/transB) and MatMul (weight on either side),
Batch/Layer/Group/InstanceNormalization, LRN and a written-out LayerNorm, Add/Sub/Mul/Div with
per-channel constants and a second graph input, Concat (channels, spatial, with itself), Split
(2 and 3 ways), Slice (forward, reversed, from the end), Gather (repeated, negative indices),
Reshape (channel shuffle, alone or in a ShuffleNet unit between grouped 1×1 convs; MobileViT's
unfold/fold around a token MatMul; to features),
Flatten (NCHW and channels-last), Transpose, Squeeze/Unsqueeze, Expand, Resize, Pad,
Max/Average/GlobalAverage pooling, ReduceMean/Max/Sum, Softmax over channels, activations,
Identity/Dropout/Cast, residual, squeeze-excite, gating and long skip connections (fork/join),
dead branches, a shared weight, extra graph outputs, If and Loop bodies reading outer values,
attention blocks (Q/K/V MatMul, heads by Reshape/Transpose, scaled QKᵀ, optional causal mask,
Softmax, output projection), MLP and SwiGLU, and (behind ``qdq=True``)
QuantizeLinear/DequantizeLinear pairs on weights (per tensor or per axis) and activations.
Opsets 11, 12, 13, 17, 18 and 21, each block in the form its opset reads: before 13, ``axes`` and
``split`` attributes, per-tensor QDQ only, and a Softmax that normalizes every axis from ``axis``
on; HardSwish, LayerNormalization, Mish and Gelu only from opsets 14, 17, 18 and 20 (before: another
activation, a written-out LayerNorm). Batch 1, 2 or symbolic; weights as initializers and/or
``Constant`` nodes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from sparsec.testing.blocks import BLOCKS
from sparsec.testing.builder import Builder, State

ACTIVATIONS = (
    "Relu",
    "Sigmoid",
    "HardSwish",
    "LeakyRelu",
    "Tanh",
    "HardSigmoid",
    "Elu",
    "Softplus",
    "Clip",
    "Gelu",
    "Mish",
)
OPSETS = (11, 12, 13, 17, 18, 21)


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
    inputs = [_info("input", graph["input"]["shape"], b.symbolic)]
    inputs += [_info(name, shape, b.symbolic) for name, shape in b.inputs]
    outputs = {
        name: _info(name, shape, b.symbolic) for name, shape in [*b.outputs, (s.name, s.shape)]
    }
    graph_proto = helper.make_graph(b.nodes, "fuzz", inputs, list(outputs.values()), b.inits)
    model = helper.make_model(
        graph_proto,
        opset_imports=[helper.make_opsetid("", graph["opset"])],
        producer_name="sparsec fuzz",
    )
    model.ir_version = 8 if graph["opset"] < 21 else 10
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _info(name: str, shape: list[int], symbolic: bool):
    """A float tensor's value info; the batch dimension named ``batch`` when symbolic."""
    dims = ["batch", *shape[1:]] if symbolic else list(shape)
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


# ---------------------------------------------------------------- sampling
def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _conv_params(rng, s: State) -> dict:
    return {
        "out": int(_choice(rng, (3, 4, 5, 6, 8, 12, 16))),
        "k": int(_choice(rng, (1, 3, 3))),
        "group": _choice(rng, (1, 1, 1, 2, 3, 4, "depthwise")),
        "multiplier": int(_choice(rng, (1, 1, 2))),
        "dilation": int(_choice(rng, (1, 1, 2))),
        "stride": int(_choice(rng, (1, 1, 1, 2))),
        "bias": bool(rng.random() < 0.7),
        "same": bool(rng.random() < 0.2),
    }


def _resize_params(rng, mode: str | None = None) -> dict:
    return {
        "mode": mode or _choice(rng, ("nearest", "linear")),
        "form": _choice(rng, ("scales", "scales", "sizes", "shape")),
        "roi": bool(rng.random() < 0.5),
        "factor": int(_choice(rng, (2, 2, 4))),
    }


SAMPLERS: dict[str, Callable] = {
    "conv": _conv_params,
    "act": lambda rng, s: {"act": _choice(rng, ACTIVATIONS)},
    "groupnorm": lambda rng, s: {"groups": int(_choice(rng, (1, 2, 4)))},
    "pool": lambda rng, s: {
        "pool": _choice(rng, ("MaxPool", "AveragePool")),
        "k": int(_choice(rng, (2, 3))),
        "stride": int(_choice(rng, (1, 2))),
        "pad": bool(rng.random() < 0.5),
        "include_pad": int(rng.integers(2)),
    },
    "residual": lambda rng, s: {
        **_conv_params(rng, s),
        "order": int(rng.integers(2)),
        "act": _choice(rng, ACTIVATIONS),
    },
    "se": lambda rng, s: {
        "ratio": int(_choice(rng, (2, 4))),
        "gate": _choice(rng, ("Sigmoid", "HardSigmoid")),
        "act": _choice(rng, ("Relu", "HardSwish")),
    },
    "concat": lambda rng, s: {
        "left": int(_choice(rng, (2, 4, 6))),
        "right": int(_choice(rng, (4, 6, 8))),
        "dilation": int(_choice(rng, (1, 2))),
        "keep_input": bool(rng.random() < 0.4),
    },
    "split": lambda rng, s: {
        "fraction": float(_choice(rng, (0.25, 0.5, 0.75))),
        "out": int(_choice(rng, (4, 6))),
        "merge": _choice(rng, ("add", "concat")),
    },
    "slice": lambda rng, s: {
        "start": int(_choice(rng, (1, 2, 3))),
        "step": int(_choice(rng, (1, 1, 2))),
        "to_end": bool(rng.random() < 0.6),
        "big_end": bool(rng.random() < 0.3),
        "form": _choice(rng, ("forward", "forward", "reverse", "negative")),
    },
    "gather": lambda rng, s: {
        "drop": int(_choice(rng, (0, 1, 2))),
        "sorted": bool(rng.random() < 0.5),
        "dup": bool(rng.random() < 0.3),
        "negative": bool(rng.random() < 0.3),
    },
    "concat_self": lambda rng, s: {"add": bool(rng.random() < 0.3)},
    "shuffle": lambda rng, s: {
        "groups": int(_choice(rng, (2, 3, 4))),
        "unit": bool(rng.random() < 0.7),
        "mid": int(_choice(rng, (12, 18, 24, 32, 36))),
        "add": bool(rng.random() < 0.5),
        "infer": bool(rng.random() < 0.3),
    },
    "unfold": lambda rng, s: {
        "patch": int(_choice(rng, (2, 2, 3, 4))),
        "mid": int(_choice(rng, (6, 8, 12))),
        "act": _choice(rng, ("Relu", "Sigmoid")),
        "infer": bool(rng.random() < 0.5),
    },
    "weight_first": lambda rng, s: {"out": int(_choice(rng, (6, 8, 12)))},
    "join": lambda rng, s: {"concat": bool(rng.random() < 0.4)},
    "passthrough": lambda rng, s: {"kind": _choice(rng, ("Identity", "Dropout", "Cast"))},
    "resize": lambda rng, s: _resize_params(rng),
    "pad": lambda rng, s: {
        "pad": int(_choice(rng, (1, 2))),
        "mode": _choice(rng, ("constant", "reflect", "edge")),
        "value": bool(rng.random() < 0.3),
    },
    "affine": lambda rng, s: {"binary": _choice(rng, ("Mul", "Add"))},
    "unsqueeze": lambda rng, s: {"axis": int(_choice(rng, (1, len(s.shape))))},
    "if": lambda rng, s: {
        "then": _choice(rng, ("Relu", "Neg", "Unsqueeze")),
        "else": _choice(rng, ("Sigmoid", "Abs")),
    },
    "loop": lambda rng, s: {"act": _choice(rng, ("Tanh", "Relu"))},
    "qdq_act": lambda rng, s: {"scale": float(_choice(rng, (0.02, 0.05)))},
    "to_flat": lambda rng, s: {"pool": bool(rng.random() < 0.5)},
    "seq_to_flat": lambda rng, s: {"how": _choice(rng, ("mean", "first"))},
    "linear": lambda rng, s: {
        "out": int(_choice(rng, (7, 8, 12, 16, 24))),
        "gemm": bool(rng.random() < 0.5),
        "trans_b": int(rng.integers(2)),
        "bias": bool(rng.random() < 0.8),
    },
    "layernorm": lambda rng, s: {"written_out": bool(rng.random() < 0.3)},
    "mlp": lambda rng, s: {
        "hidden": int(_choice(rng, (16, 24, 32))),
        "act": _choice(rng, ("Relu", "Gelu", "Sigmoid")),
    },
    "attention": lambda rng, s: {
        "heads": int(_choice(rng, (2, 4))),
        "pre_ln": bool(rng.random() < 0.7),
        "div": bool(rng.random() < 0.5),
        "bias": bool(rng.random() < 0.7),
        "written_out": bool(rng.random() < 0.2),
        "causal": bool(rng.random() < 0.3),
        "split_scale": bool(rng.random() < 0.2),
        "two_transposes": bool(rng.random() < 0.2),
    },
    "convt": lambda rng, s: {
        "out": int(_choice(rng, (4, 6, 8, 12))),
        "group": _choice(rng, (1, 1, 2, 4, "depthwise")),
        "multiplier": int(_choice(rng, (1, 1, 2))),
        "up": bool(rng.random() < 0.5),
        "bias": bool(rng.random() < 0.7),
        "bn": bool(rng.random() < 0.5),
        "act": _choice(rng, (None, "Relu", "HardSwish", "Sigmoid")),
    },
    "fpn": lambda rng, s: {
        "width": int(_choice(rng, (4, 8, 12))),
        "out": int(_choice(rng, (6, 8, 16))),
        "concat": bool(rng.random() < 0.7),
        "resize": _resize_params(rng, mode="nearest"),
    },
    "db_head": lambda rng, s: {
        "mid": int(_choice(rng, (4, 6, 8))),
        "bias": bool(rng.random() < 0.8),
        "group": _choice(rng, (1, 1, 2)),
        "maps": int(_choice(rng, (1, 1, 2))),
    },
    "other_norm": lambda rng, s: {"norm": _choice(rng, ("InstanceNormalization", "LRN"))},
    "gate": lambda rng, s: {
        "gate": _choice(rng, ("Sigmoid", "Tanh")),
        "swap": bool(rng.random() < 0.5),
    },
    "reduce": lambda rng, s: {"reduce": _choice(rng, ("ReduceMean", "ReduceMax", "ReduceSum"))},
    "channel_softmax": lambda rng, s: {
        "softmax": _choice(rng, ("Softmax", "LogSoftmax")),
        "implicit": bool(rng.random() < 0.5),
    },
    "split3": lambda rng, s: {
        "out": int(_choice(rng, (2, 4))),
        "num_outputs": bool(rng.random() < 0.5),
    },
    "side_input": lambda rng, s: {"binary": _choice(rng, ("Add", "Mul"))},
    "expand": lambda rng, s: {"dynamic": bool(rng.random() < 0.5)},
    "reshape_flat": lambda rng, s: {"infer": bool(rng.random() < 0.5)},
    "nhwc_mlp": lambda rng, s: {
        "hidden": int(_choice(rng, (8, 12, 16))),
        "act": _choice(rng, ("Relu", "Gelu")),
        "bias": bool(rng.random() < 0.7),
    },
    "swiglu": lambda rng, s: {
        "hidden": int(_choice(rng, (16, 24, 32))),
        "act": _choice(rng, ("Sigmoid", "Relu")),
    },
    "head": lambda rng, s: {
        "classes": int(_choice(rng, (3, 5))),
        "gemm": bool(rng.random() < 0.6),
        "how": _choice(rng, ("mean", "first")),
    },
}


def _table(text: str) -> dict[str, int]:
    """``"conv:8 act:4"`` → ``{"conv": 8, "act": 4}``."""
    return {op: int(weight) for op, weight in (item.split(":") for item in text.split())}


# relative frequencies of the blocks per running kind
WEIGHTS = {
    "image": _table(
        "conv:8 act:4 bn:3 groupnorm:1 layernorm_nhwc:1 pool:2 residual:3 se:2 concat:2 split:2 slice:1 gather:1 "
        "shuffle:1 unfold:1 resize:1 pad:1 affine:1 unsqueeze:1 shared:1 if:1 loop:1 qdq_act:1 tap:1 to_flat:1 "
        "to_seq:1 "
        "convt:2 fpn:2 db_head:1 other_norm:1 gate:1 reduce:1 channel_softmax:1 divide:1 concat_spatial:1 "
        "split3:1 side_input:1 "
        "expand:1 reshape_flat:1 nhwc_mlp:1 concat_self:1 nhwc_flatten:1 passthrough:1 fork:2 join:3 dead:1"
    ),
    "seq": _table(
        "attention:4 mlp:3 swiglu:1 linear:2 layernorm:2 act:1 affine:1 unsqueeze:1 if:1 loop:1 qdq_act:1 tap:1 "
        "seq_to_flat:1 divide:1 side_input:1 expand:1 weight_first:1 passthrough:1 fork:2 join:3 dead:1"
    ),
    "flat": _table(
        "linear:4 act:2 bn:1 layernorm:1 mlp:1 swiglu:1 affine:1 unsqueeze:1 if:1 loop:1 qdq_act:1 tap:1 divide:1 "
        "side_input:1 expand:1 weight_first:1 passthrough:1 fork:2 join:3 dead:1"
    ),
}
QDQ_WEIGHT_BLOCKS = ("conv", "residual", "se", "linear", "attention")


def generate(seed: int, qdq: bool = False, max_blocks: int = 12, opset: int | None = None) -> dict:
    """A random graph description: opset, batch, weight storage, input and blocks, all from
    ``default_rng(seed)``; with ``qdq`` some weights are int8 + DequantizeLinear and
    ``qdq_act`` blocks quantize activations; ``opset`` fixes the opset (the rest of the draws
    stay the same). The blocks end with a classifier head most times."""
    rng = np.random.default_rng(seed)
    drawn = int(_choice(rng, OPSETS))
    graph = {
        "seed": seed,
        "opset": drawn if opset is None else opset,
        "batch": _choice(rng, ("1", "2", "symbolic")),
        "weights": _choice(rng, ("initializer", "initializer", "constant", "mixed")),
        "input": _sample_input(rng),
        "blocks": [],
    }
    graph["input"]["shape"][0] = 2 if graph["batch"] == "2" else 1
    b, s = Builder(graph), _input_state(graph["input"])
    for _ in range(int(rng.integers(2, max_blocks + 1))):
        spec = _sample_block(rng, s, qdq)
        b.rng = np.random.default_rng(spec["seed"])
        s = BLOCKS[spec["op"]][1](b, s, spec)
        graph["blocks"].append(spec)
    if rng.random() < 0.8:
        graph["blocks"].append(
            {"op": "head", "seed": int(rng.integers(2**31)), **SAMPLERS["head"](rng, s)}
        )
    return graph


def _sample_input(rng: np.random.Generator) -> dict:
    kind = _choice(rng, ("image", "image", "image", "seq", "seq", "flat"))
    if kind == "image":
        return {
            "kind": kind,
            "shape": [1, int(_choice(rng, (3, 4, 8))), int(_choice(rng, (6, 8))), 8],
        }
    if kind == "seq":
        return {
            "kind": kind,
            "shape": [1, int(_choice(rng, (4, 6))), int(_choice(rng, (8, 12, 16, 24)))],
        }
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
