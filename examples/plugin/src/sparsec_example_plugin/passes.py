"""``drop-mul-by-one``: bypass ``Mul(x, c)`` where the constant ``c`` is all ones and
broadcasting it leaves ``x``'s shape unchanged (an exporter's leftover scale). Exact: the output
equals the input, so a test compares the result with the original model itself."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

import sparsec


class DropMulByOnePass(sparsec.InPlacePass):
    """Bypass a Mul by a constant of ones that does not broadcast ``x`` to a larger shape."""

    name: ClassVar[str] = "drop-mul-by-one"
    summary: ClassVar[str] = "Bypass Mul(x, ones) -> x."

    def call(self, model: sparsec.Model) -> sparsec.PassResult:
        removed = 0
        for node in model.nodes():
            x = bypassable_input(model, node)
            if x is None or not model.can_replace(node.outputs[0], x):
                continue
            model.replace_all_uses(node.outputs[0], x)
            model.remove_node(node)
            removed += 1
        return sparsec.PassResult(model, modified=removed > 0, stats={"muls_removed": removed})


def bypassable_input(model: sparsec.Model, node):
    """The non-constant input of a ``Mul`` by ones that keeps its shape, else None."""
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    for x, c in (node.inputs, node.inputs[::-1]):
        ones = model.constant(c)
        shape = model.static_shape(x)
        if ones is None or shape is None or model.constant(x) is not None:
            continue
        same_type = model.elem_type(x) == ones.dtype
        keeps_shape = ones.ndim <= len(shape) and np.broadcast_shapes(shape, ones.shape) == shape
        if same_type and keeps_shape and np.all(ones == 1):
            return x
    return None
