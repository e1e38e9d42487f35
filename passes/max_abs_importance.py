"""An example importance score plugin, written against sparsec's public API and the one helper
every score needs, ``weight_array`` (a weight's float array, dequantized when the model is
QDQ, as the built-in scores read it): a unit's score
is the largest |w| in any weight slice it owns (higher = keep), where ``l1`` sums them.

Importing this file registers the score as ``max-abs``: from then on the name works wherever an
importance is named (``sparsec.group_scores(group, "max-abs", ctx)``, ``channel-prune``'s
``importance`` option, ``api.channel_passes(0.5, importance="max-abs")``). A pass file is
imported when a ``--passes`` pipeline is read, so on the command line name the small pass below
(or any pass of this file) before the passes that use the score:

    sparsec compress MODEL -o OUT --passes 'passes/max_abs_importance.py:MaxAbsPrunePass(ratio=0.5)'
    sparsec compress MODEL -o OUT \\
        --passes 'passes/max_abs_importance.py:MaxAbsPrunePass(ratio=0),channel-prune(importance=max-abs)'
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

import sparsec
from sparsec.analysis.quantized import weight_array


@sparsec.register_importance("max-abs")
def max_abs(group: sparsec.ChannelGroup, ctx: sparsec.ImportanceContext) -> np.ndarray:
    """A unit's score is the largest |w| in any weight slice it owns (higher = keep)."""
    scores = np.zeros(group.units)
    for name, axis in group.compute:  # (weight, axis) pairs of the group
        weight = weight_array(ctx.model, ctx.model.value(name))  # dequantized if need be
        if weight is None:
            continue
        per_position = (
            np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)
        )
        np.maximum.at(scores, group.atoms[(name, axis)], per_position)  # position -> its unit
    return scores


class MaxAbsPrunePass(sparsec.InPlacePass):
    """``channel-prune`` ranking channels by ``max-abs``: the built-in pass, one option fixed."""

    name: ClassVar[str] = "max-abs-prune"
    summary: ClassVar[str] = "Remove a fraction of every channel group, ranked by max |w|."
    lossy: ClassVar[bool] = True

    def __init__(self, ratio: float = 0.5) -> None:
        """The options, as ``--passes`` and ``sparsec passes --describe`` show them.

        Args:
            ratio: fraction of every channel group to remove (0: only load the score).
        """
        self.ratio = ratio

    def call(self, model: sparsec.Model) -> sparsec.PassResult:
        if self.ratio == 0:  # only here to load the score: leave the model alone
            return sparsec.PassResult(model, modified=False)
        return sparsec.create("channel-prune", {"ratio": self.ratio, "importance": "max-abs"})(
            model
        )
