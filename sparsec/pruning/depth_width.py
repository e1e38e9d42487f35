"""Depth against width: removable blocks as extra items of the sensitivity allocation, so that a
MACs/params target drops a block where that costs less output error than cutting channels.

An *item* is a set of mutually exclusive removals: the removable blocks (``analysis.blocks``)
that share a node form one item (a transformer layer and its two parts: drop the attention, the
MLP, or the whole layer), each block alone one option. Each option is measured like
``blocks.output_scores``: the relative squared end-output error of removing that block alone,
on the sweep's calibration samples, and its per-node cost is the model's with the nodes the
removal frees at 0 (``suffix.aligned_costs`` of the dropped copy). In the product form of the
joint cost, Σ_n cost₀(n)·Π_g cost_g(n)/cost₀(n), a freed node then costs 0 whatever its channel
groups, so blocks and channel groups are allocated together by ``sensitivity.allocate``, the
items riding in the table as pseudo-groups with negative ids (option k at "ratio" k+1; their
points remove no channel unit, so ``SensitivityTable.removed`` ignores them). Errors add up
to first order, measured before any refit; a channel cut whose nodes a dropped block frees
saves nothing more and is undone (``without_idle``).

The cut (``drop_after_cut``): channels first (group ids are those of the unpruned model), then
the chosen blocks by name (channel surgery keeps value names). The exactness oracle composes:
``blocks.zeroed`` applied to the channel cut's masked original (and to its replay on another
model), which is the pruned model to float rounding (both cuts are exact against their own
references and commute: masks never touch a skip/exit name).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from sparsec.analysis.blocks import Block, find_blocks
from sparsec.analysis.cost import analyze_cost
from sparsec.pruning.blocks import remove_blocks, units, zeroed
from sparsec.pruning.exclude import excluded_by
from sparsec.pruning.recovery import output_error
from sparsec.pruning.sensitivity import GroupSensitivity, Point, SensitivityTable
from sparsec.pruning.suffix import aligned_costs, cost_shapes
from sparsec.results import PassResult

KIND = "block"  # the pseudo-groups' kind


def chosen(
    blocks: Sequence[Block], table: SensitivityTable, allocation: Mapping[int, float]
) -> list[tuple[Block, float]]:
    """The blocks an allocation over ``blocks``' items drops, each with its measured error (item
    -n of ``table`` is ``exclusive_items(blocks)[n - 1]``, its option k at ratio k + 1), in
    graph order."""
    items = exclusive_items(blocks)
    picked = [
        (items[-gid - 1][int(ratio) - 1], _error(table, gid, ratio))
        for gid, ratio in allocation.items()
        if gid < 0 and ratio
    ]
    return sorted(picked, key=lambda pair: pair[0].id)


def _error(table: SensitivityTable, gid: int, ratio: float) -> float:
    point = table.group(gid).point(ratio)
    assert point is not None  # ratio > 0
    return point.error


def candidate_blocks(model, exclude: str = "") -> list[Block]:
    """The removable blocks of ``model`` holding no node ``exclude`` matches."""
    return [
        block
        for block in find_blocks(model)
        if block.removable and excluded_by(exclude, set(block.nodes)) is None
    ]


def apart_from_cuts(blocks: Sequence[Block], groups: Sequence) -> list[Block]:
    """The ``blocks`` that a channel cut of ``groups`` (``ChannelGroup``s) leaves droppable: a
    dropped block's exit uses read its skip value instead, so where a group holds only one of
    the two (a plain layer whose input and output widths are separate groups, as in a network
    without residuals) the channels first cut (module docstring) would leave those uses other
    channels, or another count of them, than their weights were cut for. A residual block's skip
    and exit are one group (the Add couples them)."""

    def holding(name: str) -> set[int]:
        return {group.id for group in groups if any(value == name for value, _ in group.members)}

    return [block for block in blocks if not holding(block.skip) ^ holding(block.exit)]


def exclusive_items(blocks: Sequence[Block]) -> list[list[Block]]:
    """``blocks`` split into items: the connected components of 'shares a node' (graph order)."""
    items: list[tuple[set[str], list[Block]]] = []
    for block in sorted(blocks, key=lambda b: b.id):
        nodes, members = set(block.nodes), [block]
        for item in [i for i in items if not i[0].isdisjoint(block.nodes)]:
            items.remove(item)
            nodes |= item[0]
            members = item[1] + members
        items.append((nodes, members))
    return [sorted(members, key=lambda b: b.id) for _, members in items]


def measure_items(
    model, blocks: Sequence[Block], samples, table: SensitivityTable, batch_size: int = 16
) -> list[GroupSensitivity]:
    """Every option of every item of ``blocks`` measured on ``samples`` (the sweep's), with
    costs laid out on ``table``'s nodes (the same model): item n is the pseudo-group -n. The
    time taken is added to ``table.seconds``."""
    start, shapes = time.perf_counter(), cost_shapes(model, samples)
    groups = []
    for number, members in enumerate(exclusive_items(blocks), 1):
        points = [
            _point(model, block, k + 1.0, samples, shapes, table, batch_size)
            for k, block in enumerate(members)
        ]
        name = "; ".join(f"{b.kind} {b.scope or b.exit}" for b in members)
        groups.append(GroupSensitivity(-number, KIND, len(members), name, points))
    table.seconds = round(table.seconds + time.perf_counter() - start, 3)
    return groups


def _point(model, block: Block, ratio: float, samples, shapes, table, batch_size: int) -> Point:
    dropped = model.copy()
    remove_blocks(dropped, [block])
    nodes = aligned_costs(model, dropped, analyze_cost(dropped, shapes))
    freed = table.nodes.sum(axis=1) - nodes.sum(axis=1)
    return Point(
        ratio,
        np.zeros(0, np.int64),
        output_error(dropped, model, samples, batch_size),
        int(table.macs - freed[0]),
        int(table.params - freed[1]),
        nodes,
    )


def joined(table: SensitivityTable, items: Sequence[GroupSensitivity]) -> SensitivityTable:
    """``table`` with the items as extra groups (a view: ``table`` is unchanged)."""
    return replace(table, groups=[*table.groups, *items]) if items else table


def without_idle(table: SensitivityTable, allocation: Mapping[int, float]) -> dict[int, float]:
    """``allocation`` with every channel group whose cut saves nothing more (all its nodes are
    freed by the dropped blocks: the joint MACs and params are the same without it) set back to
    0: its measured error was spent for nothing (the knapsack adds savings, to first order)."""
    kept = dict(allocation)
    for gid, ratio in allocation.items():
        if gid < 0 or not ratio or not any(g < 0 and r for g, r in kept.items()):
            continue
        before = table.estimate(kept)
        after = table.estimate({**kept, gid: 0.0})
        if all(np.isclose(after[m], before[m], rtol=0, atol=1e-12) for m in ("macs", "params")):
            kept[gid] = 0.0
    return kept


def widths(allocation: Mapping[int, float]) -> dict[int, float]:
    """The channel groups' part of an allocation (the pseudo-groups left out)."""
    return {gid: ratio for gid, ratio in allocation.items() if gid >= 0}


def describe(dropped: Sequence[tuple[Block, float]]) -> str:
    """The dropped blocks with their measured error, for the allocation line."""
    return ", ".join(f"{b.scope or b.exit} ({b.kind}, error {e:.3g})" for b, e in dropped) or "none"


def drop_after_cut(result: PassResult, dropped: Sequence[tuple[Block, float]]) -> list[str]:
    """Remove the ``dropped`` blocks (with their measured errors) from ``result.model`` (already
    channel-cut) and compose the oracle reference and the replay with the blocks zeroed (module
    docstring); the stats and the ``blocks`` artifact (score: the measured error) say what was
    dropped. Returns the drifted skips (for the refit)."""
    if not dropped:
        return []
    chosen = sorted((block for block, _ in dropped), key=lambda b: b.id)
    drifted = remove_blocks(result.model, chosen)
    cut, replay = result.reference, result.replay
    assert cut is not None
    result.reference = lambda plain=False: zeroed(cut(plain=plain), chosen)
    if replay is not None:
        result.replay = lambda other, plain=False: zeroed(replay(other, plain=plain), chosen)
    result.modified = True
    result.stats["blocks_dropped"] = units(chosen)
    result.stats["macs_dropped"] = sum(b.macs for b in chosen)
    result.artifacts["blocks"] = [dict(b.to_json(), score=error) for b, error in dropped]
    return drifted
