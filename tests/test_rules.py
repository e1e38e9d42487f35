"""One oracle test per registered axis rule: every (domain, op type) in ``AXIS_RULES`` has an
example graph here, the op placed between a producer weight and a consumer weight so that its
channels are in a group with compute. Channel pruning at 0.5 must cut that group (the consumer
weight loses inputs) and the pruned model must equal its masked original in onnxruntime; an op
that blocks by design must instead leave the group whole with its reason. A rule registered
without an example fails ``test_every_registered_rule_has_an_example``.

Builders take the graph under construction and the producer's output ``h`` and return
``(value, axis)``: the op's output and its channel axis, which the consumer reads. Templates:
``nchw`` (x [1, 4, 5, 5] -> Conv 1x1 -> h [1, 8, 5, 5]), ``seq`` (x [1, 5, 6] -> MatMul + bias
-> h [1, 5, 8]) and ``flat`` (x [2, 6] -> Gemm -> h [2, 8]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from conftest import make_model, oracle_error, prune
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.rules import AXIS_RULES, RuleError, axis_rule, strict
from sparsec.analysis.rules.core import Coupling
from sparsec.ir import Model

F = TensorProto.FLOAT


class Graph:
    """Nodes and seeded initializers of one example under construction."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits, self.count = rng, [], [], 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def op(self, op_type: str, inputs, outputs: int = 1, domain: str = "", **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), names, name=self.name("n"), domain=domain, **attrs
            )
        )
        return names[0] if outputs == 1 else names

    def const(self, array) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape: int, low: float = -1.0) -> str:
        return self.const(self.rng.uniform(low, 1.0, size=shape).astype(np.float32))


# ---------------------------------------------------------------- templates: x -> weight -> h
def nchw(g: Graph) -> tuple[str, list]:
    return g.op("Conv", ["x", g.weight(8, 4, 1, 1), g.weight(8)]), [1, 4, 5, 5]


def seq(g: Graph) -> tuple[str, list]:
    return g.op("Add", [g.op("MatMul", ["x", g.weight(6, 8)]), g.weight(8)]), [1, 5, 6]


def flat(g: Graph) -> tuple[str, list]:
    return g.op("Gemm", ["x", g.weight(8, 6), g.weight(8)], transB=1), [2, 6]


@dataclass(frozen=True)
class Example:
    template: Callable
    body: Callable  # body(g, h) -> (value, channel axis)
    blocks: str | None = None  # the barrier reason when the op blocks by design
    opset: int = 18
    domains: tuple[str, ...] = ("com.microsoft",)
    shape: tuple[int, ...] | None = (
        None  # the op's output shape where ONNX cannot infer it (contrib ops)
    )


def per_channel(g: Graph, value: float | None = None) -> str:
    """A [8, 1, 1] constant: one value per channel of an NCHW tensor (away from 0)."""
    array = g.rng.uniform(0.5, 1.5, size=(8, 1, 1)) if value is None else np.full((8, 1, 1), value)
    return g.const(array.astype(np.float32))


def positive(g: Graph, h: str) -> str:
    return g.op("Sigmoid", [h])


def unary(op_type: str, **attrs) -> Example:
    return Example(nchw, lambda g, h: (g.op(op_type, [h], **attrs), 1))


def on_positive(op_type: str) -> Example:
    return Example(nchw, lambda g, h: (g.op(op_type, [positive(g, h)]), 1))


def binary(op_type: str, **attrs) -> Example:
    return Example(nchw, lambda g, h: (g.op(op_type, [h, per_channel(g)], **attrs), 1))


def compare(op_type: str) -> Example:
    return Example(
        nchw, lambda g, h: (g.op("Cast", [g.op(op_type, [h, per_channel(g, 0.0)])], to=F), 1)
    )


def logic(op_type: str) -> Example:
    def body(g: Graph, h: str):
        mask = g.op("Greater", [h, per_channel(g, 0.0)])
        other = g.const(g.rng.uniform(size=(8, 1, 1)) > 0.5)
        return g.op("Cast", [g.op(op_type, [mask] if op_type == "Not" else [mask, other])], to=F), 1

    return Example(nchw, body)


