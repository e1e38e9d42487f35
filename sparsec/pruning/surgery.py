"""The one channel surgery routine.

Given the channel groups of a model and, per group, the units to remove:

- ``remove_channels`` slices every constant member along its axis (initializers, ``Constant``
  and ``ConstantOfShape`` weights alike), records the new size of every activation member in
  its declared shape, cuts grouped convs' weights group by group, then runs every node's
  fixups (Reshape targets, Split sizes, Slice bounds, Gather indices,
  ``group``/``num_groups``...). Every member keeps the same units, so the pruned graph is
  consistent by construction.
- ``prune_channels`` is what a pruning pass calls: it records the removal (``oracle``'s masks,
  the plan), cuts, and returns the ``PassResult`` with the oracle reference, its ``replay``
  (the same masks applied to another model by name) and the plan. When
  the cut went through lossy couplings, ``reference(plain=True)`` builds the masked original
  without their kept-positions wrapper, and the ``lossy_couplings`` artifact counts those nodes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

import numpy as np

from sparsec.analysis.groups import GroupAnalysis, kept_positions
from sparsec.analysis.shapes import constant_shapes
from sparsec.pruning.oracle import OracleMasks, apply_masks, channel_masks
from sparsec.pruning.plans import plan_json
from sparsec.results import PassResult


def prune_channels(model, analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> PassResult:
    """Remove ``removed`` (group id → units) from ``model`` and return the ``PassResult`` a
    pruning pass needs: stats, the oracle ``reference`` and the ``plan`` artifact."""
    table = kept_positions(analysis, removed)
    emptied = sorted(f"{name}[{axis}]" for (name, axis), kept in table.items() if len(kept) == 0)
    if emptied:
        raise ValueError(f"the removal would leave no channel in {', '.join(emptied[:3])}")
    masks = channel_masks(model, analysis, table)
    result = PassResult(model, modified=False, reference=_reference_builder(model, masks))
    result.replay = lambda other, plain=False: _masked(other, masks, plain)
    result.artifacts["plan"] = plan_json(model, analysis, masks, removed)
    if masks.lossy_ops:
        result.artifacts["lossy_couplings"] = dict(Counter(masks.lossy_ops.values()))
    remove_channels(model, analysis, table)
    units = int(sum(len(u) for u in removed.values()))
    result.modified = units > 0
    result.stats = {
        "groups": len(analysis.groups),
        "groups_pruned": sum(1 for u in removed.values() if len(u)),
        "channels_removed": units,
        "channels_total": sum(g.units for g in analysis.groups),
    }
    return result


def _reference_builder(model, masks: OracleMasks):
    """A callable building the masked original (``plain=True``: without the lossy couplings'
    kept-positions wrapper): the unpruned model (copies sharing its weight tensors, so no weight
    bytes are duplicated) with the removal masked out."""
    snapshot = model.copy()
    return lambda plain=False: _masked(snapshot.copy(), masks, plain)


def _masked(model, masks: OracleMasks, plain: bool):
    apply_masks(model, masks, plain)
    return model


def remove_channels(model, analysis: GroupAnalysis, table: dict) -> None:
    """Physically remove positions: ``table`` maps each member that loses positions to the
    positions it keeps (``groups.kept_positions`` of the removed units)."""
    cuts: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for (name, axis), kept in table.items():
        if not name.startswith("#"):
            cuts[name].append((axis, kept))
    values = model.values_by_name()
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
        for grouped in coupling.grouped:
            _gather_per_group(model, values[grouped.weight], grouped, table.get(grouped.part))
        for fixup in coupling.fixups:
            fixup.apply(model, table.get)


def _gather_per_group(model, weight, grouped, kept) -> None:
    """Cut a grouped conv's W axis 1 group by group (``rules.core.GroupedWeight``); its rows are
    cut already. Every group kept as many positions (the part side is balanced)."""
    if kept is None:
        return
    array = model.constant(weight)
    local = grouped.local(kept, array.shape[1])
    if len({len(positions) for positions in local}) != 1:
        raise ValueError(f"the removal would leave the groups of '{weight.name}' unequal")
    rows = np.split(array, grouped.groups, axis=0)
    model.set_constant(weight, np.concatenate([r[:, p] for r, p in zip(rows, local)], axis=0))


def cut_shapes(pruned, table: Mapping) -> Callable[[dict], dict]:
    """The original's value shapes (``analysis.shapes.value_shapes``) at the binding its group
    analysis used (``shapes.binding_key``: a kept count holds there only, where an axis may
    fold the batch in), made ``pruned``'s: the original cut by ``table`` (member -> kept
    positions, ``kept_positions``), in place or on a copy, with no node added (``aligned``).
    Every value whose size a cut changes is a member of the group (a node that does not map it
    blocks the group), so a member's axis takes its kept count; constants are read from
    ``pruned`` (a fixup may have given a node a new one, such as Split sizes)."""

    def edit(shapes: dict) -> dict:
        shapes = dict(shapes)
        for (name, axis), kept in table.items():
            if name in shapes:
                shapes[name] = (*shapes[name][:axis], len(kept), *shapes[name][axis + 1 :])
        return {**shapes, **constant_shapes(pruned)}

    return edit


def aligned(original_nodes: int, model) -> bool:
    """Whether ``model``, cut from a graph of ``original_nodes`` nodes, still has its nodes
    one for one (a channel cut edits nodes in place; only a fixup adding nodes, such as heads'
    shape Concats, changes the count): what reading it by the original's node positions, or
    its shapes by ``cut_shapes``, needs."""
    return len(model.nodes()) == original_nodes
