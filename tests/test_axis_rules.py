"""Axis rules on the edge cases a review found: each graph must prune to a model that passes
the checker and equals its masked original (or keep the group whole when it cannot)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.rules import Coupling
from sparsec.analysis.rules.layout import link_regroup
from sparsec.ir import Model
from sparsec.passes.channel_prune import ChannelPrunePass

F = TensorProto.FLOAT


def weight(rng, name, shape):
    return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def prune_and_compare(proto, rng) -> dict:
    """Prune half; assert checker, shapes and oracle; return the pass stats."""
    model = Model.from_proto(proto)
    result = ChannelPrunePass(ratio=0.5)(model)
    assert model.check() is None
    feeds = {
        i.name: rng.normal(size=[d.dim_value for d in i.type.tensor_type.shape.dim]).astype(
            np.float32
        )
        for i in proto.graph.input
    }
    expected, actual = (
        run_ort(result.reference().to_proto(), feeds),
        run_ort(model.to_proto(), feeds),
    )
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and np.isfinite(e).all()
        assert np.abs(e - a).max() <= 1e-4 * np.abs(e).max()
    return result.stats


def test_product_of_two_activations_is_masked_in_the_oracle(rng):
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q0"]),
        helper.make_node("Sigmoid", ["q0"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k0"]),
        helper.make_node("Sigmoid", ["k0"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [4, 6])],
        [("y", F, [4, 4])],
        [weight(rng, "wq", [6, 8]), weight(rng, "wk", [6, 8])],
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] == 1


def test_a_dim_read_at_run_time_blocks_its_axis(rng):
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Shape", ["q"], ["qs"], start=-1),
        helper.make_node("Cast", ["qs"], ["qf"], to=F),
        helper.make_node("Sqrt", ["qf"], ["sq"]),
        helper.make_node("Div", ["s", "sq"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [4, 6])],
        [("y", F, [4, 4])],
        [weight(rng, "wq", [6, 8]), weight(rng, "wk", [6, 8])],
        opset=15,
    )
    groups = find_channel_groups(Model.from_proto(proto)).groups
    reasons = [g.reason for g in groups if g.units == 8]
    assert len(reasons) == 1 and "its size is read at run time" in reasons[0]


def test_run_time_constant_of_shape_keeps_its_group_whole_and_a_shared_target_is_copied_per_reshape(
    rng,
):
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Shape", ["x8"], ["s"]),
        helper.make_node(
            "ConstantOfShape", ["s"], ["z"], value=numpy_helper.from_array(np.ones(1, np.float32))
        ),
        helper.make_node("Mul", ["h", "z"], ["hz"]),
        helper.make_node("MatMul", ["hz", "w2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [2, 6]), ("x8", F, [2, 8])],
        [("y", F, [2, 5])],
        [weight(rng, "w1", [6, 8]), weight(rng, "w2", [8, 5])],
        opset=13,
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] == 0
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "piece"], ["tgt"], axis=0),
        helper.make_node("Reshape", ["a1", "tgt"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["y1"]),
        helper.make_node("Reshape", ["x8", "tgt"], ["r2"]),
        helper.make_node("Add", ["y1", "r2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [2, 6]), ("x8", F, [2, 8])],
        [("y", F, [2, 8])],
        [
            weight(rng, "w1", [6, 8]),
            weight(rng, "w2", [8, 8]),
            ints("zero", [0]),
            ints("piece", [8]),
        ],
        opset=13,
    )
    model = Model.from_proto(proto)
    result = ChannelPrunePass(ratio=0.5)(model)
    assert result.stats["groups_pruned"] == 1  # the hidden units; x8's reshape keeps its 8
    feeds = {
        "x": rng.normal(size=(2, 6)).astype(np.float32),
        "x8": rng.normal(size=(2, 8)).astype(np.float32),
    }
    expected, actual = (
        run_ort(result.reference().to_proto(), feeds)[0],
        run_ort(model.to_proto(), feeds)[0],
    )
    assert (
        model.check() is None and np.abs(expected - actual).max() <= 1e-4 * np.abs(expected).max()
    )
    pieces = {
        n.outputs[0].name: model.constant(n.inputs[1].producer().inputs[1]).tolist()
        for n in model.nodes()
        if n.op_type == "Reshape"
    }
    assert pieces == {"r1": [4], "r2": [8]}  # r1 got its own copy of the shared Concat


def test_slice_keeps_other_axes_bounds_as_written(rng):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"]),
        helper.make_node("Slice", ["h", "starts", "ends", "axes", "steps"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [1, 3, 5, 6])],
        [("y", F, [1, 4, 5, 6])],
        [
            weight(rng, "w1", [8, 3, 1, 1]),
            weight(rng, "w2", [4, 8, 1, 1]),
            ints("starts", [0, -1]),
            ints("ends", [8, -(2**62)]),
            ints("axes", [1, 3]),
            ints("steps", [1, -1]),
        ],
        opset=13,
    )
    assert (
        prune_and_compare(proto, rng)["groups_pruned"] == 1
    )  # w1 -> w2 through a Slice that keeps every channel


def test_resize_sizes_input_is_rewritten_not_roi(rng):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"]),
        helper.make_node("Resize", ["h", "", "", "sizes"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [1, 3, 4, 4])],
        [("y", F, [1, 4, 8, 8])],
        [
            weight(rng, "w1", [8, 3, 1, 1]),
            weight(rng, "w2", [4, 8, 1, 1]),
            ints("sizes", [1, 8, 8, 8]),
        ],
        opset=13,
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] == 1


def test_division_by_a_per_channel_constant_gives_no_nan_in_the_oracle(rng):
    scale = numpy_helper.from_array(rng.uniform(0.5, 2, (1, 8)).astype(np.float32), "scale")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Div", ["h", "scale"], ["d"]),
        helper.make_node("MatMul", ["d", "w2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [2, 6])],
        [("y", F, [2, 5])],
        [weight(rng, "w1", [6, 8]), weight(rng, "w2", [8, 5]), scale],
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] == 1


@pytest.mark.parametrize("perm, pruned", [([0, 2, 1], 1), ([1, 2, 0], 0)])
def test_matmul_with_a_vector_left_operand_aligns_batch_dims(rng, perm, pruned):
    """v [3] · b [4, 4, 3, 2] contracts b's axis -2: yv [4, 4, 2] keeps b's channel axis 1. With
    perm [0, 2, 1] w3 contracts those channels (one group, pruned); with [1, 2, 0] it contracts
    x's batch axis instead, so w's channels reach the output and w3's rows reach the input."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["t"]),
        helper.make_node("Transpose", ["t"], ["b"], perm=[0, 3, 1, 2]),
        helper.make_node("MatMul", ["v", "b"], ["yv"]),
        helper.make_node("Transpose", ["yv"], ["yt"], perm=perm),
        helper.make_node("MatMul", ["yt", "w3"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [4, 3, 2, 6])],
        [("y", F, [4, 2, 5])],
        [weight(rng, "w", [6, 4]), weight(rng, "v", [3]), weight(rng, "w3", [4, 5])],
        opset=13,
    )
    groups = {
        tuple(sorted(g.constants)): g.reason
        for g in find_channel_groups(Model.from_proto(proto)).groups
    }
    if pruned:
        assert groups[(("w", 1), ("w3", 0))] is None
    else:
        assert (
            "reaches graph output 'y'" in groups[(("w", 1),)]
            and "reaches graph input 'x'" in groups[(("w3", 0),)]
        )
    assert prune_and_compare(proto, rng)["groups_pruned"] == pruned


