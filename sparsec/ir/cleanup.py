"""Graph-wide cleanup primitives that lean on onnx-ir's own passes, and single-node evaluation.

``remove_unused`` deletes what cannot influence a graph output: nodes (main graph, subgraphs,
functions), their unused optional outputs, initializers nobody reads, functions nobody calls
and opset imports nobody uses. The model's interface (inputs and outputs) never changes.
``evaluate_node`` computes one standard-domain node on constant inputs with ONNX's reference
implementation, so folding is exact by ONNX's own definition of the op; it returns None when
that implementation has no kernel for the op at the model's opset (its kernels lag the spec:
onnx 1.23 has ``DequantizeLinear`` only from version 19), so a caller folds less, never fails.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
from onnx_ir.passes.common import (
    RemoveUnusedFunctionsPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)


def remove_unused(model) -> dict[str, int]:
    """Dead-code elimination; returns how many nodes, initializers, functions, opsets went."""
    before = _census(model)
    RemoveUnusedNodesPass()(model.ir)
    _drop_unused_initializer_inputs(model)
    RemoveUnusedFunctionsPass()(model.ir)
    RemoveUnusedOpsetsPass()(model.ir)
    after = _census(model)
    removed = {key: before[key] - after[key] for key in before}
    if any(removed.values()):
        model.touch()
    return removed


def _census(model) -> dict[str, int]:
    return {
        "nodes": sum(
            1 for _ in ir.traversal.RecursiveGraphIterator(model.graph)
        ),  # function bodies apart
        "initializers": sum(len(g.initializers) for g in model.ir.graphs()),
        "functions": len(model.ir.functions),
        "opsets": len(model.ir.opset_imports),
    }


def _drop_unused_initializer_inputs(model) -> None:
    """Old exporters list initializers as graph inputs; drop those nobody reads."""
    graph = model.graph
    for value in list(graph.inputs):
        if value.is_initializer() and not value.uses() and not value.is_graph_output():
            graph.inputs.remove(value)
            del graph.initializers[value.name]


def evaluate_node(model, node: ir.Node, arrays: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """Outputs of ``node`` on the given input arrays (ONNX reference implementation), or None
    when the reference implementation lacks the op at this opset."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    attributes = [ir.serde.serialize_attribute(a) for a in node.attributes.values()]
    proto_node = onnx.helper.make_node(node.op_type, names, outputs, domain=node.domain)
    proto_node.attribute.extend(attributes)
    graph = onnx.helper.make_graph(
        [proto_node],
        "fold",
        [
            onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
            )
            for n, a in zip(names, arrays)
            if a is not None
        ],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
    )
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opsets().items()]
    try:
        evaluator = onnx.reference.ReferenceEvaluator(
            onnx.helper.make_model(graph, opset_imports=opsets)
        )
    except RuntimeError as error:  # raised while the evaluator looks its kernels up, before any run
        if "No implementation for operator" in str(error):
            return None
        raise
    feeds = {n: a for n, a in zip(names, arrays) if a is not None}
    return [np.asarray(r) for r in evaluator.run(None, feeds)]
