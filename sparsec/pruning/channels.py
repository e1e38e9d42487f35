"""Channel pruning's decisions as plain functions of ``ChannelOptions``: which groups stay whole
and why, the units each group loses, one round's cut, and plans written and read back.

Channel groups come from ``analysis.groups``, unit scores from ``analysis.importance``, the cut
(with the oracle reference and the plan) from ``surgery.prune_channels``. Invariants:
- a group that is blocked, excluded, or has a single unit is left whole, and says why; a group
  whose channels a node mixes (a lossy coupling: LRN) is blocked unless ``lossy_couplings``;
- a group never loses all its units, nor more than ``max_layer_ratio`` of them, and no member
  tensor loses all its positions;
- a group's ratio is ``heads`` for attention-head groups and ``ffn`` for MLP hidden-unit groups
  when those are set (>= 0), else ``ratio`` (``ChannelGroup.kind`` says which a group is); with
  per-layer ``ratios`` (``{glob: ratio}``, ``layer_ratios`` states the precedence) in place of
  ``ratio``, the ratio of the pattern the group's layers take, and a group no pattern matches is
  left whole;
- ``local`` scope removes ``floor(ratio·n)`` units from each *segment* of n units (a group's
  units split by the set of weights they appear in: one segment per DenseNet layer feeding a
  Concat, one for a residual stream), so every layer keeps a balanced width; ``global`` ranks
  units of all groups sharing a ratio together (scores relative to their group's mean) and gives
  each group the share of its units below the global cut as its ratio;
- with ``round_to=K`` a segment keeps a multiple of K units when it has more than K; with
  ``round_to=0`` (``--round-to auto``) the count ``fast_widths`` measures fastest near it;
- the result carries the masked original (the oracle reference) and the plan: kept indices
  per constant and axis, which ``plan`` reads back to repeat the same cut;
- with calibration samples and ``recover``, the layers the cut reached are refit
  (``recovery``); the oracle reference then carries the refit weights, so the gate stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sparsec.analysis import lookup, shapes
from sparsec.analysis.activations import RANDOM
from sparsec.analysis.groups import ChannelGroup, find_channel_groups, kept_positions
from sparsec.analysis.importance import IMPORTANCE, ImportanceContext, group_scores
from sparsec.pruning import budget, depth_width, latency_target, layer_ratios
from sparsec.pruning.exclude import excluded_by, unmatched_warnings
from sparsec.pruning.fast_widths import FastWidths
from sparsec.pruning.plans import read_plan, removed_from_plan
from sparsec.pruning.recovery import recover_result
from sparsec.pruning.selection import lowest_units
from sparsec.pruning.surgery import aligned, cut_shapes, prune_channels
from sparsec.results import Diagnostic, PassError, PassResult, progress


@dataclass
class ChannelOptions:
    """How to choose and cut channels (``channel-prune``'s options; ``ChannelPrunePass`` says
    what each means)."""

    ratio: float = 0.5
    ratios: str = ""  # per-layer ratios as text (``layer_ratios``); replaces ``ratio`` when set
    importance: str = "l1"
    scope: str = "local"
    max_layer_ratio: float = 0.9
    round_to: int = 1
    exclude: str = ""
    seed: int = 0
    plan: str = ""
    heads: float = -1.0
    ffn: float = -1.0
    calibration: str = ""
    recover: bool = True
    steps: int = 1
    batch_size: int = 16
    target_macs: float = 0.0
    target_params: float = 0.0
    lossy_couplings: bool = False  # prune through nodes that mix channels (LRN): not exact
    depth: bool = True  # with a target: removable blocks compete with the channels (depth_width)
    jobs: int = 1  # with a target: worker processes measuring sensitivity (not what is cut)
    executor: str = "local"  # where those workers run (``sparsec.executor``: local or Ray)
    target_latency: float = 0.0  # (0, 1]: the ratio is searched for it (``latency_target``)
    # a scheduled round (``schedule``): per segment key, (units in the first model, units gone
    # from it after this round); None: choose by the ratios
    unit_targets: dict[tuple, tuple[int, int]] | None = None

    @property
    def targeted(self) -> bool:
        """A MACs or params target chooses every group's ratio."""
        return bool(self.target_macs or self.target_params)

    def ratio_source(self, group: ChannelGroup) -> str:
        """Which option sets this group's ratio: ``heads``, ``ffn`` or ``ratio``."""
        return (
            group.kind
            if group.kind in ("heads", "ffn") and getattr(self, group.kind) >= 0
            else "ratio"
        )

    def ratio_for(self, group: ChannelGroup) -> float:
        return getattr(self, self.ratio_source(group))


