"""channel-prune's ``target_macs`` / ``target_params``: per-group ratios chosen from measured
sensitivity instead of one ratio for all.

Every prunable group (``--exclude`` respected) is pruned alone at each of ``RATIOS`` on a copy
and the output error on the calibration samples measured (``sensitivity.measure``);
``allocate`` then picks per group 0 or one measured ratio reaching the target fraction of the
model's MACs (or params) with the least summed error, checked with the exact joint cost. The
units cut are the ones measured (channel-prune's local selection at its default
``max_layer_ratio`` and ``round_to``), so what was measured is what is removed.
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.groups import ChannelGroup
from sparsec.pruning.sensitivity import allocate, measure
from sparsec.results import Diagnostic, progress

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # a grid fine enough to land near a target


def allocated_units(
    options, model, candidates: list[ChannelGroup], samples
) -> tuple[dict[int, np.ndarray], Diagnostic]:
    """{group id: units to remove} meeting the target of ``options`` (``channels.ChannelOptions``),
    and a line saying what was chosen."""
    table = measure(
        model,
        samples,
        RATIOS,
        options.importance,
        options.batch_size,
        progress=progress,
        lossy_couplings=options.lossy_couplings,
    )
    allowed = {group.id for group in candidates}
    table.groups = [group for group in table.groups if group.id in allowed]
    metric, target = (
        ("macs", options.target_macs) if options.target_macs else ("params", options.target_params)
    )
    allocation = allocate(table, **{f"target_{metric}": target})
    estimate = table.estimate(allocation)
    chosen = ", ".join(f"{gid}:{ratio:g}" for gid, ratio in sorted(allocation.items()) if ratio)
    note = Diagnostic(
        "info",
        "channel.allocation",
        f"target {metric} {target:g}: {len(table.groups)} group(s) measured at "
        f"{len(RATIOS)} ratios in {table.seconds:.1f} s; chosen group:ratio {chosen or 'none'}; "
        f"estimated MACs {estimate['macs']:.3f}, params {estimate['params']:.3f} of this model",
    )
    return table.removed(allocation), note
