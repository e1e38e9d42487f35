"""LSTM / GRU / RNN hidden-size pruning (``analysis/rules/recurrent.py``) on models exported from
PyTorch (``models/make_recurrent_models.py``): ``--channels 0.5`` halves every layer's hidden
size, rewrites ``hidden_size``, and the pruned model equals its masked original."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, make_model, oracle_error, prune
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model

RECURRENT = MODELS / "recurrent"
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_nodes(model: Model) -> list:
    return [node for node in model.nodes() if node.op_type in GATES]


def group_of(model: Model, member: tuple[str, int]):
    return next(g for g in find_channel_groups(model).groups if member in g.members)


@pytest.mark.parametrize(
    ("name", "directions"),
    [("lstm", 1), ("lstm_bidirectional", 2), ("gru", 1), ("rnn", 1)],
)
def test_channels_half_halves_the_hidden_size_exactly(name, directions):
    """Two stacked layers of hidden size 16, both cut to 8; a bidirectional layer's two
    directions lose the same units (PyTorch merges them with Transpose + Reshape [T, N, 2·H],
    so the next layer's input axis goes 32 -> 16)."""
    model, result = prune(RECURRENT / f"{name}.onnx", ratio=0.5)
    nodes = recurrent_nodes(model)
    assert len(nodes) == 2
    for layer, node in enumerate(nodes):
        gates = GATES[node.op_type]
        w, r, b = (model.constant_shape(v) for v in node.inputs[1:4])
        assert model.attr(node, "hidden_size") == 8
        assert w == (directions, gates * 8, 6 if layer == 0 else 8 * directions)
        assert r == (directions, gates * 8, 8)
        assert b == (directions, 2 * gates * 8)
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4


def test_zero_initial_states_are_dropped():
    """PyTorch writes a missing h0/c0 as a sliced ConstantOfShape of the unpruned size: the
    rule leaves it free and surgery drops the input (absent means zeros)."""
    model, _ = prune(RECURRENT / "lstm.onnx", ratio=0.5)
    assert all(len(node.inputs) <= 5 for node in recurrent_nodes(model))
    assert not any(node.op_type == "ConstantOfShape" for node in model.nodes())


def lstm_model(consumer: list, extra_inputs=(), weight_shape=(8, 3), y_shape=(3, 1, 2, 3)):
    """x [T=3, N=2, 4] -> LSTM (hidden 8) -> ``consumer`` nodes -> out, seeded weights."""
    rng = np.random.default_rng(0)
    directions = 2 if any(n.op_type == "Transpose" for n in consumer) else 1
    shapes = {"w": (directions, 32, 4), "r": (directions, 32, 8), "v": weight_shape}
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in shapes.items()
    ]
    direction = "bidirectional" if directions == 2 else "forward"
    inputs = ["x", "w", "r", "", "", *[name for name, _ in extra_inputs]]
    lstm = helper.make_node("LSTM", inputs, ["y"], hidden_size=8, direction=direction)
    f = TensorProto.FLOAT
    graph_inputs = [("x", f, [3, 2, 4]), *[(name, f, shape) for name, shape in extra_inputs]]
    proto = make_model([lstm, *consumer], graph_inputs, [("out", f, list(y_shape))], weights)
    return Model.from_proto(proto)


def test_an_initial_state_fed_from_outside_keeps_the_hidden_size():
    model = lstm_model([helper.make_node("MatMul", ["y", "v"], ["out"])], [("h0", [1, 2, 8])])
    group = group_of(model, ("r", 2))
    assert not group.prunable and "graph input 'h0'" in group.reason


def test_directions_are_never_removed():
    """A weight contracting Y's direction axis: its group is blocked, naming the LSTM."""
    consumer = [
        helper.make_node("Transpose", ["y"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "v"], ["out"]),
    ]
    model = lstm_model(consumer, weight_shape=(2, 3), y_shape=(3, 2, 8, 3))
    group = group_of(model, ("v", 0))
    assert not group.prunable and "direction axis of LSTM" in group.reason


