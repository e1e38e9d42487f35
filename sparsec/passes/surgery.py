"""The one channel surgery routine, and the exactness oracle that checks it.

Given the channel groups of a model and, per group, the units to remove:

- ``remove_channels`` slices every constant member along its axis (initializers, ``Constant``
  and ``ConstantOfShape`` weights alike), records the new size of every activation member in
  its declared shape, then runs every node's fixups (Reshape targets, Split sizes, Slice
  bounds, Gather indices, ``group``/``num_groups``...).
- ``channel_masks`` says, per constant, which positions the removal drops; ``apply_masks``
  zeroes them in a model *by name* (the masked original). Zeroing every float constant slice of
  the removed units makes those channels contribute nothing, so the pruned model must equal the
  masked original to float rounding: that is the oracle every pruning test checks. A
  normalization whose statistics run over a pruned axis (LayerNorm, ReduceMean) averages over
  the kept positions only in the masked original, as it does in the pruned model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from sparsec.analysis.groups import GroupAnalysis, values_by_name
from sparsec.analysis.shapes import value_shapes
from sparsec.ir import Model
from sparsec.passes.base import PassResult



@dataclass
class OracleMasks:
    """What the masked original zeroes: per float constant [(axis, kept, size)], and the
    statistics (LayerNorm, ReduceMean) that must average over kept positions only:
    [(value name, axis, kept, size, rank)]."""

    constants: dict[str, list[tuple[int, np.ndarray, int]]] = field(default_factory=dict)
    stats: list[tuple[str, int, np.ndarray, int, int]] = field(default_factory=list)


PLAN_FORMAT = "sparsec-channel-plan"


def prune_channels(model, analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> PassResult:
    """Remove ``removed`` (group id → units) from ``model`` and return the ``PassResult`` a
    pruning pass needs: stats, the oracle ``reference`` and the ``plan`` artifact."""
    masks = channel_masks(model, analysis, removed)
    result = PassResult(model, modified=False, reference=_reference_builder(model, masks))
    result.artifacts["plan"] = plan_json(masks)
    units = remove_channels(model, analysis, removed)
    result.modified = units > 0
    result.stats = {"groups": len(analysis.groups), "groups_pruned": sum(1 for u in removed.values() if len(u)),
                    "channels_removed": units, "channels_total": sum(g.units for g in analysis.groups)}
    return result


def _reference_builder(model, masks: OracleMasks):
    """A callable building the masked original: the unpruned model with the removed channels
    zeroed. Reloaded from disk when ``model`` is unedited since loading (no copy held)."""
    if model.path is not None and model.version == 0:
        path = model.path
        return lambda: _masked(Model.load(path), masks)
    snapshot = model.copy()
    return lambda: _masked(snapshot, masks)


def _masked(model, masks: OracleMasks):
    apply_masks(model, masks)
    return model


def plan_json(masks: OracleMasks) -> dict:
    """Kept indices per constant and axis, for ``--plan-out`` (and to prune the source model)."""
    constants = {name: [{"axis": axis, "size": size, "kept": kept.tolist()} for axis, kept, size in sorted(axes, key=lambda a: a[0])]
                 for name, axes in sorted(masks.constants.items())}
    return {"format": PLAN_FORMAT, "version": 1, "initializers": constants}


def kept_positions(analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> dict:
    """member → kept positions, for every member that loses positions."""
    table = {}
    for group in analysis.groups:
        units = removed.get(group.id)
        if units is None or len(units) == 0:
            continue
        for member in group.members:
            kept = group.kept_positions(member, units)
            if len(kept) != group.sizes[member]:
                table[member] = kept
    return table


def remove_channels(model, analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> int:
    """Physically remove the ``removed`` units (group id → unit ids); returns how many."""
    table = kept_positions(analysis, removed)
    cuts: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for (name, axis), kept in table.items():
        if not name.startswith("#"):
            cuts[name].append((axis, kept))
    values = values_by_name(model)
    for name, axes in cuts.items():
        value = values[name]
        if model.constant_shape(value) is not None:
            array = model.constant(value)
            for axis, kept in axes:
                array = np.take(array, kept, axis=axis)
            model.set_constant(value, array)
        else:
            for axis, kept in axes:
                model.set_dim(value, axis, len(kept))
    for coupling in analysis.couplings:
        for fixup in coupling.fixups:
            fixup.apply(model, table.get)
    return int(sum(len(units) for units in removed.values()))


def channel_masks(model, analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> OracleMasks:
    """The masks of the oracle for removing ``removed`` from ``model``."""
    masks, constants = OracleMasks(), defaultdict(list)
    sizes = {m: size for group in analysis.groups for m, size in group.sizes.items()}
    constant_members = {m for group in analysis.groups for m in group.constants}
    stat_members = {m for group in analysis.groups for m in group.stats}
    shapes = value_shapes(model)
    for (name, axis), kept in kept_positions(analysis, removed).items():
        size = sizes[(name, axis)]
        if (name, axis) in constant_members:
            constants[name].append((axis, kept, size))
        if (name, axis) in stat_members:
            masks.stats.append((name, axis, kept, size, len(shapes[name])))
    masks.constants = dict(constants)
    return masks


def apply_masks(model, masks: OracleMasks) -> None:
    """Build the masked original in ``model`` (found by names): zero the dropped positions of
    every masked float constant, and make statistics average over kept positions only."""
    values = values_by_name(model)
    for name, axes in masks.constants.items():
        value = values.get(name)
        array = None if value is None else model.constant(value)
        if array is None or array.dtype.kind != "f":
            continue
        array = array.copy()
        for axis, kept, size in axes:
            drop = np.ones(size, dtype=bool)
            drop[kept] = False
            index = [slice(None)] * array.ndim
            index[axis] = drop
            array[tuple(index)] = 0
        model.set_constant(value, array)
    _mask_statistics(model, masks.stats)


def _mask_statistics(model, stats) -> None:
    """ReduceMean over a pruned axis becomes ReduceMean(x · m · C/C') (m: 1 on kept positions);
    LayerNormalization over one is written out with the same masked means."""
    weights: dict[tuple[str, int], np.ndarray] = {}
    for name, axis, kept, size, rank in stats:
        shape = [1] * rank
        shape[axis] = size
        mask = np.zeros(size)
        mask[kept] = size / len(kept)
        key = (name, rank)
        weights[key] = weights.get(key, np.ones([1] * rank)) * mask.reshape(shape)
    values = values_by_name(model)
    for (name, rank), weight in weights.items():
        value = values[name]
        axes = {a for n, a, *_ in stats if n == name}
        for node in list(model.consumers(value)):
            if node.op_type == "ReduceMean" and axes <= _reduced_axes(model, node, rank):
                scaled = _scaled(model, node, value, weight)
                model.set_input(node, 0, scaled)
            elif node.op_type == "LayerNormalization" and min(axes) >= _first_normalized(model, node, rank):
                _write_out_layer_norm(model, node, weight, rank)


def _scaled(model, node, value, weight: np.ndarray):
    dtype = model.elem_type(value) or np.float32
    factor = model.add_initializer(f"{value.name}_oracle_mask", weight.astype(dtype))
    return model.add_node("Mul", [value, factor], before=node, name="oracle")


def _reduced_axes(model, node, rank: int) -> set[int]:
    axes = model.attr(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = model.constant(node.inputs[1])
    if axes is None or len(axes) == 0:
        return set(range(rank))
    return {int(a) % rank for a in np.atleast_1d(axes)}


def _first_normalized(model, node, rank: int) -> int:
    return int(model.attr(node, "axis", -1)) % rank


def _write_out_layer_norm(model, node, weight: np.ndarray, rank: int) -> None:
    """y = (x − μ) / sqrt(σ² + ε) · scale + bias, μ and σ² masked means over the normalized axes."""
    if any(out is not None and out.name and model.consumers(out) for out in node.outputs[1:]):
        return  # the optional Mean / InvStdDev outputs are in use: leave this one alone
    x, scale = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    dtype = model.elem_type(x) or np.float32
    axes = list(range(_first_normalized(model, node, rank), rank))
    mean = _masked_mean(model, node, x, weight, axes)
    centred = model.add_node("Sub", [x, mean], before=node, name="oracle")
    square = model.add_node("Mul", [centred, centred], before=node, name="oracle")
    variance = _masked_mean(model, node, square, weight, axes)
    epsilon = model.add_initializer("oracle_epsilon", np.array(model.attr(node, "epsilon", 1e-5), dtype=dtype))
    std = model.add_node("Sqrt", [model.add_node("Add", [variance, epsilon], before=node, name="oracle")],
                         before=node, name="oracle")
    out = model.add_node("Mul", [model.add_node("Div", [centred, std], before=node, name="oracle"), scale],
                         before=node, name="oracle")
    if bias is not None:
        out = model.add_node("Add", [out, bias], before=node, name="oracle")
    model.replace_all_uses(node.outputs[0], out)
    model.remove_node(node)


def _masked_mean(model, node, value, weight: np.ndarray, axes: list[int]):
    scaled = _scaled(model, node, value, weight)
    if model.opset >= 18:
        axes_value = model.add_initializer("oracle_axes", np.array(axes, dtype=np.int64))
        return model.add_node("ReduceMean", [scaled, axes_value], {"keepdims": 1}, before=node, name="oracle")
    return model.add_node("ReduceMean", [scaled], {"axes": axes, "keepdims": 1}, before=node, name="oracle")
