"""Which units of a channel group a ratio removes (channel-prune's local scope, shared with the
sensitivity measurement so that both cut the same units).

Invariants: each *segment* of the group (its units split by the set of weights they appear in)
loses ``ratio`` of its units, lowest scores first, at most ``max_layer_ratio`` of them and never
all; with ``round_to=K`` a segment keeps a multiple of K units when it has more than K (with
``widths``, the count that function picks: ``fast_widths``, the runtime's fast widths), except
that a balanced group's whole bundles (below) may remove fewer units than that count; no member
tensor loses every position (its best unit is given back). The count is ``floor(ratio·n)``, or
given per segment (``counts``: a scheduled round's share of a cut already decided, taken as is).

Balance (a grouped conv's channels, ``ChannelGroup.balanced``): every class of a balanced member
loses the same number of positions. A unit lying in one class of each balanced member is taken
in *bundles*, one unit of every class (each class's lowest-scoring next, a bundle scoring its
mean), so ``count`` units of a segment become whole bundles; a unit holding the same number of
positions in every class is free, one spread unevenly is kept. What still breaks a balance
(several balanced members, uneven units) is given back by ``feasible``, best scores first. When
that gives back more than whole *tiles* would (``tiles``: the same local position in every class,
what a ShuffleNet trunk read by grouped convs of several widths needs), whole tiles are taken,
none taking from a segment more than its count (so caps and ``round_to`` hold: a trunk whose
tiles cannot reach a multiple of K stays whole).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from sparsec.analysis.groups import ChannelGroup, components

FREE, KEPT = -1, -2  # class_labels: a unit spread evenly over the classes / unevenly


def lowest_units(
    group: ChannelGroup,
    scores: np.ndarray,
    ratio: float,
    *,
    max_layer_ratio: float = 0.9,
    round_to: int = 1,
    counts: list[int] | None = None,
    widths=None,
) -> np.ndarray:
    """The units ``group`` loses at ``ratio``, or ``counts[i]`` of segment i (sorted unit indices);
    ``widths(index, keep, units, least)``: segment ``index``'s kept count instead of ``keep``."""
    wanted, labels = [], class_labels(group)
    for index, segment in enumerate(group.segments()):
        if counts is None:
            cap = min(int(max_layer_ratio * len(segment)), len(segment) - 1)
            count = min(int(ratio * len(segment) + 1e-9), cap)
            keep = _round_keep(
                len(segment) - max(count, 0), round_to, len(segment), least=len(segment) - cap
            )
            if widths is not None and keep < len(segment):
                keep = widths(index, keep, len(segment), len(segment) - cap)
        else:
            keep = len(segment) - min(max(counts[index], 0), len(segment) - 1)
        wanted.append((segment[np.argsort(scores[segment], kind="stable")], len(segment) - keep))
    picked = [_lowest(order, count, labels, scores) for order, count in wanted]
    units = feasible(group, _sorted(picked), scores)
    if group.balanced:  # bundles the balance gave back: whole tiles may reach further
        tiled = feasible(group, _lowest_tiles(group, wanted, scores), scores)
        units = tiled if len(tiled) > len(units) else units
    return units


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def tiles(group: ChannelGroup) -> np.ndarray:
    """Per unit, its *tile*: units sharing a local position in some class of a balanced member
    (position ``p`` and ``p mod (size / classes)``) are one tile. Removing whole tiles removes
    the same local positions from every class, so it balances every member at once."""
    left, right = [], []
    for member, classes in group.balanced:
        atoms = group.atoms[member]
        left.append(atoms)
        right.append(atoms[np.arange(len(atoms)) % (len(atoms) // classes)])
    return components(group.units, np.concatenate(left), np.concatenate(right))


def _lowest_tiles(
    group: ChannelGroup, wanted: list[tuple[np.ndarray, int]], scores: np.ndarray
) -> np.ndarray:
    """The lowest-scoring whole tiles (by mean score) that take from no segment of ``wanted``
    (its units, its count) more than its count: its cap and its rounding hold."""
    labels = tiles(group)
    items = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    items.sort(key=lambda units: float(np.mean(scores[units])))
    segment_of = np.zeros(group.units, dtype=np.int64)
    for index, (segment, _count) in enumerate(wanted):
        segment_of[segment] = index
    limits = [count for _segment, count in wanted]
    taken = _fill([list(units) for units in items], limits, segment_of)
    return np.sort(np.asarray(taken, dtype=np.int64))


def _fill(items: list[list[int]], limits: list[int], segment_of=None) -> list[int]:
    """Items taken in order while each segment's units taken stay within its limit
    (``segment_of``: each unit's segment index; None: one segment, ``limits[0]``)."""
    taken: list[int] = []
    used = [0] * len(limits)
    for units in items:
        parts = Counter(int(segment_of[u]) if segment_of is not None else 0 for u in units)
        if all(used[k] + n <= limits[k] for k, n in parts.items()):
            for k, n in parts.items():
                used[k] += n
            taken += units
    return taken


def feasible(group: ChannelGroup, removed: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``removed`` less what no cut may remove: a member's every position
    (``keep_every_member``), and units breaking a balanced member's classes (``balance``)."""
    return balance(group, keep_every_member(group, removed, scores), scores)


def balance(group: ChannelGroup, removed: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``removed`` less its best-scoring units, one at a time from the class that loses most,
    until every class of every balanced member loses the same number of positions."""
    mask = group.removed_mask(removed)
    tables = [group.class_counts(member, classes) for member, classes in group.balanced]
    lost = [table[mask].sum(axis=0) for table in tables]  # per member: positions lost per class
    while True:
        uneven = next((k for k, per in enumerate(lost) if per.min() != per.max()), None)
        if uneven is None:
            return np.flatnonzero(mask)
        fullest = int(np.argmax(lost[uneven]))
        there = np.flatnonzero(mask & (tables[uneven][:, fullest] > 0))
        unit = there[np.argmax(scores[there])]
        mask[unit] = False
        lost = [per - table[unit] for per, table in zip(lost, tables)]


def class_labels(group: ChannelGroup) -> np.ndarray | None:
    """Per unit, its class in every balanced member as one label (``FREE``: spread evenly over
    every class, or absent; ``KEPT``: spread unevenly), None when nothing is balanced."""
    if not group.balanced:
        return None
    columns = []
    for member, classes in group.balanced:
        counts = group.class_counts(member, classes)
        single = (counts > 0).sum(axis=1) == 1
        even = counts.min(axis=1) == counts.max(axis=1)
        columns.append(np.where(single, counts.argmax(axis=1), np.where(even, FREE, KEPT)))
    table = np.stack(columns, axis=1)
    _, labels = np.unique(table, axis=0, return_inverse=True)
    labels = labels.reshape(-1)
    labels[(table == FREE).all(axis=1)] = FREE
    labels[(table == KEPT).any(axis=1)] = KEPT
    return labels


def _lowest(order: np.ndarray, count: int, labels, scores: np.ndarray) -> np.ndarray:
    """The first ``count`` units of ``order`` (lowest scores first), or with class ``labels``
    the lowest-scoring whole bundles and free units adding up to at most ``count``."""
    if labels is None or count <= 0:
        return order[: max(count, 0)]
    own = labels[order]
    classes = [order[own == label] for label in np.unique(own[own >= 0])]
    depth = min((len(c) for c in classes), default=0)
    items = [[int(u)] for u in order[own == FREE]]
    items += [[int(c[i]) for c in classes] for i in range(depth)]
    items.sort(key=lambda units: float(np.mean(scores[units])))
    return np.asarray(_fill(items, [count]), dtype=np.int64)


def keep_every_member(group: ChannelGroup, removed: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Give back, per member that would lose every position (a size-1 slice of a Split, a
    Concat input), its best unit: no tensor may shrink to zero."""
    mask = group.removed_mask(removed)
    for member in group.members:
        atoms = group.atoms[member]
        if len(atoms) and mask[atoms].all():
            mask[atoms[np.argmax(scores[atoms])]] = False
    return np.flatnonzero(mask)


def _round_keep(keep: int, multiple: int, units: int, least: int = 1) -> int:
    """Units a segment keeps: at least ``least`` (and one), and a multiple of ``multiple`` when
    it has more than that many units (rounded to nearest, up when nearest is below ``least``)."""
    keep, least = max(keep, 1), max(least, 1)
    if multiple <= 1 or units <= multiple:
        return keep
    rounded = max(multiple, int(round(keep / multiple)) * multiple)
    if rounded < least:
        rounded = -(-least // multiple) * multiple
    return min(units, rounded)
