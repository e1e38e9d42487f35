"""Removable units: residual blocks, plain layers and transformer layers (depth pruning's units).

The data flow. One graph input is *the data input* (the one whose values reach the most nodes;
ties: the first). A value is *data* when it is computed from the data input; ``Shape``/``Size``
outputs are not (they carry dims, not data), nor is anything computed only from constants or
other inputs (an attention mask, token-type ids): those are read like weights. Over data values,
``u → w`` when ``u`` is an input of the node computing ``w``. A *cut value* is a data value every
path from the data input to some data output passes through (it dominates that output): each
output's chain of dominators, in graph order ``c0 (the data input), c1, ..., cn``; the chains
of several outputs share their start, so the cut values form a tree (a chain for one output).
Before each cut value ``c`` other than ``c0`` lies an *elementary span*: the nodes that become
dead when every use of ``c`` reads ``idom(c)``, the cut value before it, instead; it is *heavy*
when it holds a compute weight (a Conv/Gemm/MatMul with a constant weight, ``lookup.layers``).
Walking on from a cut value stops at a fork of the tree and at a graph output.

The units (``Block``); *removing* one = every use of ``exit`` reads ``skip``, ``nodes`` die:

- ``residual``: a cut value ``y = Add(a, b)`` (or a Sum of two) of two data inputs of ``y``'s
  shape, where ``x = idom(y)`` is ``a`` or ``b`` (the identity shortcut): skip = entry = x, the
  branch the other input. The skip path bypasses the branch, so no cut value lies inside: a
  residual block is exactly an elementary span. An identity residual off the cut tree (nested
  in another unit: MobileViT's transformer layers inside its Concat-merged block) is one too.
- ``projection``: the same with ``x`` neither input (a shortcut computed from ``x``, ResNet's
  downsample): skip = the input whose removal frees fewer MACs, branch = the other.
  A residual or projection block's branch holds a compute weight (``x + 0.04·x³`` is no block).
- ``layer``: from a heavy elementary span that is not a residual block, on across heavy
  non-residual spans to the first cut value of the entry's shape (and dtype, where both are
  declared), then on across light spans while they keep it: VGG's Conv+BN+ReLU; a Conv+ReLU
  before a MaxPool; SqueezeNet's Fire module; MobileViT's block (Concat with its input, Conv).
- ``transformer-layer``: an attention residual and the MLP residual after it with only
  non-heavy spans between them: pre-LN, the span from the first's entry to the second's exit;
  post-LN (a norm between them), that span extended by as many elementary spans after the second
  (the output norm: one layer's output norm to the next). ``parts`` are the two residuals.
  Off the cut tree, only the pre-LN form (the MLP residual reads the attention's exit).

Units may nest (a transformer layer holds its parts, a layer may hold residuals): a choice of
several must take disjoint ``nodes``. A block whose ``exit`` is a graph output is listed with
``removable=False`` and the reason (its ``nodes`` are what it would free); so is one holding a
node without a name (``Block.nodes`` names the nodes removal frees).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sparsec.analysis.cost import analyze_cost, float_constants
from sparsec.analysis.heads import ATTENTION_OPS
from sparsec.analysis.lookup import layers as compute_layers
from sparsec.analysis.lookup import module_of, scope_of
from sparsec.analysis.shapes import Shape, value_shapes

SHAPE_OPS = frozenset({"Shape", "Size"})  # their outputs carry dims, not data
ADDS = frozenset({"Add", "Sum"})
CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})
SEPARATORS = "/_.:-"


@dataclass(frozen=True)
class Block:
    """One removable unit; see the module docstring for what each field means per kind."""

    id: int
    kind: str  # "residual" | "projection" | "layer" | "transformer-layer"
    role: str  # "attention" | "mlp" | "conv" | ""
    entry: str
    exit: str
    skip: str
    branch: str | None
    nodes: tuple[str, ...]
    params: int  # the parameters removing it frees (constants only its nodes read)
    macs: int  # its nodes' MACs (analysis.cost)
    parts: tuple[int, ...]
    scope: str
    removable: bool = True
    reason: str | None = None

    def to_json(self) -> dict:
        row = asdict(self)
        row["nodes"], row["parts"] = list(self.nodes), list(self.parts)
        return row


def find_blocks(model, input_shapes: Mapping[str, Shape] | None = None) -> list[Block]:
    """Every removable unit of ``model`` in graph order (finer units before the transformer
    layer holding them); cached until the model changes, per ``input_shapes``."""
    key = "blocks:" + repr(sorted((input_shapes or {}).items()))
    return model.cached(key, lambda: _Finder(model, input_shapes).blocks())


# ---------------------------------------------------------------- the data flow
def data_input(model):
    """The graph input whose data reaches the most nodes (ties: the first), or None."""
    best, best_reach = None, 0
    for value in model.inputs:
        if value.is_initializer() or not model.is_tensor(value):
            continue
        reach = len(_reached_nodes(model, value))
        if reach > best_reach:
            best, best_reach = value, reach
    return best


def _reached_nodes(model, source) -> set:
    """The nodes computing data from ``source`` (graph order, so one pass suffices)."""
    data, reached = {source}, set()
    for node in model.nodes():
        if node.op_type in SHAPE_OPS or not any(v in data for v in node.inputs if v is not None):
            continue
        reached.add(node)
        data.update(v for v in node.outputs if v is not None)
    return reached


class DataFlow:
    """The data values of ``model``, their immediate dominators, and the cut values: those
    dominating a data output (one chain per output; the chains share their start, so they form
    a tree, a plain chain for one output)."""

    def __init__(self, model) -> None:
        self.model = model
        self.source = data_input(model)
        self.order: dict = {}  # data value -> position in graph order
        self.idom: dict = {}
        self.cuts: list = []  # in graph order
        self.children: dict = {}  # cut value -> the cut values it is the idom of
        if self.source is not None:
            self._dominators()
            self._cut_tree()

    def data_inputs(self, node) -> list:
        return [v for v in node.inputs if v is not None and v in self.order]

    def after(self, value):
        """The cut value right after ``value`` on its chain; None at an output or a fork."""
        children = self.children.get(value, [])
        return children[0] if len(children) == 1 and not value.is_graph_output() else None

    def _dominators(self) -> None:
        self.order[self.source] = 0
        self.idom[self.source] = self.source
        for node in self.model.nodes():
            preds = self.data_inputs(node)
            if node.op_type in SHAPE_OPS or not preds:
                continue
            dominator = self._common(preds)
            for value in node.outputs:
                if value is not None:
                    self.order[value] = len(self.order)
                    self.idom[value] = dominator

    def _cut_tree(self) -> None:
        cuts = {self.source}
        for output in self.model.outputs:
            value = output
            while value in self.order and value not in cuts:
                cuts.add(value)
                value = self.idom[value]
        self.cuts = sorted(cuts, key=self.order.__getitem__)
        for value in self.cuts[1:]:
            self.children.setdefault(self.idom[value], []).append(value)

    def _common(self, values: list):
        """The nearest common dominator of ``values`` (dominators come first in graph order)."""
        found = values[0]
        for value in values[1:]:
            other = value
            while found is not other:
                if self.order[found] > self.order[other]:
                    found = self.idom[found]
                else:
                    other = self.idom[other]
        return found


def dead_after_rewire(exit_, skip) -> list:
    """The nodes that die when every use of ``exit_`` reads ``skip`` instead (``exit_`` taken
    as no graph output: what removing it would free), in no particular order."""
    live: dict = {exit_: 0}
    dead: set = set()
    stack = [exit_.producer()]
    while stack:
        node = stack.pop()
        if node is None or node in dead or any(_used(v, live, exit_) for v in node.outputs):
            continue
        dead.add(node)
        for value in node.inputs:
            if value is None or value is skip:
                continue
            live[value] = live.get(value, len(value.uses())) - 1
            if live[value] == 0:
                stack.append(value.producer())
    return list(dead)


def _used(value, live: dict, exit_) -> bool:
    if value is None:
        return False
    if value is not exit_ and value.is_graph_output():
        return True
    return live.get(value, len(value.uses())) > 0


# ---------------------------------------------------------------- the units
@dataclass
class _Unit:
    """A block before its id, cost and name are known."""

    kind: str
    entry: Any
    exit: Any
    skip: Any
    branch: Any
    nodes: list
    parts: tuple = ()


class _Finder:
    """One analysis: the cut values, the elementary span ending at each, the units over them."""

    def __init__(self, model, input_shapes: Mapping[str, Shape] | None) -> None:
        self.model = model
        self.flow = DataFlow(model)
        self.shapes = value_shapes(model, input_shapes)
        self.weights = _compute_nodes(model, input_shapes)
        costs = analyze_cost(model, input_shapes).nodes
        self.cost = {id(node): cost for node, cost in zip(model.nodes(), costs, strict=True)}
        self.position = {id(node): index for index, node in enumerate(model.nodes())}
        self.parameters = {
            id(v): math.prod(model.constant_shape(v) or ()) for v in float_constants(model)
        }
        idom = self.flow.idom
        self.spans = {c: dead_after_rewire(c, idom[c]) for c in self.flow.cuts[1:]}
        self.heavy = {c: any(self.is_compute(n) for n in span) for c, span in self.spans.items()}

    def is_compute(self, node) -> bool:
        return id(node) in self.weights

    def blocks(self) -> list[Block]:
        residuals = {}
        for node in self.model.nodes():
            exit_ = node.outputs[0] if node.op_type in ADDS and node.outputs else None
            unit = self._residual(exit_) if exit_ in self.flow.order else None
            if unit is not None:
                residuals[exit_] = unit
        units = list(residuals.values()) + self._layers(residuals)
        units += self._transformer_layers(residuals)
        order = self.flow.order
        units.sort(key=lambda u: (order[u.exit], -order[u.entry]))
        ids = {id(unit): number for number, unit in enumerate(units)}
        return [self._block(ids[id(u)], u, tuple(ids[id(p)] for p in u.parts)) for u in units]

    # ------------------------------------------------------------ residual and projection
    def _residual(self, exit_) -> _Unit | None:
        """The residual or projection block ending at ``exit_``, if it is one (a value off the
        cut tree, inside another unit, can only end an identity residual)."""
        node = exit_.producer()
        if node is None or node.op_type not in ADDS or len(node.inputs) != 2:
            return None
        a, b = node.inputs
        shape = self.shapes.get(exit_.name)
        if a is b or not all(v in self.flow.order for v in (a, b)):
            return None
        if shape is None or self.shapes.get(a.name) != shape or self.shapes.get(b.name) != shape:
            return None
        entry = self.flow.idom[exit_]
        if entry in (a, b):
            skip, branch = (a, b) if entry is a else (b, a)
            nodes = self.spans.get(exit_) or dead_after_rewire(exit_, entry)
            unit = _Unit("residual", entry, exit_, skip, branch, nodes)
        elif exit_ in self.spans:
            unit = self._projection(entry, exit_, a, b)
        else:
            return None
        return unit if any(self.is_compute(n) for n in unit.nodes) else None

    def _projection(self, entry, exit_, a, b) -> _Unit:
        """Skip = the input whose side frees fewer MACs when the other is kept."""
        keep_a, keep_b = dead_after_rewire(exit_, a), dead_after_rewire(exit_, b)
        if self._macs(keep_a) >= self._macs(keep_b):
            return _Unit("projection", entry, exit_, a, b, keep_a)
        return _Unit("projection", entry, exit_, b, a, keep_b)

    # ------------------------------------------------------------ spans
    def _light_after(self, value, steps: int | None = None) -> list:
        """The cut values after ``value`` whose spans are light, up to a heavy span, a fork, an
        output or ``steps`` of them."""
        path: list = []
        after = self.flow.after(value)
        while after is not None and not self.heavy[after] and (steps is None or len(path) < steps):
            path.append(after)
            after = self.flow.after(after)
        return path

    def _layers(self, residuals: dict) -> list[_Unit]:
        """From each heavy non-residual span: up to the first cut value of the entry's shape and
        dtype across heavy non-residual spans, then on across light spans while they keep it."""
        found = []
        for cut, heavy in self.heavy.items():
            if not heavy or cut in residuals:
                continue
            entry, exit_ = self.flow.idom[cut], cut
            while not self._alike(entry, exit_):
                exit_ = self.flow.after(exit_)
                if exit_ is None or not self.heavy[exit_] or exit_ in residuals:
                    break
            if exit_ is None or not self._alike(entry, exit_):
                continue
            for light in self._light_after(exit_):
                if not self._alike(entry, light):
                    break
                exit_ = light
            found.append(_Unit("layer", entry, exit_, entry, None, dead_after_rewire(exit_, entry)))
        return found

    def _transformer_layers(self, residuals: dict) -> list[_Unit]:
        """An attention residual, then an MLP residual, light spans only between them; post-LN
        (spans between), as many light spans after the MLP residual (its output norm)."""
        found = []
        reading = {u.entry: u for u in residuals.values() if u.skip is u.entry}
        for first in residuals.values():
            if self._role(first.nodes) != "attention":
                continue
            between = self._light_after(first.exit)
            second = residuals.get(self.flow.after(between[-1] if between else first.exit))
            if second is None and not between:  # off the cut tree: pre-LN, nested in a unit
                second = reading.get(first.exit)
            if second is None or self._role(second.nodes) != "mlp":
                continue
            tail = self._light_after(second.exit, len(between))
            exit_ = tail[-1] if tail else second.exit
            if len(tail) != len(between) or not self._alike(first.entry, exit_):
                continue
            nodes = dead_after_rewire(exit_, first.entry)
            found.append(
                _Unit(
                    "transformer-layer",
                    first.entry,
                    exit_,
                    first.entry,
                    None,
                    nodes,
                    (first, second),
                )
            )
        return found

    def _alike(self, a, b) -> bool:
        """Values ``a`` and ``b`` have one shape and one dtype, where both dtypes are declared (a
        rewire keeps the types)."""
        shape = self.shapes.get(a.name)
        types = {self.model.elem_type(a), self.model.elem_type(b)} - {None}
        return shape is not None and shape == self.shapes.get(b.name) and len(types) <= 1

    # ------------------------------------------------------------ the block's figures
    def _block(self, number: int, unit: _Unit, parts: tuple[int, ...]) -> Block:
        entry, exit_ = unit.entry, unit.exit
        ordered = sorted(unit.nodes, key=lambda n: self.position[id(n)])
        reason = _kept_because(exit_, ordered)
        return Block(
            id=number,
            kind=unit.kind,
            role="" if unit.parts else self._role(unit.nodes),
            entry=entry.name,
            exit=exit_.name,
            skip=unit.skip.name,
            branch=unit.branch.name if unit.branch is not None else None,
            nodes=tuple(n.name for n in ordered),
            params=self._params(unit.nodes),
            macs=self._macs(unit.nodes),
            parts=parts,
            scope=self._scope(ordered),
            removable=reason is None,
            reason=reason,
        )

    def _params(self, nodes) -> int:
        """The parameters removing ``nodes`` frees: the constants that only they read (a weight
        shared with a node outside stays)."""
        inside, seen, total = {id(n) for n in nodes}, set(), 0
        for value in (v for n in nodes for v in n.inputs if v is not None):
            if id(value) in self.parameters and id(value) not in seen:
                seen.add(id(value))
                if all(id(use.node) in inside for use in value.uses()):
                    total += self.parameters[id(value)]
        return total

    def _macs(self, nodes) -> int:
        return sum(self.cost[id(n)].macs or 0 for n in nodes)

    def _role(self, nodes) -> str:
        """What the nodes compute: attention (a Softmax or attention op), else conv, else mlp."""
        if any(
            n.op_type == "Softmax" or (n.domain or "", n.op_type) in ATTENTION_OPS for n in nodes
        ):
            return "attention"
        compute = [n for n in nodes if self.is_compute(n)]
        if any(n.op_type in CONV_OPS for n in compute):
            return "conv"
        return "mlp" if compute else ""

    def _scope(self, nodes) -> str:
        """The module path the compute nodes share, else the common prefix of their names, else
        of their weights' names (cut at a separator: ``gpu_0/res2_0``), else ''."""
        compute = [n for n in nodes if self.is_compute(n)] or nodes
        scopes = [scope_of(n) for n in compute]
        if all(scopes):
            common = _common_prefix([s.strip("/").split("/") for s in scopes])
            if common:
                return module_of("/".join(common))
        for names in ([n.name for n in compute], [self.weights.get(id(n), "") for n in compute]):
            prefix = _named_prefix(names)
            if prefix:
                return prefix
        return ""


