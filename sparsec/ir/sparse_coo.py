"""ONNX ``sparse_initializer`` (COO) on the way in and out of a ``Model``.

Invariant: in memory every weight is a dense initializer (onnx-ir has no sparse initializers).
A file's ``sparse_initializer`` entries are made dense at load, and their names are recorded in
the metadata key ``COO_KEY``; every initializer named there is written back as a
``sparse_initializer`` (values + int64 linear indices into the flattened tensor, the form the
ONNX spec calls "linearized"), so a model round-trips in the form it came in. Removing the
names (``densify``) makes the next save dense.

Bytes: nnz·(itemsize + 8) against size·itemsize dense, so COO shrinks an fp32 tensor only above
2/3 sparsity, an fp16 one above 4/5. The ONNX checker's full check cannot type a sparse initializer (its shape
inference gives it rank 0), so ``Model.check`` runs the full check on the dense form and only
the structural check on the sparse one; onnxruntime reads the sparse form unmodified.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from sparsec.errors import InputError, one_line
from sparsec.ir.tensor_checks import iter_nodes

COO_KEY = "sparsec.coo_tensors"
INDEX_BYTES = 8  # ONNX requires int64 indices


def coo_bytes(array: np.ndarray) -> int:
    """Bytes of ``array`` as a sparse initializer (values + int64 linear indices)."""
    return int(np.count_nonzero(array)) * (array.dtype.itemsize + INDEX_BYTES)


def coo_names(metadata: dict[str, str]) -> list[str]:
    return json.loads(metadata.get(COO_KEY) or "[]")


def densify_sparse_initializers(proto: onnx.ModelProto, base_dir: Path) -> list[str]:
    """Move every sparse initializer of the main graph into ``initializer`` as a dense tensor
    of the same name; return their names. External values and indices are read from
    ``base_dir`` (the model's folder, already checked by ``tensor_checks``)."""
    graph = proto.graph
    names = []
    for sparse in list(graph.sparse_initializer):
        dense = numpy_helper.from_array(_dense_array(sparse, base_dir), sparse.values.name)
        graph.initializer.append(dense)
        names.append(sparse.values.name)
    del graph.sparse_initializer[:]
    return names


def densify_sparse_constants(proto: onnx.ModelProto, base_dir: Path) -> int:
    """Give every ``Constant`` holding a ``sparse_value`` (any graph, any function) the dense
    ``value`` it stands for (onnx-ir reads no sparse attributes); return how many changed."""
    changed = 0
    for node in iter_nodes(proto):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attribute in [a for a in node.attribute if a.name == "sparse_value"]:
            dense = numpy_helper.from_array(_dense_array(attribute.sparse_tensor, base_dir))
            node.attribute.remove(attribute)
            node.attribute.append(onnx.helper.make_attribute("value", dense))
            changed += 1
    return changed


def _dense_array(sparse: onnx.SparseTensorProto, base_dir: Path) -> np.ndarray:
    """The dense array of a sparse tensor, linear ([nnz]) or coordinate ([nnz, rank]) indices;
    ``InputError`` when an index falls outside the dims."""
    values = numpy_helper.to_array(sparse.values, base_dir=str(base_dir)).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices, base_dir=str(base_dir)).astype(np.int64)
    shape = tuple(sparse.dims)
    size = int(np.prod(shape))
    bounds = (
        np.array(shape, dtype=np.int64) if indices.ndim == 2 else np.array([size], dtype=np.int64)
    )
    if indices.size and (indices.min() < 0 or np.any(indices.reshape(len(values), -1) >= bounds)):
        raise InputError(
            f"sparse tensor '{sparse.values.name}' has an index outside its dims {list(shape)}"
        )
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), shape)
    dense = np.zeros(size, dtype=values.dtype)
    dense[flat] = values
    return dense.reshape(shape)


def sparsify_initializers(proto: onnx.ModelProto, names: list[str]) -> None:
    """Replace the named initializers of the main graph by sparse initializers."""
    wanted = set(names)
    graph = proto.graph
    for tensor in [t for t in graph.initializer if t.name in wanted]:
        array = numpy_helper.to_array(tensor)
        flat = np.flatnonzero(array)
        values = numpy_helper.from_array(array.reshape(-1)[flat], tensor.name)
        indices = numpy_helper.from_array(flat.astype(np.int64), f"{tensor.name}__indices")
        graph.sparse_initializer.append(
            onnx.helper.make_sparse_tensor(values, indices, list(array.shape))
        )
        graph.initializer.remove(tensor)


def check_sparse_structure(proto: onnx.ModelProto) -> str | None:
    """The structural checker's complaint about a proto with sparse initializers, or None."""
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as error:
        return one_line(error)
    return None
