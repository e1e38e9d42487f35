"""Activation sparsity on calibration data: how many activation values are zero, which channels
are zero on every sample (dead), and the MACs a zero-skipping runtime would save.

Which values are measured (``measured_values``): the output of every activation op
(``ACTIVATION_OPS``, and SiLU/HardSwish written as ``Mul(x, Sigmoid(x))``/``Mul(x,
HardSigmoid(x))``: ``GATED_ACTIVATIONS``), and every value a compute layer reads as its
activation (a Conv/Gemm/MatMul with a constant weight, ``lookup.layers``; graph inputs too).

The channel axis of a value (``channel_axes``): the contraction axis of the first layer reading
it (``op_layouts``), else the output channel axis of the layer producing it, traced back through
ops that keep every axis where it is (``AXIS_KEEPING_OPS``: activations, normalization,
pooling); else none (no per-channel counts, no dead channels).

The counts. Over every calibration sample and position, per channel c of a value:
``zeros[c] = #{x == 0}`` and ``near[c] = #{|x| <= T}`` (T: an absolute threshold, default
``NEAR_ZERO``; near-zeros include the exact zeros). They are running sums over the batches of
``activations.capture``: memory is one batch of activations whatever the number of samples.
Channel c is *dead* when ``zeros[c]`` equals its element count: exactly zero everywhere.

MACs saved. A layer reading value X spends the same number of MACs on each element of X's
channel axis (each input channel of a conv or product feeds the same number of products), so a
runtime skipping exact zeros saves ``Σ_c MACs / C × zeros[c] / count[c]`` of it, which is
``MACs × zero fraction``; a value's figure is the sum over the layers reading it. MACs are per
inference at the bound input shapes (``cost.analyze_cost``), like ``analyze``'s MACs line; a
conv's zero padding and border effects are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from sparsec.analysis.activations import capture, fixed_batch
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.lookup import Layer, layers, scope_of
from sparsec.analysis.shapes import value_shapes
from sparsec.errors import InputError

NEAR_ZERO = 1e-6  # default absolute threshold |x| <= T of a near-zero

# Ops whose output is an activation function's (per-op knowledge as data).
ACTIVATION_OPS = (
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Clip",
    "Elu",
    "Selu",
    "Celu",
    "ThresholdedRelu",
    "HardSwish",
    "HardSigmoid",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "QuickGelu",
    "Mish",
    "Softplus",
    "Softsign",
    "Shrink",
    "Softmax",
)
# Mul(x, GATE(x)): SiLU/Swish with Sigmoid, HardSwish with HardSigmoid.
GATED_ACTIVATIONS = ("Sigmoid", "HardSigmoid")
# Ops whose output keeps every axis of their first input where it is: a channel axis found on
# the producer side passes through them.
AXIS_KEEPING_OPS = (
    *ACTIVATION_OPS,
    "BatchNormalization",
    "InstanceNormalization",
    "Identity",
    "Dropout",
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
)
# Elementwise ops with broadcasting: an input of the output's rank keeps its axes in place.
ELEMENTWISE_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean")


def is_gated_activation(node) -> bool:
    """``Mul(x, GATE(x))`` in either order, GATE in ``GATED_ACTIVATIONS``."""
    if node.op_type != "Mul" or len(node.inputs) != 2 or None in node.inputs:
        return False
    for value, other in (node.inputs, node.inputs[::-1]):
        gate = other.producer()
        if gate is not None and gate.op_type in GATED_ACTIVATIONS and gate.inputs[0] is value:
            return True
    return False


def is_activation(node) -> bool:
    return node.op_type in ACTIVATION_OPS or is_gated_activation(node)


def measured_values(model, compute: list[Layer]) -> list[str]:
    """The values measured, in graph order: graph inputs and node outputs that a compute layer
    reads, and activation ops' outputs (tensors only)."""
    read = {layer.input[0] for layer in compute if layer.input}
    names = [v.name for v in model.inputs if v.name in read]
    for node in model.nodes():
        for value in node.outputs:
            if value is not None and model.is_tensor(value):
                if value.name in read or (is_activation(node) and value is node.outputs[0]):
                    names.append(value.name)
    return list(dict.fromkeys(names))


def channel_axes(model, names: Iterable[str], compute: list[Layer]) -> dict[str, int | None]:
    """The channel axis of each named value (non-negative), or None when none is known."""
    known: dict[str, int] = {}
    for layer in compute:  # what a layer reads first, then what one writes
        if layer.input:
            known.setdefault(*layer.input)
    for layer in compute:
        if layer.output:
            known.setdefault(*layer.output)
    ranks = {name: len(shape) for name, shape in value_shapes(model).items()}
    return {name: _channel_axis(model, name, known, ranks) for name in names}