def _common_prefix(sequences: list[list[str]]) -> list[str]:
    if not sequences:
        return []
    common = []
    for items in zip(*sequences):
        if any(item != items[0] for item in items):
            break
        common.append(items[0])
    return common


def _compute_nodes(model, input_shapes) -> dict[int, str]:
    """{id(node): its weight's name} for every layer (``lookup.layers``), found by its output
    value, so that nodes without names are known too."""
    values, found = model.values_by_name(), dict[int, str]()
    by_name = {node.name: node for node in model.nodes() if node.name}
    for layer in compute_layers(model, input_shapes):
        value = values.get(layer.output[0]) if layer.output else None
        nodes = [value.producer()] if value is not None else []
        nodes = nodes or [by_name.get(layer.node)]
        found.update((id(node), layer.weight) for node in nodes if node is not None)
    return found


def _kept_because(exit_, nodes) -> str | None:
    """Why a unit cannot be removed: its exit is a graph output, or a node has no name."""
    if exit_.is_graph_output():
        return f"its exit {exit_.name} is a graph output"
    if not all(n.name for n in nodes):
        return "some of its nodes have no name (Block.nodes names what removal frees)"
    return None


def _named_prefix(names: list[str]) -> str:
    """What ``names`` share up to a separator ('' when nothing, or no name has one)."""
    if not names or not all(names):
        return ""
    text = names[0] if len(set(names)) == 1 else "".join(_common_prefix([list(n) for n in names]))
    if len(set(names)) > 1:
        text = text[: max(text.rfind(c) for c in SEPARATORS) + 1]
    text = text.strip(SEPARATORS)
    return text if any(c in text for c in SEPARATORS) else ""
