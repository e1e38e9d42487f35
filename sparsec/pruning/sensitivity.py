"""Sensitivity: the output error of pruning one channel group at a time, and per-group ratios
chosen from it to reach a MACs or params target with the least estimated error.

``measure`` prunes, for every prunable group g and every ratio r, *only* g on a copy of the
model, removing the units channel-prune's local scope would remove (the lowest-importance
``floor(r·n)`` of each segment, capped at ``max_layer_ratio`` and never a whole segment or a
whole member tensor), and records the units removed, the pruned copy's MACs and params (per
node too) and its output error on the calibration samples,

    e(g, r) = ‖y_pruned − y‖² / ‖y‖²   over every graph output and sample

(``recovery.output_error``; no recovery is applied). The original's outputs are computed once
and replayed for every copy, so each point costs one onnxruntime session and one run over the
samples; memory is the original's outputs over the calibration set plus one copy.

``allocate`` treats the errors of different groups as additive (first order: each group is
measured with every other group whole) and picks, per group, 0 or one measured ratio: the least
summed error whose savings, added up, reach the target, found exactly by a dynamic programme
over savings counted in 1/BINS of the original cost (a multiple-choice knapsack; a greedy on
each group's convex hull jumped past targets on coarse ratio grids). Savings are additive only
to first order too (a layer between two pruned groups keeps (1−a)(1−b) of its MACs, not
1−a−b), so the result is checked with the joint cost, and the required saving raised by the
shortfall until it holds. The joint cost is exact for counts: every node's MACs and params are
products of its dims, and each axis belongs to one group, so

    cost(allocation) = Σ_nodes cost₀(n) · Π_g cost_g(n) / cost₀(n)

(cost_g(n): node n's cost with only g pruned, measured; constants no node credits unchanged).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sparsec.analysis.activations import capture, fixed_batch
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import ChannelGroup, find_channel_groups
from sparsec.analysis.importance import ImportanceContext, group_scores
from sparsec.errors import InputError, InternalError
from sparsec.pruning.recovery import output_error
from sparsec.pruning.selection import lowest_units
from sparsec.pruning.surgery import prune_channels
from sparsec.results import stage

RATIOS = (0.25, 0.5, 0.75)
FORMAT = "sparsec-sensitivity"
METRICS = ("macs", "params")


@dataclass
class Point:
    """One group pruned alone at one ratio."""

    ratio: float
    units: np.ndarray  # the removed units (group unit indices)
    error: float  # relative squared output error vs the original
    macs: int  # the pruned copy's totals
    params: int
    nodes: np.ndarray = field(repr=False)  # [2, nodes]: per-node MACs and params of the pruned copy

    def to_json(self) -> dict:
        return {
            "ratio": self.ratio,
            "removed": len(self.units),
            "error": self.error,
            "macs": self.macs,
            "params": self.params,
            "units": self.units.tolist(),
        }


@dataclass
class GroupSensitivity:
    id: int
    kind: str  # channels / heads / ffn
    units: int
    description: str
    points: list[Point]

    def point(self, ratio: float) -> Point | None:
        """The point measured at ``ratio`` (None for 0: nothing removed)."""
        if ratio == 0:
            return None
        found = next((p for p in self.points if p.ratio == ratio), None)
        if found is None:
            raise InputError(
                f"group {self.id} was not measured at ratio {ratio:g} "
                f"(measured: {', '.join(f'{p.ratio:g}' for p in self.points)})"
            )
        return found


@dataclass
class SensitivityTable:
    ratios: tuple[float, ...]
    importance: str
    samples: int
    macs: int  # the original's totals
    params: int
    nodes: np.ndarray = field(repr=False)  # [2, nodes]: the original's per-node MACs and params
    groups: list[GroupSensitivity] = field(default_factory=list)
    seconds: float = 0.0

    def group(self, group_id: int) -> GroupSensitivity:
        found = next((g for g in self.groups if g.id == group_id), None)
        if found is None:
            raise InputError(
                f"group {group_id} is not in the sensitivity table (not prunable, or another model)"
            )
        return found

    def removed(self, allocation: Mapping[int, float]) -> dict[int, np.ndarray]:
        """{group id: units to remove} for an allocation, for ``surgery.prune_channels`` on the
        measured model (or a copy of it: the group ids are the same)."""
        points = {gid: self.group(gid).point(ratio) for gid, ratio in allocation.items()}
        return {gid: p.units for gid, p in points.items() if p is not None and len(p.units)}

    def estimate(self, allocation: Mapping[int, float]) -> dict[str, float]:
        """The allocation's MACs and params as fractions of the original (product form, see
        the module docstring) and its summed measured error."""
        points = [
            p
            for gid, ratio in allocation.items()
            if (p := self.group(gid).point(ratio)) is not None
        ]
        fraction = np.ones_like(self.nodes, dtype=np.float64)
        for point in points:
            fraction *= np.divide(
                point.nodes, self.nodes, out=np.ones_like(fraction), where=self.nodes > 0
            )
        totals = np.array([self.macs, self.params], dtype=np.float64)
        joint = totals - self.nodes.sum(axis=1) + (self.nodes * fraction).sum(axis=1)
        share = np.divide(joint, totals, out=np.ones(2), where=totals > 0)
        return {
            "macs": float(share[0]),
            "params": float(share[1]),
            "error": float(sum(p.error for p in points)),
        }

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "importance": self.importance,
            "samples": self.samples,
            "ratios": list(self.ratios),
            "macs": self.macs,
            "params": self.params,
            "seconds": self.seconds,
            "error": "relative squared output error ||y_pruned - y||^2 / ||y||^2, one group pruned at a time",
            "groups": [
                {
                    "id": g.id,
                    "kind": g.kind,
                    "units": g.units,
                    "description": g.description,
                    "points": [p.to_json() for p in g.points],
                }
                for g in self.groups
            ],
        }

    def text(self) -> str:
        """A table: group, kind, units, then per ratio the output error and the MACs saved."""
        head = f"{'group':>5}  {'kind':<8} {'units':>6}" + "".join(
            f"  {f'err@{r:g}':>9} {f'MACs-@{r:g}':>10}" for r in self.ratios
        )
        lines = [
            (
                f"sensitivity: {len(self.groups)} group(s) x {len(self.ratios)} ratio(s), importance "
                f"{self.importance}, {self.samples} samples, {self.seconds:.1f} s; error = ||dy||^2/||y||^2, "
                f"MACs- = saving in % of the original {self.macs:,} MACs"
            ),
            head,
        ]
        for g in self.groups:
            cells = "".join(
                f"  {p.error:>9.3g} {100 * (self.macs - p.macs) / max(self.macs, 1):>9.1f}%"
                for p in g.points
            )
            lines.append(f"{g.id:>5}  {g.kind:<8} {g.units:>6}{cells}")
        return "\n".join(lines)


# ------------------------------------------------------------------ measuring
def measure(
    model,
    samples: Mapping[str, np.ndarray],
    ratios: Sequence[float] = RATIOS,
    importance: str = "l1",
    batch_size: int = 16,
    progress: Callable[[str], None] | None = None,
    lossy_couplings: bool = False,
) -> SensitivityTable:
    """Prune each prunable group of ``model`` (through lossy couplings with ``lossy_couplings``)
    alone at each of ``ratios`` (on copies; ``model`` is left as it is) and measure the output
    error on ``samples`` (arrays keyed by input name, first axis = samples). Run it on the
    model channel-prune would see (after shape folding and canonicalization), so that the group
    ids match. ``progress(line)`` is called per group."""
    ratios = _check_ratios(ratios)
    start = time.perf_counter()
    run = _Run(model, samples, batch_size)
    ctx = ImportanceContext(model, calibration=dict(samples), batch_size=batch_size)
    count = next(iter(samples.values())).shape[0]
    table = SensitivityTable(
        ratios, importance, count, run.base.macs, run.base.params, _node_costs(run.base)
    )
    analysis = find_channel_groups(model, lossy=lossy_couplings)
    prunable = [g for g in analysis.groups if g.prunable]
    for number, group in enumerate(stage(prunable, desc="sensitivity", unit="group"), 1):
        scores = group_scores(group, importance, ctx)
        points: list[Point] = []
        for ratio in ratios:
            units = select_units(group, scores, ratio)
            same = next((p for p in points if np.array_equal(p.units, units)), None)
            points.append(run.point(group, units, ratio, same))
        table.groups.append(
            GroupSensitivity(group.id, group.kind, group.units, group.describe(), points)
        )
        if progress is not None:
            errors = ", ".join(f"{p.ratio:g}: {p.error:.3g}" for p in points)
            progress(
                f"sensitivity: group {group.id} ({group.kind}, {group.units} units) {number}/{len(prunable)}: "
                f"error {errors}"
            )
    table.seconds = round(time.perf_counter() - start, 3)
    return table


def select_units(group: ChannelGroup, scores: np.ndarray, ratio: float) -> np.ndarray:
    """The units channel-prune's local scope removes from ``group`` at ``ratio`` (its default
    ``max_layer_ratio`` and ``round_to``): the lowest ``scores`` of each segment."""
    return lowest_units(group, scores, ratio)


class _Run:
    """What every point of one ``measure`` shares: the model, the samples, where MACs are
    counted, the original's cost and its outputs on the samples (captured once)."""

    def __init__(self, model, samples: Mapping[str, np.ndarray], batch_size: int) -> None:
        self.model, self.samples, self.batch_size = model, samples, batch_size
        self.shapes = cost_shapes(model, samples)
        self.base = analyze_cost(model, self.shapes)
        self.reference = list(
            capture(model, samples, [value.name for value in model.outputs], batch_size)
        )

    def point(
        self, group: ChannelGroup, units: np.ndarray, ratio: float, same: Point | None
    ) -> Point:
        """Prune ``units`` of ``group`` on a copy of the model: its cost and output error (those
        of ``same`` when an earlier ratio removed the same units; the original's when none)."""
        if same is not None or len(units) == 0:
            known = same or Point(
                ratio, units, 0.0, self.base.macs, self.base.params, _node_costs(self.base)
            )
            return Point(ratio, known.units, known.error, known.macs, known.params, known.nodes)
        pruned = self.model.copy()
        analysis = find_channel_groups(pruned)
        twin = analysis.groups[group.id] if group.id < len(analysis.groups) else None
        if twin is None or twin.compute != group.compute:
            raise InternalError(
                f"sensitivity: group {group.id} has another id on a copy of the model"
            )
        prune_channels(pruned, analysis, {group.id: units})
        cost = analyze_cost(pruned, self.shapes)
        nodes = _node_costs(cost)
        if nodes.shape != (2, len(self.model.nodes())):
            raise InternalError(f"sensitivity: pruning group {group.id} changed the node count")
        error = output_error(
            pruned, self.model, self.samples, self.batch_size, session=_Replay(self.reference)
        )
        return Point(ratio, units, error, cost.macs, cost.params, nodes)


