"""Layers and the channel groups that hold them: ``group_of(model, name, axis)`` (Torch-Pruning's
``get_pruning_group`` for ONNX) and ``layer_table(model)``, the group analysis seen per layer.

A *layer* is a compute node (``op_layouts``: Conv, ConvTranspose, Gemm, MatMul) one of whose
operands is a constant weight (or a DequantizeLinear of constants: its weight name is then the
stored integer initializer's). Its *output channels* are its output's channel axis (the
weight's kept axis: a Conv's W axis 0, a Gemm's N); its *input channels* the activation's
contracted axis. A layer answers to four names: its node name (``/layer4/layer4.0/conv1/Conv``),
its weight's name (``layer4.0.conv1.weight``), its exporter scope (``scope_of``: the node name
less its last ``/`` part, ``/layer4/layer4.0/conv1``, or dynamo's ``name_scopes``) and its module
path (``layer4.0.conv1``: ``module_of`` the legacy scope, else the weight name less ``.weight``,
else ``module_of`` dynamo's scope).

A normalization node (BatchNormalization, LayerNormalization, ...) is no layer (``layer_table``
lists none), but ``group_of`` finds it by its node name, scope or module path (``stem_bn``: as
for a layer, from the legacy scope, else its scale's name less ``.weight``): the group of its
output's channels.

Invariant: read-only; every group returned is one of ``find_channel_groups(model)``'s (prunable
or not: ``group.reason`` says why not); a name or axis that no group holds is an
``UnknownNameError`` error (an ``InputError`` and a ``KeyError``) naming the closest names
(ignoring case); a name that is no ``str`` is a ``NameTypeError`` (``InputError``,
``TypeError``), an axis that is none of ``"output"``, ``"input"``, None or an integer in
``[-rank, rank)`` an ``AxisError`` (``InputError``, ``ValueError``).
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import operator
from collections.abc import Iterable
from dataclasses import dataclass

from sparsec.analysis.groups import ChannelGroup, GroupAnalysis, find_channel_groups
from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.quantized import quantized_weight
from sparsec.analysis.shapes import value_shapes
from sparsec.errors import InputError

Member = tuple[str, int]
SIDES = ("output", "input")
NORMS = frozenset(
    {
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
    }
)


class UnknownNameError(InputError, KeyError):
    """A name (or axis) that no layer, tensor or channel group of the model has."""

    __str__ = Exception.__str__  # one plain line, not KeyError's quoted repr


class NameTypeError(InputError, TypeError):
    """A name that is no ``str``."""


class AxisError(InputError, ValueError):
    """An axis that is none of ``"output"``, ``"input"``, None or an integer in range."""


@dataclass(frozen=True)
class Layer:
    """A compute node with a constant weight, and the (tensor, axis) of its channels."""

    node: str
    op_type: str
    weight: str
    output: Member | None  # its output channels (None: rank unknown)
    input: Member | None  # its input channels (None: the other operand is no tensor)
    scope: str = ""
    module: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the layer answers to (node, weight, scope, module path), no blanks."""
        return tuple(
            dict.fromkeys(n for n in (self.node, self.weight, self.scope, self.module) if n)
        )


def layers(model, input_shapes=None) -> list[Layer]:
    """Every layer of ``model``, in graph order (cached until the model changes)."""
    key = "layers:" + repr(sorted((input_shapes or {}).items()))
    return model.cached(key, lambda: _layers(model, value_shapes(model, input_shapes)))


def _layers(model, shapes: dict) -> list[Layer]:
    found = []
    for node in model.nodes():
        layout = op_layout(model, node)
        if layout is None or not node.outputs or node.outputs[0] is None:
            continue
        weight = next(
            (w for w in layout.operands() if _weight_name(model, _input(node, w.index))), None
        )
        if weight is None:
            continue
        other = layout.other(weight)
        out_rank = len(shapes.get(node.outputs[0].name, ())) or None
        out_axis = layout.output_channels if weight == layout.weight else -2
        activation = _input(node, other.index)
        in_rank = len(shapes.get(activation.name, ())) if activation is not None else 0
        name = _weight_name(model, _input(node, weight.index))
        scope = scope_of(node)
        found.append(
            Layer(
                node.name,
                node.op_type,
                name,
                (node.outputs[0].name, out_axis % out_rank) if out_rank else None,
                (activation.name, other.contraction % in_rank) if in_rank else None,
                scope,
                _module_path(node, scope, name),
            )
        )
    return found


def _input(node, index: int):
    return node.inputs[index] if index < len(node.inputs) else None


def _weight_name(model, value) -> str:
    """The constant ``value`` is (or, for a DequantizeLinear of constants, the stored integer
    initializer), '' when it is no constant."""
    if value is None:
        return ""
    if model.constant_shape(value) is not None:
        return value.name
    quantized = quantized_weight(model, value)
    return quantized.data.name if quantized is not None else ""


