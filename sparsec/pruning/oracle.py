"""The exactness oracle: the original model with the removed channels masked out.

Invariant: the physically pruned model equals the masked original to float rounding. Masking:
every compute weight (Conv/Gemm/MatMul constant) has the removed positions zeroed, so a removed
channel contributes nothing wherever a weight consumes it; wherever removed channels meet kept
ones *without* a weight in between, the masked original masks the activation itself: a
ReduceMean or LayerNorm over a pruned axis averages over the kept positions only (x · m · C/C',
m = 1 on kept positions), and a product of two activations contracting a pruned axis reads
x · m. A grouped conv's weight cut group by group (``rules.core.GroupedWeight``) has the
entries each group's removed positions read zeroed. Biases, norms and divisors are left alone (a
removed channel's own value never matters, and zeroing a divisor would make NaNs). A quantized
weight (``analysis.quantized``) is masked in the constant it is stored as: its integer data set
to the zero point (which dequantizes to exactly 0.0), a fake-quantized float weight set to 0.
Masks are applied *by name*, so the original can be reloaded from disk rather than held in
memory.

Lossy couplings (``rules.core.Coupling.lossy``: LRN across channels) have no mask that makes the
original equal the pruned model: there the masked original runs the node on the kept positions
only (``Gather`` them, the node, then one ``Gather`` over ``Concat([node(x_kept), node(x)])``
puts each kept position back and fills removed ones from the plain node, whose values no
unmasked consumer reads). So the pruned model still equals the reference to float rounding; the
*plain* masked original (``apply_masks(..., plain=True)``, without that wrapper) is what the
coupling's loss is measured against.

Quantized activations (a per-tensor QuantizeLinear → DequantizeLinear pair on a non-constant
value) round to steps of their scale, so two computations equal to float rounding can differ by
a whole step after one. With each such pair bypassed (``bypass_quantizers``: an Identity in its
place) the models are the float computations their quantizers round; when both quantize the
same activations the same way (``same_quantizers``), those must equal each other to float
rounding.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from sparsec.analysis.groups import GroupAnalysis
from sparsec.analysis.quantized import activation_quantizers, masked_fill, weight_source
from sparsec.analysis.rules import RuleContext
from sparsec.analysis.rules.layout import reduced_axes
from sparsec.analysis.shapes import value_shapes
from sparsec.ir import runtime
from sparsec.validate import output_metrics, peak_gap, relative_error, worst_output


@dataclass
class OracleMasks:
    """The removal, by name: per constant member [(axis, kept, size)] (the plan), the compute
    weight members the masked original zeroes, and the activation members that statistics
    (LayerNorm, ReduceMean) and activation products must see masked:
    [(value name, axis, kept, size, rank)]."""

    constants: dict[str, list[tuple[int, np.ndarray, int]]] = field(default_factory=dict)
    zeroed: set[tuple[str, int]] = field(default_factory=set)
    stats: list[tuple[str, int, np.ndarray, int, int]] = field(default_factory=list)
    # nodes run on kept positions only, by first output name: [(output, axis, kept, size)]
    lossy: list[tuple[str, int, np.ndarray, int]] = field(default_factory=list)
    lossy_ops: dict[str, str] = field(default_factory=dict)  # their output name → op type
    # grouped convs' weights cut group by group (``rules.core.GroupedWeight``): name → per
    # group, the local positions of W axis 1 its rows keep
    grouped: dict[str, list[np.ndarray]] = field(default_factory=dict)


def channel_masks(model, analysis: GroupAnalysis, table: dict) -> OracleMasks:
    """The masks of the oracle for a removal given as ``table`` (``kept_positions``)."""
    masks, constants = OracleMasks(), defaultdict(list)
    sizes = {m: size for group in analysis.groups for m, size in group.sizes.items()}
    constant_members = {m for group in analysis.groups for m in group.constants}
    compute_members = {m for group in analysis.groups for m in group.compute}
    stat_members = {m for group in analysis.groups for m in group.stats}
    shapes = value_shapes(model)
    for (name, axis), kept in table.items():
        size = sizes[(name, axis)]
        if (name, axis) in constant_members:
            constants[name].append((axis, kept, size))
        if (name, axis) in compute_members:
            masks.zeroed.add((_stored_as(model, name), axis))
        if (name, axis) in stat_members:
            masks.stats.append((name, axis, kept, size, len(shapes[name])))
    masks.constants = dict(constants)
    masks.grouped = {
        g.weight: g.local(table[g.part], model.constant_shape(model.value(g.weight))[1])
        for coupling in analysis.couplings
        for g in coupling.grouped
        if g.part in table
    }
    for use in (use for group in analysis.groups for use in group.lossy):
        if use.member in table:
            kept, size = table[use.member], sizes[use.member]
            masks.lossy.append((use.output, use.member[1], kept, size))
            masks.lossy_ops[use.output] = use.op_type
    return masks


def _stored_as(model, name: str) -> str:
    """The constant a compute weight is stored as (itself, or the source of a quantized one:
    quantization keeps every axis, so the masked axis is the same)."""
    source = weight_source(model, model.value(name))
    return name if source is None else source.name


def apply_masks(model, masks: OracleMasks, plain: bool = False) -> None:
    """Build the masked original in ``model`` (found by names): zero the dropped positions of
    every compute weight, make statistics and activation products see kept positions only, and
    (unless ``plain``) run every lossy coupling's node on the kept positions only."""
    values = model.values_by_name()
    for name, axes in masks.constants.items():
        value = values.get(name)
        array = None if value is None else model.constant(value)
        fill = None if array is None else masked_fill(model, value, array)
        if fill is None:
            continue
        array = array.copy()
        for axis, kept, size in axes:
            if (name, axis) not in masks.zeroed:
                continue
            drop = np.ones(size, dtype=bool)
            drop[kept] = False
            index = [slice(None)] * array.ndim
            index[axis] = drop
            array[tuple(index)] = fill[tuple(index)] if fill.ndim else fill
        model.set_constant(value, array)
    for name, kept in masks.grouped.items():
        array = model.constant(values[name]).copy()
        for rows, local in zip(np.split(array, len(kept), axis=0), kept):
            rows[:, np.setdiff1d(np.arange(array.shape[1]), local)] = 0  # views: zeroes array
        model.set_constant(values[name], array)
    _mask_statistics(model, masks.stats)
    if not plain:
        _run_on_kept(model, masks.lossy)


