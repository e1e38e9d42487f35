"""Attention blocks, found from the channel groups whose units are heads.

A channel group has kind ``heads`` when an axis rule gave one of its members the ``heads`` role:
a batch axis of a product of two activations (the written-out ``Q·Kᵀ`` and ``P·V``) or the
head axis of an attention op (ONNX ``Attention``, ``com.microsoft`` attention ops). Its units
are what can be removed: one head, or, under grouped-query attention, one KV head with all the
query heads that share it (the K/V repeat links them). So, per block:

- ``heads`` = the size of the widest head-role member (the query heads); ``head_dim`` = the
  query projection's output width / ``heads`` (a third of a packed QKV projection's);
  ``kv_heads`` = the key projection's output width / ``head_dim`` (read from the weight, so a
  block pruned down to one KV head, whose size-1 axis no longer ties its query heads in the
  group, still reports it), or the group's units when Q, K, V share one packed weight;
- a group holding several attentions (a Q/K/V weight shared between blocks ties their heads,
  unit h being head h of each) is one block whose ``form`` names the attentions and the shared
  weight: their heads are pruned jointly;
- Q, K, V are the constant weights the operands of the attention product (or op) are computed
  from, traced up through layout and elementwise ops; O is the weight that reduces over the
  group (its reduction axis, ``weight_sites.REDUCTION_AXIS``, is the group's member).

Nothing here decides what is pruned: ``--heads`` prunes head groups like any channel group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsec.analysis.groups import ChannelGroup, GroupAnalysis, find_channel_groups
from sparsec.analysis.op_layouts import layout as op_layout
from sparsec.analysis.weight_sites import weight_sites

ATTENTION_OPS = {
    ("", "Attention"),
    ("com.microsoft", "Attention"),
    ("com.microsoft", "MultiHeadAttention"),
    ("com.microsoft", "GroupQueryAttention"),
}
# ops a projection's output passes through on its way to the attention product
PASS_THROUGH = {
    "Reshape",
    "Transpose",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Cast",
    "Squeeze",
    "Unsqueeze",
    "Expand",
    "Identity",
    "Slice",
    "Split",
    "Where",
    "Softmax",
    "Concat",
}


@dataclass
class AttentionBlock:
    group: int
    form: str  # how it was found
    heads: int
    kv_heads: int
    head_dim: int | None
    q: list[str] = field(default_factory=list)
    k: list[str] = field(default_factory=list)
    v: list[str] = field(default_factory=list)
    o: list[str] = field(default_factory=list)
    reason: str | None = None  # why --heads would leave it whole (None: prunable)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def attention_blocks(model, analysis: GroupAnalysis | None = None) -> list[AttentionBlock]:
    """Every attention block of ``model``, in graph order of its channel group."""
    analysis = analysis or find_channel_groups(model)
    reduction = _reduction_axes(model)
    return [_block(model, group, reduction) for group in analysis.groups if group.kind == "heads"]


def _reduction_axes(model) -> dict[str, int]:
    """Each 2-D weight's reduction axis: ``weight_sites``' (initializers), and, for a weight a
    ``Constant`` node holds (paddle2onnx writes them so), the one its product's layout gives."""
    axes = {site.name: site.axis for site in weight_sites(model)[0]}
    for node in model.nodes():
        layout = op_layout(model, node)
        if layout is None or layout.role != "linear" or layout.weight.index >= len(node.inputs):
            continue
        weight = node.inputs[layout.weight.index]
        shape = model.constant_shape(weight)
        if weight is not None and shape is not None and len(shape) == 2:
            axes.setdefault(weight.name, layout.weight.contraction % 2)
    return axes


def _block(model, group: ChannelGroup, reduction: dict[str, int]) -> AttentionBlock:
    nodes = [n for n in model.nodes() if (n.name or n.op_type) in group.nodes]
    fused = next((n for n in nodes if (_domain(n), n.op_type) in ATTENTION_OPS), None)
    form, weights = (
        _fused_weights(model, fused) if fused is not None else _written_out_weights(model, nodes)
    )
    form += _tie(model, group, nodes)
    projections = {name for names in weights.values() for name in names}
    o = sorted(
        {
            name
            for name, axis in group.compute
            if reduction.get(name) == axis and name not in projections
        }
    )
    heads = max((group.sizes[m] for m in group.members_with_role("heads")), default=group.units)
    packed = (
        bool(weights["q"]) and weights["q"] == weights["k"] == weights["v"]
    )  # one [Q | K | V] weight
    q_width = _output_width(model, group, weights["q"], reduction)
    q_width = q_width // 3 if q_width and packed else q_width
    head_dim = q_width // heads if q_width and heads and q_width % heads == 0 else None
    k_width = None if packed else _output_width(model, group, weights["k"], reduction)
    kv_heads = (
        k_width // head_dim if k_width and head_dim and k_width % head_dim == 0 else group.units
    )
    return AttentionBlock(
        group.id,
        form,
        heads,
        kv_heads,
        head_dim,
        weights["q"],
        weights["k"],
        weights["v"],
        o,
        group.reason,
    )