def scope_of(node) -> str:
    """The exporter's scope of a node: the legacy exporter's name less its op
    (``/layer4/layer4.0/conv1/Conv`` -> ``/layer4/layer4.0/conv1``), else dynamo's
    ``pkg.torch.onnx.name_scopes`` (``['', 'layer4', 'layer4.0', 'conv1', 'conv2d']`` ->
    ``/layer4/layer4.0/conv1``); '' for none (``/Relu``, ``node_12`` without metadata)."""
    name = node.name or ""
    if name.startswith("/") and name.count("/") >= 2:
        return name.rsplit("/", 1)[0]
    text = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    try:
        parts = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return ""
    inner = [str(part) for part in parts[1:-1]] if isinstance(parts, list) else []
    return "/" + "/".join(inner) if inner else ""


def module_of(scope: str) -> str:
    """The module path of a PyTorch exporter scope: ``/layer1/layer1.0/down/down.0`` ->
    ``layer1.0.down.0`` (a part ``parent.child`` names the child of the part before it)."""
    parts: list[str] = []
    for part in filter(None, scope.strip("/").split("/")):
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts)


def _module_path(node, scope: str, weight: str) -> str:
    """The module path of the legacy exporter's scope, else of a parameter's name
    (``layer4.0.conv1.weight``: dynamo keeps them, and a BatchNorm it folded into a conv would
    name the BatchNorm's scope), else of dynamo's scope."""
    if scope and node.name.startswith("/"):
        return module_of(scope)
    if weight.endswith(".weight"):
        return weight[: -len(".weight")]
    return module_of(scope)


def group_of(model, name: str, axis: int | str | None = None, *, input_shapes=None) -> ChannelGroup:
    """The channel group holding ``name``'s channels, prunable or not (``group.reason``).

    ``name`` is a node name (a layer's output channels by default; ``axis="input"`` its input
    channels, an integer: that axis of the node's first output), a layer's scope or module path
    (a normalization node's too), or a tensor name, e.g. an initializer (``axis``: that axis,
    negative ones counting from the end; None: a layer weight's output axis, else the one axis a
    group holds). ``UnknownNameError`` when nothing matches, naming the closest names, or when
    the channels are in no group (an axis of size 1, or one no compute weight reaches);
    ``NameTypeError`` for a name that is no ``str``, ``AxisError`` for a bad or out-of-range axis.
    """
    if not isinstance(name, str):
        raise NameTypeError(
            f"group_of: name must be a str (a node, tensor, weight, scope or module name), got "
            f"{type(name).__name__} {name!r}"
        )
    axis = _axis_argument(axis)
    analysis = find_channel_groups(model, input_shapes)
    member, what = _member(model, name, axis, input_shapes)
    group = holders(analysis).get(member)
    if group is None:
        raise UnknownNameError(
            f"{what} ({member[0]!r} axis {member[1]}) is in no channel group: its size is 1, "
            "or no Conv/Gemm/MatMul weight's channels run along it"
        )
    return group


def _axis_argument(axis) -> int | str | None:
    """``axis`` as ``group_of`` reads it: None, ``"output"``, ``"input"`` or an int."""
    if axis is None or (isinstance(axis, str) and axis in SIDES):
        return axis
    try:
        if isinstance(axis, bool):
            raise TypeError
        return operator.index(axis)
    except TypeError:
        raise AxisError(
            f"group_of: axis must be 'output', 'input', an integer or None, got {axis!r}"
        ) from None


def holders(analysis: GroupAnalysis) -> dict[Member, ChannelGroup]:
    """member → the group it belongs to."""
    return {member: group for group in analysis.groups for member in group.members}


def group_layers(model, analysis: GroupAnalysis, input_shapes=None) -> dict[int, list[Layer]]:
    """{group id: the layers whose output channels it holds} (groups holding none left out)."""
    held = holders(analysis)
    found: dict[int, list[Layer]] = {}
    for layer in layers(model, input_shapes):
        group = held.get(layer.output) if layer.output is not None else None
        if group is not None:
            found.setdefault(group.id, []).append(layer)
    return found


def _member(model, name: str, axis, input_shapes) -> tuple[Member, str]:
    """The (tensor, axis) ``name`` and ``axis`` mean, and words for it."""
    by_node = {layer.node: layer for layer in layers(model, input_shapes) if layer.node}
    layer = by_node.get(name) or _by_alias(model, name, input_shapes)
    if layer is not None and (axis is None or axis in SIDES):
        side = axis or "output"
        member = getattr(layer, side)
        if member is None:
            raise UnknownNameError(f"layer {layer.node!r}: the rank of its {side} is unknown")
        return member, f"layer {layer.node!r} {side} channels"
    if axis in SIDES:
        raise UnknownNameError(f"{name!r} is not a layer (a Conv/Gemm/MatMul node with a weight)")
    value = _value_of(model, name, layer)
    if value is None:
        raise UnknownNameError(
            f"no node, tensor or layer is called {name!r}{_closest(model, name)}"
        )
    if axis is None:
        return _default_axis(model, value.name, input_shapes), f"tensor {value.name!r}"
    rank = _rank(model, value.name, input_shapes)
    if not -rank <= axis < rank:
        raise AxisError(
            f"axis {axis} is out of range for tensor {value.name!r} of rank {rank} "
            f"(0..{rank - 1}, or -{rank}..-1 from the end)"
        )
    return (value.name, axis % rank), f"tensor {value.name!r}"


