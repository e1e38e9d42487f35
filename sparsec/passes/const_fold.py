"""Constant folding of shape-only subgraphs.

A node is folded when every input is constant (an initializer, a ``Constant`` node or an
already folded value) and every output it computes is shape-like: integer or boolean, with at
most ``max_elements`` elements. ``Shape`` and ``Size`` fold when their input's shape is fully
static as the model declares it (never from bound example dims, so symbolic batch sizes stay
symbolic). Folding never touches float compute, so weights are not duplicated and the model's
numerics cannot change; results come from ONNX's reference implementation, and a node it has
no kernel for at the model's opset is simply not folded.

Quantization ops never fold, though their outputs may be integers: ``DequantizeLinear`` of an
int8 weight folded into a float initializer would de-quantize the model (4x the weight bytes)
and ``QuantizeLinear`` of a float weight would change its stored precision; neither is a shape.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from sparsec.ir import cleanup
from sparsec.ir import shapes as ir_shapes
from sparsec.passes.base import InPlacePass, PassError, PassResult

# Ops whose value depends on more than their inputs, or that hold subgraphs; quantization ops.
NEVER_FOLD = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "Constant",
    "ConstantOfShape",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
}

# Ops whose outputs have their first input's element type (ONNX's type constraints): on a float
# first input they cannot produce a shape, so they are not evaluated at all (old exporters feed
# hundreds of Unsqueezes of float BN parameters through here; each cost a reference evaluator).
SAME_TYPE_AS_FIRST_INPUT = {
    "Identity",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Flatten",
    "Transpose",
    "Concat",
    "Expand",
    "Tile",
    "Slice",
    "Gather",
    "Split",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Abs",
}


def _static_shape_result(model, node, shapes: dict) -> np.ndarray | None:
    """Shape (its start/end slice) or Size of a tensor whose needed dims are all static."""
    dims = shapes.get(node.inputs[0].name) if node.inputs[0] is not None else None
    if dims is None:
        return None
    start, end = model.attr(node, "start", 0), model.attr(node, "end", None)
    return ir_shapes.shape_op_result(node.op_type, dims, start, end)


def _is_shape_like(array: np.ndarray, max_elements: int) -> bool:
    return (array.dtype.kind in "iub") and array.size <= max_elements


def _fold_result(model, node, shapes: dict, max_elements: int) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLD:
        return None
    if any(o.is_graph_output() for o in node.outputs):
        return None
    if node.op_type in ("Shape", "Size"):
        result = _static_shape_result(model, node, shapes)
        return None if result is None or not _is_shape_like(result, max_elements) else [result]
    # Sizes first: a large ConstantOfShape input must not be materialised just to be refused.
    sizes = [model.constant_shape(v) for v in node.inputs if v is not None]
    if not sizes or any(shape is None or math.prod(shape) > max_elements for shape in sizes):
        return None
    arrays = [model.constant(v) if v is not None else None for v in node.inputs]
    first = arrays[0]
    if (
        node.op_type in SAME_TYPE_AS_FIRST_INPUT
        and first is not None
        and first.dtype.kind not in "iub"
    ):
        return None  # its result would be refused below: the same outcome, without running it
    results = cleanup.evaluate_node(model, node, arrays)
    return (
        results
        if results is not None and all(_is_shape_like(r, max_elements) for r in results)
        else None
    )


class ConstantFoldShapesPass(InPlacePass):
    """Fold Shape/Gather/Concat/Unsqueeze-style integer subgraphs into constants."""

    name: ClassVar[str] = "const-fold-shapes"
    keeps_value_shapes: ClassVar[bool] = True
    summary: ClassVar[str] = (
        "Fold shape-only integer subgraphs (Shape, Gather, Concat, ...) into constants."
    )

    def __init__(self, max_elements: int = 1024) -> None:
        """Options of ``const-fold-shapes``.

        Args:
            max_elements: The largest integer tensor a node may produce and still be folded
                into a constant (at least 1); bigger results are left to run.
        """
        self.max_elements = max_elements

    def check_options(self) -> None:
        if self.max_elements < 1:
            raise PassError(
                f"const-fold-shapes: max_elements must be at least 1, got {self.max_elements}"
            )

    def call(self, model) -> PassResult:
        reads_shapes = any(node.op_type in ("Shape", "Size") for node in model.nodes())
        shapes = (
            ir_shapes.infer_cached(model) if reads_shapes else {}
        )  # declared dims only: symbolic batch stays symbolic
        folded = 0
        for node in model.nodes():
            results = _fold_result(model, node, shapes, self.max_elements)
            if results is None:
                continue
            for output, array in zip(node.outputs, results):
                if output.uses():
                    model.replace_all_uses(
                        output, model.add_initializer(output.name or "folded", array)
                    )
            model.remove_node(node)
            folded += 1
        return PassResult(model, modified=folded > 0, stats={"nodes_folded": folded})