def unrolled_lstm(steps: int = 3, hidden: int = 8, features: int = 4, batch: int = 2):
    """An LSTM as some exporters unroll it: per step Gemm(x_t, W) + Gemm(h, R) -> Split into
    i, f, g, o -> Sigmoid/Tanh -> c = f·c + i·g, h = o·tanh(c); zero initial states."""
    rng = np.random.default_rng(0)
    shapes = {"w": (4 * hidden, features), "r": (4 * hidden, hidden), "b": (4 * hidden,)}
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    arrays["v"] = rng.standard_normal((hidden, 3)).astype(np.float32)
    arrays["h0"] = arrays["c0"] = np.zeros((batch, hidden), np.float32)
    nodes, h, c = [], "h0", "c0"
    for t in range(steps):
        gates = [f"{gate}{t}" for gate in "ifgo"]
        nodes += [
            helper.make_node("Gemm", [f"x{t}", "w", "b"], [f"wx{t}"], transB=1),
            helper.make_node("Gemm", [h, "r"], [f"rh{t}"], transB=1),
            helper.make_node("Add", [f"wx{t}", f"rh{t}"], [f"z{t}"]),
            helper.make_node("Split", [f"z{t}"], gates, axis=1, num_outputs=4),
            *[helper.make_node("Sigmoid", [gates[k]], [f"s{gates[k]}"]) for k in (0, 1, 3)],
            helper.make_node("Tanh", [gates[2]], [f"tg{t}"]),
            helper.make_node("Mul", [f"sf{t}", c], [f"fc{t}"]),
            helper.make_node("Mul", [f"si{t}", f"tg{t}"], [f"ig{t}"]),
            helper.make_node("Add", [f"fc{t}", f"ig{t}"], [f"c{t + 1}"]),
            helper.make_node("Tanh", [f"c{t + 1}"], [f"tc{t}"]),
            helper.make_node("Mul", [f"so{t}", f"tc{t}"], [f"h{t + 1}"]),
        ]
        h, c = f"h{t + 1}", f"c{t + 1}"
    nodes.append(helper.make_node("MatMul", [h, "v"], ["out"]))
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    inputs = [(f"x{t}", f, [batch, features]) for t in range(steps)]
    return Model.from_proto(make_model(nodes, inputs, [("out", f, [batch, 3])], inits, opset=18))


def test_an_unrolled_lstm_cell_prunes_its_hidden_units_exactly():
    model, result = prune(unrolled_lstm(), ratio=0.5)
    shapes = {name: model.constant_shape(v) for name, v in model.initializers().items()}
    assert (shapes["w"], shapes["r"], shapes["v"]) == ((16, 4), (16, 4), (4, 3))
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4


def test_layout_one_maps_batch_first_axes():
    """layout=1 (X [N, T, I], Y [N, T, D, H], states [N, D, H]): the hidden group holds Y's and
    the state's last axes, the batch axes stay out of it (onnxruntime runs layout 0 only, so
    this checks the groups, not numbers)."""
    rng = np.random.default_rng(0)
    shapes = {"w": (1, 24, 4), "r": (1, 24, 8), "h0": (2, 1, 8), "v": (8, 3)}
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in shapes.items()
    ]
    nodes = [
        helper.make_node("GRU", ["x", "w", "r", "", "", "h0"], ["y"], hidden_size=8, layout=1),
        helper.make_node("MatMul", ["y", "v"], ["out"]),
    ]
    f = TensorProto.FLOAT
    model = Model.from_proto(
        make_model(nodes, [("x", f, [2, 3, 4])], [("out", f, [2, 3, 1, 3])], inits, opset=18)
    )
    group = group_of(model, ("r", 2))
    assert {("y", 3), ("h0", 2), ("v", 0)} <= set(group.members) and group.prunable
    assert ("y", 0) not in group.members and group.units == 8


def test_an_initial_state_the_caller_may_feed_is_never_taken_for_zero():
    """h0 is a graph input with a zero initializer (a default): the caller may feed a state, so
    it is not dropped from the LSTM nor from the interface; like every initializer listed as an
    input, it is a constant to the cut and shrinks with the hidden size."""
    from onnx import TensorProto, helper, numpy_helper

    from sparsec.testing import make_model

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 32, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((1, 32, 8)).astype(np.float32), "r"),
        numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "v"),
        numpy_helper.from_array(np.zeros((1, 2, 8), np.float32), "h0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "w", "r", "", "", "h0"], ["y"], hidden_size=8),
        helper.make_node("Squeeze", ["y", "axis"], ["ys"]),
        helper.make_node("MatMul", ["ys", "v"], ["out"]),
    ]
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [3, 2, 4]), ("h0", TensorProto.FLOAT, [1, 2, 8])],
        [("out", TensorProto.FLOAT, [3, 2, 3])],
        inits,
    )
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    assert "h0" in [v.name for v in model.graph.inputs]  # the interface keeps the state
    lstm = next(n for n in model.nodes() if n.op_type == "LSTM")
    assert lstm.inputs[5] is not None and lstm.inputs[5].name == "h0"
    assert oracle_error(model, result.reference()) <= 1e-4
