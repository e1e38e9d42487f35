"""The one channel surgery routine, and the exactness oracle that checks it.

Given the channel groups of a model and, per group, the units to remove:

- ``remove_channels`` slices every constant member along its axis (initializers, ``Constant``
  and ``ConstantOfShape`` weights alike), records the new size of every activation member in
  its declared shape, then runs every node's fixups (Reshape targets, Split sizes, Slice
  bounds, Gather indices, ``group``/``num_groups``...).
- ``channel_masks`` says, per constant, which positions the removal drops; ``apply_masks``
  zeroes them in a model *by name* (the masked original). Zeroing every float constant slice of
  the removed units makes those channels contribute nothing, so the pruned model must equal the
  masked original to float rounding: that is the oracle every pruning test checks.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from sparsec.analysis.groups import GroupAnalysis, model_value

# constant name → [(axis, kept positions, original size)]
Masks = dict[str, list[tuple[int, np.ndarray, int]]]


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
    for name, axes in cuts.items():
        value = model_value(model, name)
        if model.constant_shape(value) is not None and not value.is_graph_input():
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


def channel_masks(model, analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> Masks:
    """For each float constant losing positions: (axis, kept positions, size)."""
    masks: Masks = defaultdict(list)
    constants = {m for group in analysis.groups for m in group.constants}
    for (name, axis), kept in kept_positions(analysis, removed).items():
        if (name, axis) in constants:
            masks[name].append((axis, kept, analysis_size(analysis, (name, axis))))
    return dict(masks)


def analysis_size(analysis: GroupAnalysis, member) -> int:
    for group in analysis.groups:
        if member in group.sizes:
            return group.sizes[member]
    raise KeyError(member)


def apply_masks(model, masks: Masks) -> None:
    """Zero, by name, the dropped positions of every masked float constant of ``model``."""
    for name, axes in masks.items():
        value = model_value(model, name)
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
