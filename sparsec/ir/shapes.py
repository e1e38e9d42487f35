"""ONNX shape inference over a ``Model``, optionally with input dims bound to numbers.

``infer(model, bindings)`` returns {value name: dims} where each dim is an int, a symbol name
or None; it never mutates the model (weights above 1 KB are lifted out before the C++ call so
models past 2 GB work). ``infer_node`` runs the same inference on one node from its inputs'
shapes, for the few values a pass added to a graph whose other shapes are known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.ir.onnx_api import call_onnx_api

Dims = list  # list[int | str | None]


def infer(model, bindings: Mapping[str, Sequence[int]] | None = None) -> dict[str, Dims]:
    """Inferred dims of every value in the main graph (inputs, initializers, node outputs)."""

    def run(proto: onnx.ModelProto) -> onnx.ModelProto:
        _bind_inputs(proto, bindings or {})
        try:
            return onnx.shape_inference.infer_shapes(
                proto, check_type=False, strict_mode=False, data_prop=True
            )
        except Exception:  # inference errors on one node must not end the analysis
            return proto

    inferred = call_onnx_api(run, model.ir)
    shapes: dict[str, Dims] = {}
    for info in (
        list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    ):
        dims = _dims_of(info)
        if dims is not None:
            shapes[info.name] = dims
    return shapes


def infer_cached(model, bindings: Mapping[str, Sequence[int]] | None = None) -> dict[str, Dims]:
    """``infer``, memoised until the model changes (``Model.cached``; the result is shared: read
    it, do not edit it). A binding equal to its input's declared static shape changes nothing
    and is left out of the key, so on a model with static inputs the bound inference of
    ``analysis.shapes`` and the unbound one of ``const-fold-shapes`` are one run."""
    declared = {value.name: model.static_shape(value) for value in model.graph.inputs}
    effective = {
        name: tuple(int(d) for d in dims)
        for name, dims in (bindings or {}).items()
        if name in declared and declared[name] != tuple(int(d) for d in dims)
    }
    key = "inferred_dims:" + repr(sorted(effective.items()))
    return model.cached(key, lambda: infer(model, effective))


def shape_op_result(
    op_type: str, dims: Sequence, start: int = 0, end: int | None = None
) -> np.ndarray | None:
    """What ``Shape`` (its ``start``/``end`` slice) or ``Size`` computes on a tensor of ``dims``,
    or None when a dim it needs is not a number."""
    if op_type == "Shape":
        dims = list(dims)[start:end]
    if not all(isinstance(d, int) for d in dims):
        return None
    if op_type == "Size":
        return np.array(int(np.prod(dims)), dtype=np.int64)
    return np.array(dims, dtype=np.int64)


def _bind_inputs(proto: onnx.ModelProto, bindings: Mapping[str, Sequence[int]]) -> None:
    for graph_input in proto.graph.input:
        dims = bindings.get(graph_input.name)
        if dims is None or not graph_input.type.HasField("tensor_type"):
            continue
        shape = graph_input.type.tensor_type.shape
        shape.ClearField("dim")
        for size in dims:
            shape.dim.add().dim_value = int(size)


def _dims_of(info: onnx.ValueInfoProto) -> Dims | None:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    dims: Dims = []
    for dim in info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


CONSTANT_ELEMENTS = 64  # constant inputs up to this size go to node inference as data


def infer_node(model, node, shapes: Mapping[str, tuple], dtypes: dict) -> dict | None:
    """{output name: shape} of ``node`` by ONNX's inference of that one node, from its inputs'
    ``shapes`` and element types (``dtypes`` first, where it is extended with the outputs'),
    small constant inputs given as data (a Reshape's target); None when an input's shape or
    type is unknown, the op has no ONNX schema or holds a subgraph (whose declared shapes may
    be an export's batch), inference fails or an output is not static."""
    schema = _schema(model, node)
    if schema is None or any(a.type in _GRAPH_ATTRIBUTES for a in node.attributes.values()):
        return None
    types, data = {}, {}
    for value in node.inputs:
        if value is None or not value.name:
            continue
        small = _small_constant(model, value)
        dtype = dtypes.get(value.name) or value.dtype
        if dtype is None and value.const_value is not None:
            dtype = value.const_value.dtype
        if dtype is None and small is not None:
            dtype = ir.DataType.from_numpy(small.dtype)
        if value.name not in shapes or dtype is None:
            return None
        types[value.name] = onnx.helper.make_tensor_type_proto(int(dtype), shapes[value.name])
        if small is not None:
            data[value.name] = onnx.numpy_helper.from_array(small, value.name)
    try:
        proto = ir.serde.serialize_node(node)
        inferred = onnx.shape_inference.infer_node_outputs(schema, proto, types, data)
    except Exception:  # onnx raises several kinds; any means "not known"
        return None
    return _static_outputs(inferred, dtypes)


_GRAPH_ATTRIBUTES = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _schema(model, node):
    """The ONNX schema of ``node`` at the model's opset for its domain ("" and "ai.onnx"
    alike), or None (a custom domain, a function)."""
    domain = "" if node.domain in ("", "ai.onnx", None) else node.domain
    version = model.opset if domain == "" else model.opsets().get(domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _small_constant(model, value) -> np.ndarray | None:
    """``value``'s array when it is a constant of at most ``CONSTANT_ELEMENTS`` elements (its
    shape read first: a weight is not loaded to be measured)."""
    shape = model.constant_shape(value)
    if shape is None or int(np.prod(shape)) > CONSTANT_ELEMENTS:
        return None
    return model.constant(value)


def _static_outputs(inferred: Mapping[str, onnx.TypeProto], dtypes: dict) -> dict | None:
    found = {}
    for name, type_proto in inferred.items():
        dims = _dims_of(onnx.helper.make_value_info(name, type_proto))
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        found[name] = tuple(dims)
        dtypes[name] = ir.DataType(type_proto.tensor_type.elem_type)
    return found