@pytest.mark.parametrize(
    "x_shape, y_shape, expected",
    [
        (
            (1, 8, 4, 4),
            (1, 128),
            {("x", 1): [0] * 16 + [1] * 16},
        ),  # conv -> fc: channel c is a run of 16
        (
            (1, 4, 24),
            (1, 4, 3, 8),
            {("x", 2): [0] * 8 + [1] * 8 + [2] * 8},
        ),  # hidden -> heads x head_dim
    ],
)
def test_reshape_links_the_outermost_part(x_shape, y_shape, expected):
    coupling = Coupling()
    x, y = type("V", (), {"name": "x"})(), type("V", (), {"name": "y"})()
    link_regroup(coupling, x, x_shape, y, y_shape)
    maps = {
        tuple(e.b if e.b[0] == "x" else e.a): e.index for e in coupling.edges if e.index is not None
    }
    for member, prefix in expected.items():
        assert maps[member][: len(prefix)].tolist() == prefix
    assert coupling.reasons  # the inner parts are blocked


@pytest.mark.parametrize(
    "op, w_shape, group, size",
    [
        ("Conv", [12, 4, 1, 1], 2, 4),  # grouped: 2 groups of 4 inputs, 6 outputs each
        ("Conv", [16, 1, 3, 3], 8, 2),  # depthwise, channel multiplier 2
        ("ConvTranspose", [8, 3, 2, 2], 2, 5),  # grouped transposed: 2 groups, 3 outputs each
        ("ConvTranspose", [8, 1, 2, 2], 8, 5),  # depthwise transposed
    ],
)
def test_grouped_convolutions_prune_exactly(rng, op, w_shape, group, size):
    c_in = w_shape[0] if op == "ConvTranspose" else w_shape[1] * group
    c_out = w_shape[1] * group if op == "ConvTranspose" else w_shape[0]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node(op, ["r", "w"], ["g"], group=group),
        helper.make_node("Relu", ["g"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [1, 3, 4, 4])],
        [("y", F, [1, 5, size, size])],
        [
            weight(rng, "w0", [c_in, 3, 1, 1]),
            weight(rng, "w", w_shape),
            weight(rng, "w2", [5, c_out, 1, 1]),
        ],
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] >= 1


