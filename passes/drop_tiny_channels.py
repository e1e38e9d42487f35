"""An example pruning pass written only against sparsec's public API: remove the channels whose
group-summed L1 importance is below ``threshold`` (at most all but one per group).

The pass decides; ``sparsec.prune_channels`` cuts, and hands back the oracle reference so that
``sparsec compress`` checks the result against the masked original like any built-in pass.
Load it with ``sparsec compress MODEL -o OUT --passes
'passes/drop_tiny_channels.py:DropTinyChannelsPass(threshold=0.5)'``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

import sparsec


class DropTinyChannelsPass(sparsec.InPlacePass):
    """Remove channel groups' channels whose L1 importance is below ``threshold``."""

    name: ClassVar[str] = "drop-tiny-channels"
    summary: ClassVar[str] = (
        "Remove channels whose group-summed L1 importance is below a threshold."
    )
    lossy: ClassVar[bool] = True

    def __init__(self, threshold: float = 1e-3) -> None:
        """The options, as ``--passes`` and ``sparsec passes --describe`` show them.

        Args:
            threshold: a channel whose group-summed L1 importance is below it is removed.
        """
        self.threshold = threshold

    def call(self, model: sparsec.Model) -> sparsec.PassResult:
        analysis = sparsec.find_channel_groups(model)
        context = sparsec.ImportanceContext(model)
        removed = {}
        for group in analysis.groups:
            if group.prunable:
                scores = sparsec.group_scores(group, "l1", context)
                weakest_first = np.argsort(scores)[: group.units - 1]  # never the whole group
                removed[group.id] = np.sort(weakest_first[scores[weakest_first] < self.threshold])
        return sparsec.prune_channels(model, analysis, removed)
