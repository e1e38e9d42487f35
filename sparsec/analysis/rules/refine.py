"""Reshape blocks that regroup several axes into several axes (MobileViT's unfold and fold).

The algebra. A block of a row-major reshape (``layout._blocks``) has input sizes ``a₁..aₘ`` and
output sizes ``b₁..bₙ`` of equal product. Their *common refinement* is the factorisation whose
cut points are the union of both sides' cumulative products, when each cut divides the next
(``refine``): in ``(2, 64, 16)`` → out ``(1024, 2)``, cuts ``{2, 128, 2048} ∪ {1024, 2048}``
give parts ``(2, 64, 8, 2)``. Every axis of either side is then the row-major product of a run
of consecutive parts (``spans``), and position ``q`` of an axis is position
``(q // stride) % size`` of each of its parts (``stride_map``: the stride is the product of the
parts after it in the run). When some cut does not divide the next (``(6, 4)`` → ``(4, 6)``), no
part is whole on both sides and the block stays blocked.

Each part is a virtual member (``Coupling``'s ``#`` names). An axis that is one part is linked
to it by the identity; an axis of several parts follows *one* of them (the caller's ``choose``),
as a merged axis follows one part in ``layout._link_part``: removing a position of that part
removes every position of the axis that holds it, and the other parts must never shrink. So a
part is *live* only when every axis holding it follows it; the axes of a dead part are blocked
(linking them would let the part shrink under an axis that cannot follow it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import accumulate
from operator import mul

import numpy as np

from sparsec.analysis.rules.core import Coupling, Member


def refine(ins: Sequence[int], outs: Sequence[int]) -> list[int] | None:
    """The parts of the common refinement of two factorisations of one product (row-major),
    or None when a cut point of one side does not divide the next cut point."""
    if math.prod(ins) != math.prod(outs):
        return None
    cuts = sorted(set(accumulate(ins, mul)) | set(accumulate(outs, mul)))
    parts, done = [], 1
    for cut in cuts:
        if cut % done:
            return None
        parts.append(cut // done)
        done = cut
    return parts


def spans(sizes: Sequence[int], parts: Sequence[int]) -> list[range]:
    """For each of ``sizes`` (one side of a refined block, all > 1), the run of ``parts``
    whose product it is."""
    runs, k = [], 0
    for size in sizes:
        start, product = k, 1
        while product < size:
            product, k = product * parts[k], k + 1
        if product != size:
            raise ValueError(f"{list(sizes)} is not refined by {list(parts)}")
        runs.append(range(start, k))
    return runs


def stride_map(sizes: Sequence[int], k: int) -> np.ndarray:
    """Position ``q`` of the row-major product of ``sizes`` → its position in factor ``k``."""
    stride = math.prod(sizes[k + 1 :])
    return (np.arange(math.prod(sizes)) // stride) % sizes[k]


def stride_of(index) -> tuple[int, int] | None:
    """``(stride, size)`` when ``index`` is ``(q // stride) % size`` with ``size`` > 1 (a map
    from a merged axis to one of its parts), else None."""
    index = np.asarray(index)
    if index.ndim != 1 or len(index) == 0 or index.min() < 0:
        return None
    size = int(index.max()) + 1
    changes = np.flatnonzero(index != index[0])
    stride = int(changes[0]) if len(changes) else len(index)
    expected = (np.arange(len(index)) // stride) % size
    return (stride, size) if size > 1 and np.array_equal(index, expected) else None


Axis = tuple[object, int, range]  # (value, axis, its run of parts)
Chooser = Callable[[str, object, int, range, list[int], dict[int, int]], int]


def link_refined(c: Coupling, x, ins, y, outs, choose: Chooser) -> bool:
    """Link one many-to-many block (``(axis, size)`` lists of ``x`` and ``y``) through the
    parts of its common refinement; False (nothing linked) when it has none. ``choose(side,
    value, axis, run, sizes, whole)`` names the part (an index into the refinement, within
    ``run``; ``sizes`` are the run's part sizes) that an axis of several parts follows; ``side``
    is ``in`` or ``out``, ``whole`` maps each part of ``run`` that is a whole axis on the other
    side to that axis."""
    parts = refine([d for _, d in ins], [d for _, d in outs])
    if parts is None:
        return False
    sides = {
        "in": [(x, a, r) for (a, _), r in zip(ins, spans([d for _, d in ins], parts))],
        "out": [(y, a, r) for (a, _), r in zip(outs, spans([d for _, d in outs], parts))],
    }
    followed: dict[Member, int] = {}
    for side, other in (("in", "out"), ("out", "in")):
        whole = {r[0]: axis for _, axis, r in sides[other] if len(r) == 1}
        for value, axis, r in sides[side]:
            kept = {k: a for k, a in whole.items() if k in r}
            sizes = [parts[k] for k in r]
            followed[(value.name, axis)] = (
                r[0] if len(r) == 1 else choose(side, value, axis, r, sizes, kept)
            )
    axes = sides["in"] + sides["out"]
    tag = f"#{y.name}:{ins[0][0]}-{outs[0][0]}"
    for value, axis, r in axes:
        _link_axis(c, tag, parts, axes, followed, (value, axis, r))
    return True


def _link_axis(c: Coupling, tag: str, parts, axes: list[Axis], followed, this: Axis) -> None:
    """Link ``this`` axis to the part it follows, when every axis holding that part follows it;
    else block it, naming an axis that follows another part."""
    value, axis, r = this
    k = followed[(value.name, axis)]
    astray = [(v, a) for v, a, run in axes if k in run and followed[(v.name, a)] != k]
    if astray:
        other, other_axis = astray[0]
        c.block(
            (value.name, axis),
            f"is reshaped with part of axis {other_axis} of '{other.name}', which follows "
            "another part (only one part of a reshaped axis can)",
        )
        return
    member = (f"{tag}:{k}", 0)
    c.sizes[member] = parts[k]
    sizes = [parts[j] for j in r]
    c.link((value.name, axis), member, stride_map(sizes, k - r[0]) if len(r) > 1 else None)