@pytest.mark.parametrize("use_in_arithmetic", [False, True])
def test_a_dim_read_only_to_reshape_follows_the_pruning(rng, use_in_arithmetic):
    """GPT-2's Conv1D: h.view(-1, h.size(-1)) reads h's last dim at run time only to pass it
    into the target: the group is pruned and the run-time entry follows. Doubling the read dim
    first (arithmetic on it) keeps the group whole."""
    read = [
        helper.make_node("Shape", ["h"], ["hs"]),
        helper.make_node("Slice", ["hs", "minus1", "big"], ["last1"]),
        helper.make_node("Squeeze", ["last1", "zero"], ["last"]),
    ]
    if use_in_arithmetic:
        read += [
            helper.make_node("Mul", ["last", "two"], ["last2"]),
            helper.make_node("Div", ["last2", "two"], ["lastd"]),
        ]
    read += [
        helper.make_node(
            "Unsqueeze", ["lastd" if use_in_arithmetic else "last", "zero"], ["piece"]
        ),
        helper.make_node("Concat", ["minus1", "piece"], ["target"], axis=0),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        *read,
        helper.make_node("Reshape", ["h", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [2, 3, 8])],
        [("y", F, [6, 4])],
        [
            weight(rng, "w1", [8, 16]),
            weight(rng, "w2", [16, 4]),
            ints("minus1", [-1]),
            ints("big", [2**62]),
            ints("zero", [0]),
            numpy_helper.from_array(np.array(2, np.int64), "two"),
        ],
        opset=13,
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] == (0 if use_in_arithmetic else 1)


@pytest.mark.parametrize("then_read", [False, True])
def test_a_run_of_dims_sliced_from_a_shape_follows_the_pruning(rng, then_read):
    """x.flatten(2) as TorchScript writes it (timm's patch embedding): the target is
    Concat(Slice(Shape(x), 0, 2), [-1]), so its [N, C] entries are x's own dims at run time
    and follow the pruning of C. The same slice also used in arithmetic is a read: the group
    stays whole."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"]),
        helper.make_node("Shape", ["h"], ["hs"]),
        helper.make_node("Slice", ["hs", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "w2"], ["y"]),
    ]
    outputs = [("y", F, [2, 16, 4])]
    if then_read:
        nodes.append(helper.make_node("Mul", ["nc", "two"], ["nc2"]))
        outputs.append(("nc2", TensorProto.INT64, [2]))
    proto = make_model(
        nodes,
        [("x", F, [2, 3, 4, 4])],
        outputs,
        [
            weight(rng, "w1", [8, 3, 1, 1]),
            weight(rng, "w2", [8, 4]),
            ints("zero", [0]),
            ints("two", [2]),
            ints("minus1", [-1]),
        ],
        opset=13,
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] == (0 if then_read else 1)


def _merge_link(proto, reshape_output: str):
    """The (member, index) a Reshape's merged output axis is linked to."""
    model = Model.from_proto(proto)
    analysis = find_channel_groups(model)
    node = next(n for n in model.graph if n.outputs[0].name == reshape_output)
    coupling = analysis.couplings[list(model.graph).index(node)]
    return [(e.b, e.index.tolist()) for e in coupling.edges if e.index is not None]


