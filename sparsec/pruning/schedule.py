"""``steps=K``: reach channel-prune's ratios in K prune → refit rounds.

The schedule. The cut is decided in units on the first model: F, what one round at the full
ratios would remove from each segment of each group (caps, ``round_to`` and all). After round k,
round(F·k/K) of them are gone (linear in units, the post-training counterpart of gradual
pruning), so K rounds remove exactly what one round does; *which* units go is chosen afresh each
round on the current model, and a round with nothing to remove anywhere is skipped. (In ratios
of what remains, that is r_k = 1 − (1 − R·k/K) / (1 − R·(k−1)/K), ``round_ratio``; per-round
rounding of ratios drifts from floor(R·n), so counts are scheduled instead.) A MACs or params
target T is scheduled the same way on
the removed share: after round k the model should be at 1 − (1 − T)·k/K of the first model's
cost, so each round is allocated that over where it starts (an overshoot is made up for). Each
round ranks the current model (refit by the round before, so its choices see the recovered
weights), prunes, refits, and reports its
calibration error against the *first* model. Each round's own oracle is checked here before the
next round starts (a round's masked original is the previous round's output); the last one is
the result's ``reference``, gated by the caller like any pass's. Plans compose: a kept index of
round k is a position of round k−1's tensor, so the composed kept list is kept_{k−1}[kept_k].
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.pruning import channels
from sparsec.pruning.channels import ChannelOptions
from sparsec.pruning.oracle import oracle_gap
from sparsec.pruning.plans import compose_provenance, final_refit
from sparsec.pruning.recovery import output_error
from sparsec.pruning.sensitivity import cost_shapes
from sparsec.results import Diagnostic, PassError, PassResult, progress, stage
from sparsec.validate import ORACLE_TOLERANCE

RATIO_OPTIONS = ("ratio", "heads", "ffn")
TARGET_OPTIONS = ("target_macs", "target_params")
PROBE_SAMPLES = 4


def round_ratio(total: float, step: int, steps: int) -> float:
    """r_k: the share of the remaining units round ``step`` removes (-1, "as ratio", stays)."""
    if total <= 0:
        return total
    return 1 - (1 - total * step / steps) / (1 - total * (step - 1) / steps)


def run_steps(prune: ChannelOptions, model, samples) -> PassResult:
    """Cut ``model`` by ``prune`` (channel pruning's options) in ``prune.steps`` rounds."""
    first = model.copy() if samples is not None else None
    start = _costs(model, samples) if samples is not None else None
    feeds = _probe_feeds(model, samples)
    final = None if prune.targeted else channels.final_cut(model, prune, samples)
    results, lines = [], []
    for step in stage(range(1, prune.steps + 1), desc="channel-prune steps", unit="round"):
        one = replace(
            prune,
            steps=1,
            **{
                option: round_ratio(getattr(prune, option), step, prune.steps)
                for option in RATIO_OPTIONS
            },
        )
        if final is not None:
            one.unit_targets = _gone_after(final, step, prune.steps)
            if one.unit_targets == _gone_after(final, step - 1, prune.steps) and (
                results or step < prune.steps
            ):
                lines.append(
                    Diagnostic(
                        "info", "channel.step", f"round {step}/{prune.steps}: nothing to remove"
                    )
                )
                continue
        if not _schedule_target(prune, one, step, model, samples, start):
            lines.append(
                Diagnostic(
                    "info", "channel.step", f"round {step}/{prune.steps}: the target is already met"
                )
            )
            continue
        result = channels.prune_round(model, one, samples)
        if step < prune.steps and result.reference is not None:
            gap = oracle_gap(model, result.reference(), feeds)
            if gap > ORACLE_TOLERANCE:
                raise PassError(
                    f"channel-prune: round {step} differs from its masked original by {gap:.3g} of the peak output"
                )
        error = output_error(model, first, samples, prune.batch_size) if first is not None else None
        lines.append(
            Diagnostic(
                "info",
                "channel.step",
                f"round {step}/{prune.steps}: removed "
                f"{int(result.stats.get('channels_removed', 0))} unit(s)"
                + (
                    f", calibration output error vs the original {error:.4g}"
                    if error is not None
                    else ""
                ),
            )
        )
        progress(lines[-1].message)
        results.append(result)
    if final is not None:
        lines += _shortfall(final, results, prune.steps)
    return _combined(results, lines)


def _shortfall(
    final: dict[tuple, tuple[int, int]], results: list[PassResult], steps: int
) -> list[Diagnostic]:
    """A warning when the rounds removed fewer units than one round would have: a segment whose
    weights changed between rounds (a member cut to one channel leaves it) is no longer followed."""
    planned = sum(cut for _, cut in final.values())
    removed = sum(int(r.stats.get("channels_removed", 0)) for r in results)
    if removed >= planned:
        return []
    return [
        Diagnostic(
            "warning",
            "channel.steps-short",
            f"{steps} rounds removed {removed} of the {planned} units one "
            "round removes: a channel group changed shape between rounds (e.g. a tensor cut to one channel "
            "left it); fewer --steps, or one, removes them all",
        )
    ]


def _gone_after(
    final: dict[tuple, tuple[int, int]], step: int, steps: int
) -> dict[tuple, tuple[int, int]]:
    """Per segment: (its units in the first model, how many are gone after ``step``)."""
    return {key: (first, int(cut * step / steps + 0.5)) for key, (first, cut) in final.items()}


def _costs(model, samples) -> dict[str, int]:
    cost = analyze_cost(model, cost_shapes(model, samples))
    return {"target_macs": cost.macs, "target_params": cost.params}


def _schedule_target(prune, one, step: int, model, samples, start) -> bool:
    """Set round ``step``'s target (if ``prune`` has one): after it, the model should be at
    1 − (1 − T)·k/K of the *first* model's cost, so the target of this round is that over where
    the model is now (a round that overshot is made up for). False when it is already there."""
    option = next((o for o in TARGET_OPTIONS if getattr(prune, o)), None)
    if option is None:
        return True
    goal = 1 - (1 - getattr(prune, option)) * step / prune.steps
    now = _costs(model, samples)[option] / max(start[option], 1)
    setattr(one, option, goal / now)
    return goal / now < 1


def _probe_feeds(model, samples) -> dict[str, np.ndarray]:
    """The first ``PROBE_SAMPLES`` calibration samples (exactly the batch an input declares
    as a fixed number), else seeded random inputs."""
    if samples is None:
        return random_inputs(model, bind_shapes(model), 0)
    batches = {}
    for value in model.inputs:
        dims = model.shape_dims(value) or []
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            batches[value.name] = dims[0]
    return {name: array[: batches.get(name, PROBE_SAMPLES)] for name, array in samples.items()}


def _combined(results: list[PassResult], lines: list[Diagnostic]) -> PassResult:
    """One result for all rounds: the last round's reference and groups, summed removals,
    the composed plan, every round's line."""
    last = results[-1]
    combined = PassResult(
        last.model, modified=any(r.modified for r in results), reference=last.reference
    )
    combined.stats = dict(
        last.stats,
        channels_removed=sum(r.stats.get("channels_removed", 0) for r in results),
        steps=len(results),
    )
    pruned = combined.modified
    combined.diagnostics = [
        d for d in last.diagnostics if not (pruned and d.code == "channel.nothing-pruned")
    ] + lines
    combined.artifacts = dict(
        last.artifacts,
        plan=compose_plans([r.artifacts["plan"] for r in results]),
        reference_plan=last.artifacts["plan"],  # the reference's model is the last round's input
    )
    refit = final_refit(last.model, [r.artifacts.get("refit") for r in results])
    if refit is not None:  # every round's refit weights, as the last cut left them
        combined.artifacts["refit"] = refit
    return combined


def compose_plans(plans: list[dict]) -> dict:
    """The plan of consecutive cuts, in terms of the first model's positions."""
    composed = copy.deepcopy(plans[0])
    table = composed["initializers"]
    for plan in plans[1:]:
        for name, entries in plan["initializers"].items():
            mine = {entry["axis"]: entry for entry in table.setdefault(name, [])}
            for entry in entries:
                earlier = mine.get(entry["axis"])
                if earlier is None:
                    table[name].append(dict(entry))
                else:
                    earlier["kept"] = np.asarray(earlier["kept"])[
                        np.asarray(entry["kept"], dtype=np.int64)
                    ].tolist()
            table[name].sort(key=lambda e: e["axis"])
        _compose_grouped(composed.setdefault("grouped", {}), plan.get("grouped", {}))
    if not composed.get("grouped"):
        composed.pop("grouped", None)
    return compose_provenance(composed, plans)


def _compose_grouped(table: dict, later: dict) -> None:
    """Fold a later round's per-group cuts of grouped weights into ``table`` (first positions)."""
    for name, entry in later.items():
        earlier = table.get(name)
        if earlier is None:
            table[name] = dict(entry)
        else:
            earlier["kept"] = [
                np.asarray(first)[np.asarray(then, dtype=np.int64)].tolist()
                for first, then in zip(earlier["kept"], entry["kept"], strict=True)
            ]
