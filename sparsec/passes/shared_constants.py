"""One vector constant read by several nodes: a copy per reader before a channel cut, one
shared tensor again after it.

Exporters deduplicate equal initializers: every zero-initialized bias of a width, every
LayerNorm weight of ones, becomes one tensor read by every layer of that width (timm's ViTs:
one qkv bias for all 12 blocks). A constant is one member of every channel group its readers
touch, so those groups merge: the heads of all blocks, or an MLP's hidden units and an
unrelated residual stream, are cut as one, with the same indices, where each could have kept
its own. ``unshare-vectors`` gives every reader but one its own copy of each such *vector*
(a float initializer of more than one element with at most one axis longer than 1: biases,
norm parameters, layer scales); a matrix read twice is a tied weight, left shared. The
original keeps its name with the reader whose module the name is a parameter of (a state-dict
key ``module.param``; else the first reader), so a plan maps it to its own module; a copy is
named after its reader node and input (``/blocks.3/attn/qkv/Gemm:input2``), which no pattern
on the original's module matches. ``share-equal-vectors`` undoes what the cut left equal: a
copy equal (dtype, shape, bytes) to a tensor listed before it becomes that tensor again;
tensors the input had apart stay apart, under their names. Each runs in the first round of a
fixed-point pipeline only (``once``), else they would undo each other forever.

Both are exact: every node reads the same values as before.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.analysis.lookup import module_of, scope_of
from sparsec.passes.base import InPlacePass, PassResult
from sparsec.pruning.plans import state_key

COPY = ":input"  # a copy's name: its reader node's, this and the input index


def _vector(model, value) -> np.ndarray | None:
    """The value's array when it is a float initializer of more than one element with at most
    one axis longer than 1."""
    if not value.is_initializer() or value.is_graph_output() or value.is_graph_input():
        return None  # an initializer listed as an input can be fed other values
    shape = model.constant_shape(value)
    if shape is None or sum(d > 1 for d in shape) != 1:
        return None  # a matrix (a tied weight) or a scalar (no channels): not read at all
    array = model.constant(value)
    return array if array is not None and array.dtype.kind == "f" else None


def _owner(uses: list, name: str) -> int:
    """The index of the use whose reader's module ``name`` is a parameter of (``plans.state_key``,
    the reader's module from its exporter scope, as a plan maps it), else 0."""
    key = state_key(name)
    found = (i for i, use in enumerate(uses) if key and module_of(scope_of(use.node)) == key[0])
    return next(found, 0)


class UnshareVectorsPass(InPlacePass):
    """Give each reader of a shared vector constant its own copy (module docstring)."""

    name: ClassVar[str] = "unshare-vectors"
    keeps_value_shapes: ClassVar[bool] = True
    once: ClassVar[bool] = True  # share-equal-vectors undoes what the cut left equal
    summary: ClassVar[str] = (
        "Give each reader of a shared bias or norm vector its own copy (unrelated groups stay apart)."
    )

    def call(self, model) -> PassResult:
        copies = 0
        for value in list(model.initializers().values()):
            uses = list(value.uses())
            array = _vector(model, value) if len(uses) > 1 else None
            if array is None:
                continue
            owner = _owner(uses, value.name or "")
            for use in uses[:owner] + uses[owner + 1 :]:
                name = f"{use.node.name or 'node'}{COPY}{use.idx}"
                model.set_input(use.node, use.idx, model.add_initializer(name, array.copy()))
                copies += 1
        return PassResult(model, modified=copies > 0, stats={"copies": copies})


class ShareEqualVectorsPass(InPlacePass):
    """Make each copy equal to a tensor before it read that tensor again (module docstring)."""

    name: ClassVar[str] = "share-equal-vectors"
    keeps_value_shapes: ClassVar[bool] = True
    once: ClassVar[bool] = True  # else it and unshare-vectors would undo each other forever
    summary: ClassVar[str] = (
        "Make a copy unshare-vectors made read an equal tensor listed before it again."
    )

    def call(self, model) -> PassResult:
        first: dict[tuple, object] = {}
        shared = 0
        for value in list(model.initializers().values()):
            array = _vector(model, value)
            if array is None:
                continue
            key = (array.dtype.str, array.shape, np.ascontiguousarray(array).tobytes())
            kept = first.setdefault(key, value)
            if kept is not value and COPY in (value.name or ""):
                model.replace_all_uses(value, kept)
                shared += 1
        return PassResult(model, modified=shared > 0, stats={"vectors_shared": shared})