class _Replay:
    """Stands in for the original's session in ``output_error``: hands back the original's
    outputs captured once, batch after batch (``capture`` runs the batches in order)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def run(self, feeds, names) -> dict[str, np.ndarray]:
        return next(self._batches)


def _check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    ratios = tuple(sorted({float(r) for r in ratios}))
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise InputError(
            f"sensitivity ratios must lie in (0, 1), got {', '.join(f'{r:g}' for r in ratios) or 'none'}"
        )
    return ratios


def cost_shapes(model, samples: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """One sample's input shapes (the model's fixed batch when it has one): where MACs are counted."""
    batch = fixed_batch(model) or 1
    inputs = {value.name for value in model.inputs}
    return {name: (batch, *array.shape[1:]) for name, array in samples.items() if name in inputs}


def _node_costs(cost) -> np.ndarray:
    return np.array(
        [[n.macs or 0 for n in cost.nodes], [n.params for n in cost.nodes]], dtype=np.float64
    )


# ------------------------------------------------------------------ allocating
BINS = 10_000  # the knapsack counts savings in 1/BINS of the original cost


def allocate(
    table: SensitivityTable, target_macs: float | None = None, target_params: float | None = None
) -> dict[int, float]:
    """{group id: ratio} (0 or a measured ratio, every measured group listed) whose joint cost is
    at most ``target_macs`` (or ``target_params``) times the original's, with the least summed
    measured error (module docstring). Raises ``InputError`` when even every group at its
    largest measured saving stays above the target."""
    metric, target = _target(target_macs, target_params)
    total = max(table.macs if metric == "macs" else table.params, 1)
    options = [
        [(0.0, 0, 0.0)]
        + [(p.ratio, round(BINS * (total - getattr(p, metric)) / total), p.error) for p in g.points]
        for g in table.groups
    ]
    most = sum(max(o[1] for o in group) for group in options)
    need = int(np.ceil(BINS * (1 - target) - 1e-9))
    while need <= most:
        picks = _knapsack([[(bins, error) for _, bins, error in group] for group in options], need)
        choice = {g.id: group[k][0] for g, group, k in zip(table.groups, options, picks)}
        joint = table.estimate(choice)[metric]
        if joint <= target + 1e-12:
            return choice
        need += max(1, int(np.ceil(BINS * (joint - target))))  # overlapping savings: ask for more
    best = table.estimate(
        {g.id: max(group, key=lambda o: o[1])[0] for g, group in zip(table.groups, options)}
    )
    raise InputError(
        f"target {metric} {target:g} cannot be reached by pruning at the measured ratios "
        f"({', '.join(f'{r:g}' for r in table.ratios)}): the best reachable is {best[metric]:.3f} "
        f"of the original {metric}"
    )


def _target(target_macs: float | None, target_params: float | None) -> tuple[str, float]:
    given = [(m, t) for m, t in zip(METRICS, (target_macs, target_params)) if t is not None]
    if len(given) != 1:
        raise InputError(
            "give exactly one target: a fraction of the original MACs or of the original params"
        )
    metric, target = given[0]
    if not 0 < target <= 1:
        raise InputError(
            f"target {metric} must be a fraction of the original in (0, 1], got {target:g}"
        )
    return metric, float(target)


def _knapsack(groups: list[list[tuple[int, float]]], need: int) -> list[int]:
    """Per group, the index of one (saving, error) option so that the savings sum to at least
    ``need`` with the least summed error (exact dynamic programme over savings capped at
    ``need``; ties keep the earlier option). Assumes it is reachable."""
    best = np.full(need + 1, np.inf)
    best[0] = 0.0
    steps = []  # per group: (option, previous state) for every state
    for options in groups:
        new, pick, origin = (
            np.full(need + 1, np.inf),
            np.zeros(need + 1, np.int64),
            np.zeros(need + 1, np.int64),
        )
        for index, (saving, error) in enumerate(options):
            source = np.arange(need + 1) - saving
            candidate, came = np.full(need + 1, np.inf), np.zeros(need + 1, np.int64)
            valid = source >= 0
            candidate[valid], came[valid] = best[source[valid]] + error, source[valid]
            low = max(need - saving, 0)  # every state from ``low`` on reaches the cap
            came[need] = low + int(np.argmin(best[low:]))
            candidate[need] = best[came[need]] + error
            better = candidate < new
            new[better], pick[better], origin[better] = candidate[better], index, came[better]
        best = new
        steps.append((pick, origin))
    picks, state = [], need
    for pick, origin in reversed(steps):
        picks.append(int(pick[state]))
        state = int(origin[state])
    return picks[::-1]
