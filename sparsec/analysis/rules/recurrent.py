"""Axis rules of the recurrent ops: ``LSTM``, ``GRU`` and ``RNN``; the hidden size is a channel
group.

The algebra. Per direction, every step computes ``gates`` blocks of ``hidden`` pre-activations
(LSTM iofc: 4, GRU zrh: 3, RNN: 1) as ``X·Wᵀ + H_prev·Rᵀ + B``, and hidden unit ``j`` of the new
state reads only position ``j`` of each block (elementwise gates, peepholes, clip, activations,
GRU's reset gate before or after the linear map alike). So

- hidden unit ``j`` is one unit (a virtual member of size ``hidden``): position ``p`` of a
  gate-blocked axis (W and R axis 1, B's ``2·gates·hidden``, P's ``3·hidden``) is unit
  ``p % hidden``; R's last axis, Y's and the states' hidden axes map to it one to one; both
  directions share it (they share ``hidden_size``, rewritten after the cut);
- W's input axis is contracted with X's feature axis (the previous layer's channels);
- sequence and batch axes pass through; the direction axis never shrinks (blocked).

Exactness. The masked original zeroes the removed units' rows of W and R (compute members) and
their columns of R, so a removed unit's state, whatever it is (a non-zero initial state, GRU's
``h = 0.5·h_prev`` under zeroed gates), never reaches a kept unit, and its outputs meet only
zeroed weights downstream. An initial state that is provably zero (``ConstantOfShape`` of 0,
possibly sliced, as PyTorch exports a missing ``h0``) keeps the unpruned size in the graph it
comes from, so its hidden axis is left free and surgery drops the input (absent means zeros).
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.rules.core import (
    Coupling,
    Fixup,
    Member,
    RuleContext,
    axis_rule,
    compute_axes,
    count_fixup,
)

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gate blocks per direction in W, R (B holds 2x)
STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}  # initial_h (and initial_c)
STATE_OUTPUTS = {"LSTM": (1, 2), "GRU": (1,), "RNN": (1,)}  # Y_h (and Y_c)
PEEPHOLES = {"LSTM": 7}  # P [directions, 3·hidden]
BIAS, SEQUENCE_LENS = 3, 4
# per layout attribute: (seq, batch) axes of X, (seq, directions, batch) of Y, (directions, batch)
# of the states; the hidden axis is the last one of Y and of the states
AXES = {0: ((0, 1), (0, 1, 2), (0, 1)), 1: ((1, 0), (1, 2, 0), (1, 0))}
ZERO_PATH = ("Slice", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Expand", "Cast")


def _input(node, index: int):
    return node.inputs[index] if index < len(node.inputs) else None


def _output(node, index: int):
    return node.outputs[index] if index < len(node.outputs) else None


@axis_rule("LSTM", "GRU", "RNN")
def recurrent(node, ctx: RuleContext) -> Coupling:
    """W [D, G·H, I], R [D, G·H, H], B [D, 2·G·H], states [D, N, H] (layout 1: [N, D, H]),
    Y [T, D, N, H] (layout 1: [N, T, D, H]): see the module docstring."""
    c, gates = Coupling(), GATES[node.op_type]
    x, w, r = node.inputs[0], node.inputs[1], node.inputs[2]
    x_shape, r_shape = ctx.shape(x), ctx.shape(r)
    if x_shape is None or r_shape is None or ctx.shape(w) is None:
        return c
    hidden = r_shape[2]
    unit = c.virtual(node, "hidden", hidden)
    (x_seq, x_batch), y_axes, state_axes = AXES[int(ctx.attr(node, "layout", 0))]
    c.link((w.name, 2), (x.name, 2))
    for value, axis, blocks in _hidden_members(node, ctx, gates, hidden):
        c.link((value.name, axis), unit, np.arange(blocks * hidden) % hidden if blocks else None)
    compute_axes(c, ctx, w, (1, 2))
    compute_axes(c, ctx, r, (1, 2))
    if not ctx.is_weight(w):
        c.block((x.name, 2), "is multiplied by recurrent weights computed at run time")
    batch = (x.name, x_batch)
    _link_outputs(c, node, x, (x_seq, x_batch), y_axes, state_axes, (r.name, 2))
    _link_states(c, node, ctx, batch, state_axes, unit)
    lens = _input(node, SEQUENCE_LENS)
    if lens is not None and lens.name:
        c.link((lens.name, 0), batch)
    _block_directions(c, node, ctx, state_axes[0])
    count_fixup(c, node, "hidden_size", unit)
    return c


def _hidden_members(node, ctx: RuleContext, gates: int, hidden: int):
    """(value, axis, gate blocks or 0 for one-to-one) of every weight axis holding the units."""
    members = [(node.inputs[1], 1, gates), (node.inputs[2], 1, gates), (node.inputs[2], 2, 0)]
    extra = [(BIAS, 2 * gates), (PEEPHOLES.get(node.op_type), 3)]
    for index, blocks in extra:
        value = None if index is None else _input(node, index)
        if value is not None and value.name and ctx.shape(value) is not None:
            members.append((value, 1, blocks))
    return members


def _link_outputs(c: Coupling, node, x, x_axes, y_axes, state_axes, unit: Member) -> None:
    """Y's sequence and batch axes are X's; the hidden axis of Y and of Y_h/Y_c is ``unit``:
    R's last axis (a compute weight's axis, so a Reshape merging Y's directions with its hidden
    axis finds the hidden axis as the one that traces back to a weight)."""
    y = _output(node, 0)
    if y is not None and y.name:
        c.link((y.name, y_axes[0]), (x.name, x_axes[0]))
        c.link((y.name, y_axes[2]), (x.name, x_axes[1]))
        c.link((y.name, 3), unit)
    for index in STATE_OUTPUTS[node.op_type]:
        state = _output(node, index)
        if state is not None and state.name:
            c.link((state.name, state_axes[1]), (x.name, x_axes[1]))
            c.link((state.name, 2), unit)


def _link_states(c: Coupling, node, ctx: RuleContext, batch: Member, axes, unit: Member) -> None:
    """Initial states: batch and hidden axes map; a provably zero one is left free on the
    hidden axis and dropped by surgery (an absent initial state is zeros)."""
    dropped = []
    for index in STATE_INPUTS[node.op_type]:
        state = _input(node, index)
        if state is None or not state.name:
            continue
        c.link((state.name, axes[1]), batch)
        if _is_zero(ctx, state):
            c.free.add((state.name, 2))
            dropped.append(index)
        else:
            c.link((state.name, 2), unit)
    if dropped:

        def apply(model, kept) -> None:
            if kept(unit) is not None:
                for index in dropped:
                    model.set_input(node, index, None)

        c.fixups.append(Fixup(node, apply))


def _is_zero(ctx: RuleContext, value) -> bool:
    """Whether ``value`` is all zeros whatever the inputs: a zero constant (not a graph input
    with a zero initializer: a caller may feed it), or a zero-filled ``ConstantOfShape`` seen
    through shape-only ops."""
    if value.is_graph_input():  # a default the caller may override: not zero
        return False
    array = ctx.const(value)
    if array is not None:
        return not np.any(array)
    producer = value.producer()
    while producer is not None and producer.op_type in ZERO_PATH:
        producer = producer.inputs[0].producer()
    if producer is None or producer.op_type != "ConstantOfShape":
        return False
    fill = ctx.attr(producer, "value")
    return fill is None or not np.any(fill)


def _block_directions(c: Coupling, node, ctx: RuleContext, state_direction: int) -> None:
    """The direction axis never shrinks: name it where a group could reach it."""
    reason = f"is the direction axis of {node.op_type} (directions are never removed)"
    for index in (1, 2, BIAS, PEEPHOLES.get(node.op_type)):
        value = None if index is None else _input(node, index)
        if value is not None and value.name:
            c.block((value.name, 0), reason)
    y = _output(node, 0)
    if y is not None and y.name:
        layout = int(ctx.attr(node, "layout", 0))
        c.block((y.name, AXES[layout][1][1]), reason)
    states = [_input(node, i) for i in STATE_INPUTS[node.op_type]]
    states += [_output(node, i) for i in STATE_OUTPUTS[node.op_type]]
    for state in states:
        if state is not None and state.name:
            c.block((state.name, state_direction), reason)