def check(options: ChannelOptions) -> None:
    """Refuse option values that cannot run, with a ``PassError`` naming the option."""
    for option in ("ratio", "heads", "ffn"):
        value = getattr(options, option)
        if not 0 <= value < 1 and not (option != "ratio" and value == -1):
            also = "" if option == "ratio" else " (or -1: as ratio)"
            raise PassError(f"channel-prune: {option} must be in [0, 1){also}, got {value}")
    if options.scope not in ("local", "global"):
        raise PassError(f"channel-prune: scope must be local or global, got '{options.scope}'")
    if not 0 < options.max_layer_ratio <= 1:
        raise PassError(
            f"channel-prune: max_layer_ratio must be in (0, 1], got {options.max_layer_ratio}"
        )
    if options.round_to < 0:
        raise PassError(
            f"channel-prune: round_to must be at least 1 (or 0: auto), got {options.round_to}"
        )
    if options.ratios:
        _check_ratios(options)
    if options.importance not in IMPORTANCE:
        raise PassError(
            f"channel-prune: unknown importance '{options.importance}'; known: {', '.join(IMPORTANCE)}"
        )
    if options.importance == "activation" and not options.calibration:
        raise PassError(
            "channel-prune: importance 'activation' needs calibration data: --calibration DATA"
        )
    if options.targeted:
        _check_target(options)
    if options.target_latency:
        _check_latency_target(options)
    if options.steps < 1 or (options.steps > 1 and options.plan):
        raise PassError(
            f"channel-prune: steps must be at least 1 (and 1 with a plan), got {options.steps}"
        )


def _check_ratios(options: ChannelOptions) -> None:
    try:
        layer_ratios.parse(options.ratios)
    except ValueError as error:
        raise PassError(f"channel-prune: ratios: {error}") from None
    if options.ratio not in (0.0, ChannelOptions.ratio):  # 0: api.channel_passes'; 0.5: unset
        raise PassError(
            f"channel-prune: give ratio or ratios, not both (ratios replace ratio: write "
            f"'*={options.ratio:g}' among them for the other layers)"
        )
    if options.targeted or options.plan:
        raise PassError(
            "channel-prune: per-layer ratios choose the cut: drop "
            + ("the MACs/params target" if options.targeted else "the plan")
        )


def _check_target(options: ChannelOptions) -> None:
    if options.target_macs and options.target_params:
        raise PassError("channel-prune: give target_macs or target_params, not both")
    if not 0 < (options.target_macs or options.target_params) < 1:
        raise PassError(
            f"channel-prune: a target is a fraction of the original in (0, 1), got "
            f"{options.target_macs or options.target_params}"
        )
    if not options.calibration:
        raise PassError(
            "channel-prune: a MACs/params target is allocated from measured sensitivity: it needs "
            "calibration data (--calibration)"
        )
    if options.plan:
        raise PassError("channel-prune: a target chooses the cut itself: drop the plan")


def _check_latency_target(options: ChannelOptions) -> None:
    if not 0 < options.target_latency <= 1:
        raise PassError(
            f"channel-prune: target_latency is a fraction of the original's latency in (0, 1], "
            f"got {options.target_latency}"
        )
    if options.targeted or options.ratios or options.plan or options.steps > 1:
        raise PassError(
            "channel-prune: target_latency searches the one channel ratio: drop the MACs/params "
            "target, per-layer ratios, plan or steps"
        )


