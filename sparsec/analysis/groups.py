"""Channel groups: the connected components of the axis-coupling graph.

Every node's axis rule (``sparsec.analysis.rules``) contributes edges between
(tensor, axis) members; ``networkx`` finds the connected components. Inside a component the
edges' index maps say which *positions* are the same channel: positions are merged with a
vectorised union-find, and each resulting class is one prunable *unit* (``atoms[member][p]``
is the unit of member position ``p``). Removing a unit removes every position mapped to it,
in every member at once, so the pruned graph stays consistent by construction.

A group is prunable when it holds at least one compute weight (Conv/Gemm/MatMul constant
slice), no member is blocked (an op without a rule, a rule that cannot map the axis, a graph
input or output, a value read inside a subgraph), and it has more than one unit. Members
listed in ``stats`` (a LayerNorm or ReduceMean over the axis, a product of two activations
contracting it) are prunable too: the oracle masks them (``pruning/oracle.py``). Members a node
mixes (``lossy``: LRN across channels) block their group unless the analysis allows lossy
couplings (``find_channel_groups(..., lossy=True)``, cached apart from the default); the group
then lists them (``ChannelGroup.lossy``) and the oracle runs those nodes on kept positions only.
Blocked, the reason names the node and the option, and comes after any other reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from sparsec.analysis.rules import Coupling, Member, RuleContext, apply_rule, rule_for
from sparsec.analysis.rules.layout import RUN_TIME_SHAPES
from sparsec.analysis.shapes import measure_values, value_shapes
from sparsec.ir.gc_pause import builds

LOSSY_HINT = "a lossy coupling: pass --lossy-couplings to prune through it"


@dataclass(frozen=True)
class LossyUse:
    """A node mixing the positions of ``member`` (its first input's axis): its op type, its name
    and its first output's name (how the oracle finds it again in a copy of the model)."""

    member: Member
    op_type: str
    node: str
    output: str
    reason: str

    def describe(self) -> str:
        return f"{self.op_type} '{self.node}'"


@dataclass
class ChannelGroup:
    """Channels that must be removed together: every member (a ``(value name, axis)``) holds
    the group's ``units`` in its positions (``atoms[member]``: the unit of each position), so
    removing a unit removes its positions from every member at once. ``compute`` members are
    the weights whose output or input channels these are; ``reason`` says why the group cannot
    be pruned (None: it can)."""

    id: int
    members: list[Member]
    sizes: dict[Member, int]
    atoms: dict[Member, np.ndarray]  # member → unit index of each position
    units: int
    compute: list[Member]
    constants: list[Member]  # members whose tensor is a constant (sliced by surgery)
    stats: list[Member] = field(default_factory=list)
    reason: str | None = None  # why the group is not prunable (None: prunable)
    nodes: set[str] = field(default_factory=set)  # names of the nodes touching the group
    roles: dict[Member, set[str]] = field(
        default_factory=dict
    )  # member roles (rules.core.Coupling.roles)
    lossy: list[LossyUse] = field(default_factory=list)  # nodes mixing its channels
    balanced: list[tuple[Member, int]] = field(default_factory=list)  # (member, classes)

    @property
    def prunable(self) -> bool:
        """Whether the group may be pruned (no ``reason`` against it)."""
        return self.reason is None

    @property
    def kind(self) -> str:
        """``heads`` (attention heads are its units), ``ffn`` (hidden units between linear
        layers: only Gemm/MatMul weights, no statistic over it, as in an MLP) or ``channels``
        (anything else: conv channels, a residual stream under LayerNorm)."""
        roles = set().union(*self.roles.values())
        if "heads" in roles:
            return "heads"
        return "ffn" if roles & {"linear", "conv"} == {"linear"} and not self.stats else "channels"

    def members_with_role(self, role: str) -> list[Member]:
        """The members playing ``role`` (``conv``, ``linear``, ``heads``, ...: see
        ``rules.core.Coupling.roles``)."""
        return [m for m, roles in self.roles.items() if role in roles]

    def kept_positions(self, member: Member, removed_units: np.ndarray) -> np.ndarray:
        """The positions of ``member`` that stay when ``removed_units`` go, ascending."""
        return np.flatnonzero(~self.removed_mask(removed_units)[self.atoms[member]])

    def removed_mask(self, removed_units: np.ndarray) -> np.ndarray:
        """A boolean mask over the group's units, True for the ``removed_units``."""
        mask = np.zeros(self.units, dtype=bool)
        mask[np.asarray(removed_units, dtype=np.int64)] = True
        return mask

    def class_counts(self, member: Member, classes: int) -> np.ndarray:
        """Units × ``classes``: the positions each unit holds in each class of ``member`` (the
        classes are equal runs of its positions; ``balanced`` lists the members that have them,
        each class of which must lose the same number of positions)."""
        atoms = self.atoms[member]
        per_class = len(atoms) // classes
        counts = np.zeros((self.units, classes), dtype=np.int64)
        np.add.at(counts, (atoms, np.arange(len(atoms)) // per_class), 1)
        return counts

    def segments(self) -> list[np.ndarray]:
        """Units grouped by the set of compute weights they appear in: one segment per Concat
        input in a DenseNet-style group, a single segment for a residual stream. Pruning each
        segment by the same fraction keeps every layer's width balanced."""
        return [units for units, _ in self._segments()]

    def segment_keys(self) -> list[tuple]:
        """Per segment, the compute weights (initializer, axis) its units appear in, sorted: the
        same in a model an earlier cut pruned (surgery keeps names), even if the group lost a
        member meanwhile, so a schedule can follow a segment from round to round."""
        return [members for _, members in self._segments()]

    def _segments(self) -> list[tuple[np.ndarray, tuple]]:
        presence = np.zeros((self.units, len(self.compute)), dtype=bool)
        for column, member in enumerate(self.compute):
            presence[self.atoms[member], column] = True
        patterns, segment_of = np.unique(presence, axis=0, return_inverse=True)
        every = tuple(
            sorted(m for m in self.members if not m[0].startswith("#"))
        )  # units in no compute weight
        return [
            (
                np.flatnonzero(segment_of.reshape(-1) == s),
                tuple(sorted(m for m, on in zip(self.compute, pattern) if on)) or every,
            )
            for s, pattern in enumerate(patterns)
        ]

    def describe(self) -> str:
        """One line: the group's id, its size (``heads`` for a heads group, else ``channels``),
        its first weights, and the nodes mixing its channels when it is pruned through them."""
        weights = ", ".join(f"{name}[{axis}]" for name, axis in self.compute[:4])
        more = f" +{len(self.compute) - 4}" if len(self.compute) > 4 else ""
        units = "heads" if self.kind == "heads" else "channels"
        mixed = (  # a blocked group's reason names them already
            f"; lossy: {', '.join(u.describe() for u in self.lossy)}"
            if self.prunable and self.lossy
            else ""
        )
        return f"group {self.id}: {self.units} {units}, weights {weights}{more}{mixed}"


@dataclass
class GroupAnalysis:
    groups: list[ChannelGroup]
    couplings: list[Coupling]  # per node, in graph order (surgery runs their fixups)
    barriers: dict[str, str]  # node name → op that has no rule


def kept_positions(analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> dict:
    """member → kept positions, for every member that loses positions."""
    table = {}
    for group in analysis.groups:
        units = removed.get(group.id)
        if units is None or len(units) == 0:
            continue
        removed_mask = group.removed_mask(units)
        for member in group.members:
            kept = np.flatnonzero(~removed_mask[group.atoms[member]])
            if len(kept) != group.sizes[member]:
                table[member] = kept
    return table


def find_channel_groups(model, input_shapes=None, lossy: bool = False) -> GroupAnalysis:
    """All channel groups of ``model`` (cached until the model changes, per ``input_shapes``
    and ``lossy``: whether a node mixing a group's channels, such as LRN, leaves it prunable)."""
    key = f"channel_groups:lossy={bool(lossy)}:" + repr(sorted((input_shapes or {}).items()))
    return model.cached(key, lambda: _analyze(model, input_shapes, bool(lossy)))


@builds  # one graph node per channel member, kept: no collections while it grows
def _analyze(model, input_shapes, lossy: bool) -> GroupAnalysis:
    dynamic = [
        node.inputs[index].name
        for node in model.nodes()
        if (index := RUN_TIME_SHAPES.get(node.op_type)) is not None
        and len(node.inputs) > index
        and node.inputs[index] is not None
        and model.constant(node.inputs[index]) is None
    ]
    ctx = RuleContext(
        model, value_shapes(model, input_shapes), measure_values(model, dynamic, input_shapes)
    )
    graph, blocked, couplings, barriers, touching = nx.Graph(), {}, [], {}, {}
    sizes: dict[Member, int] = {}
    mixed: dict[Member, list[LossyUse]] = {}
    for node in model.nodes():
        coupling = _coupling(node, ctx, barriers)
        couplings.append(coupling)
        sizes.update(coupling.sizes)
        linked = {m for e in coupling.edges for m in (e.a, e.b)}
        for member in _node_members(node, ctx):
            graph.add_node(member)
            touching.setdefault(member, set()).add(node.name or node.op_type)
            if member in coupling.reasons or member not in linked | coupling.free | coupling.stats:
                reason = coupling.reasons.get(member, "does not map this axis")
                blocked.setdefault(member, f"{node.op_type} '{node.name}': {reason}")
        for member, reason in coupling.lossy.items():
            use = LossyUse(member, node.op_type, node.name, node.outputs[0].name, reason)
            mixed.setdefault(member, []).append(use)
        for edge in coupling.edges:
            graph.add_edge(edge.a, edge.b)
            graph.edges[edge.a, edge.b].setdefault("maps", []).append(edge)
            if _ties(edge):  # named in the reason of a group that ends up one unit
                graph.edges[edge.a, edge.b].setdefault("by", set()).add(
                    f"{node.op_type} '{node.name}'"
                )
    _block_interface(model, ctx, graph, blocked)
    for member in graph.nodes:
        if member not in sizes:
            shape = ctx.shape(model.value(member[0]))
            sizes[member] = shape[member[1]] if shape is not None and member[1] < len(shape) else 0
    stats = {m for c in couplings for m in c.stats}
    compute = {m for c in couplings for m in c.compute}
    roles: dict[Member, set[str]] = {}
    balanced = {(m, k) for c in couplings for m, k in c.balanced.items()}
    for coupling in couplings:
        for member, role in coupling.roles.items():
            roles.setdefault(member, set()).add(role)
    groups = []
    for component in nx.connected_components(graph):
        if not compute & component or max(sizes[m] for m in component) < 2:
            continue
        group = _make_group(len(groups), model, graph, component, sizes, compute, stats, blocked)
        group.nodes = set().union(*(touching.get(m, set()) for m in component))
        group.roles = {m: roles[m] for m in component if m in roles}
        group.balanced = sorted((m, k) for m, k in balanced if m in component)
        group.lossy = [use for m in group.members for use in mixed.get(m, [])]
        if group.lossy and group.reason is None and not lossy:
            use = group.lossy[0]
            group.reason = f"{use.describe()}: {use.reason} ({LOSSY_HINT})"
        groups.append(group)
    return GroupAnalysis(groups, couplings, barriers)


def _coupling(node, ctx: RuleContext, barriers: dict[str, str]) -> Coupling:
    rule = rule_for(node)
    if rule is None:
        domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
        barriers[node.name or node.op_type] = f"{domain}{node.op_type}"
        return _blocking(node, ctx, f"has no axis rule for {domain}{node.op_type} (a barrier)")
    coupling = apply_rule(
        rule, node, ctx
    )  # a rule that cannot decide is a barrier too (unless strict)
    return _blocking(node, ctx, coupling) if isinstance(coupling, str) else coupling


def _blocking(node, ctx: RuleContext, reason: str) -> Coupling:
    """A coupling that blocks every axis of the node's inputs and outputs."""
    coupling = Coupling()
    for member in _node_members(node, ctx):
        coupling.block(member, reason)
    return coupling


def _node_members(node, ctx: RuleContext) -> list[Member]:
    members = []
    for value in list(node.inputs) + list(node.outputs):
        if value is not None and value.name:
            members += [(value.name, axis) for axis in range(ctx.rank(value) or 0)]
    return members


def _block_interface(model, ctx: RuleContext, graph: nx.Graph, blocked: dict) -> None:
    """Graph inputs and outputs keep their shapes; values read inside subgraphs too."""
    for kind, values in (("input", model.inputs), ("output", model.outputs)):
        for value in values:
            for axis in range(ctx.rank(value) or 0):
                blocked.setdefault((value.name, axis), f"reaches graph {kind} '{value.name}'")
    for member in list(graph.nodes):
        value = model.value(member[0])
        if value is not None and any(use.node.graph is not model.graph for use in value.uses()):
            blocked.setdefault(member, f"'{member[0]}' is read inside a subgraph")


def _make_group(index, model, graph, component, sizes, compute, stats, blocked) -> ChannelGroup:
    members = sorted(component, key=lambda m: (m[0], m[1]))
    atoms, units, consistent = _unify_positions(graph, members, sizes)
    constants = [m for m in members if not m[0].startswith("#") and _is_constant(model, m[0])]
    group = ChannelGroup(
        index,
        members,
        {m: sizes[m] for m in members},
        atoms,
        units,
        compute=[m for m in members if m in compute],
        constants=constants,
        stats=[m for m in members if m in stats],
    )
    reasons = [blocked[m] for m in members if m in blocked]
    if reasons:
        group.reason = reasons[0]
    elif not consistent:
        group.reason = "its members' sizes disagree with the ops' index maps (unknown shapes?)"
    elif units < 2:
        group.reason = "its channels are all tied together (one unit)" + _tied_by(graph, members)
    return group


def _ties(edge) -> bool:
    """Whether ``edge`` maps several positions to one (a tile, a stride, a reshape's part)."""
    return edge.index is not None and len(np.unique(edge.index)) < len(edge.index)


def _tied_by(graph: nx.Graph, members: list[Member]) -> str:
    """`` by the index maps of`` the nodes whose non-identity maps join the group's positions
    (a grouped Conv's tile, a shuffle's reshapes), the first four named."""
    nodes = sorted(
        set().union(*(d.get("by", set()) for *_, d in graph.subgraph(members).edges(data=True)))
    )
    more = f" +{len(nodes) - 4}" if len(nodes) > 4 else ""
    return f" by the index maps of {', '.join(nodes[:4])}{more}" if nodes else ""


def _is_constant(model, name: str) -> bool:
    value = model.value(name)
    return value is not None and model.constant_shape(value) is not None


def _unify_positions(graph: nx.Graph, members: list[Member], sizes: dict) -> tuple[dict, int, bool]:
    """Union-find over member positions along the edges' index maps, vectorised with
    min-label propagation plus pointer jumping; returns member → unit ids (0..units-1), the
    number of units, and whether every index map fit its members' sizes."""
    offsets, total, consistent = {}, 0, True
    for member in members:
        offsets[member] = total
        total += sizes[member]
    left, right = [], []
    for _a, _b, data in graph.subgraph(members).edges(data=True):
        for edge in data["maps"]:
            size_a = sizes[edge.a]
            index = np.arange(size_a) if edge.index is None else np.asarray(edge.index)
            if len(index) != size_a or (len(index) and index.max(initial=0) >= sizes[edge.b]):
                consistent = False
                continue
            left.append(offsets[edge.a] + np.arange(size_a))
            right.append(offsets[edge.b] + index)
    labels = components(
        total,
        np.concatenate(left or [np.zeros(0, int)]),
        np.concatenate(right or [np.zeros(0, int)]),
    )
    _, dense = np.unique(labels, return_inverse=True)
    atoms = {m: dense[offsets[m] : offsets[m] + sizes[m]] for m in members}
    return atoms, int(dense.max(initial=-1) + 1), consistent


def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Union-find over ``n`` items joined pairwise by ``u[i] ~ v[i]``: each item's label is the
    least item of its class."""
    labels = np.arange(n)
    while True:
        low = np.minimum(labels[u], labels[v])
        new = labels.copy()
        np.minimum.at(new, labels[u], low)
        np.minimum.at(new, labels[v], low)
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        while True:  # pointer jumping: every label points at its root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new
