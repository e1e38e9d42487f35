"""``channel-prune``: remove a fraction of the channels of every prunable channel group.

Decide, then cut: channel groups come from ``sparsec.analysis.groups``, unit scores from
``sparsec.analysis.importance``, the cut (and the oracle reference and plan) from
``surgery.prune_channels``. Invariants:
- a group that is blocked, excluded, or has a single unit is left whole, and says why;
- a group never loses all its units, nor more than ``max_layer_ratio`` of them, and no member
  tensor loses all its positions;
- a group's ratio is ``heads`` for attention-head groups and ``ffn`` for MLP hidden-unit groups
  when those are set (>= 0), else ``ratio`` (``ChannelGroup.kind`` says which a group is);
- ``local`` scope removes ``floor(ratio·n)`` units from each *segment* of n units (a group's
  units split by the set of weights they appear in: one segment per DenseNet layer feeding a
  Concat, one for a residual stream), so every layer keeps a balanced width; ``global`` ranks
  units of all groups sharing a ratio together (scores relative to their group's mean) and gives
  each group the share of its units below the global cut as its ratio;
- with ``round_to=K`` a segment keeps a multiple of K units when it has more than K;
- the result carries the masked original (the oracle reference) and the plan: kept indices
  per constant and axis, which ``plan=`` reads back to repeat the same cut;
- with ``calibration`` (a ``.npz``, a folder, or ``random``), ``importance=activation`` can
  rank by ‖X_c‖·‖W_c‖, and ``recover`` (on by default) refits the layers the cut reached
  (``recovery``); the oracle reference then carries the refit weights, so the gate stays
  exact; ``steps=K`` reaches the ratios in K prune → refit rounds (``schedule``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from sparsec.analysis.activations import RANDOM
from sparsec.analysis.groups import ChannelGroup, find_channel_groups
from sparsec.analysis.importance import IMPORTANCE, ImportanceContext, group_scores
from sparsec.errors import InputError
from sparsec.passes.base import Diagnostic, InPlacePass, PassError, PassResult, progress
from sparsec.passes.calibrated import CalibratedPass
from sparsec.passes.registry import register
from sparsec.pruning import budget, schedule
from sparsec.pruning.exclude import excluded_by, unmatched_warnings
from sparsec.pruning.recovery import recover_result
from sparsec.pruning.selection import lowest_units
from sparsec.pruning.surgery import PLAN_FORMAT, prune_channels


@register
class ChannelPrunePass(CalibratedPass, InPlacePass):
    """Remove ``ratio`` of the channels of every prunable group (exact vs the masked original)."""

    name: ClassVar[str] = "channel-prune"
    summary: ClassVar[str] = "Remove a fraction of the channels of every prunable channel group."
    lossy: ClassVar[bool] = True
    writes_plan: ClassVar[bool] = True

    def __init__(self, ratio: float = 0.5, importance: str = "l1", scope: str = "local",
                 max_layer_ratio: float = 0.9, round_to: int = 1, exclude: str = "", seed: int = 0,
                 plan: str = "", heads: float = -1.0, ffn: float = -1.0, calibration: str = "",
                 calibration_samples: int = 0, recover: bool = True, steps: int = 1, batch_size: int = 16,
                 target_macs: float = 0.0, target_params: float = 0.0) -> None:
        self.ratio, self.importance, self.scope = ratio, importance, scope
        self.heads, self.ffn = heads, ffn
        self.max_layer_ratio, self.round_to, self.exclude = max_layer_ratio, round_to, exclude
        self.seed, self.plan = seed, plan
        self.calibration, self.calibration_samples, self.recover = calibration, calibration_samples, recover
        self.steps, self.batch_size = steps, batch_size
        self.target_macs, self.target_params = target_macs, target_params
        # a scheduled round (``schedule``): per segment key, (units in the first model, units gone
        # from it after this round); None: choose by the ratios
        self.unit_targets: dict[tuple, tuple[int, int]] | None = None

    def describe(self, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
        """Always names the ratio and importance (the record of how a model was made); with a
        plan, only the plan and the exclusions matter."""
        if self.plan:
            return super().describe(skip=("ratio", "importance", "scope", "max_layer_ratio", "round_to", "seed",
                                          "heads", "ffn"))
        return super().describe(always=("ratio", "importance"))

    def check_options(self) -> None:
        for option in ("ratio", "heads", "ffn"):
            value = getattr(self, option)
            if not 0 <= value < 1 and not (option != "ratio" and value == -1):
                raise PassError(f"channel-prune: {option} must be in [0, 1){'' if option == 'ratio' else ' (or -1: as ratio)'}, "
                                f"got {value}")
        if self.scope not in ("local", "global"):
            raise PassError(f"channel-prune: scope must be local or global, got '{self.scope}'")
        if not 0 < self.max_layer_ratio <= 1:
            raise PassError(f"channel-prune: max_layer_ratio must be in (0, 1], got {self.max_layer_ratio}")
        if self.round_to < 1:
            raise PassError(f"channel-prune: round_to must be at least 1, got {self.round_to}")
        if self.importance not in IMPORTANCE:
            raise PassError(f"channel-prune: unknown importance '{self.importance}'; known: {', '.join(IMPORTANCE)}")
        if self.importance == "activation" and not self.calibration:
            raise PassError("channel-prune: importance 'activation' needs calibration data: --calibration DATA")
        if self.target_macs or self.target_params:
            self._check_target()
        if self.steps < 1 or (self.steps > 1 and self.plan):
            raise PassError(f"channel-prune: steps must be at least 1 (and 1 with a plan), got {self.steps}")

    def _check_target(self) -> None:
        if self.target_macs and self.target_params:
            raise PassError("channel-prune: give target_macs or target_params, not both")
        if not 0 < (self.target_macs or self.target_params) < 1:
            raise PassError(f"channel-prune: a target is a fraction of the original in (0, 1), got "
                            f"{self.target_macs or self.target_params}")
        if not self.calibration:
            raise PassError("channel-prune: a MACs/params target is allocated from measured sensitivity: it needs "
                            "calibration data (--calibration)")
        if self.plan:
            raise PassError("channel-prune: a target chooses the cut itself: drop the plan")

    def call(self, model) -> PassResult:
        samples = self.calibration_data(model)
        if self.steps == 1:
            return self._round(model, samples)
        return schedule.run_steps(self, model, samples)

    def _round(self, model, samples) -> PassResult:
        """One prune (then, with calibration and ``recover``, refit) round."""
        analysis = find_channel_groups(model)
        reasons = {g.id: self._reason(g) for g in analysis.groups}
        candidates = [g for g in analysis.groups if reasons[g.id] is None]
        if self.plan:
            removed = removed_from_plan(read_plan(self.plan), analysis.groups, reasons)
        elif self.target_macs or self.target_params:
            removed, note = budget.allocated_units(self, model, candidates, samples)
        else:
            removed = self._select(model, candidates, samples)
        kinds = {g.kind for g in analysis.groups}  # read before surgery changes the graph
        original = model.copy() if samples is not None and self.recover else None
        result = prune_channels(model, analysis, removed)
        result.diagnostics = _diagnostics(analysis, reasons) + self._warnings(model, result, kinds)
        if self.target_macs or self.target_params:
            result.diagnostics.append(note)
        if self.calibration == RANDOM:
            result.diagnostics.append(Diagnostic("warning", "calibration.random", "calibration from random inputs "
                                                 "(--calibration random): importance and refit see no real activations"))
        if original is not None and result.modified:
            recover_result(result, original, samples, result.artifacts["plan"], batch_size=self.batch_size,
                           progress=progress)
        return result

    def _reason(self, group: ChannelGroup) -> str | None:
        if group.reason is not None:
            return group.reason
        return excluded_by(self.exclude, {m[0] for m in group.members if not m[0].startswith("#")} | group.nodes)

    def _warnings(self, model, result: PassResult, kinds: set[str]) -> list[Diagnostic]:
        found = unmatched_warnings(self.exclude, model, "channel.exclude-unmatched")
        if not result.modified:
            found.append(Diagnostic("warning", "channel.nothing-pruned",
                                    "no channel was removed (every group is kept, or the ratio rounds to zero)"))
        largest = max(self.ratio, self.heads, self.ffn)
        if largest > self.max_layer_ratio and not self.plan:
            found.append(Diagnostic("warning", "channel.ratio-capped",
                                    f"ratio {largest:g} is capped at max_layer_ratio {self.max_layer_ratio:g}"))
        found += [Diagnostic("warning", f"channel.no-{kind}", f"{kind} ratio given, but no {what} was found")
                  for kind, value, what in (("heads", self.heads, "attention-head group"), ("ffn", self.ffn, "MLP hidden-unit group"))
                  if value > 0 and kind not in kinds and not self.plan]
        return found

    def _select(self, model, groups: list[ChannelGroup], samples=None) -> dict[int, np.ndarray]:
        ctx = ImportanceContext(model, seed=self.seed, calibration=samples, batch_size=self.batch_size)
        scores = {g.id: group_scores(g, self.importance, ctx) for g in groups}
        if self.unit_targets is not None:
            return {g.id: lowest_units(g, scores[g.id], 0.0, counts=self._scheduled_counts(g)) for g in groups}
        ratios = {g.id: self.ratio_for(g) for g in groups}
        if self.scope == "global":
            buckets: dict[str, list[ChannelGroup]] = {}
            for group in groups:
                buckets.setdefault(self._ratio_source(group), []).append(group)
            ratios = {gid: r for bucket in buckets.values() for gid, r in
                      self._global_ratios(bucket, scores, ratios[bucket[0].id]).items()}
        return {g.id: lowest_units(g, scores[g.id], ratios[g.id], max_layer_ratio=self.max_layer_ratio,
                                   round_to=self.round_to) for g in groups}

    def final_cut(self, model, samples) -> dict[tuple, tuple[int, int]]:
        """Per segment of a prunable group (by ``segment_keys``): its units, and how many one
        round at the full ratios would remove (what a schedule spreads over its rounds)."""
        candidates = [g for g in find_channel_groups(model).groups if self._reason(g) is None]
        removed = self._select(model, candidates, samples)
        return {key: (len(segment), int(np.isin(segment, removed[g.id]).sum()))
                for g in candidates for segment, key in zip(g.segments(), g.segment_keys())}

    def _scheduled_counts(self, group: ChannelGroup) -> list[int]:
        """Units each segment loses this round: what the schedule wants gone by now, less what
        earlier rounds took (0 for a segment the first model's cut does not know: ``schedule``
        reports any shortfall)."""
        counts = []
        for segment, key in zip(group.segments(), group.segment_keys()):
            first, gone = self.unit_targets.get(key, (len(segment), 0))
            counts.append(gone - (first - len(segment)))
        return counts

    def _ratio_source(self, group: ChannelGroup) -> str:
        """Which option sets this group's ratio: ``heads``, ``ffn`` or ``ratio``."""
        return group.kind if group.kind in ("heads", "ffn") and getattr(self, group.kind) >= 0 else "ratio"

    def ratio_for(self, group: ChannelGroup) -> float:
        return getattr(self, self._ratio_source(group))

    def _global_ratios(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float) -> dict[int, float]:
        """Rank all units of ``groups`` together (scores relative to their group's mean); each
        group's ratio is the share of its units below the cut at ``ratio``, at most
        ``max_layer_ratio``."""
        relative = np.concatenate([scores[g.id] / (scores[g.id].mean() + 1e-12) for g in groups] or [np.zeros(0)])
        if relative.size == 0:
            return {}
        cut = np.sort(relative)[max(int(ratio * relative.size) - 1, 0)] if ratio > 0 else -np.inf
        return {g.id: min(float(np.mean(scores[g.id] / (scores[g.id].mean() + 1e-12) <= cut)), self.max_layer_ratio)
                for g in groups}


