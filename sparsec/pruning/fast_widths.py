"""Per-op fast widths (``--round-to auto``): each segment's kept count chosen among candidate
widths near the plain count by onnxruntime's measured speed on the layers the segment feeds.

Why: onnxruntime's CPU kernels are fastest at some widths (its NCHWc convolutions work in
blocks of 8 or 16 channels; a 1×1 Conv reading 8 or 12 channels can take as long as one
reading 16), so a pruned model whose widths fall between them is slower than its MACs say.

The table: every weight layer (Conv, Gemm, MatMul with a constant weight and known shapes) is
a ``LayerShape``; a candidate count of a group's segment resizes the weight axes the segment's
units occupy (a depthwise Conv's groups and input follow its output channels; a grouped Conv's
output must stay a multiple of its groups, else the candidate is skipped) and each resized layer
is timed alone, as a one-node model on one thread (``sparsec.ir.one_op``; the fastest of
``rounds`` interleaved runs of every shape not yet measured, cached for the process). A balanced
group (a grouped conv's channels) keeps its plain count: its bundles and tiles set its widths.

The choice, per segment of ``units`` units whose plain count keeps ``keep``: the candidates are
``keep`` and the multiples of 4, 8, 16 and 32 just below and above it, within ``window``
(relative) of ``keep`` (or up to ``BLOCK``), at least ``least``, at most ``units``; T(k) is the
summed time of the layers at count k. A larger count wins when it is faster than ``keep``
(by ``tolerance``), or, short of keeping every unit, no slower: more channels at no cost (the
largest such count). Else a smaller count wins when its kept units per second, k / T(k) (MACs
per second: a layer's MACs are linear in each width), beat ``keep``'s by ``tolerance`` (the
best such). Else ``keep``: noise does not move a count for nothing, and a segment the ratio
cuts stays cut unless keeping it whole is faster. The result is always a candidate: within the
window (or ``BLOCK``), between ``least`` and ``units``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from sparsec.analysis.groups import ChannelGroup
from sparsec.analysis.shapes import value_shapes
from sparsec.latency import timed_ms

MULTIPLES = (4, 8, 16, 32)
BLOCK = 16  # onnxruntime's NCHWc block on AVX-512 (8 on AVX2): narrower layers are no faster
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerShape:
    """One weight layer as timed: op, data input shape, weight shape and attributes."""

    op_type: str
    input: tuple[int, ...]
    weight: tuple[int, ...]
    attributes: tuple[tuple[str, object], ...] = ()

    @property
    def group(self) -> int:
        return int(dict(self.attributes).get("group", 1))

    def resized(self, axis: int, count: int) -> LayerShape | None:
        """This layer with weight axis ``axis`` at ``count`` (None: no valid such layer)."""
        if self.op_type == "Conv":
            return self._conv_resized(axis, count)
        weight = list(self.weight)
        weight[axis] = count
        reads = 1 if self.op_type == "Gemm" and dict(self.attributes).get("transB") else 0
        data = list(self.input)
        if axis == reads:
            data[-1] = count
        return replace(self, input=tuple(data), weight=tuple(weight))

    def _conv_resized(self, axis: int, count: int) -> LayerShape | None:
        weight, data, group = list(self.weight), list(self.input), self.group
        attributes = dict(self.attributes)
        if group > 1 and group == weight[0] and weight[1] == 1:  # depthwise: all follow
            weight[0] = data[1] = attributes["group"] = count
        elif axis == 0:
            if count % group:
                return None
            weight[0] = count
        else:
            weight[1], data[1] = count, count * group
        return LayerShape("Conv", tuple(data), tuple(weight), tuple(sorted(attributes.items())))


def layer_shapes(model) -> dict[str, LayerShape]:
    """{weight name: its layer} for every Conv/Gemm/MatMul reading a constant weight as its
    second input, with a known data input shape (at ``value_shapes``' bound input shapes)."""
    shapes = value_shapes(model)
    layers = {}
    for node in model.nodes():
        if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            continue
        weight = model.constant_shape(node.inputs[1])
        data = shapes.get(node.inputs[0].name)
        if weight is None or data is None or not _timeable(node, weight, data):
            continue
        attributes = {k: _attribute(v.value) for k, v in node.attributes.items()}
        layers[node.inputs[1].name] = LayerShape(
            node.op_type, tuple(data), tuple(weight), tuple(sorted(attributes.items()))
        )
    return layers


def _timeable(node, weight, data) -> bool:
    if node.op_type == "MatMul":
        return len(weight) == 2 and len(data) >= 2
    if node.op_type == "Gemm":
        return len(weight) == 2 and len(data) == 2
    return len(weight) == len(data) >= 3


def _attribute(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def measure(layers: Sequence[LayerShape], rounds: int = 9) -> list[float]:
    """Seconds per run of each layer alone on one thread: the fastest of ``rounds`` runs (other
    processes only ever add time), the layers run in turn in each round (after one warm-up
    each) so that load hits all alike."""
    from sparsec.ir.one_op import one_op_session

    sessions, feeds = [], []
    for layer in layers:
        sessions.append(
            one_op_session(layer.op_type, layer.input, layer.weight, dict(layer.attributes))
        )
        feeds.append(
            {"x": np.random.default_rng(0).standard_normal(layer.input).astype(np.float32)}
        )
    for session, feed in zip(sessions, feeds):
        session.run(feed)
    times = [[] for _ in layers]
    for _ in range(rounds):
        for session, feed, column in zip(sessions, feeds, times):
            column.append(timed_ms(session, feed) / 1000.0)
    return [float(np.min(column)) for column in times]


_MEASURED: dict[LayerShape, float] = {}  # per process: a shape is timed once


@dataclass
class FastWidths:
    """The fast-width choice over one model's layers (``layer_shapes``). ``timer``: seconds
    per layer (None: the module's ``measure``); ``cache``: timings by shape (None: the
    process's)."""

    layers: dict[str, LayerShape]
    timer: Callable[[Sequence[LayerShape]], list[float]] | None = None  # None: ``measure``
    window: float = 1 / 3
    tolerance: float = 0.03
    cache: dict | None = None

    @classmethod
    def of(cls, model, **settings) -> FastWidths:
        return cls(layer_shapes(model), **settings)

    def chooser(self, group: ChannelGroup) -> Callable[[int, int, int, int], int] | None:
        """``selection.lowest_units``' ``widths``: (segment index, keep, units, least) → keep;
        None for a balanced group (a grouped conv's channels: its bundles and tiles, not the
        segment's count, decide the widths)."""
        if group.balanced:
            return None
        reached = [self._reached(group, segment) for segment in group.segments()]
        return lambda index, keep, units, least: self.choose(reached[index], keep, units, least)

    def _reached(
        self, group: ChannelGroup, segment: np.ndarray
    ) -> list[tuple[LayerShape, int, int]]:
        """(layer, weight axis, positions of that axis) for each weight the segment's units occupy."""
        found = []
        for member in group.compute:
            name, axis = member
            atoms = group.atoms[member]
            if name in self.layers and np.isin(atoms, segment).any():
                found.append((self.layers[name], axis, len(atoms)))
        return found

    def choose(self, reached, keep: int, units: int, least: int) -> int:
        """The candidate count the module docstring's rule picks from the measured times."""
        options = {
            k: self._shapes(reached, k, units) for k in candidates(keep, units, least, self.window)
        }
        options = {k: shapes for k, shapes in options.items() if shapes is not None}
        if keep not in options or len(options) == 1:
            return keep
        seconds = self._seconds([s for shapes in options.values() for s in shapes])
        time = {k: max(sum(seconds[s] for s in shapes), 1e-12) for k, shapes in options.items()}
        slack = 1 + self.tolerance
        more = [
            k
            for k in time
            if k > keep
            and (time[k] * slack < time[keep] or (k < units and time[k] <= time[keep] * slack))
        ]
        if more:
            return max(more)
        fewer = [k for k in time if k < keep and k / time[k] > keep / time[keep] * slack]
        return max(fewer, key=lambda k: k / time[k]) if fewer else keep

    @staticmethod
    def _shapes(reached, count: int, units: int) -> list[LayerShape] | None:
        shapes = []
        for layer, axis, positions in reached:
            resized = layer.resized(axis, max(1, round(positions * count / units)))
            if resized is None:
                return None
            shapes.append(resized)
        return shapes

    def _seconds(self, shapes: list[LayerShape]) -> dict[LayerShape, float]:
        cache = _MEASURED if self.cache is None else self.cache
        missing = list(dict.fromkeys(s for s in shapes if s not in cache))
        if missing:
            cache.update(zip(missing, (self.timer or measure)(missing)))
        return {s: cache[s] for s in shapes}


def candidates(keep: int, units: int, least: int, window: float) -> list[int]:
    """``keep`` and the multiples of ``MULTIPLES`` next to it, within ``window`` of it (or up to
    ``BLOCK``: a narrow layer may keep one whole block) and in [max(least, 1), units]."""
    low = max(least, 1, math.ceil(keep * (1 - window)))
    high = min(units, max(int(keep * (1 + window)), BLOCK))
    found = {keep}
    for step in MULTIPLES:
        found.update((step * (keep // step), step * -(-keep // step)))
    return sorted(k for k in found if k == keep or low <= k <= high)