def _channel_axis(
    model, name: str, known: Mapping[str, int], ranks: Mapping[str, int]
) -> int | None:
    """The axis of the nearest value with a known channel axis that ``name`` is linked to axis
    for axis (breadth first through ``_aligned``)."""
    queue, seen = [name], {name}
    while queue:
        current = queue.pop(0)
        if current in known:
            return known[current]
        value = model.value(current)
        for other in _aligned(value, ranks) if value is not None else ():
            if other.name not in seen:
                seen.add(other.name)
                queue.append(other.name)
    return None


def _aligned(value, ranks: Mapping[str, int]) -> list:
    """The values whose axes are ``value``'s own: through an op of ``AXIS_KEEPING_OPS`` (its
    first input and its first output), or an elementwise op of ``ELEMENTWISE_OPS`` (any input of
    the output's rank: broadcasting then leaves axes in place), upstream and downstream."""
    linked = []
    producer = value.producer()
    if producer is not None:
        linked += _aligned_inputs(producer, ranks)
    for use in value.uses():
        node = use.node
        if node.outputs and node.outputs[0] is not None and value in _aligned_inputs(node, ranks):
            linked.append(node.outputs[0])
    return linked


def _aligned_inputs(node, ranks: Mapping[str, int]) -> list:
    if node.op_type in AXIS_KEEPING_OPS:
        return [node.inputs[0]] if node.inputs and node.inputs[0] is not None else []
    if node.op_type not in ELEMENTWISE_OPS or not node.outputs or node.outputs[0] is None:
        return []
    rank = ranks.get(node.outputs[0].name)
    return [v for v in node.inputs if v is not None and rank and ranks.get(v.name) == rank]


@dataclass
class _Counts:
    """Running counts of one value: per channel (or one cell when it has no channel axis)."""

    axis: int | None
    zeros: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    near: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    per_channel: int = 0  # elements seen per channel

    def add(self, array: np.ndarray, threshold: float) -> None:
        array = np.asarray(array)
        if self.axis is not None and not -array.ndim <= self.axis < array.ndim:
            self._collapse()  # the layout did not hold at run time: count the value whole
        self.axis = None if self.axis is None else self.axis % array.ndim
        other = tuple(a for a in range(array.ndim) if a != self.axis)
        zeros = np.count_nonzero(array == 0, axis=other)
        near = np.count_nonzero(np.abs(array) <= threshold, axis=other)
        if self.per_channel and np.shape(zeros) != np.shape(self.zeros):
            self._collapse()  # channels that change size between batches: not channels
            zeros, near = np.sum(zeros), np.sum(near)
        if self.per_channel == 0:
            self.zeros, self.near = np.zeros_like(zeros), np.zeros_like(near)
        self.zeros, self.near = self.zeros + zeros, self.near + near
        self.per_channel += array.size // max(1, np.size(zeros))

    def _collapse(self) -> None:
        """Keep the counts so far as one cell: no channel axis."""
        self.per_channel *= max(1, np.size(self.zeros))
        self.axis, self.zeros, self.near = None, np.sum(self.zeros), np.sum(self.near)

    @property
    def elements(self) -> int:
        return self.per_channel * max(1, np.size(self.zeros))

    def dead(self) -> np.ndarray:
        """The channels zero on every element seen (none without a channel axis)."""
        if self.axis is None or self.per_channel == 0:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.zeros == self.per_channel)


def count_zeros(
    model,
    samples: Mapping[str, np.ndarray],
    axes: Mapping[str, int | None],
    threshold: float = NEAR_ZERO,
    batch_size: int = 16,
) -> dict[str, _Counts]:
    """The running zero/near-zero counts of the values in ``axes`` (name -> channel axis) over
    the calibration ``samples``, batch by batch."""
    if not threshold >= 0:
        raise InputError(f"the near-zero threshold must be >= 0 (got {threshold})")
    counts = {name: _Counts(axis) for name, axis in axes.items()}
    if not counts:
        return counts
    for outputs in capture(model, samples, list(counts), batch_size, desc="activation zeros"):
        for name, array in outputs.items():
            counts[name].add(array, threshold)
    return counts


def dead_channels(
    model,
    samples: Mapping[str, np.ndarray],
    values: Iterable[str] | Mapping[str, int] | None = None,
    *,
    batch_size: int = 16,
) -> dict[str, tuple[int, np.ndarray]]:
    """{value name: (channel axis, indices of its channels exactly zero on every sample)} for
    the values with at least one such channel. ``values``: None for every measured value
    (``measured_values``); names (their channel axis found as ``channel_axes`` says; a name
    without one is left out); or {name: axis}. ``samples``: calibration arrays keyed by input
    name, first axis = samples (``activations.load_calibration``)."""
    compute = layers(model)
    if isinstance(values, Mapping):
        axes: dict[str, int | None] = dict(values)
    else:
        names = measured_values(model, compute) if values is None else list(values)
        axes = channel_axes(model, names, compute)
    _check_names(model, axes)
    known = {name: axis for name, axis in axes.items() if axis is not None}
    counts = count_zeros(model, samples, known, batch_size=batch_size)
    found = {name: (c.axis, c.dead()) for name, c in counts.items() if c.axis is not None}
    return {name: (axis, dead) for name, (axis, dead) in found.items() if dead.size}