def prune_round(model, options: ChannelOptions, samples) -> PassResult:
    """One prune (then, with ``samples`` and ``options.recover``, refit) round on ``model``."""
    if options.target_latency:  # the ratio that reaches it, measured on pruned copies
        options, note = _latency_ratio(model, options, samples)
        result = prune_round(model, options, samples)
        result.diagnostics.append(note)
        return result
    analysis = find_channel_groups(model, lossy=options.lossy_couplings)
    reasons, picked = choices(model, options, analysis)
    candidates = [g for g in analysis.groups if reasons[g.id] is None]
    dropped: list = []  # blocks a target drops (depth_width)
    if options.plan:
        removed = removed_from_plan(read_plan(options.plan), analysis.groups, reasons)
    elif options.targeted:
        removed, dropped, note = budget.allocated_units(options, model, candidates, samples)
    else:
        removed = select(model, options, candidates, samples, picked)
    kinds = {g.kind for g in analysis.groups}  # read before surgery changes the graph
    original = model.copy() if samples is not None and options.recover else None
    result = _cut(model, analysis, removed)
    drifted = depth_width.drop_after_cut(result, dropped)
    _record_patterns(result.artifacts.get("plan"), picked)
    result.diagnostics = (
        _diagnostics(analysis, reasons)
        + _pattern_notes(options, analysis, picked)
        + _warnings(model, options, result, kinds, picked)
    )
    if options.targeted:
        result.diagnostics.append(note)
    if options.calibration == RANDOM:
        result.diagnostics.append(
            Diagnostic(
                "warning",
                "calibration.random",
                "calibration from random inputs "
                "(--calibration random): importance and refit see no real activations",
            )
        )
    if original is not None and result.modified:
        recover_result(
            result,
            original,
            samples,
            result.artifacts["plan"],
            batch_size=options.batch_size,
            progress=progress,
            drifted=set(drifted) or None,
        )
    return result


def _cut(model, analysis, removed: dict) -> PassResult:
    """``prune_channels``, the value shapes known before it, at the binding the group analysis
    used, vouched for after it, cut too (``surgery.cut_shapes``), when it added no node: the
    passes after it infer none again."""
    binding, count = shapes.binding_key(model), len(model.nodes())
    known = shapes.known_shapes(model).get(binding)
    result = prune_channels(model, analysis, removed)
    if known and result.modified and aligned(count, model):
        edit = cut_shapes(model, kept_positions(analysis, removed))
        shapes.vouch(model, {binding: edit(known)})
    return result


def _latency_ratio(model, options: ChannelOptions, samples) -> tuple[ChannelOptions, Diagnostic]:
    """``options`` at the ratio ``latency_target`` finds (no target left), and its note."""
    quick = replace(options, target_latency=0.0, recover=False)
    ratio, text, reached = latency_target.find_ratio(
        model,
        lambda copy, r: prune_round(copy, replace(quick, ratio=r), samples),
        options.target_latency,
        high=min(options.max_layer_ratio, 0.9),
    )
    if not reached:  # pruning to the cap would cost the model for no measured gain
        raise PassError(
            f"channel-prune: {text}; latency here does not follow the channels (fixed overhead, "
            "or runs too short to time): nothing pruned, give --channels or a higher target"
        )
    return replace(options, ratio=ratio, target_latency=0.0), Diagnostic(
        "info", "channel.target-latency", text
    )


def reason(options: ChannelOptions, group: ChannelGroup) -> str | None:
    """Why ``group`` stays whole (blocked, or excluded by ``options.exclude``), None if it may be cut."""
    if group.reason is not None:
        return group.reason
    return excluded_by(
        options.exclude, {m[0] for m in group.members if not m[0].startswith("#")} | group.nodes
    )


def choices(
    model, options: ChannelOptions, analysis
) -> tuple[dict[int, str | None], dict[int, tuple[str, float]]]:
    """Why each group stays whole (None: it may be cut), and with per-layer ratios the
    (pattern, ratio) each group takes (``pattern_ratios``)."""
    picked = pattern_ratios(model, options, analysis)
    reasons = {}
    for group in analysis.groups:
        why = reason(options, group)
        if why is None and options.ratios and options.ratio_source(group) == "ratio":
            why = None if group.id in picked else "no per-layer ratio pattern matches its layers"
        reasons[group.id] = why
    return reasons, picked