def _value_of(model, name: str, layer: Layer | None):
    """The value whose axes an integer axis counts: the first output of the node called
    ``name``, else the tensor ``name``, else the first output of the layer or normalization
    node answering to it; None for none."""
    node = next((n for n in model.nodes() if n.name and n.name == name), None)
    value = model.value(name) if node is None else None
    if node is None and value is None:
        by_layer = (
            layer and layer.node and next((n for n in model.nodes() if n.name == layer.node), None)
        )
        node = by_layer or _norm_by_alias(model, name)
    if node is not None:
        return node.outputs[0] if node.outputs else None
    return value


def _by_alias(model, name: str, input_shapes) -> Layer | None:
    """The one layer whose scope or module path is ``name`` (a weight name only when
    ``name`` is no other tensor's)."""
    found = [layer for layer in layers(model, input_shapes) if name in (layer.scope, layer.module)]
    if len(found) > 1:
        nodes = ", ".join(repr(layer.node) for layer in found[:4])
        raise UnknownNameError(f"{name!r} names {len(found)} layers ({nodes}): give a node name")
    weights = [layer for layer in layers(model, input_shapes) if layer.weight == name]
    return found[0] if found else (weights[0] if len(weights) == 1 else None)


def norm_aliases(model) -> dict[str, list]:
    """{scope or module path: the normalization nodes (``NORMS``) answering to it}."""
    found: dict[str, list] = {}
    for node in model.nodes():
        if node.op_type not in NORMS:
            continue
        scope = scope_of(node)
        scale = _weight_name(model, _input(node, 1))
        for alias in dict.fromkeys((scope, _module_path(node, scope, scale))):
            if alias:
                found.setdefault(alias, []).append(node)
    return found


def _norm_by_alias(model, name: str):
    """The one normalization node whose scope or module path is ``name``, or None."""
    nodes = norm_aliases(model).get(name, [])
    if len(nodes) > 1:
        named = ", ".join(repr(node.name) for node in nodes[:4])
        raise UnknownNameError(f"{name!r} names {len(nodes)} nodes ({named}): give a node name")
    return nodes[0] if nodes else None


def _default_axis(model, name: str, input_shapes) -> Member:
    held = sorted(m for m in holders(find_channel_groups(model, input_shapes)) if m[0] == name)
    if len(held) == 1:
        return held[0]
    axes = ", ".join(str(m[1]) for m in held)
    raise UnknownNameError(
        f"tensor {name!r} has channels in groups along axes {axes}: give axis=..."
        if held
        else f"tensor {name!r} is in no channel group"
    )


def _rank(model, name: str, input_shapes) -> int:
    shape = value_shapes(model, input_shapes).get(name) or model.constant_shape(model.value(name))
    if not shape:
        raise UnknownNameError(f"the rank of {name!r} is unknown")
    return len(shape)


def _closest(model, name: str) -> str:
    names = [n.name for n in model.nodes() if n.name] + list(model.initializers())
    names += [alias for layer in layers(model) for alias in layer.names]
    close = closest(name, names + list(norm_aliases(model)))
    return f" (closest: {', '.join(repr(c) for c in close)})" if close else ""


def closest(word: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` most like ``word``, ignoring case: first those ``word`` matches
    as a glob (``fnmatch``) ignoring case, then ``difflib``'s closest."""
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    key = word.lower()
    matched = [by_lower[low] for low in by_lower if fnmatch.fnmatchcase(low, key)]
    similar = [by_lower[low] for low in difflib.get_close_matches(key, by_lower, n=n, cutoff=0.5)]
    return list(dict.fromkeys(matched + similar))[:n]


@dataclass(frozen=True)
class LayerRow:
    """One layer and the groups holding its output and input channels (None: no group)."""

    layer: Layer
    output: ChannelGroup | None
    input: ChannelGroup | None

    def to_json(self) -> dict:
        return {
            "node": self.layer.node,
            "op": self.layer.op_type,
            "weight": self.layer.weight,
            "module": self.layer.module,
            "output": _group_json(self.output),
            "input": _group_json(self.input),
        }


def _group_json(group: ChannelGroup | None) -> dict | None:
    if group is None:
        return None
    return {
        "group": group.id,
        "channels": group.units,
        "kind": group.kind,
        "prunable": group.prunable,
        "reason": group.reason,
    }


def layer_table(model, input_shapes=None) -> list[LayerRow]:
    """Per layer (graph order): the groups holding its output and input channels."""
    held = holders(find_channel_groups(model, input_shapes))
    return [
        LayerRow(layer, held.get(layer.output), held.get(layer.input))  # type: ignore[arg-type]
        for layer in layers(model, input_shapes)
    ]


__all__ = [
    "AxisError",
    "Layer",
    "LayerRow",
    "NameTypeError",
    "UnknownNameError",
    "closest",
    "group_layers",
    "group_of",
    "holders",
    "layer_table",
    "layers",
    "module_of",
    "norm_aliases",
    "scope_of",
]