def _check_names(model, names: Iterable[str]) -> None:
    missing = [name for name in names if model.value(name) is None]
    if missing:
        raise InputError(f"no value named {', '.join(missing)} in the model")


@dataclass
class ActivationRow:
    """One measured value: its zeros over the calibration data and what skipping them saves."""

    name: str
    producer: str  # the producing op type, "input" for a graph input
    node: str  # the producing node's name ('' for a graph input or an unnamed node)
    scope: str  # the exporter's scope of that node (``lookup.scope_of``)
    axis: int | None  # the channel axis (None: unknown, no dead channels)
    channels: int | None  # how many channels
    elements: int  # values seen over all samples
    zero_fraction: float
    near_zero_fraction: float  # |x| <= threshold, exact zeros included
    dead_channels: list[int]  # channels zero on every sample and position
    consumers: list[str]  # the nodes reading it (name, else op type)
    macs: int  # per inference, of the compute layers reading it
    macs_saved: int  # macs × zero_fraction: what a zero-skipping runtime would not spend

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ActivationReport:
    """The activation-sparsity report of a model on calibration data (``activation_report``)."""

    model: str | None
    samples: int  # calibration samples run
    threshold: float  # the near-zero threshold (absolute)
    macs: int  # the model's MACs per inference at the bound input shapes
    rows: list[ActivationRow]

    @property
    def macs_saved(self) -> int:
        return sum(row.macs_saved for row in self.rows)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "samples": self.samples,
            "threshold": self.threshold,
            "macs": self.macs,
            "macs_saved": self.macs_saved,
            "macs_saved_fraction": self.macs_saved / self.macs if self.macs else 0.0,
            "values": [row.to_json() for row in self.rows],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ActivationReport:
        rows = [ActivationRow(**row) for row in data["values"]]
        fields = ("model", "samples", "threshold", "macs")
        return cls(**{key: data[key] for key in fields}, rows=rows)


def activation_report(
    model,
    samples: Mapping[str, np.ndarray],
    threshold: float = NEAR_ZERO,
    batch_size: int = 16,
) -> ActivationReport:
    """Zeros, near-zeros (|x| <= ``threshold``) and dead channels of every measured value over
    the calibration ``samples``, and the MACs a zero-skipping runtime would save."""
    compute = layers(model)
    names = measured_values(model, compute)
    counts = count_zeros(model, samples, channel_axes(model, names, compute), threshold, batch_size)
    cost = analyze_cost(model)
    macs_of = {
        node.outputs[0].name: node_cost.macs or 0
        for node, node_cost in zip(model.nodes(), cost.nodes)
        if node.outputs and node.outputs[0] is not None
    }
    readers: dict[str, list[int]] = {}
    for layer in compute:
        if layer.input and layer.output:
            readers.setdefault(layer.input[0], []).append(macs_of.get(layer.output[0], 0))
    rows = [_row(model, name, counts[name], sum(readers.get(name, []))) for name in names]
    return ActivationReport(
        str(model.path) if model.path else None,
        _samples_run(model, samples),
        float(threshold),
        cost.macs,
        rows,
    )


def _row(model, name: str, counts: _Counts, macs: int) -> ActivationRow:
    value = model.value(name)
    node = value.producer()
    elements = counts.elements
    zero_fraction = float(np.sum(counts.zeros)) / elements if elements else 0.0
    return ActivationRow(
        name=name,
        producer=node.op_type if node is not None else "input",
        node=node.name or "" if node is not None else "",
        scope=scope_of(node) if node is not None else "",
        axis=counts.axis,
        channels=int(np.size(counts.zeros)) if counts.axis is not None else None,
        elements=elements,
        zero_fraction=zero_fraction,
        near_zero_fraction=float(np.sum(counts.near)) / elements if elements else 0.0,
        dead_channels=[int(c) for c in counts.dead()],
        consumers=[use.node.name or use.node.op_type for use in value.uses()],
        macs=macs,
        macs_saved=round(macs * zero_fraction),
    )


def _samples_run(model, samples: Mapping[str, np.ndarray]) -> int:
    """The calibration samples ``capture`` runs: all, or whole batches of a fixed batch size."""
    count = next(iter(samples.values())).shape[0]
    fixed = fixed_batch(model)
    return count - count % fixed if fixed else count
