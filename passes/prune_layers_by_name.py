"""An example pruning pass written only against sparsec's public API: remove the weakest ``ratio``
of the output channels of the layers whose node names match ``layers`` (``fnmatch`` globs,
``|``-separated, e.g. ``layers=/layer3/*|/layer4/*``), leaving every other layer whole.

A layer's output channels are the channel group ``sparsec.group_of(model, node_name)`` answers
(the group also holds the weights and activations that must shrink with them: the next layer's
input axis, a residual partner, a norm). The pass decides which units go; ``sparsec.prune_channels`` cuts
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
        for group, chosen in chosen_groups(model, patterns):
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


def chosen_groups(
    model: sparsec.Model, patterns: list[str]
) -> list[tuple[sparsec.ChannelGroup, list[str]]]:
    """(group, the matching node names whose output channels it holds) per group, in order of
    the first match; ``sparsec.group_of`` answers which group holds a node's output channels
    (nodes whose output is in no group, such as a shape computation, are skipped)."""
    found: dict[int, tuple[sparsec.ChannelGroup, list[str]]] = {}
    for node in model.nodes():
        if not (node.name and any(fnmatchcase(node.name, p) for p in patterns)):
            continue
        try:
            group = sparsec.group_of(model, node.name)
        except sparsec.InputError:
            continue
        found.setdefault(group.id, (group, []))[1].append(node.name)
    return list(found.values())


def unmatched(model: sparsec.Model, patterns: list[str]) -> list[sparsec.Diagnostic]:
    """A warning per pattern that matches no node name."""
    names = [node.name for node in model.nodes() if node.name]
    return [
        sparsec.Diagnostic("warning", "prune-layers/unmatched", f"'{p}' matches no node name")
        for p in patterns
        if not any(fnmatchcase(n, p) for n in names)
    ]