def predicate(op_type: str) -> Example:
    return Example(
        nchw, lambda g, h: (g.op("Mul", [h, g.op("Cast", [g.op(op_type, [h])], to=F)]), 1)
    )


ELEMENTWISE = {
    **{
        op: unary(op)
        for op in (
            "Abs",
            "Ceil",
            "Celu",
            "Cos",
            "Elu",
            "Erf",
            "Exp",
            "Floor",
            "HardSigmoid",
            "HardSwish",
            "Identity",
            "LeakyRelu",
            "Mish",
            "Neg",
            "Relu",
            "Round",
            "Selu",
            "Shrink",
            "Sigmoid",
            "Sign",
            "Sin",
            "Softplus",
            "Softsign",
            "Tanh",
            "ThresholdedRelu",
            "Clip",
            "Dropout",
        )
    },
    "Gelu": Example(nchw, lambda g, h: (g.op("Gelu", [h]), 1), opset=20),
    "Cast": unary("Cast", to=F),
    **{op: on_positive(op) for op in ("Log", "Sqrt", "Reciprocal")},
    **{op: binary(op) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu")},
    "Mod": binary("Mod", fmod=1),
    "Pow": Example(nchw, lambda g, h: (g.op("Pow", [positive(g, h), per_channel(g)]), 1)),
    "Where": Example(
        nchw,
        lambda g, h: (
            g.op("Where", [g.op("Greater", [h, per_channel(g, 0.0)]), h, per_channel(g)]),
            1,
        ),
    ),
    **{op: compare(op) for op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")},
    **{op: logic(op) for op in ("And", "Or", "Xor", "Not")},
    **{op: predicate(op) for op in ("IsNaN", "IsInf")},
    "CastLike": Example(
        nchw, lambda g, h: (g.op("CastLike", [h, g.const(np.zeros(2, np.float32))]), 1)
    ),
}


def run_time_size(op_type: str) -> Example:
    """Shape/Size read the channel count at run time: h / (its size) blocks the channels."""

    def body(g: Graph, h: str):
        size = g.op("Cast", [g.op(op_type, [h])], to=F)
        return g.op(
            "Div", [h, g.op("ReduceProd", [size], keepdims=0) if op_type == "Shape" else size]
        ), 1

    return Example(nchw, body, blocks="its size is read at run time")


def pool(op_type: str, **attrs) -> Example:
    return Example(nchw, lambda g, h: (g.op(op_type, [h], **attrs), 1))


def reduce_spatial(op_type: str) -> Example:
    def body(g: Graph, h: str):
        source = positive(g, h) if op_type == "ReduceLogSum" else h
        return g.op(op_type, [source, g.const(np.array([2, 3], np.int64))], keepdims=1), 1

    return Example(nchw, body)


def arg_spatial(op_type: str) -> Example:
    return Example(
        nchw, lambda g, h: (g.op("Cast", [g.op(op_type, [h], axis=2, keepdims=1)], to=F), 1)
    )


def ints(g: Graph, values) -> str:
    return g.const(np.array(values, np.int64))


def split_and_swap(g: Graph, h: str):
    first, second = g.op("Split", [h, ints(g, [4, 4])], outputs=2, axis=1)
    return g.op("Concat", [second, first], axis=1), 1


def squeeze_back(g: Graph, h: str):
    return g.op("Squeeze", [g.op("Unsqueeze", [h, ints(g, [0])]), ints(g, [0])]), 2


def constant_addend(op_type: str) -> Example:
    def body(g: Graph, h: str):
        if op_type == "Constant":
            addend = g.op(
                "Constant", [], value=numpy_helper.from_array(np.full((8, 1, 1), 0.5, np.float32))
            )
        else:  # its shape is computed at run time from h itself
            addend = g.op(
                "ConstantOfShape",
                [g.op("Shape", [h])],
                value=numpy_helper.from_array(np.ones(1, np.float32)),
            )
        return g.op("Add", [h, addend]), 1

    if op_type == "Constant":
        return Example(nchw, body)
    return Example(
        nchw, body, blocks="its size comes from a shape computed at run time", shape=(1, 8, 5, 5)
    )


def quantize(g: Graph, h: str):
    scale, zero = g.const(np.float32(0.05)), g.const(np.uint8(128))
    return g.op("DequantizeLinear", [g.op("QuantizeLinear", [h, scale, zero]), scale, zero]), 1


LAYOUT = {
    "Concat": Example(nchw, lambda g, h: (g.op("Concat", [h, g.weight(1, 4, 5, 5)], axis=1), 1)),
    "Split": Example(nchw, split_and_swap),
    "Slice": Example(
        nchw, lambda g, h: (g.op("Slice", [h, ints(g, [1]), ints(g, [7]), ints(g, [1])]), 1)
    ),
    "Reshape": Example(nchw, lambda g, h: (g.op("Reshape", [h, ints(g, [1, 200])]), 1)),
    "Flatten": Example(nchw, lambda g, h: (g.op("Flatten", [h], axis=1), 1)),
    "Squeeze": Example(seq, squeeze_back),
    "Unsqueeze": Example(seq, squeeze_back),
    "Expand": Example(seq, lambda g, h: (g.op("Expand", [h, ints(g, [2, 5, 8])]), 2)),
    "Transpose": Example(nchw, lambda g, h: (g.op("Transpose", [h], perm=[0, 2, 3, 1]), 3)),
    "Gather": Example(
        nchw, lambda g, h: (g.op("Gather", [h, ints(g, [0, 2, 4, 6, 1, 3, 5, 7])], axis=1), 1)
    ),
    "Pad": Example(nchw, lambda g, h: (g.op("Pad", [h, ints(g, [0, 0, 1, 1, 0, 0, 1, 1])]), 1)),
    "Resize": Example(
        nchw, lambda g, h: (g.op("Resize", [h, "", g.const(np.array([1, 1, 2, 2], np.float32))]), 1)
    ),
    "Upsample": Example(
        nchw,
        lambda g, h: (g.op("Upsample", [h, g.const(np.array([1, 1, 2, 2], np.float32))]), 1),
        opset=9,
    ),
    **{
        op: reduce_spatial(op)
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
    **{op: arg_spatial(op) for op in ("ArgMax", "ArgMin")},
    **{
        op: Example(seq, lambda g, h, op=op: (g.op(op, [h], axis=1), 2))
        for op in ("Softmax", "LogSoftmax", "Hardmax")
    },
    "Shape": run_time_size("Shape"),
    "Size": run_time_size("Size"),
    "Constant": constant_addend("Constant"),
    "ConstantOfShape": constant_addend("ConstantOfShape"),
}


def batch_norm(op_type: str) -> Example:
    def body(g: Graph, h: str):
        statistics = (
            [g.weight(8), g.weight(8, low=0.5)] if op_type == "BatchNormalization" else []
        )  # mean, var
        params = [g.weight(8, low=0.5), g.weight(8), *statistics]
        return g.op(op_type, [h, *params]), 1

    return Example(nchw, body)


NORMALIZATION = {
    "BatchNormalization": batch_norm("BatchNormalization"),
    "InstanceNormalization": batch_norm("InstanceNormalization"),
    "GroupNormalization": Example(
        nchw,
        lambda g, h: (g.op("GroupNormalization", [h, g.weight(8), g.weight(8)], num_groups=4), 1),
        opset=21,
        shape=(1, 8, 5, 5),
    ),
    "LayerNormalization": Example(
        seq, lambda g, h: (g.op("LayerNormalization", [h, g.weight(8), g.weight(8)]), 2)
    ),
    "LRN": Example(
        nchw, lambda g, h: (g.op("LRN", [h], size=3), 1), blocks="pass --lossy-couplings"
    ),
    **{
        op: pool(op, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        for op in ("MaxPool", "AveragePool", "LpPool")
    },
    **{op: pool(op) for op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")},
}

COMPUTE = {
    "Conv": Example(
        nchw, lambda g, h: (g.op("Conv", [h, g.weight(8, 4, 3, 3)], pads=[1, 1, 1, 1], group=2), 1)
    ),
    "ConvTranspose": Example(
        nchw, lambda g, h: (g.op("ConvTranspose", [h, g.weight(8, 4, 3, 3)], group=2), 1)
    ),
    "Gemm": Example(
        flat, lambda g, h: (g.op("Gemm", [h, g.weight(8, 8), g.weight(8)], alpha=0.5, beta=2.0), 1)
    ),
    "MatMul": Example(seq, lambda g, h: (g.op("MatMul", [h, g.weight(8, 8)]), 2)),
    "QuantizeLinear": Example(nchw, quantize),
    "DequantizeLinear": Example(nchw, quantize),
}


def qkv(g: Graph, h: str, q_width: int = 8, kv_width: int = 8) -> list[str]:
    return [g.op("MatMul", [h, g.weight(8, width)]) for width in (q_width, kv_width, kv_width)]


def group_query(g: Graph, h: str):
    """4 query heads over 2 KV heads, head_dim 8 (onnxruntime's kernel needs a multiple of 8)."""
    lengths, total = g.const(np.array([4], np.int32)), g.const(np.array(5, np.int32))
    outputs = g.op(
        "GroupQueryAttention",
        [*qkv(g, h, 32, 16), "", "", lengths, total],
        outputs=3,
        domain="com.microsoft",
        num_heads=4,
        kv_num_heads=2,
    )
    return outputs[0], 2


def contrib(body: Callable, width: int = 8) -> Example:
    return Example(seq, body, shape=(1, 5, width))


ATTENTION = {
    "Attention": Example(
        seq, lambda g, h: (g.op("Attention", qkv(g, h), q_num_heads=2, kv_num_heads=2), 2), opset=23
    ),
    "com.microsoft::MultiHeadAttention": contrib(
        lambda g, h: (g.op("MultiHeadAttention", qkv(g, h), domain="com.microsoft", num_heads=2), 2)
    ),
    "com.microsoft::GroupQueryAttention": contrib(group_query, width=32),
    "com.microsoft::Attention": contrib(
        lambda g, h: (
            g.op(
                "Attention", [h, g.weight(8, 24), g.weight(24)], domain="com.microsoft", num_heads=2
            ),
            2,
        )
    ),
}


def lstm(g: Graph, h: str):
    """Bidirectional LSTM over h [T=1, N=5, 8] (layout 0), with bias, peepholes and non-zero
    constant initial states (sliced by surgery); Y [1, 2, 5, 8], hidden on axis 3."""
    w, r, b, p = g.weight(2, 32, 8), g.weight(2, 32, 8), g.weight(2, 64), g.weight(2, 24)
    states = [g.weight(2, 5, 8), g.weight(2, 5, 8)]
    inputs = [h, w, r, b, "", *states, p]
    return g.op("LSTM", inputs, outputs=3, hidden_size=8, direction="bidirectional")[0], 3


def gru(g: Graph, h: str):
    """GRU with the reset after the linear map and a zero initial state from ConstantOfShape
    (dropped by surgery); Y [1, 1, 5, 8], hidden on axis 3 (onnxruntime runs layout 0 only)."""
    zeros = g.op("ConstantOfShape", [g.const(np.array([1, 5, 8], np.int64))])
    inputs = [h, g.weight(1, 24, 8), g.weight(1, 24, 8), g.weight(1, 48), "", zeros]
    return g.op("GRU", inputs, outputs=2, hidden_size=8, linear_before_reset=1)[0], 3


def rnn(g: Graph, h: str):
    """RNN with clip, no initial state; Y [1, 1, 5, 8], hidden on axis 3."""
    inputs = [h, g.weight(1, 8, 8), g.weight(1, 8, 8), g.weight(1, 16)]
    return g.op("RNN", inputs, outputs=2, hidden_size=8, clip=2.0)[0], 3


RECURRENT = {"LSTM": Example(seq, lstm), "GRU": Example(seq, gru), "RNN": Example(seq, rnn)}

EXAMPLES: dict[str, Example] = {
    **ELEMENTWISE,
    **LAYOUT,
    **NORMALIZATION,
    **COMPUTE,
    **ATTENTION,
    **RECURRENT,
}


def key(domain: str, op_type: str) -> str:
    return f"{domain}::{op_type}" if domain else op_type


def consume(g: Graph, value: str, axis: int, shape: list[int]) -> str:
    """The consumer weight reading ``value``'s channel ``axis``: a 1x1 Conv on NCHW, else a MatMul."""
    channels = shape[axis]
    if len(shape) == 4 and axis == 1:
        return g.op("Conv", [value, g.weight(3, channels, 1, 1), g.weight(3)])
    if axis != len(shape) - 1:
        value = g.op(
            "Transpose", [value], perm=[k for k in range(len(shape)) if k != axis] + [axis]
        )
    return g.op("Add", [g.op("MatMul", [value, g.weight(channels, 3)]), g.weight(3)])


def build(example: Example, seed: int = 0) -> tuple[onnx.ModelProto, str, int]:
    """The example's model, its op's output and channel axis."""
    g = Graph(np.random.default_rng(seed))
    h, x_shape = example.template(g)
    value, axis = example.body(g, h)
    shape = list(example.shape) if example.shape else _inferred_shape(g, value, x_shape, example)
    y = consume(g, value, axis, shape)
    y_shape = _inferred_shape(g, y, x_shape, example) or [f"y{k}" for k in range(len(shape))]
    proto = make_model(
        g.nodes,
        [("x", F, x_shape)],
        [(y, F, y_shape)],
        g.inits,
        opset=example.opset,
        domains=example.domains,
    )
    return proto, value, axis


def _inferred_shape(g: Graph, value: str, x_shape: list[int], example: Example) -> list[int] | None:
    """``value``'s shape by ONNX shape inference, None when unknown (after a contrib op)."""
    graph = helper.make_graph(
        g.nodes,
        "probe",
        [helper.make_tensor_value_info("x", F, x_shape)],
        [helper.make_tensor_value_info(value, F, None)],
        g.inits,
    )
    opsets = [helper.make_opsetid("", example.opset)] + [
        helper.make_opsetid(d, 1) for d in example.domains
    ]
    inferred = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=opsets))
    info = [
        v for v in list(inferred.graph.value_info) + list(inferred.graph.output) if v.name == value
    ]
    dims = [d.dim_value for d in info[0].type.tensor_type.shape.dim] if info else []
    return dims if dims and all(dims) else None


def group_of(model: Model, member: tuple[str, int]):
    return next(g for g in find_channel_groups(model).groups if member in g.members)


def weight_inputs(model: Model, consumer_weight: str) -> tuple[int, ...]:
    return tuple(model.constant_shape(model.initializers()[consumer_weight]))


@pytest.mark.parametrize("registered", sorted(key(d, o) for d, o in AXIS_RULES))
def test_rule_prunes_its_example_exactly(registered):
    example = EXAMPLES[registered]
    proto, value, axis = build(example)
    group = group_of(Model.from_proto(proto), (value, axis))
    if example.blocks:
        assert not group.prunable and example.blocks in group.reason
    else:
        assert group.prunable, group.reason
    consumer_weight = proto.graph.initializer[-2].name  # consume() adds the weight, then the bias
    before = weight_inputs(Model.from_proto(proto), consumer_weight)
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    after = weight_inputs(model, consumer_weight)
    contraction = 1 if len(before) == 4 else 0
    assert (after[contraction] == before[contraction]) == bool(example.blocks), (before, after)
    assert oracle_error(model, result.reference()) <= 1e-4


def test_every_registered_rule_has_an_example():
    registered = {key(d, o) for d, o in AXIS_RULES}
    assert sorted(registered - set(EXAMPLES)) == []  # a new rule brings an example above
    assert sorted(set(EXAMPLES) - registered) == []  # and an example names a registered rule


def test_a_raising_rule_fails_in_strict_mode_and_is_a_barrier_otherwise():
    def body(g: Graph, h: str):
        g.op("Custom", [h], domain="test.raise")
        return g.op("Relu", [h]), 1

    proto, value, axis = build(Example(nchw, body, domains=("test.raise",)))

    @axis_rule("Custom", domain="test.raise")
    def broken(node, ctx) -> Coupling:
        raise ValueError("no idea")

    try:
        with (
            strict(),
            pytest.raises(
                RuleError, match=r"test.raise::Custom raised on node 'n\d+': ValueError: no idea"
            ),
        ):
            find_channel_groups(Model.from_proto(proto))
        with strict(False):
            group = group_of(Model.from_proto(proto), (value, axis))
        assert (
            not group.prunable
            and "axis rule could not decide (ValueError: no idea)" in group.reason
        )
    finally:
        del AXIS_RULES[("test.raise", "Custom")]
