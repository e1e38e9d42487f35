"""Sensitivity points evaluated from the first node a cut changes: the pruned copy's *suffix*.

Pruning one group changes a set of nodes C (``ir.compare.changed_nodes``: other weights, constants or
attributes). Every node downstream of C is *affected*; every other node computes on the pruned
copy exactly what it computes on the original. The cut's *frontier* F is the set of dynamic
values (computed from the graph inputs; constants are recomputed, never fed) that an affected
node reads and no affected node computes. With F's values captured from the original, the pruned
copy's outputs are those of its suffix, the affected nodes (and the constant-only nodes feeding
them) with F as graph inputs (``runtime.session_for(only=True, fed=F)``):

    y_pruned = suffix_pruned(F(x))     the same nodes on the same values

so the error equals the full run's up to float rounding (onnxruntime may pick other kernels for
the cut graph). Graph outputs no affected node computes are the original's (difference 0). The
full-model path is the same code with F = the graph inputs and every node affected (``whole``).

Per calibration unit i (a row of the outputs' first axis; a whole batch when an output does not
lay samples out on axis 0): a_i = ‖y_pruned,i − y_i‖², b_i = ‖y_i‖² over every graph output, and

    e = Σa / Σb,   se(e) = sqrt(Σ(a_i − e·b_i)² / (n(n−1))) / mean(b)

(``recovery.output_error``'s ratio, and its standard error as a ratio estimator).

Memory: the original's outputs on the samples (``Reference``), one batch of frontier values, the
frontier batches ``FrontierCache`` holds under its byte budget (a group measured again in a
later round reuses them; past the budget they are captured again), and one session per point
being measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from sparsec.analysis.activations import calibration_batches, fixed_batch
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups, kept_positions
from sparsec.analysis.shapes import binding_key
from sparsec.errors import InternalError
from sparsec.ir import Model, runtime
from sparsec.ir.carried import carry
from sparsec.ir.compare import changed_nodes
from sparsec.pruning.selection import lowest_units
from sparsec.pruning.surgery import aligned, cut_shapes, prune_channels

FRONTIER_MB = 512  # frontier activations held between rounds, per process


@dataclass(frozen=True)
class Cut:
    """Where a pruned copy's run starts (``frontier``) and the graph outputs it changes."""

    frontier: tuple[str, ...]
    outputs: tuple[str, ...]


def whole(model) -> Cut:
    """The full run: from the graph inputs, every output."""
    return Cut(tuple(v.name for v in model.inputs), tuple(v.name for v in model.outputs))


def cut_of(original, pruned) -> Cut:
    """The frontier and changed outputs of ``pruned`` (an edited copy of ``original``, same
    nodes in the same order), see the module docstring."""
    changed = set(changed_nodes(pruned, original))
    dynamic = {v.name for v in original.inputs}
    affected: set[str] = set()  # values the affected nodes compute
    frontier: set[str] = set()
    for index, (node, twin) in enumerate(zip(original.nodes(), pruned.nodes())):
        reads = original.reads(node)
        outputs = {v.name for v in node.outputs if v is not None}
        if index in changed or reads & affected:
            frontier |= (original.reads(node) | pruned.reads(twin)) & dynamic - affected
            affected |= outputs
        if reads & dynamic:
            dynamic |= outputs
    outputs_changed = tuple(v.name for v in original.outputs if v.name in affected)
    return Cut(tuple(sorted(frontier - affected)), outputs_changed)


class Reference:
    """The original's outputs on the calibration samples, batch by batch (computed once), the
    feeds of those batches and each unit's ‖y_i‖² (``b``). ``threads``: onnxruntime's intra-op
    threads for every session of the sweep (0: its default, every core)."""

    def __init__(
        self, model, samples: Mapping[str, np.ndarray], batch_size: int, threads: int = 0
    ) -> None:
        self.names, self.threads = [v.name for v in model.outputs], threads
        self.feeds = list(calibration_batches(model, samples, batch_size))
        session = runtime.session_for(
            model, extra_outputs=self.names, optimization="disable", only=True, threads=threads
        )
        self.outputs = [session.run(feeds, self.names) for feeds in self.feeds]
        self.units = [_units(batch, outputs) for batch, outputs in zip(self.feeds, self.outputs)]
        self.b = np.concatenate(
            [squares(o, self.names, u) for o, u in zip(self.outputs, self.units)]
        )