def _mask_statistics(model, stats) -> None:
    """Per value with masked axes: a ReduceMean over them reads x · m · C/C' (m: 1 on kept
    positions), a LayerNormalization over them is written out with those masked means, and a
    MatMul/Gemm contracting them with another activation reads x · m."""
    ctx, values = RuleContext(model, {}), model.values_by_name()
    for name, (mask, factor, axes, rank) in _masks_by_value(stats).items():
        value = values[name]
        for node in list(model.consumers(value)):
            if node.inputs[0] is not value:
                continue
            if node.op_type == "ReduceMean" and axes <= (reduced_axes(node, ctx, rank) or set()):
                model.set_input(node, 0, _scaled(model, node, value, mask * factor))
            elif node.op_type == "LayerNormalization" and min(axes) >= _first_normalized(
                model, node, rank
            ):
                # its output is replaced by the written-out form's: a later mask on it (a second
                # LayerNorm of the same channels) must find the replacement under the old name
                replaced = node.outputs[0]
                values[replaced.name] = (
                    _write_out_layer_norm(model, node, mask * factor, rank) or replaced
                )
            elif node.op_type in ("MatMul", "Gemm"):
                model.set_input(node, 0, _scaled(model, node, value, mask))


def _masks_by_value(stats) -> dict:
    """value name → (0/1 mask broadcast over its rank, C/C' factor, masked axes, rank)."""
    found: dict = {}
    for name, axis, kept, size, rank in stats:
        mask, factor, axes, _ = found.get(name, (np.ones([1] * rank), 1.0, set(), rank))
        shape = [1] * rank
        shape[axis] = size
        plain = np.zeros(size)
        plain[kept] = 1
        found[name] = (mask * plain.reshape(shape), factor * size / len(kept), axes | {axis}, rank)
    return found


