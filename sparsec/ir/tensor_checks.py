"""Every tensor a model file holds, walked once and checked before any library reads it.

Invariant: after ``check_tensors`` returns, every ``TensorProto`` of the file (initializers,
sparse initializers' values and indices, ``Constant`` values and every other tensor attribute,
in the main graph, in every If/Loop/Scan body and in every function) has a data type ONNX
defines, holds exactly the bytes its dims declare when embedded, and, when external, names a
regular file inside the model's folder that is long enough, at a non-negative integer offset.
A sparse tensor's indices are in range and as many as its values. Whatever fails is one
``InputError`` line naming the tensor; nothing is read from a file that was not checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import TensorProto

from sparsec.errors import InputError

_DEFINED_TYPES = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
_BITS: dict[int, int] = {
    getattr(TensorProto, name): bits
    for name, bits in (
        ("INT4", 4),
        ("UINT4", 4),
        ("FLOAT4E2M1", 4),
        ("INT2", 2),
        ("UINT2", 2),
        ("BOOL", 8),
    )
    if hasattr(TensorProto, name)  # the packed types an older onnx lacks
}
_PAIRED = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}  # two typed numbers per element
_PER_NUMBER = {
    dtype: 8 // bits for dtype, bits in _BITS.items() if bits < 8
}  # elements packed per typed number
_NAME_MAX = 255  # bytes of one path component on Linux and macOS


def iter_graphs(proto: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every If/Loop/Scan body, in it or in a function, nested ones too."""
    pending = [proto.graph]
    bodies = (
        g
        for f in proto.functions
        for n in f.node
        for a in n.attribute
        for g in _attribute_graphs(a)
    )
    pending.extend(bodies)
    while pending:
        graph = pending.pop()
        yield graph
        pending.extend(g for n in graph.node for a in n.attribute for g in _attribute_graphs(a))


def iter_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every NodeProto: every graph's (``iter_graphs``) and every function's."""
    for graph in iter_graphs(proto):
        yield from graph.node
    for function in proto.functions:
        yield from function.node


def iter_sparse(proto: onnx.ModelProto) -> Iterator[onnx.SparseTensorProto]:
    """Every sparse tensor of ``proto``: sparse initializers and sparse attributes, anywhere."""
    for graph in iter_graphs(proto):
        yield from graph.sparse_initializer
    for node in iter_nodes(proto):
        for attribute in node.attribute:
            yield from _attribute_sparse(attribute)


def iter_tensors(proto: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every dense tensor of ``proto``, sparse tensors' values and indices included."""
    for graph in iter_graphs(proto):
        yield from graph.initializer
    for node in iter_nodes(proto):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
    for sparse in iter_sparse(proto):
        yield from (sparse.values, sparse.indices)


def _attribute_sparse(attribute: onnx.AttributeProto) -> list[onnx.SparseTensorProto]:
    return ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []) + list(
        attribute.sparse_tensors
    )


def _attribute_graphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    return ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)


def check_tensors(proto: onnx.ModelProto, base_dir: Path) -> set[Path]:
    """Check every tensor of ``proto`` (see the module invariant); return the external-data
    files it reads, resolved."""
    root = base_dir.resolve()
    files = set()
    for tensor in iter_tensors(proto):
        if tensor.data_type not in _DEFINED_TYPES:
            raise InputError(
                f"tensor '{tensor.name}' has data type {tensor.data_type}, which ONNX does not define"
            )
        if tensor.data_location == TensorProto.EXTERNAL:
            files.add(_check_external(tensor, root))
        else:
            _check_embedded(tensor)
    for sparse in iter_sparse(proto):
        check_sparse(sparse)
    return files


def element_count(tensor: TensorProto) -> int:
    """Elements a tensor's dims declare (a negative dim is a corrupt file)."""
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"tensor '{tensor.name}' has a negative dimension {list(tensor.dims)}")
    return math.prod(tensor.dims)


def tensor_bytes(tensor: TensorProto) -> int:
    """Bytes a fixed-size tensor occupies as raw data (0 for strings, whose size varies)."""
    if tensor.data_type == TensorProto.STRING:
        return 0
    bits = (
        _BITS.get(tensor.data_type)
        or 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    )
    return (element_count(tensor) * bits + 7) // 8