def _units(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> int:
    """Units of one batch: its rows when every output lays them out on axis 0, else 1."""
    rows = next(iter(feeds.values())).shape[0]
    same = all(np.ndim(o) and np.shape(o)[0] == rows for o in outputs.values())
    return rows if same else 1


def squares(
    outputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    units: int,
    minus: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Per unit, the summed squares of the named ``outputs`` (less ``minus``'s, when given),
    accumulated in float64 (the difference itself in the outputs' dtype: no float64 copy of
    a large output, such as a recognizer's per-position class scores)."""
    total = np.zeros(units)
    for name in names:
        value = _numeric(outputs[name])
        value = value if minus is None else value - _numeric(minus[name])
        rows = value.reshape(units, -1)
        total += np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    return total


def _numeric(array) -> np.ndarray:
    """A float array as it is; an integer or boolean one (a class index output) as float64."""
    array = np.asarray(array)
    return array if array.dtype.kind in "fc" else array.astype(np.float64)


# Weights above which ``output_errors`` takes its models one at a time: one session fewer alive
# (resnet50, two models: 960 -> 770 MB peak), the original run once per model.
SHARED_RUN_BYTES = 64 << 20


def output_errors(models: Sequence, original, samples, batch_size: int = 16) -> list[float]:
    """``recovery.output_error`` of each of ``models`` against ``original``, which runs once per
    batch (per model past ``SHARED_RUN_BYTES``): a model that is an edited copy of it (the same
    nodes in the same order) runs only its suffix from the original's frontier values (module
    docstring), any other one whole."""
    if len(models) > 1 and original.weight_bytes() > SHARED_RUN_BYTES:
        return [output_errors([model], original, samples, batch_size)[0] for model in models]
    names = tuple(v.name for v in original.outputs)
    inputs = {v.name for v in original.inputs}
    cuts = [_cut_for(original, model, names) for model in models]
    exposed = [
        n
        for n in dict.fromkeys(names + tuple(n for c in cuts for n in c.frontier))
        if n not in inputs
    ]
    session = (
        runtime.session_for(original, extra_outputs=exposed, optimization="disable", only=True)
        if exposed
        else None
    )
    a, b = np.zeros(len(models)), 0.0
    sessions: list = []
    for feeds in calibration_batches(original, samples, batch_size):
        batch = {**feeds, **(session.run(feeds, exposed) if session is not None else {})}
        want = {name: batch[name] for name in names}
        b += float(squares(want, names, 1)[0])
        sessions = sessions or [_suffix_session(m, c, batch, 0) for m, c in zip(models, cuts)]
        for index, (run, cut) in enumerate(zip(sessions, cuts)):
            if run is not None:
                got = run.run(batch, cut.outputs)  # a session takes the feeds it reads
                a[index] += float(squares(got, cut.outputs, 1, want)[0])
    return [float(x / b) if b else float(x) for x in a]


def _cut_for(original, model, names: tuple[str, ...]) -> Cut:
    """``cut_of`` for an edited copy of ``original`` that onnxruntime can run cut; else the
    whole run (from the inputs, every output)."""
    nodes = len(original.nodes())
    if aligned(nodes, model) and runtime.can_truncate(original) and runtime.can_truncate(model):
        return cut_of(original, model)
    return Cut(tuple(v.name for v in original.inputs), names)


def ratio_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Σa/Σb, its standard error) over the units (module docstring); se is 0 for one unit."""
    total = float(b.sum())
    error = float(a.sum()) / total if total else float(a.sum())
    n = len(a)
    if n < 2 or not total:
        return error, 0.0
    spread = float(np.square(a - error * b).sum()) / (n * (n - 1))
    return error, float(np.sqrt(spread) / (total / n))


class FrontierCache:
    """Frontier values of the original, per key (a group), batch by batch, while their bytes
    stay under ``budget_mb``; a key not held is captured again (one run of the original up to
    its frontier)."""

    def __init__(self, model, reference: Reference, budget_mb: float = FRONTIER_MB) -> None:
        self.model, self.reference = model, reference
        self.budget = int(budget_mb * 2**20)
        self.held: dict[object, list[dict[str, np.ndarray]]] = {}
        self.bytes = 0

    def batches(self, key: object, names: Sequence[str]):
        """Per reference batch, {name: array} for ``names`` (graph inputs taken from the feeds)."""
        cached = self.held.get(key)
        if cached is not None and set(names) <= set(cached[0]):
            yield from cached
            return
        inputs = {v.name for v in self.model.inputs}
        exposed = [n for n in names if n not in inputs]
        session = (
            runtime.session_for(
                self.model,
                extra_outputs=exposed,
                optimization="disable",
                only=True,
                threads=self.reference.threads,
            )
            if exposed
            else None
        )
        kept: list[dict[str, np.ndarray]] | None = [] if exposed else None
        size = 0
        for feeds in self.reference.feeds:
            values = session.run(feeds, exposed) if session is not None else {}
            batch = {n: values[n] if n in values else feeds[n] for n in names}
            size += sum(values[n].nbytes for n in exposed)
            if kept is not None and self.bytes + size <= self.budget:
                kept.append(batch)
            else:  # over the budget: captured again next time
                kept = None
            yield batch
        if kept:
            self.held[key], self.bytes = kept, self.bytes + size


def evaluate(
    pruned_models: Sequence, cuts: Sequence[Cut], reference: Reference, frontier_batches
) -> list[tuple[float, float]]:
    """(error, standard error) of every pruned model, each run from its cut on the frontier
    batches (an iterable of {name: array} per reference batch holding every cut's frontier)."""
    a: list[list[np.ndarray]] = [[] for _ in cuts]
    sessions: list = []
    for index, batch in enumerate(frontier_batches):
        want, units = reference.outputs[index], reference.units[index]
        feeds = {**reference.feeds[index], **batch}  # a cut graph keeps the graph inputs
        sessions = sessions or [
            _suffix_session(m, c, batch, reference.threads) for m, c in zip(pruned_models, cuts)
        ]
        for sums, session, cut in zip(a, sessions, cuts):
            if session is None:  # the cut changes no output
                sums.append(np.zeros(units))
                continue
            got = session.run(feeds, cut.outputs)
            sums.append(squares(got, cut.outputs, units, want))
    return [ratio_error(np.concatenate(sums), reference.b) for sums in a]


def _suffix_session(model, cut: Cut, batch: Mapping[str, np.ndarray], threads: int):
    """A session computing ``cut.outputs`` of ``model`` from its frontier (None: no output)."""
    if not cut.outputs:
        return None
    fed = {name: batch[name].dtype for name in cut.frontier}
    return runtime.session_for(
        model,
        extra_outputs=cut.outputs,
        optimization="disable",
        only=True,
        fed=fed,
        threads=threads,
    )


# ------------------------------------------------------------------ measuring points
@dataclass
class Measured:
    """One group pruned alone at one ratio, as plain data (it crosses process boundaries)."""

    ratio: float
    units: np.ndarray  # the removed units
    error: float
    stderr: float
    macs: int
    params: int
    nodes: np.ndarray  # [2, nodes]: per-node MACs and params of the pruned copy


class PointMeasurer:
    """What every point of one sweep shares, in the main process or a worker: the model, its
    groups, where MACs are counted and the original's cost, the reference outputs on the samples
    and the frontier cache. ``fast``: every point runs from its cut (else from the inputs)."""

    def __init__(
        self, model, samples, batch_size: int, *, fast: bool, lossy: bool, threads: int = 0
    ) -> None:
        self.model = model
        self.fast = fast and runtime.can_truncate(model)
        self.shapes = cost_shapes(model, samples)
        self.base = analyze_cost(model, self.shapes)
        self.reference = Reference(model, samples, batch_size, threads)
        self.frontiers = FrontierCache(model, self.reference)
        self.groups = {g.id: g for g in find_channel_groups(model, lossy=lossy).groups}

    def base_point(self, ratio: float, units: np.ndarray) -> Measured:
        return Measured(
            ratio, units, 0.0, 0.0, self.base.macs, self.base.params, node_costs(self.base)
        )

    def measure(
        self,
        group_id: int,
        scores: np.ndarray,
        ratios: Sequence[float],
        known: Sequence[Measured] = (),
    ) -> list[Measured]:
        """The group pruned alone at each of ``ratios`` (units the same as a ``known`` point's,
        or as an earlier ratio's, take that point's error and cost)."""
        group = self.groups[group_id]
        points: list[Measured] = []
        pending: list[tuple[Measured, object]] = []  # points still to run, with their copy
        for ratio in ratios:
            units = lowest_units(group, scores, ratio)
            same = next((p for p in [*known, *points] if np.array_equal(p.units, units)), None)
            if same is None and len(units):
                pruned, point = self._pruned(group, units, ratio)
                pending.append((point, pruned))
            else:
                point = (
                    self.base_point(ratio, units) if same is None else replace(same, ratio=ratio)
                )
            points.append(point)
        self._run(group_id, pending)
        for index, point in enumerate(points):  # copies of points measured in this call
            twin = next((p for p, _ in pending if np.array_equal(p.units, point.units)), None)
            if twin is not None and twin is not point:
                points[index] = replace(twin, ratio=point.ratio)
        return points

    def _pruned(self, group, units: np.ndarray, ratio: float):
        pruned = self.model.copy()
        carry(self.model, pruned, SHAPE_KEYS)  # the same graph: the same shapes and values
        analysis = find_channel_groups(pruned)
        twin = analysis.groups[group.id] if group.id < len(analysis.groups) else None
        if twin is None or twin.compute != group.compute:
            raise InternalError(
                f"sensitivity: group {group.id} has another id on a copy of the model"
            )
        removed = {group.id: units}
        prune_channels(pruned, analysis, removed)
        if aligned(len(self.model.nodes()), pruned):  # no node added (heads' shape Concats)
            carry(  # at the binding the group analysis used: other bindings' are not cut
                self.model,
                pruned,
                SHAPE_KEYS[0] + binding_key(self.model),
                cut_shapes(pruned, kept_positions(analysis, removed)),
            )
        cost = analyze_cost(pruned, self.shapes)
        nodes = aligned_costs(self.model, pruned, cost)
        return pruned, Measured(ratio, units, np.nan, np.nan, cost.macs, cost.params, nodes)

    def _run(self, key: int, pending: list[tuple[Measured, object]]) -> None:
        if not pending:
            return
        models = [pruned for _, pruned in pending]
        count = len(self.model.nodes())
        cuts = [
            cut_of(self.model, m) if self.fast and len(m.nodes()) == count else whole(self.model)
            for m in models
        ]  # a cut that adds nodes (head pruning's shape Concats) runs whole
        names = sorted({name for cut in cuts for name in cut.frontier})
        batches = self.frontiers.batches(key, names) if self.fast else iter(self.reference.feeds)
        for (point, _), (error, stderr) in zip(
            pending, evaluate(models, cuts, self.reference, batches)
        ):
            point.error, point.stderr = error, stderr


# cached analyses (``analysis.shapes``) a copy takes from the original: value shapes, then the
# values of the small tensors group analysis measures (not carried past a cut: they may be shapes)
SHAPE_KEYS = ("value_shapes:", "values:")


def cost_shapes(model, samples: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """One sample's input shapes (the model's fixed batch when it has one): where MACs are counted."""
    batch = fixed_batch(model) or 1
    inputs = {value.name for value in model.inputs}
    return {name: (batch, *array.shape[1:]) for name, array in samples.items() if name in inputs}


def aligned_costs(original, pruned, cost) -> np.ndarray:
    """``node_costs`` of ``pruned`` (an edited copy of ``original``) laid out on ``original``'s
    nodes, matched by their first output's name: a node the cut removed costs 0, a node it
    added (head pruning's shape Concats) must cost nothing."""
    nodes = original.nodes()
    index = {node.outputs[0].name: i for i, node in enumerate(nodes) if node.outputs}
    costs = np.zeros((2, len(nodes)))
    for node, entry in zip(pruned.nodes(), cost.nodes):
        position = index.get(node.outputs[0].name) if node.outputs else None
        if position is not None:
            costs[:, position] = (entry.macs or 0, entry.params)
        elif entry.macs or entry.params:
            raise InternalError(f"sensitivity: a cut added node {entry.name!r} with a cost")
    return costs


def node_costs(cost) -> np.ndarray:
    return np.array(
        [[n.macs or 0 for n in cost.nodes], [n.params for n in cost.nodes]], dtype=np.float64
    )


# ------------------------------------------------------------------ worker processes
_WORKER: dict[str, PointMeasurer] = {}


def start_worker(
    path: str, input_shapes, samples, batch_size: int, fast: bool, lossy: bool, threads: int
) -> None:
    """A worker process's initializer: load the model from ``path`` (as the parent saved it)
    and prepare its measurer (its own reference run, frontier cache and groups; onnxruntime
    on ``threads`` threads, the cores shared between the workers)."""
    model = Model.load(path)
    model.input_shapes = dict(input_shapes)
    _WORKER["measurer"] = PointMeasurer(
        model, samples, batch_size, fast=fast, lossy=lossy, threads=threads
    )


def worker_measure(task: tuple) -> list[Measured]:
    """``PointMeasurer.measure`` in a worker: ``task`` = (group id, its description and units
    count as the parent sees it, scores, ratios, known points)."""
    group_id, description, count, scores, ratios, known = task
    measurer = _WORKER["measurer"]
    group = measurer.groups.get(group_id)
    if group is None or group.units != count or group.describe() != description:
        raise InternalError(f"sensitivity: group {group_id} has another id in a worker process")
    return measurer.measure(group_id, scores, ratios, known)
