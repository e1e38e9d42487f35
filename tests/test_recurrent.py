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


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_channels_half_halves_the_hidden_size_exactly(name):
    model, result = prune(RECURRENT / f"{name}.onnx", ratio=0.5)
    nodes = recurrent_nodes(model)
    assert len(nodes) == 2  # two stacked layers, both cut
    for layer, node in enumerate(nodes):
        gates = GATES[node.op_type]
        w, r, b = (model.constant_shape(v) for v in node.inputs[1:4])
        assert model.attr(node, "hidden_size") == 8  # 16 before
        assert w == (1, gates * 8, 6 if layer == 0 else 8)
        assert r == (1, gates * 8, 8)
        assert b == (1, 2 * gates * 8)
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4


def test_zero_initial_states_are_dropped():
    """PyTorch writes a missing h0/c0 as a sliced ConstantOfShape of the unpruned size: the
    rule leaves it free and surgery drops the input (absent means zeros)."""
    model, _ = prune(RECURRENT / "lstm.onnx", ratio=0.5)
    assert all(len(node.inputs) <= 5 for node in recurrent_nodes(model))
    assert not any(node.op_type == "ConstantOfShape" for node in model.nodes())


def test_bidirectional_hidden_size_is_kept_where_directions_merge():
    """PyTorch merges the two directions' hidden axes with Transpose + Reshape [T, N, 2·H]:
    only one part of a merged axis can follow pruning, so the hidden groups stay whole."""
    model = Model.load(RECURRENT / "lstm_bidirectional.onnx")
    first = recurrent_nodes(model)[0]
    hidden = group_of(model, (first.inputs[2].name, 2))
    assert not hidden.prunable and "Reshape" in hidden.reason
    directions = group_of(model, (recurrent_nodes(model)[1].inputs[1].name, 2))
    assert not directions.prunable and "direction axis of LSTM" in directions.reason
    model, result = prune(model, ratio=0.5)
    assert [model.attr(n, "hidden_size") for n in recurrent_nodes(model)] == [16, 16]
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4


def test_an_initial_state_fed_from_outside_keeps_the_hidden_size():
    rng = np.random.default_rng(0)
    shapes = {"w": (1, 32, 4), "r": (1, 32, 8), "v": (8, 3)}
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in shapes.items()
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "w", "r", "", "", "h0"], ["y"], hidden_size=8),
        helper.make_node("MatMul", ["y", "v"], ["out"]),
    ]
    f = TensorProto.FLOAT
    proto = make_model(
        nodes, [("x", f, [3, 2, 4]), ("h0", f, [1, 2, 8])], [("out", f, [3, 1, 2, 3])], weights
    )
    model = Model.from_proto(proto)
    group = group_of(model, ("r", 2))
    assert not group.prunable and "graph input 'h0'" in group.reason
