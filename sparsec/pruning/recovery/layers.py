"""Which layers a cut leaves to refit, in which round, and which cannot be refit and why.

Invariants: a layer is refit when its weight lost positions on its contraction axis (per the
plan), holds zeros, or its input depends on such a layer (drifted); a normalization when its
input drifted; a layer's round is one more than the latest round its inputs depend on, so a
round's inputs are final once the rounds before it are refit.
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.inputs import bind_shapes
from sparsec.analysis.quantized import quantized_weight, zero_points
from sparsec.analysis.shapes import value_shapes
from sparsec.pruning.recovery.views import (
    NORMS,
    Layer,
    contraction_axes,
    norm_layer,
    refit_layout,
    sole_add,
    weight_layer,
)


def find_layers(
    pruned, original, plan: dict | None, drifted: set[str] | None = None
) -> tuple[list[Layer], list[dict]]:
    """The layers to refit, in graph order with their round, and the skipped ones with why.
    A value is *changed* downstream of a layer that needs a refit (refit or skipped), or of a
    value in ``drifted`` (a cut that changed what its readers read: depth pruning's rewired
    skips); a normalization reading a changed value is recalibrated."""
    known = original.values_by_name()
    layers, skipped, depth, changed = [], [], {}, set(drifted or ())
    for node in pruned.nodes():
        inputs = pruned.reads(node)
        level = max((depth.get(name, 0) for name in inputs), default=0)
        drifted = any(name in changed for name in inputs)
        if node.op_type in NORMS:
            layer = _norm(pruned, node, plan) if drifted else None
        else:
            layer = _layer(pruned, node, plan, drifted)
        name = node.name or node.outputs[0].name
        if isinstance(layer, str):
            skipped.append({"node": name, "reason": layer})
        elif layer is not None and layer.target not in known:
            skipped.append({"node": name, "reason": f"the original has no value '{layer.target}'"})
        elif layer is not None:
            level = layer.round = level + 1
            layers.append(_aimed_past_residual(pruned, layer, depth, known))
        depth.update({v.name: level for v in node.outputs if v is not None})
        if drifted or layer is not None:
            changed.update(v.name for v in node.outputs if v is not None)
    return layers, skipped


def stages(model, layers: list[Layer]) -> dict[str, int]:
    """{value name: the latest round of a layer it depends on (0: none)} in ``model`` (the
    pruned one or the original: layers are found by their weight's name)."""
    rounds, levels = {layer.weight.name: layer.round for layer in layers}, {}
    for node in model.nodes():
        names = model.reads(node)
        level = max(
            [levels.get(name, 0) for name in names] + [rounds.get(name, 0) for name in names],
            default=0,
        )
        levels.update({value.name: level for value in node.outputs if value is not None})
    return levels


def _aimed_past_residual(model, layer: Layer, depth: dict[str, int], known: dict) -> Layer:
    """``layer`` aimed at the residual sum its output feeds, when it feeds one: an Add of its
    output Y and a value R of the same final value at this round (a graph input, or computed
    from layers of earlier rounds only); its target becomes the original's sum minus the pruned
    model's R, so that the layer also absorbs, as far as its input can predict it, the drift
    R carries from earlier layers (the refit minimises the error of the sum, not of Y)."""
    if layer.norm:
        return layer
    output = layer.node.outputs[0]
    if output.name != layer.target:  # the bias Add after a MatMul
        output = model.consumers(output)[0].outputs[0]
    add, other = sole_add(model, output)
    final = other is not None and (
        other.is_graph_input() or depth.get(other.name, layer.round) < layer.round
    )
    if not final or model.constant_shape(other) is not None or add.outputs[0].name not in known:
        return layer
    shapes = _batch_two_shapes(model)
    if shapes.get(output.name) is None or shapes.get(output.name) != shapes.get(
        add.outputs[0].name
    ):
        return layer  # Y itself broadcast: the sum is not Y + R element for element
    layer.target, layer.residual = add.outputs[0].name, other.name
    return layer


def _batch_two_shapes(model) -> dict[str, tuple[int, ...]]:
    """``value_shapes`` with a symbolic batch axis bound to 2, not 1 (at 1 a value broadcast
    over the batch has the shape of one that is not)."""
    bound = bind_shapes(model)
    return value_shapes(
        model,
        {
            value.name: (2, *bound[value.name][1:])
            for value in model.inputs
            if (dims := model.shape_dims(value)) and not isinstance(dims[0], int)
        },
    )


def _layer(model, node, plan: dict | None, drifted: bool = False) -> Layer | str | None:
    """The node as a ``Layer`` when it needs a refit, a reason when it does but cannot have
    one, None when it needs none."""
    axes = contraction_axes(model, node)
    if axes is None:
        return _quantized_reason(model, node, plan, drifted)
    weight = node.inputs[refit_layout(model, node).weight.index]
    if model.constant(weight).dtype.kind != "f":
        return None
    cut = _was_cut(model, weight, axes[0], plan)
    if not (cut or drifted):
        return None
    layer = _with_outputs(model, weight_layer(model, node), plan, axes[1])
    return (
        None if isinstance(layer, str) and not cut else layer
    )  # drifted only: nothing cut to report


def _norm(model, node, plan: dict | None) -> Layer | str | None:
    """A drifted normalization as a ``Layer`` with the output positions it computes."""
    layer = norm_layer(model, node)
    return None if layer is None else _with_outputs(model, layer, plan, 0)


def _with_outputs(model, layer: Layer | str, plan: dict | None, axis: int) -> Layer | str:
    """``layer`` with the original output positions it computes (the plan's kept ones on the
    weight's output ``axis``), or why it cannot be refit (a weight or bias shared)."""
    if isinstance(layer, str):
        return layer
    for value in (layer.weight, layer.bias):
        if value is not None and (len(model.consumers(value)) > 1 or value.is_graph_output()):
            return f"'{value.name}' is shared with other nodes"
    entry = plan_entry(plan, layer.weight.name, axis)
    n = model.constant_shape(layer.weight)[axis]
    layer.kept, layer.full = (np.asarray(entry["kept"]), int(entry["size"])) if entry else (None, n)
    return layer


def _quantized_reason(model, node, plan: dict | None, drifted: bool) -> str | None:
    """Why a compute node whose weight is quantized (DequantizeLinear of an integer constant)
    and was cut or drifted is not refit: least squares would move it off its integer grid."""
    layout = refit_layout(model, node)
    q = quantized_weight(model, node.inputs[layout.weight.index]) if layout is not None else None
    if q is None:
        return None
    data = model.constant(q.data)
    planned = any(plan_entry(plan, q.data.name, axis) for axis in range(data.ndim))
    cut = planned or bool((data == zero_points(model, q, data.shape)).any())
    return (
        "its weight is quantized (a refit would take it off its integer grid)"
        if cut or drifted
        else None
    )


def _was_cut(model, weight, axis: int, plan: dict | None) -> bool:
    """The weight lost positions on its contraction axis, or holds zeros."""
    return plan_entry(plan, weight.name, axis) is not None or not model.constant(weight).all()


def plan_entry(plan: dict | None, name: str, axis: int) -> dict | None:
    """The plan's entry for initializer ``name`` on ``axis`` (its kept positions), if any."""
    entries = (plan or {}).get("initializers", {}).get(name, [])
    return next((entry for entry in entries if entry["axis"] == axis), None)