@pytest.mark.parametrize(
    "traced, expected",
    [
        ("inner", [(("t", 3), [q % 8 for q in range(16)])]),  # only C traces to a weight
        ("none", [(("t", 2), [q // 8 for q in range(16)])]),  # a graph input: the outermost
    ],
)
def test_a_merge_links_the_part_that_traces_to_a_weight(rng, traced, expected):
    """[1, 5, 2, 8] → Reshape [1, 5, 16]: the C part (axis 3, inner) is linked when it comes
    from a Conv's channels, the outermost part when no part traces back to a weight."""
    conv = [helper.make_node("Conv", ["x", "w"], ["h"])] if traced == "inner" else []
    nodes = [
        *conv,
        helper.make_node("Transpose", ["h" if conv else "x"], ["t"], perm=[0, 3, 2, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["s"]),
        helper.make_node("MatMul", ["s", "m"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [1, 3 if conv else 8, 2, 5])],
        [("y", F, [1, 5, 4])],
        [weight(rng, "w", [8, 3, 1, 1]), ints("shape", [1, 5, 16]), weight(rng, "m", [16, 4])][
            0 if conv else 1 :
        ],
    )
    assert _merge_link(proto, "s") == expected


def _read_through(form: str) -> tuple[list, list]:
    """Conv a (8 channels) read by Shape, its C passed into the target of a Reshape of another
    conv's output (16 channels) in a form the target rule cannot rewrite for one reader."""
    i64 = TensorProto.INT64
    if form == "strided slice":  # Slice(Shape(a), 1, 4, steps 2) picks C and W
        read = [
            helper.make_node("Slice", ["sa", "one", "four", "zero", "two"], ["cw"]),
            helper.make_node("Concat", ["one", "cw", "minus1"], ["t"], axis=0),
        ]
        return read, [helper.make_node("Reshape", ["b", "t"], ["r"])]
    pick = helper.make_node("Gather", ["sa", "one"], ["c"], axis=0)
    if form == "copy shared by two readers":  # Concat -> Cast read by two Reshapes
        read = [
            pick,
            helper.make_node("Concat", ["one", "c", "minus1"], ["t0"], axis=0),
            helper.make_node("Cast", ["t0"], ["t"], to=i64),
        ]
        return read, [helper.make_node("Reshape", [v, "t"], [f"r{v}"]) for v in ("b", "b2")]
    raise ValueError(form)


@pytest.mark.parametrize("form", ["strided slice", "copy shared by two readers"])
def test_a_read_dim_the_target_rule_cannot_rewrite_stays_a_read(rng, form):
    """Each form once let a's channels go while its Reshape target kept the old count (the
    oracle, or the checker, refused the result): now the dim is a read and the cut is exact."""
    read, reshapes = _read_through(form)
    outputs = [r.output[0] for r in reshapes]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2"], ["o1"]),
        helper.make_node("Conv", ["x", "w3"], ["b"]),
        helper.make_node("Conv", ["x", "w4"], ["b2"]),
        helper.make_node("Shape", ["a"], ["sa"]),
        *read,
        *reshapes,
        *[helper.make_node("ReduceMax", [o], [f"m{o}"], axes=[-1]) for o in outputs],
    ]
    proto = make_model(
        nodes,
        [("x", F, [1, 3, 4, 4])],
        [
            ("o1", F, [1, 4, 4, 4]),
            *[(f"m{o}", F, [1, 8, 4, 1] if "strided" in form else [1, 8, 1]) for o in outputs],
        ],
        [
            weight(rng, "w1", [8, 3, 1, 1]),
            weight(rng, "w2", [4, 8, 1, 1]),
            weight(rng, "w3", [16, 3, 1, 1]),
            weight(rng, "w4", [16, 3, 1, 1]),
            *[
                ints(n, [v])
                for n, v in (("zero", 0), ("one", 1), ("two", 2), ("four", 4), ("minus1", -1))
            ],
        ],
        opset=17,
    )
    prune_and_compare(proto, rng)


def test_a_shared_target_behind_its_readers_copies_is_not_edited_for_one_of_them(rng):
    """tf2onnx's int32 target Concat(N, 8, 16), shared by two Reshapes each behind its own Cast
    to int64: surgery could only edit the shared Concat (or a Cast) for one reader, so the
    channels the constant 8 names stay whole (once: a Cast with two inputs, refused)."""
    i32 = TensorProto.INT32
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Sigmoid", ["a"], ["as"]),
        helper.make_node("Shape", ["a"], ["sa"]),
        helper.make_node("Slice", ["sa", "zero", "one"], ["n"]),
        helper.make_node("Cast", ["n"], ["n32"], to=i32),
        helper.make_node("Concat", ["n32", "c8", "c16"], ["t"], axis=0),
        helper.make_node("Cast", ["t"], ["ta"], to=TensorProto.INT64),
        helper.make_node("Cast", ["t"], ["tb"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["ar", "ta"], ["ra"]),
        helper.make_node("Reshape", ["as", "tb"], ["rb"]),
        helper.make_node("Add", ["ra", "rb"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["o"]),
    ]
    proto = make_model(
        nodes,
        [("x", F, [1, 3, 4, 4])],
        [("o", F, [1, 4, 16])],
        [
            weight(rng, "w1", [8, 3, 1, 1]),
            weight(rng, "w2", [4, 8, 1]),
            ints("zero", [0]),
            ints("one", [1]),
            numpy_helper.from_array(np.array([8], np.int32), "c8"),
            numpy_helper.from_array(np.array([16], np.int32), "c16"),
        ],
        opset=17,
    )
    assert prune_and_compare(proto, rng)["groups_pruned"] == 0