def pattern_ratios(model, options: ChannelOptions, analysis) -> dict[int, tuple[str, float]]:
    """{group id: (pattern, ratio)} of ``options.ratios`` by ``layer_ratios``' precedence over
    the layers whose output channels a group holds; a pattern naming no layer is a PassError."""
    if not options.ratios:
        return {}
    ratios = layer_ratios.parse(options.ratios)
    names = [name for layer in lookup.layers(model) for name in layer.names]
    missing = layer_ratios.unmatched(ratios, names)
    if missing:
        close = lookup.closest(missing[0], names, n=2)
        hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
        raise PassError(
            f"channel-prune: pattern {missing[0]!r} matches no layer of the model (a Conv/Gemm/"
            f"MatMul node, weight, scope or module name; see sparsec analyze --layers{hint})"
        )
    by_id = {group.id: group for group in analysis.groups}
    picked = {}
    for gid, found in lookup.group_layers(model, analysis).items():
        choice = layer_ratios.choose(ratios, (n for layer in found for n in layer.names))
        if choice is not None and options.ratio_source(by_id[gid]) == "ratio":  # not --heads/--ffn
            picked[gid] = choice
    return picked


def _record_patterns(plan: dict | None, picked: dict[int, tuple[str, float]]) -> None:
    """Name in the plan's group records the per-layer pattern each group took."""
    for record in (plan or {}).get("groups", []):
        if record["id"] in picked:
            record["pattern"], record["pattern_ratio"] = picked[record["id"]]


def _pattern_notes(options, analysis, picked: dict[int, tuple[str, float]]) -> list[Diagnostic]:
    """Per pattern, the groups that took its ratio (``channel.layer-ratio``)."""
    if not options.ratios:
        return []
    prunable = {g.id for g in analysis.groups if g.prunable}
    notes = []
    for pattern, ratio in layer_ratios.parse(options.ratios).items():
        ids = sorted(gid for gid, (p, _) in picked.items() if p == pattern)
        kept = [gid for gid in ids if gid not in prunable]
        where = f"group(s) {', '.join(map(str, ids))}" if ids else "no group (others win)"
        also = f" ({len(kept)} of them kept whole: see analyze --groups)" if kept else ""
        notes.append(
            Diagnostic("info", "channel.layer-ratio", f"'{pattern}' = {ratio:g}: {where}{also}")
        )
    return notes


def _warnings(
    model,
    options: ChannelOptions,
    result: PassResult,
    kinds: set[str],
    picked: dict[int, tuple[str, float]],
) -> list[Diagnostic]:
    found = unmatched_warnings(options.exclude, model, "channel.exclude-unmatched")
    if not result.modified:
        found.append(
            Diagnostic(
                "warning",
                "channel.nothing-pruned",
                "no channel was removed (every group is kept, or the ratio rounds to zero)",
            )
        )
    largest = max(
        options.ratio if not options.ratios else 0.0,
        options.heads,
        options.ffn,
        *(ratio for _, ratio in picked.values()),
    )
    if largest > options.max_layer_ratio and not options.plan:
        found.append(
            Diagnostic(
                "warning",
                "channel.ratio-capped",
                f"ratio {largest:g} is capped at max_layer_ratio {options.max_layer_ratio:g}",
            )
        )
    asked = (
        ("heads", options.heads, "attention-head group"),
        ("ffn", options.ffn, "MLP hidden-unit group"),
    )
    found += [
        Diagnostic("warning", f"channel.no-{kind}", f"{kind} ratio given, but no {what} was found")
        for kind, value, what in asked
        if value > 0 and kind not in kinds and not options.plan
    ]
    return found


