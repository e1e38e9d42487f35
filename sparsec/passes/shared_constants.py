"""One vector constant read by several nodes: a copy per reader before a channel cut, one
shared tensor again after it.

Exporters deduplicate equal initializers: every zero-initialized bias of a width, every
LayerNorm weight of ones, becomes one tensor read by every layer of that width (timm's ViTs:
one qkv bias for all 12 blocks). A constant is one member of every channel group its readers
touch, so those groups merge: the heads of all blocks, or an MLP's hidden units and an
unrelated residual stream, are cut as one, with the same indices, where each could have kept
its own. ``unshare-vectors`` gives every reader but the first its own copy of each such
*vector* (a float initializer with at most one axis longer than 1: biases, norm parameters,
layer scales); a matrix read twice is a tied weight, left shared. ``share-equal-vectors``
undoes what the cut left equal: vectors of the same dtype, shape and bytes become one tensor
again (the one listed first: the original's name for an uncut copy). Each runs in the first
round of a fixed-point pipeline only (``once``), else they would undo each other forever.

Both are exact: every node reads the same values as before.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.passes.base import InPlacePass, PassResult

COPY = ":copy"  # a copy's name: the original's and this (not a PyTorch state-dict key)


def _vector(model, value) -> np.ndarray | None:
    """The value's array when it is a float initializer with at most one axis longer than 1."""
    if not value.is_initializer() or value.is_graph_output() or value.is_graph_input():
        return None  # an initializer listed as an input can be fed other values
    array = model.constant(value)
    if array is None or array.dtype.kind != "f" or sum(d > 1 for d in array.shape) > 1:
        return None
    return array


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
            for use in uses[1:]:
                copy = model.add_initializer(f"{value.name}{COPY}", array.copy())
                model.set_input(use.node, use.idx, copy)
                copies += 1
        return PassResult(model, modified=copies > 0, stats={"copies": copies})


class ShareEqualVectorsPass(InPlacePass):
    """Make equal vector constants one tensor read by all their readers (module docstring)."""

    name: ClassVar[str] = "share-equal-vectors"
    keeps_value_shapes: ClassVar[bool] = True
    once: ClassVar[bool] = True  # else it and unshare-vectors would undo each other forever
    summary: ClassVar[str] = (
        "Read one tensor where several float vector constants are equal (dtype, shape, bytes)."
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
            if kept is not value:
                model.replace_all_uses(value, kept)
                shared += 1
        return PassResult(model, modified=shared > 0, stats={"vectors_shared": shared})
