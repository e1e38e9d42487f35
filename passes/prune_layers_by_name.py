"""An example pruning pass written only against sparsec's public API: remove the weakest ``ratio``
of the output channels of the layers whose node names match ``layers`` (``fnmatch`` globs,
``|``-separated, e.g. ``layers=/layer3/*|/layer4/*``), leaving every other layer whole.

A layer's output channels are the channel group its output tensor belongs to (the group also
holds the weights and activations that must shrink with them: the next layer's input axis, a
residual partner, a norm). The pass decides which units go; ``sparsec.prune_channels`` cuts
and returns the oracle reference, so ``sparsec compress`` checks the result against the masked
original like any built-in pass. A chosen layer whose group cannot be pruned (it reaches a graph
output or an op sparsec has no axis rule for) gets a warning naming the reason; a pattern that
matches no node gets a warning too (most likely a typo).

Load it with ``sparsec compress MODEL -o OUT --passes
'passes/prune_layers_by_name.py:PruneLayersPass(layers=layer2*,ratio=0.5)'``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import ClassVar

import numpy as np

import sparsec


class PruneLayersPass(sparsec.InPlacePass):
    """Remove the weakest fraction of the output channels of the layers chosen by name."""

    name: ClassVar[str] = "prune-layers"
    summary: ClassVar[str] = (
        "Remove the weakest fraction of the output channels of layers chosen by name globs."
    )
    lossy: ClassVar[bool] = True

    def __init__(self, layers: str = "*", ratio: float = 0.5, importance: str = "l1") -> None:
        """The options, as ``--passes`` and ``sparsec passes --describe`` show them.

        Args:
            layers: node-name globs (``fnmatch``, ``|``-separated) of the layers to prune.
            ratio: fraction of each chosen layer's output channels to remove, in [0, 1).
            importance: how channels are ranked (any registered importance: l1, l2, ...).
        """
        self.layers, self.ratio, self.importance = layers, ratio, importance

    def check_options(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise sparsec.PassError(f"prune-layers: ratio={self.ratio} must be in [0, 1)")

    def call(self, model: sparsec.Model) -> sparsec.PassResult:
        patterns = [p for p in self.layers.split("|") if p]
        analysis = sparsec.find_channel_groups(model)
        context = sparsec.ImportanceContext(model)
        removed, diagnostics = {}, unmatched(model, patterns)
        for group in analysis.groups:
            chosen = [
                n for n in layers_of(model, group) if any(fnmatchcase(n, p) for p in patterns)
            ]
            if not chosen:
                continue
            if not group.prunable:
                message = f"{', '.join(chosen)} kept whole: {group.reason}"
                diagnostics.append(
                    sparsec.Diagnostic("warning", "prune-layers/kept", message, chosen[0])
                )
                continue
            count = min(int(group.units * self.ratio), group.units - 1)  # never a whole group
            scores = sparsec.group_scores(group, self.importance, context)
            removed[group.id] = np.sort(np.argsort(scores, kind="stable")[:count])
        result = sparsec.prune_channels(model, analysis, removed)
        result.diagnostics.extend(diagnostics)
        return result


def layers_of(model: sparsec.Model, group: sparsec.ChannelGroup) -> list[str]:
    """The names of the nodes whose output channels ``group`` holds (an output tensor of theirs
    is one of its members), sorted."""
    tensors = {name for name, _ in group.members}
    return sorted(
        node.name
        for node in model.nodes()
        if node.name and any(v is not None and v.name in tensors for v in node.outputs)
    )


def unmatched(model: sparsec.Model, patterns: list[str]) -> list[sparsec.Diagnostic]:
    """A warning per pattern that matches no node name."""
    names = [node.name for node in model.nodes() if node.name]
    return [
        sparsec.Diagnostic("warning", "prune-layers/unmatched", f"'{p}' matches no node name")
        for p in patterns
        if not any(fnmatchcase(n, p) for n in names)
    ]