def _scaled(model, node, value, weight: np.ndarray):
    dtype = model.elem_type(value) or np.float32
    factor = model.add_initializer(f"{value.name}_oracle_mask", weight.astype(dtype))
    return model.add_node("Mul", [value, factor], before=node, name="oracle")


def _first_normalized(model, node, rank: int) -> int:
    return int(model.attr(node, "axis", -1)) % rank


def _write_out_layer_norm(model, node, weight: np.ndarray, rank: int):
    """y = (x − μ) / sqrt(σ² + ε) · scale + bias, μ and σ² masked means over the normalized axes;
    returns the value that now stands for the node's output (None when left alone)."""
    if any(out is not None and out.name and model.consumers(out) for out in node.outputs[1:]):
        return None  # the optional Mean / InvStdDev outputs are in use: leave this one alone
    x, scale = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    dtype = model.elem_type(x) or np.float32
    axes = list(range(_first_normalized(model, node, rank), rank))
    mean = _masked_mean(model, node, x, weight, axes)
    centred = model.add_node("Sub", [x, mean], before=node, name="oracle")
    square = model.add_node("Mul", [centred, centred], before=node, name="oracle")
    variance = _masked_mean(model, node, square, weight, axes)
    epsilon = model.add_initializer(
        "oracle_epsilon", np.array(model.attr(node, "epsilon", 1e-5), dtype=dtype)
    )
    std = model.add_node(
        "Sqrt",
        [model.add_node("Add", [variance, epsilon], before=node, name="oracle")],
        before=node,
        name="oracle",
    )
    out = model.add_node(
        "Mul",
        [model.add_node("Div", [centred, std], before=node, name="oracle"), scale],
        before=node,
        name="oracle",
    )
    if bias is not None:
        out = model.add_node("Add", [out, bias], before=node, name="oracle")
    model.replace_all_uses(node.outputs[0], out)
    model.remove_node(node)
    return out


def _masked_mean(model, node, value, weight: np.ndarray, axes: list[int]):
    scaled = _scaled(model, node, value, weight)
    if model.opset >= 18:
        axes_value = model.add_initializer("oracle_axes", np.array(axes, dtype=np.int64))
        return model.add_node(
            "ReduceMean", [scaled, axes_value], {"keepdims": 1}, before=node, name="oracle"
        )
    return model.add_node(
        "ReduceMean", [scaled], {"axes": axes, "keepdims": 1}, before=node, name="oracle"
    )


def _run_on_kept(model, lossy) -> None:
    """Each lossy node (found by its first output's name) runs on its kept positions only."""
    by_output: dict[str, list[tuple[int, np.ndarray, int]]] = defaultdict(list)
    for output, axis, kept, size in lossy:
        by_output[output].append((axis, kept, size))
    values = model.values_by_name()
    for output, axes in by_output.items():
        node = model.producer(values[output]) if output in values else None
        if node is not None:
            _wrap_on_kept(model, node, sorted(axes, key=lambda entry: entry[0]))