def _output_width(
    model, group: ChannelGroup, names: list[str], reduction: dict[str, int]
) -> int | None:
    """The output width of a projection's 2-D weight (the axis it does not reduce over); for a
    weight an attention op reads directly, the size of its member in the group."""
    if not names:
        return None
    shape = model.constant_shape(model.value(names[0]))  # an initializer or a Constant node's
    if shape is not None and len(shape) == 2 and names[0] in reduction:
        return shape[1 - reduction[names[0]]]
    return next((group.sizes[m] for m in group.compute if m[0] == names[0]), None)


def _fused_weights(model, node) -> tuple[str, dict[str, list[str]]]:
    """How an attention op was found, and its Q/K/V weights (com.microsoft Attention holds
    one packed QKV weight; the others read projections computed before them)."""
    form = f"{_domain(node) + '::' if _domain(node) else 'ONNX '}{node.op_type} op"
    if node.op_type == "Attention" and _domain(node) == "com.microsoft":
        return form, {role: [node.inputs[1].name] for role in ("q", "k", "v")}  # a list each
    return form, {
        role: _source_weights(model, _input(node, i)) for i, role in enumerate(("q", "k", "v"))
    }


def _products(model, nodes) -> list:
    """The MatMuls of two activations among ``nodes`` (attention scores and contexts)."""
    return [
        n
        for n in nodes
        if n.op_type == "MatMul" and not any(model.constant_shape(v) for v in n.inputs)
    ]


def _tie(model, group: ChannelGroup, nodes) -> str:
    """How a group holding several attentions is tied (a Q/K/V weight shared between blocks:
    one unit is the same head of each, so they are pruned jointly), or ``""`` for one."""
    attentions = [n for n in nodes if (_domain(n), n.op_type) in ATTENTION_OPS] or [
        n for n in _products(model, nodes) if _feeds_softmax(n)
    ]
    if len(attentions) < 2:
        return ""
    values = {name: model.value(name) for name, _ in group.compute}
    shared = sorted(n for n, v in values.items() if v is not None and len(model.consumers(v)) > 1)
    names = [f"'{n.name or n.op_type}'" for n in attentions]
    blocks = f"blocks {', '.join(names[:-1])} and {names[-1]}"
    noun = "weight" if len(shared) == 1 else "weights"
    what = f"{noun} {', '.join(shared)} shared between {blocks}" if shared else blocks
    return f"; {len(attentions)} blocks tied ({what}): their heads are pruned jointly"


def _written_out_weights(model, nodes) -> tuple[str, dict[str, list[str]]]:
    """Q and K feed the product whose result reaches the Softmax, V the other one."""
    products = _products(model, nodes)
    scores = next((n for n in products if _feeds_softmax(n)), products[0])
    context = next((n for n in products if n is not scores), scores)
    operands = {"q": scores.inputs[0], "k": scores.inputs[1], "v": context.inputs[1]}
    return "written out (MatMul → Softmax → MatMul)", {
        r: _source_weights(model, v) for r, v in operands.items()
    }


def _domain(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _input(node, index: int):
    return node.inputs[index] if index < len(node.inputs) else None


def _feeds_softmax(node, depth: int = 4) -> bool:
    """Whether ``node``'s output reaches a Softmax within ``depth`` ops (scale, mask, cast)."""
    frontier = [node]
    for _ in range(depth):
        frontier = [use.node for n in frontier for out in n.outputs for use in out.uses()]
        if any(n.op_type == "Softmax" for n in frontier):
            return True
    return False


def _source_weights(model, value, depth: int = 12) -> list[str]:
    """The constant weights of the MatMul/Gemm that ``value`` is computed from, walking up
    through layout and elementwise ops (a packed QKV projection gives its one weight)."""
    for _ in range(depth):
        node = value.producer() if value is not None else None
        if node is None:
            return []
        layout = op_layout(model, node)
        if (
            layout is not None and layout.role == "linear"
        ):  # MatMul, Gemm: either operand may be the weight
            operands = [node.inputs[i] for i in sorted(o.index for o in layout.operands())]
            weights = [
                v.name for v in operands if v is not None and model.constant_shape(v) is not None
            ]
            if weights:
                return weights
        if node.op_type not in PASS_THROUGH:
            return []
        value = next(
            (v for v in node.inputs if v is not None and model.constant_shape(v) is None), None
        )
    return []
