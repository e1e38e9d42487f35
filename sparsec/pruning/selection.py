"""Which units of a channel group a ratio removes (channel-prune's local scope, shared with the
sensitivity measurement so that both cut the same units).

Invariants: each *segment* of the group (its units split by the set of weights they appear in)
loses ``ratio`` of its units, lowest scores first, at most ``max_layer_ratio`` of them and never
all; with ``round_to=K`` a segment keeps a multiple of K units when it has more than K; no member
tensor loses every position (its best unit is given back). The count is ``floor(ratio·n)``, or
given per segment (``counts``: a scheduled round's share of a cut already decided, taken as is).
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.groups import ChannelGroup


def lowest_units(
    group: ChannelGroup,
    scores: np.ndarray,
    ratio: float,
    *,
    max_layer_ratio: float = 0.9,
    round_to: int = 1,
    counts: list[int] | None = None,
) -> np.ndarray:
    """The units ``group`` loses at ``ratio``, or ``counts[i]`` of segment i (sorted unit indices)."""
    removed = []
    for index, segment in enumerate(group.segments()):
        if counts is None:
            cap = min(int(max_layer_ratio * len(segment)), len(segment) - 1)
            count = min(int(ratio * len(segment) + 1e-9), cap)
            keep = _round_keep(
                len(segment) - max(count, 0), round_to, len(segment), least=len(segment) - cap
            )
        else:
            keep = len(segment) - min(max(counts[index], 0), len(segment) - 1)
        order = segment[np.argsort(scores[segment], kind="stable")]
        removed.append(order[: len(segment) - keep])
    units = np.sort(np.concatenate(removed)) if removed else np.zeros(0, dtype=np.int64)
    return keep_every_member(group, units, scores)


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
