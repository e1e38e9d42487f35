"""Call an onnx function (the checker, shape inference) on a model without serialising its weights.

onnx's C++ functions take a ``ModelProto``, and a proto holding every weight costs a copy of
all of them and fails past protobuf's 2 GB. ``call_onnx_api`` serialises the model with each
initializer listed as a graph input (so its type and shape stay known to the callee) and only
the small ones (at most ``LIGHT_TENSOR_BYTES``) kept as data, calls the function, and puts the
model back exactly as it was (initializer order, inputs, tensors, shapes, types), whether the
call succeeds or not.

This is what onnx-ir's private ``onnx_ir.passes.common._c_api_utils.call_onnx_api`` does; sparsec
keeps its own copy so that it imports public onnx-ir names only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import onnx
import onnx_ir as ir

from sparsec.ir.gc_pause import builds

# Tensors above this many bytes leave the proto for the call (onnx-ir's limit too).
LIGHT_TENSOR_BYTES = 1000

R = TypeVar("R")


@builds
def call_onnx_api(func: Callable[[onnx.ModelProto], R], model: ir.Model) -> R:
    """``func(proto)`` on ``model`` serialised without its large tensor data; the model is
    left unchanged."""
    graph = model.graph
    initializers = list(graph.initializers.values())
    saved = [(value, value.const_value, value.shape, value.type) for value in initializers]
    inputs = list(graph.inputs)
    listed = set(inputs)
    try:
        for value in initializers:
            tensor = value.const_value
            if tensor is not None:
                if value.shape is None:
                    value.shape = ir.Shape(tensor.shape.numpy())
                if value.dtype is None:
                    value.dtype = tensor.dtype
            if value not in listed:
                graph.inputs.append(value)
            if tensor is None or tensor.nbytes > LIGHT_TENSOR_BYTES:
                graph.initializers.pop(str(value.name))
                value.const_value = None
        proto = ir.serde.serialize_model(model)
        return func(proto)
    finally:
        for name in list(graph.initializers):
            graph.initializers.pop(name)
        for value, tensor, shape, value_type in saved:
            value.const_value, value.shape, value.type = tensor, shape, value_type
            graph.initializers.add(value)
        graph.inputs.clear()
        graph.inputs.extend(inputs)
