"""Regions: the single-input single-output spans of a pruned model that block reconstruction
fits one at a time, cut at the values ``analysis.blocks`` finds.

The cut values (``blocks.DataFlow``: the data values every path from the data input to the output
passes through) form a chain ``c0 (the data input), c1, ..., cn`` on a model with one data
output (on a tree, its first branch to a fork or output; what follows is not reconstructed).
Between two consecutive cut values lies an elementary span; it is *heavy* when it holds a
compute layer (MatMul/Gemm/Conv with a constant operand). A region is one heavy span with the
light spans after it (leading light spans join the first region): a residual block of
``find_blocks`` (attention, MLP, CNN residual) is one elementary span, so it is a region with
the norm or activation that follows it; elsewhere a compute layer with its elementwise ops.
A region may only end at a cut value the original model computes with the same name and
shape (``agrees``): otherwise (channels pruned across it, a removed block's exit) it extends
over the next spans, so its target is always the dense model's own value.

A region's nodes are the ones between its entry and exit: reached from the entry (data or
shape edges) and needed for the exit. Everything else they read is *external*: constants (read
from the model) and values computed without the entry (an attention mask's transformation),
taken from the pruned model's run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sparsec.analysis.blocks import DataFlow, find_blocks

COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv"})
# (op_type, input index) of a constant whose values a reconstruction may change
TRAINABLE_INPUTS = {
    "MatMul": (0, 1),
    "Gemm": (0, 1, 2),
    "Conv": (1, 2),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (0, 1),
    "LayerNormalization": (1, 2),
    "BatchNormalization": (1, 2),
}
WEIGHT_INPUTS = {("MatMul", 0), ("MatMul", 1), ("Gemm", 0), ("Gemm", 1), ("Conv", 1)}


@dataclass
class Region:
    """One span: ``nodes`` in graph order compute ``exit`` from ``entry`` and ``externals``."""

    entry: str
    exit: str
    nodes: list
    roles: list[str] = field(default_factory=list)  # residual blocks ending inside
    externals: list[str] = field(default_factory=list)  # non-constant inputs, entry first
    constants: list[str] = field(default_factory=list)  # constant inputs
    trainable: list[str] = field(default_factory=list)  # initializers fitted
    masked: list[str] = field(default_factory=list)  # of those, weights whose zeros stay


def cut_chain(model) -> list[str]:
    """The cut values from the data input along the first branch, by name."""
    flow = DataFlow(model)
    if flow.source is None:
        return []
    chain, value = [flow.source], flow.after(flow.source)
    while value is not None:
        chain.append(value)
        value = flow.after(value)
    return [v.name for v in chain]


def find_regions(model, chain: list[str], agrees: Callable[[str], bool]) -> list[Region]:
    """The regions of ``model`` along ``chain`` (``cut_chain``); ``agrees(name)``: the original
    computes that value with the same shape, so a region may end there."""
    regions: list[Region] = []
    start, heavy = chain[0] if chain else "", False
    for previous, value in itertools.pairwise(chain):
        span_heavy = any(_is_compute(model, n) for n in between(model, previous, value))
        if span_heavy and heavy and previous != start and agrees(previous):
            regions.append(_region(model, start, previous))
            start, heavy = previous, False
        heavy = heavy or span_heavy
    if heavy and chain[-1] != start and agrees(chain[-1]):
        regions.append(_region(model, start, chain[-1]))
    return regions


def between(model, entry: str, exit_: str) -> list:
    """The nodes reached from ``entry`` and needed for ``exit_``, in graph order."""
    reached, after = {entry}, []
    for node in model.nodes():
        if any(v is not None and v.name in reached for v in node.inputs):
            after.append(node)
            reached.update(v.name for v in node.outputs if v is not None)
    needed, nodes = {exit_}, []
    for node in reversed(after):
        if any(v is not None and v.name in needed for v in node.outputs):
            nodes.append(node)
            needed.update(v.name for v in node.inputs if v is not None)
    return nodes[::-1]


def _is_compute(model, node) -> bool:
    return node.op_type in COMPUTE_OPS and any(
        v is not None and v.is_initializer() for v in node.inputs
    )


def _region(model, entry: str, exit_: str) -> Region:
    nodes = between(model, entry, exit_)
    produced = {v.name for n in nodes for v in n.outputs if v is not None}
    read = [v for n in nodes for v in n.inputs if v is not None and v.name not in produced]
    read = list({v.name: v for v in read}.values())
    constants = [v.name for v in read if model.constant(v) is not None]
    externals = [entry] + [v.name for v in read if v.name != entry and v.name not in constants]
    inside = {id(n) for n in nodes}
    trainable = [v for v in read if _trainable(model, v, inside)]
    masked = [
        v.name
        for v in trainable
        if any((c.op_type, i) in WEIGHT_INPUTS for c, i in v.uses())
        and not np.all(model.constant(v))
    ]
    residual_exits = {b.exit: b.role or b.kind for b in find_blocks(model) if b.kind == "residual"}
    roles = [residual_exits[name] for name in sorted(produced) if name in residual_exits]
    return Region(
        entry, exit_, nodes, roles, externals, constants, [v.name for v in trainable], masked
    )


def _trainable(model, value, inside: set[int]) -> bool:
    """A float initializer of more than one element read only here, only where a weight, bias
    or norm parameter is read."""
    if not value.is_initializer():
        return False
    array = model.constant(value)
    if array is None or array.dtype != np.float32 or array.size < 2:
        return False
    return all(
        id(node) in inside and index in TRAINABLE_INPUTS.get(node.op_type, ())
        for node, index in value.uses()
    )
