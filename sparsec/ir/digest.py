"""A model's content digest: what it computes, independent of how it was written.

``content_digest`` is the sha256 of the model's protobuf, serialized deterministically, with
every weight's bytes read in (inline or external data alike), the external-data references and
``metadata_props`` cleared. Two files with the same digest hold the same graph, the same
weights and the same opsets, whatever their data file names; the digest changes with any
node, attribute, weight byte, input or output.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from sparsec.errors import InputError


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