def _wrap_on_kept(model, node, axes: list[tuple[int, np.ndarray, int]]) -> None:
    """Replace ``node`` by: its input gathered at the kept positions of ``axes``, the node, and
    per axis (last first) the kept result put back among the plain node's values."""
    attributes = {name: attr.value for name, attr in node.attributes.items()}
    rest = list(node.inputs[1:])

    def run(x):
        return model.add_node(node.op_type, [x, *rest], attributes, before=node, name="oracle")

    out, full = node.inputs[0], run(node.inputs[0])
    for axis, kept, _ in axes:
        out = _gather(model, node, out, kept, axis)
    out = run(out)
    for index in reversed(range(len(axes))):
        axis, kept, size = axes[index]
        filler = full  # the plain result, kept positions only along the axes before this one
        for earlier, earlier_kept, _ in axes[:index]:
            filler = _gather(model, node, filler, earlier_kept, earlier)
        both = model.add_node("Concat", [out, filler], {"axis": axis}, before=node, name="oracle")
        out = _gather(model, node, both, put_back_index(kept, size), axis)
    model.replace_all_uses(node.outputs[0], out)
    model.remove_node(node)


def put_back_index(kept: np.ndarray, size: int) -> np.ndarray:
    """Over ``Concat([kept part, full part])``: position p reads its rank among ``kept`` when
    kept, else ``len(kept) + p`` (the full part's own value)."""
    index = len(kept) + np.arange(size, dtype=np.int64)
    index[np.asarray(kept, dtype=np.int64)] = np.arange(len(kept), dtype=np.int64)
    return index


def _gather(model, node, value, indices: np.ndarray, axis: int):
    positions = model.add_initializer("oracle_kept", np.asarray(indices, dtype=np.int64))
    return model.add_node("Gather", [value, positions], {"axis": axis}, before=node, name="oracle")


def oracle_gap(model, reference, feeds: dict[str, np.ndarray]) -> float:
    """max |model − reference| / max |reference| over every output, in onnxruntime (the gate a
    pass checks itself when it prunes in several rounds: each round's own oracle)."""
    got = runtime.session_for(model, optimization="disable").run(feeds)
    want = runtime.session_for(reference, optimization="disable").run(feeds)
    return peak_gap(want, got)


def lossy_error(model, plain, ops: dict[str, int], feeds: dict[str, np.ndarray]) -> dict:
    """What lossy couplings cost: the pruned ``model`` against the ``plain`` masked original (no
    kept-positions wrapper) on ``feeds``, at the output with the largest relative error; with the
    nodes pruned through (``ops``: op type → count). Non-finite figures are None (strict JSON)."""
    want = runtime.session_for(plain, optimization="disable").run(feeds)
    got = runtime.session_for(model, optimization="disable").run(feeds)
    metrics = [
        output_metrics(name, want[name], got[name], 0.0, 0.0, peak_tolerance=0.0)
        for name in want
        if name in got
    ]
    worst = worst_output(metrics)
    figures = {
        "max_abs_error": None if worst is None else worst.max_abs,
        "max_abs_output": None if worst is None else worst.max_abs_reference,
        "relative_error": None if worst is None else relative_error(worst),
        "cosine": None if worst is None else worst.cosine,
    }
    return {
        "nodes": sum(ops.values()),
        "ops": dict(ops),
        "output": None if worst is None else worst.name,
        **{k: v if v is None or np.isfinite(v) else None for k, v in figures.items()},
    }


def bypass_quantizers(model):
    """A copy of ``model`` in which every per-tensor activation quantizer pair
    (``analysis.quantized.activation_quantizers``) is an Identity of the pair's input."""
    bypassed = model.copy()
    for q, dq, _ in activation_quantizers(bypassed):
        identity = bypassed.add_node("Identity", [q.inputs[0]], before=dq, name="bypass")
        bypassed.replace_all_uses(dq.outputs[0], identity)
        bypassed.remove_node(dq)
        if not q.outputs[0].uses():
            bypassed.remove_node(q)
    return bypassed


def same_quantizers(model, other) -> bool:
    """Whether both models hold activation quantizers with the same scales and zero points."""
    settings = [
        sorted(map(repr, (p for *_, p in activation_quantizers(m)))) for m in (model, other)
    ]
    return bool(settings[0]) and settings[0] == settings[1]