def _check_embedded(tensor: TensorProto) -> None:
    """The tensor's embedded data holds exactly the elements its dims declare."""
    count = element_count(tensor)
    if tensor.HasField("raw_data"):
        held, expected, unit = len(tensor.raw_data), tensor_bytes(tensor), "bytes"
    else:
        held, unit = _typed_length(tensor), "numbers"
        expected = count * 2 if tensor.data_type in _PAIRED else count
        per = _PER_NUMBER.get(tensor.data_type, 1)
        expected = -(-count // per) if per > 1 else expected
    if held != expected and not (
        tensor.data_type == TensorProto.STRING and not tensor.HasField("raw_data") and held == count
    ):
        raise InputError(
            f"tensor '{tensor.name}' declares dims {list(tensor.dims)} ({expected} {unit}) but holds "
            f"{held} {unit}; the file is corrupt"
        )


def _typed_length(tensor: TensorProto) -> int:
    fields = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
    return sum(len(getattr(tensor, name)) for name in fields)


def _external_entries(tensor: TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length) of an external tensor, each checked for form."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if (
        not location
        or "\x00" in location
        or any(len(part.encode()) > _NAME_MAX for part in Path(location).parts)
    ):
        raise InputError(
            f"tensor '{tensor.name}' has an unusable external data location {location[:80]!r}"
        )
    numbers = []
    for key in ("offset", "length"):
        text = entries.get(key)
        if text is not None and not (text.isascii() and text.isdigit()):
            raise InputError(
                f"tensor '{tensor.name}' has external data {key} {text[:40]!r}; it must be a "
                "non-negative integer"
            )
        numbers.append(None if text is None else int(text))
    return location, numbers[0] or 0, numbers[1]


def _check_external(tensor: TensorProto, root: Path) -> Path:
    """The resolved file of an external tensor, after refusing what escapes, is missing, is a
    hard link, or is too short."""
    location, offset, length = _external_entries(tensor)
    try:
        target = (root / location).resolve()
        escapes = Path(location).is_absolute() or not target.is_relative_to(root)
        as_written = root / location  # resolve() tidies "nosuch/.." away; the OS does not
        status = (
            None if escapes or not (target.is_file() and as_written.is_file()) else target.stat()
        )
    except (OSError, ValueError) as error:
        raise InputError(
            f"external data '{location[:80]}' of tensor '{tensor.name}' cannot be resolved ({error})"
        ) from None
    if escapes:
        raise InputError(
            f"external data '{location}' of tensor '{tensor.name}' resolves outside the model folder "
            f"{root}; refusing to read it"
        )
    if status is None:
        raise InputError(
            f"external data file '{location}' of tensor '{tensor.name}' is missing (looked in {root})"
        )
    if status.st_nlink > 1:
        raise InputError(
            f"external data file '{location}' of tensor '{tensor.name}' is a hard link ({status.st_nlink} "
            "names); refusing to read it, as it may expose a file from outside the model folder "
            "(copy it instead)"
        )
    _check_extent(tensor, location, offset, length, status.st_size)
    return target


def _check_extent(
    tensor: TensorProto, location: str, offset: int, length: int | None, size: int
) -> None:
    needed = tensor_bytes(tensor)
    if length is not None and needed and length != needed:
        raise InputError(
            f"external data of tensor '{tensor.name}' has length {length}, but its dims "
            f"{list(tensor.dims)} need {needed} bytes; the file is corrupt"
        )
    end = offset + (length if length is not None else needed)
    if end > size:
        raise InputError(
            f"external data file '{location}' is too short for tensor '{tensor.name}' "
            f"(needs {end} bytes, has {size}); is it truncated?"
        )


def check_sparse(sparse: onnx.SparseTensorProto) -> None:
    """A sparse tensor's indices fit its dims and pair with its values (the ONNX spec's rule)."""
    name = sparse.values.name or "(sparse)"
    dims = list(sparse.dims)
    if any(d < 0 for d in dims):
        raise InputError(f"sparse tensor '{name}' has a negative dimension {dims}")
    values = element_count(sparse.values)
    if len(sparse.values.dims) != 1:
        raise InputError(
            f"sparse tensor '{name}' has values of dims {list(sparse.values.dims)}; they must be 1-D"
        )
    index_dims = list(sparse.indices.dims)
    if index_dims not in ([values], [values, len(dims)]):
        raise InputError(
            f"sparse tensor '{name}' has {values} values but indices of dims {index_dims}; "
            f"expected [{values}] or [{values}, {len(dims)}]"
        )
    if sparse.indices.data_type != TensorProto.INT64:
        raise InputError(
            f"sparse tensor '{name}' has indices of data type {sparse.indices.data_type}; ONNX requires int64"
        )
