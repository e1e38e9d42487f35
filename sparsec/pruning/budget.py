"""channel-prune's ``target_macs`` / ``target_params``: per-group ratios chosen from measured
sensitivity instead of one ratio for all.

Every candidate group (``--exclude`` respected) is pruned alone on a copy and the output error
on the calibration samples measured (``sensitivity.Sweep``); ``allocate`` then picks per group 0
or one measured ratio reaching the target fraction of the model's MACs (or params) with the
least summed error, checked with the exact joint cost. The units cut are the ones measured
(channel-prune's local selection at its default ``max_layer_ratio`` and ``round_to``), so what
was measured is what is removed.

Coarse to fine: every group is measured at ``COARSE`` first; after each allocation, each group is
also measured at the ratios of ``RATIOS`` (the fine grid) next to its chosen one, then allocated
again, until every group's neighbours are measured (at most ``ROUNDS`` rounds). Each point runs
from its cut's frontier on ``sensitivity.SUBSET`` samples (the table gives standard errors);
``fast=False`` is the reference path: every ratio of ``RATIOS``, full runs, every sample.
``jobs`` (``ChannelOptions.jobs``) measures the groups in that many worker processes (the results do not depend on it),
on Ray with ``ChannelOptions.executor`` (``sparsec.executor``).
With ``options.depth`` the model's removable blocks compete too (``depth_width``: each measured
removed alone on the sweep's samples, one knapsack item per set of overlapping blocks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sparsec.analysis.blocks import Block
from sparsec.analysis.groups import ChannelGroup
from sparsec.pruning import depth_width
from sparsec.pruning.sensitivity import SensitivityTable, Sweep, allocate
from sparsec.results import Diagnostic, progress

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # a grid fine enough to land near a target
COARSE = (0.25, 0.5, 0.75)
ROUNDS = 4  # refinements at most (each only measures neighbours not measured yet)


def allocated_units(
    options, model, candidates: list[ChannelGroup], samples, *, fast: bool = True
) -> tuple[dict[int, np.ndarray], list[tuple[Block, float]], Diagnostic]:
    """{group id: units to remove} and the blocks to drop (with ``options.depth``: the model's
    removable blocks compete with the channels, ``depth_width``) meeting the target of
    ``options`` (``channels.ChannelOptions``), and a line saying what was chosen."""
    metric, target = (
        ("macs", options.target_macs) if options.target_macs else ("params", options.target_params)
    )
    blocks = depth_width.candidate_blocks(model, options.exclude) if options.depth else []
    blocks = depth_width.apart_from_cuts(blocks, candidates)
    table, allocation = sweep_allocation(
        model,
        samples,
        {f"target_{metric}": target},
        importance=options.importance,
        batch_size=options.batch_size,
        lossy_couplings=options.lossy_couplings,
        groups={group.id for group in candidates},
        fast=fast,
        seed=options.seed,
        blocks=blocks,
        jobs=options.jobs,
        executor=options.executor,
    )
    estimate = table.estimate(allocation)
    width = depth_width.widths(allocation)
    dropped = depth_width.chosen(blocks, table, allocation)
    chosen = ", ".join(f"{gid}:{ratio:g}" for gid, ratio in sorted(width.items()) if ratio)
    depth = f"; {len(blocks)} removable block(s), dropped: {depth_width.describe(dropped)}"
    note = Diagnostic(
        "info",
        "channel.allocation",
        f"target {metric} {target:g}: {len(width)} group(s), {table.points()} point(s) "
        f"measured on {table.samples} samples in {table.seconds:.1f} s; chosen group:ratio "
        f"{chosen or 'none'}{depth if options.depth else ''}; estimated MACs "
        f"{estimate['macs']:.3f}, params {estimate['params']:.3f} of this model",
    )
    return table.removed(allocation), dropped, note


def sweep_allocation(
    model,
    samples,
    target: Mapping[str, float],
    *,
    fast: bool = True,
    jobs: int = 1,
    blocks: Sequence[Block] = (),
    **settings,
) -> tuple[SensitivityTable, dict[int, float]]:
    """The sensitivity table measured coarse to fine (module docstring; ``fast=False``: every
    ratio of ``RATIOS``, full runs, every sample) and the allocation it gives for ``target``
    (``{"target_macs": R}`` or ``{"target_params": R}``). ``settings``: ``Sweep``'s. With
    ``blocks``, their items compete too: the table returned holds them as pseudo-groups with
    negative ids (``depth_width``), measured on the sweep's samples."""
    with Sweep(model, samples, fast=fast, jobs=jobs, **settings) as sweep:
        table = sweep.table(COARSE if fast else RATIOS, progress)
        batch = settings.get("batch_size", 16)
        items = depth_width.measure_items(model, blocks, sweep.samples, table, batch)
        allocation = allocate(depth_width.joined(table, items), **target)
        for _ in range(ROUNDS if fast else 0):
            width = depth_width.widths(allocation)
            more = {gid: neighbours(table.group(gid), ratio) for gid, ratio in width.items()}
            if not any(more.values()):
                break
            sweep.extend(table, more, progress)
            allocation = allocate(depth_width.joined(table, items), **target)
    joined = depth_width.joined(table, items)
    return joined, depth_width.without_idle(joined, allocation)


def neighbours(group, ratio: float) -> list[float]:
    """The ratios of the fine grid next to ``ratio`` (one on each side; the smallest for 0)
    that ``group`` was not measured at."""
    grid = sorted(set(RATIOS) | {p.ratio for p in group.points})
    below = [r for r in grid if r < ratio]
    above = [r for r in grid if r > ratio]
    near = (below[-1:] if ratio else []) + above[:1]
    measured = {p.ratio for p in group.points}
    return [r for r in near if r not in measured]
