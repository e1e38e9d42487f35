"""Sensitivity: the output error of pruning one channel group at a time, and per-group ratios
chosen from it to reach a MACs or params target with the least estimated error.

``measure`` prunes, for every prunable group g and every ratio r, *only* g on a copy of the
model, removing the units channel-prune's local scope would remove (the lowest-importance
``floor(r·n)`` of each segment, capped at ``max_layer_ratio`` and never a whole segment or a
whole member tensor), and records the units removed, the pruned copy's MACs and params (per
node too) and its output error on the calibration samples,

    e(g, r) = ‖y_pruned − y‖² / ‖y‖²   over every graph output and sample

(``recovery.output_error``'s ratio; no recovery is applied) with its standard error. The
original's outputs are computed once. By default (``fast``) each point runs only the pruned
copy's suffix from the cut's frontier (``suffix``: the same errors to float rounding), on a
seeded subset of ``SUBSET`` samples (the error bar says how much that costs in precision), and
groups can be measured in worker processes (``Sweep(jobs=N)``: the same table); ``fast=False``
runs every point whole on every sample. Memory: the original's outputs on the samples measured,
the frontier cache's budget, and per process one copy of the model with its points' sessions.

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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sparsec import executor as executors
from sparsec.analysis.activations import fixed_batch
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.importance import ImportanceContext, group_scores
from sparsec.errors import InputError
from sparsec.pruning.suffix import (
    Measured,
    PointMeasurer,
    cost_shapes,
    node_costs,
    start_worker,
    worker_measure,
)
from sparsec.results import stage

RATIOS = (0.25, 0.5, 0.75)
# samples the fast path measures on (seeded draw); each point's standard error is shown. 16: the
# PP-OCRv4 recognizer's --target-macs 0.66 sweep took 174 CPU s instead of 250 with 32, and its
# allocation's error on all 256 calibration lines was the same, 0.2091 (sensitivity_speed.py)
SUBSET = 16
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
    stderr: float = 0.0  # the error's standard error over the samples measured

    def to_json(self) -> dict:
        return {
            "ratio": self.ratio,
            "removed": len(self.units),
            "error": self.error,
            "stderr": self.stderr,
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
        """A table: group, kind, units, then per ratio the output error with its standard
        error and the MACs saved (blank where a group was not measured at that ratio)."""
        head = f"{'group':>5}  {'kind':<8} {'units':>6}" + "".join(
            f"  {f'err@{r:g}':>17} {f'MACs-@{r:g}':>10}" for r in self.ratios
        )
        lines = [
            (
                f"sensitivity: {len(self.groups)} group(s), {self.points()} point(s), importance "
                f"{self.importance}, {self.samples} sample{'s' if self.samples != 1 else ''}, "
                f"{self.seconds:.1f} s; error = ||dy||^2/||y||^2"
                f"{' +- its standard error' if self.samples > 1 else ''}, MACs- = saving in % of "
                f"the original "
                f"{self.macs:,} MACs"
            ),
            head,
        ]
        for g in self.groups:
            points = {p.ratio: p for p in g.points}
            cells = "".join(self._cell(points.get(r)) for r in self.ratios)
            lines.append(f"{g.id:>5}  {g.kind:<8} {g.units:>6}{cells}")
        return "\n".join(lines)

    def points(self) -> int:
        """Points measured, over every group."""
        return sum(len(g.points) for g in self.groups)

    def _cell(self, point: Point | None) -> str:
        if point is None:
            return f"  {'':>17} {'':>10}"
        spread = f"+-{point.stderr:.2g}" if self.samples > 1 else ""  # one sample: no error bar
        error = f"{point.error:.3g}{spread}"
        return f"  {error:>17} {100 * (self.macs - point.macs) / max(self.macs, 1):>9.1f}%"


# ------------------------------------------------------------------ measuring
def measure(
    model,
    samples: Mapping[str, np.ndarray],
    ratios: Sequence[float] = RATIOS,
    importance: str = "l1",
    batch_size: int = 16,
    progress: Callable[[str], None] | None = None,
    lossy_couplings: bool = False,
    **settings,
) -> SensitivityTable:
    """Prune each prunable group of ``model`` (through lossy couplings with ``lossy_couplings``)
    alone at each of ``ratios`` (on copies; ``model`` is left as it is) and measure the output
    error on ``samples`` (arrays keyed by input name, first axis = samples). Run it on the
    model channel-prune would see (after shape folding and canonicalization), so that the group
    ids match. ``progress(line)`` is called per group; ``settings``: ``Sweep``'s (``fast``,
    ``subset``, ``seed``, ``jobs``, ``groups``)."""
    with Sweep(model, samples, importance, batch_size, lossy_couplings, **settings) as sweep:
        return sweep.table(ratios, progress)


class Sweep:
    """One model's sensitivity measurements, in rounds (``table``, then ``extend`` with more
    ratios for some groups: the coarse-to-fine grid), sharing the reference outputs, the
    importance scores, the frontier caches and the worker processes.

    ``fast`` (default): every point runs from its cut's frontier (``suffix``), on ``subset``
    samples drawn with ``seed`` (0 or more than there are: all; the table shows each point's
    standard error); else every point is a full run on every sample (the reference path).
    ``jobs`` > 1 measures groups in that many worker processes (spawned; each loads the model
    from a temporary file and holds one copy); ``executor`` ``ray`` (or a Ray address) in Ray
    actors instead (``sparsec.executor``: ``jobs`` of them, or one per CPU of the cluster).
    ``groups``: the ids to measure (default: every prunable group)."""

    def __init__(
        self,
        model,
        samples: Mapping[str, np.ndarray],
        importance: str = "l1",
        batch_size: int = 16,
        lossy_couplings: bool = False,
        *,
        fast: bool = True,
        subset: int = SUBSET,
        seed: int = 0,
        jobs: int = 1,
        groups: Collection[int] | None = None,
        executor: str | executors.Executor = executors.LOCAL,
    ) -> None:
        self.start = time.perf_counter()
        self.importance, self.jobs = importance, max(1, jobs)
        if subset and fast:  # a fixed batch size runs whole batches: at least one
            subset = max(subset, fixed_batch(model) or 0)
        self.samples = subset_samples(samples, subset if fast else 0, seed)
        ctx = ImportanceContext(model, calibration=dict(samples), batch_size=batch_size)
        analysis = find_channel_groups(model, lossy=lossy_couplings)
        self.groups = [
            g for g in analysis.groups if g.prunable and (groups is None or g.id in groups)
        ]
        self.scores = {g.id: group_scores(g, importance, ctx) for g in self.groups}
        self.pool = executors.start(
            executor,
            model,
            start_worker,
            (dict(model.input_shapes), dict(self.samples), batch_size, fast, lossy_couplings),
            jobs=self.jobs,
            tasks=len(self.groups),
        )
        self.measurer = (
            None
            if self.pool
            else PointMeasurer(model, self.samples, batch_size, fast=fast, lossy=lossy_couplings)
        )
        base = analyze_cost(model, cost_shapes(model, samples))
        self.base = (base.macs, base.params, node_costs(base))

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.close()

    def table(
        self, ratios: Sequence[float], progress: Callable[[str], None] | None = None
    ) -> SensitivityTable:
        """Every group measured at ``ratios``."""
        ratios = _check_ratios(ratios)
        macs, params, nodes = self.base
        count = next(iter(self.samples.values())).shape[0]
        table = SensitivityTable(ratios, self.importance, count, macs, params, nodes)
        table.groups = [
            GroupSensitivity(g.id, g.kind, g.units, g.describe(), []) for g in self.groups
        ]
        self.extend(table, {g.id: ratios for g in self.groups}, progress)
        return table

    def extend(
        self,
        table: SensitivityTable,
        more: Mapping[int, Sequence[float]],
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Measure the groups of ``more`` at its ratios too (those not measured yet), adding
        the points to ``table`` (each group's points kept in ratio order)."""
        tasks = []
        for group in table.groups:
            measured = {p.ratio for p in group.points}
            ratios = sorted({float(r) for r in more.get(group.id, ())} - measured)
            if ratios:
                tasks.append((group, ratios))
        found = self._measure([(g.id, r, [_measured(p) for p in g.points]) for g, r in tasks])
        for number, ((group, _), points) in enumerate(zip(tasks, found), 1):
            group.points = sorted(group.points + [_point(p) for p in points], key=lambda p: p.ratio)
            if progress is not None:
                progress(_progress_line(group, number, len(tasks)))
        table.ratios = tuple(sorted({p.ratio for g in table.groups for p in g.points}))
        table.seconds = round(time.perf_counter() - self.start, 3)

    def _measure(self, tasks: list[tuple[int, list[float], list[Measured]]]):
        """Per task (group id, ratios, known points), the measured points, in task order."""
        if self.pool is not None:
            by_id = {g.id: g for g in self.groups}
            work = [
                (gid, by_id[gid].describe(), by_id[gid].units, self.scores[gid], r, known)
                for gid, r, known in tasks
            ]
            found = self.pool.map(worker_measure, work)
            yield from stage(found, total=len(work), desc="sensitivity", unit="group")
            return
        assert self.measurer is not None
        for gid, ratios, known in stage(tasks, desc="sensitivity", unit="group"):
            yield self.measurer.measure(gid, self.scores[gid], ratios, known)