def _diagnostics(analysis, reasons: dict[int, str | None]) -> list[Diagnostic]:
    """A warning per barrier that keeps some group whole; an info line per kept group."""
    kept_reasons = [r for r in reasons.values() if r is not None]
    found = [Diagnostic("warning", "channel.barrier", f"no axis rule for {op}: channels through it are kept", node)
             for node, op in analysis.barriers.items() if any(f"'{node}'" in r for r in kept_reasons)]
    for group in analysis.groups:
        if reasons[group.id] is not None:
            found.append(Diagnostic("info", "channel.group-kept", f"{group.describe()}: {reasons[group.id]}"))
    return found


# ---------------------------------------------------------------- plans
def read_plan(path: str) -> dict:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read plan {path}: {error}") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise InputError(f"{path} is not a sparsec channel plan (written by --plan-out)")
    if plan.get("version") != 1:
        raise InputError(f"plan {path} has version {plan.get('version')!r}; this sparsec reads version 1")
    initializers = plan.get("initializers")
    if not isinstance(initializers, dict):
        raise InputError(f"plan {path}: 'initializers' must map names to lists of {{axis, size, kept}}")
    for name, entries in initializers.items():
        _check_entries(path, name, entries)
    return plan


def _check_entries(path: str, name: str, entries) -> None:
    if not isinstance(entries, list):
        raise InputError(f"plan {path}: entry '{name}' must be a list of {{axis, size, kept}}")
    for entry in entries:
        ok = isinstance(entry, dict) and all(isinstance(entry.get(k), int) for k in ("axis", "size"))
        kept = entry.get("kept") if ok else None
        if not ok or not isinstance(kept, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
            raise InputError(f"plan {path}: entry '{name}' must be a list of {{axis: int, size: int, kept: [int, ...]}}")
        if any(i < 0 or i >= entry["size"] for i in kept):
            raise InputError(f"plan {path}: {name} axis {entry['axis']}: kept indices must lie in 0..{entry['size'] - 1}")
        if any(b <= a for a, b in zip(kept, kept[1:])):
            raise InputError(f"plan {path}: {name} axis {entry['axis']}: kept indices must be ascending, without repeats")


def removed_from_plan(plan: dict, groups: list[ChannelGroup], reasons: dict) -> dict[int, np.ndarray]:
    """The units each group loses under ``plan``; refuses a plan that does not fit the model."""
    entries = {(name, e["axis"]): e for name, axes in plan["initializers"].items() for e in axes}
    removed = {}
    for group in groups:
        mine = {m: entries.pop(m) for m in group.constants if m in entries}
        if not mine:
            continue
        if reasons[group.id] is not None:
            raise InputError(f"plan prunes {_names(mine)}, but {group.describe()} cannot be pruned: {reasons[group.id]}")
        drop = set()
        for member, entry in mine.items():
            if entry["size"] != group.sizes[member]:
                raise InputError(f"plan: {member[0]} axis {member[1]} has size {group.sizes[member]}, plan says {entry['size']}")
            lost = np.setdiff1d(np.arange(group.sizes[member]), np.asarray(entry["kept"], dtype=np.int64))
            drop.update(group.atoms[member][lost].tolist())
        if any(set(np.unique(group.atoms[m]).tolist()) <= drop for m in group.members):
            raise InputError(f"plan would empty a tensor of {group.describe()}")
        removed[group.id] = np.array(sorted(drop), dtype=np.int64)
        for member, entry in mine.items():
            if not np.array_equal(group.kept_positions(member, removed[group.id]), np.asarray(entry["kept"])):
                raise InputError(f"plan: the kept indices of {member[0]} axis {member[1]} disagree with the rest of its group")
    if entries:
        raise InputError(f"plan names {_names(entries)}, which no prunable channel group of this model holds")
    return removed


def _names(members) -> str:
    listed = sorted(f"{name}[axis {axis}]" for name, axis in members)
    return ", ".join(listed[:3]) + (f" and {len(listed) - 3} more" if len(listed) > 3 else "")