def select(
    model,
    options: ChannelOptions,
    groups: list[ChannelGroup],
    samples=None,
    picked: dict[int, tuple[str, float]] | None = None,
) -> dict[int, np.ndarray]:
    """{group id: the units it loses} by the options' importance, ratios (``picked``: the
    per-layer pattern and ratio of a group) and scope (or by a scheduled round's
    ``unit_targets``)."""
    ctx = ImportanceContext(
        model, seed=options.seed, calibration=samples, batch_size=options.batch_size
    )
    scores = {g.id: group_scores(g, options.importance, ctx) for g in groups}
    if options.unit_targets is not None:
        return {
            g.id: lowest_units(g, scores[g.id], 0.0, counts=_scheduled_counts(options, g))
            for g in groups
        }
    picked = picked or {}
    sources = {g.id: _source(options, g, picked) for g in groups}
    ratios = {
        g.id: picked[g.id][1] if sources[g.id].startswith("=") else options.ratio_for(g)
        for g in groups
    }
    if options.scope == "global":
        buckets: dict[str, list[ChannelGroup]] = {}
        for group in groups:
            buckets.setdefault(sources[group.id], []).append(group)
        ratios = {
            gid: r
            for bucket in buckets.values()
            for gid, r in _global_ratios(options, bucket, scores, ratios[bucket[0].id]).items()
        }
    fast = FastWidths.of(model) if options.round_to == 0 else None
    return {
        g.id: lowest_units(
            g,
            scores[g.id],
            ratios[g.id],
            max_layer_ratio=options.max_layer_ratio,
            round_to=max(options.round_to, 1),
            widths=fast and fast.chooser(g),
        )
        for g in groups
    }


def _source(options: ChannelOptions, group: ChannelGroup, picked: dict) -> str:
    """What sets a group's ratio: ``heads``, ``ffn``, ``ratio`` or ``=PATTERN`` (global scope
    ranks the groups of one source together)."""
    source = options.ratio_source(group)
    return f"={picked[group.id][0]}" if source == "ratio" and group.id in picked else source


def final_cut(model, options: ChannelOptions, samples) -> dict[tuple, tuple[int, int]]:
    """Per segment of a prunable group (by ``segment_keys``): its units, and how many one
    round at the full ratios would remove (what a schedule spreads over its rounds)."""
    analysis = find_channel_groups(model, lossy=options.lossy_couplings)
    reasons, picked = choices(model, options, analysis)
    candidates = [g for g in analysis.groups if reasons[g.id] is None]
    removed = select(model, options, candidates, samples, picked)
    return {
        key: (len(segment), int(np.isin(segment, removed[g.id]).sum()))
        for g in candidates
        for segment, key in zip(g.segments(), g.segment_keys())
    }


def _scheduled_counts(options: ChannelOptions, group: ChannelGroup) -> list[int]:
    """Units each segment loses this round: what the schedule wants gone by now, less what
    earlier rounds took (0 for a segment the first model's cut does not know: ``schedule``
    reports any shortfall)."""
    counts = []
    for segment, key in zip(group.segments(), group.segment_keys()):
        first, gone = options.unit_targets.get(key, (len(segment), 0))
        counts.append(gone - (first - len(segment)))
    return counts


def _global_ratios(
    options: ChannelOptions, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float
) -> dict[int, float]:
    """Rank all units of ``groups`` together (scores relative to their group's mean); each
    group's ratio is the share of its units below the cut at ``ratio``, at most
    ``max_layer_ratio``."""
    relative = np.concatenate(
        [scores[g.id] / (scores[g.id].mean() + 1e-12) for g in groups] or [np.zeros(0)]
    )
    if relative.size == 0:
        return {}
    cut = np.sort(relative)[max(int(ratio * relative.size) - 1, 0)] if ratio > 0 else -np.inf
    return {
        g.id: min(
            float(np.mean(scores[g.id] / (scores[g.id].mean() + 1e-12) <= cut)),
            options.max_layer_ratio,
        )
        for g in groups
    }


def _diagnostics(analysis, reasons: dict[int, str | None]) -> list[Diagnostic]:
    """A warning per barrier that keeps some group whole; an info line per kept group."""
    kept_reasons = [r for r in reasons.values() if r is not None]
    found = [
        Diagnostic(
            "warning",
            "channel.barrier",
            f"no axis rule for {op}: channels through it are kept",
            node,
        )
        for node, op in analysis.barriers.items()
        if any(f"'{node}'" in r for r in kept_reasons)
    ]
    for group in analysis.groups:
        if reasons[group.id] is not None:
            found.append(
                Diagnostic("info", "channel.group-kept", f"{group.describe()}: {reasons[group.id]}")
            )
    return found
