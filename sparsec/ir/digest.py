"""Digests of a model: its content (what it computes, independent of how it was written) and
its structure (which onnx-ir objects it is made of, for caches kept beside the live graph).

``content_digest`` is the sha256 of the model's protobuf, serialized deterministically, with
every weight's bytes read in (inline or external data alike), the external-data references and
``metadata_props`` cleared. Two files with the same digest hold the same graph, the same
weights and the same opsets, whatever their data file names; the digest changes with any
node, attribute, weight byte, input or output.

``structure`` is cheap and in-memory only: the objects a graph is made of and their names (every
graph's nodes with their names, op types, inputs, attributes, and outputs' names, shapes and
types; inputs and outputs with theirs; initializers and their tensors; functions; the opsets). Any
edit made through onnx-ir (``graph.remove``, ``replace_all_uses_with``, a new tensor or
attribute, a renamed node or value) replaces, re-links or renames one of those objects and so
changes it; bytes written into an existing tensor do not (``Model.touch`` says so).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from sparsec.errors import InputError


def structure(model: ir.Model) -> tuple:
    """The objects ``model``'s graphs are made of, in order: equal (``==``) before and after a
    sequence of reads, different after any structural edit (see the module docstring). The
    tuple holds the objects themselves, not their ids, so none can be freed and its address
    reused by a new object while a key made from it is kept. One walk over the nodes (the
    subgraphs are found on the way, not by a second traversal): it runs on every cache lookup."""
    parts: list = [tuple(model.opset_imports.items())]
    for graph in (model.graph, *model.functions.values()):
        _graph_parts(graph, parts)
    return tuple(parts)


def _graph_parts(graph: Any, parts: list) -> None:
    """``graph``'s part of ``structure``, then its subgraphs' (nested ones too)."""
    parts.append(graph)  # also a separator: nodes cannot slide from one graph to another
    subgraphs: list = []
    for node in graph:
        attributes = node.attributes.values()
        parts.extend((node, node.name, node.op_type, *node.inputs, *attributes))
        for value in node.outputs:
            parts.extend((value.name, value.shape, value.type))
        for attribute in attributes:
            if attribute.is_ref():
                continue
            if attribute.type == ir.AttributeType.GRAPH:
                subgraphs.append(attribute.value)
            elif attribute.type == ir.AttributeType.GRAPHS:
                subgraphs.extend(attribute.value)
    for value in (*graph.inputs, *graph.outputs):
        parts.extend((value, value.name, value.shape, value.type))
    if isinstance(graph, ir.Graph):
        for value in graph.initializers.values():
            parts.extend((value, value.name, value.const_value))
    for subgraph in subgraphs:
        _graph_parts(subgraph, parts)


def content_digest(path: str | Path) -> str:
    try:
        proto = onnx.load(str(path), load_external_data=True)
    except Exception as error:
        raise InputError(f"cannot read {path}: {error}") from None
    del proto.metadata_props[:]
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _tensors(sub)


def read_metadata(path: str | Path) -> dict[str, str]:
    """A model file's ``metadata_props`` (its weights are not read)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise InputError(f"cannot read {path} as an ONNX model: {error}") from None
    return {prop.key: prop.value for prop in proto.metadata_props}