def subset_samples(
    samples: Mapping[str, np.ndarray], subset: int, seed: int
) -> dict[str, np.ndarray]:
    """``subset`` samples drawn without replacement with ``seed`` (kept in their order), or all
    of them when ``subset`` is 0 or not smaller than their count."""
    count = next(iter(samples.values())).shape[0]
    if not 0 < subset < count:
        return dict(samples)
    rows = np.sort(np.random.default_rng(seed).choice(count, subset, replace=False))
    return {name: array[rows] for name, array in samples.items()}


def _measured(point: Point) -> Measured:
    return Measured(
        point.ratio, point.units, point.error, point.stderr, point.macs, point.params, point.nodes
    )


def _point(m: Measured) -> Point:
    return Point(m.ratio, m.units, m.error, m.macs, m.params, m.nodes, m.stderr)


def _progress_line(group: GroupSensitivity, number: int, total: int) -> str:
    errors = ", ".join(f"{p.ratio:g}: {p.error:.3g}" for p in group.points)
    return (
        f"sensitivity: group {group.id} ({group.kind}, {group.units} units) {number}/{total}: "
        f"error {errors}"
    )


def _check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    ratios = tuple(sorted({float(r) for r in ratios}))
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise InputError(
            f"sensitivity ratios must lie in (0, 1), got {', '.join(f'{r:g}' for r in ratios) or 'none'}"
        )
    return ratios


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
