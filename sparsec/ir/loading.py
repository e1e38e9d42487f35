"""Reading an ONNX file defensively: every way a file can be bad becomes one ``InputError`` line.

Order of checks: the path exists and is a file; the bytes parse as a ModelProto with a graph;
every tensor, sparse ones and those in subgraphs and functions included, has a defined data
type and the bytes its dims declare, and every external-data reference is a well-formed
location inside the model's folder, not a hard link, long enough (``tensor_checks``); graph
outputs have distinct names; the ONNX checker accepts the model (run with the weights lifted
out, so its cost does not grow with the weights). Only then is the model handed to onnx-ir,
which memory-maps external weights instead of reading them.

A mapped weight's pages count in the resident set once read, for as long as its mapping lives;
``release_mapped`` drops those pages from the process (they stay in the kernel's page cache);
a released tensor's bytes are read back from the cache when next used.
"""

from __future__ import annotations

import collections
import math
import mmap
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError, Message
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from sparsec.errors import InputError, one_line
from sparsec.ir.onnx_api import LIGHT_TENSOR_BYTES  # the same bound as call_onnx_api's
from sparsec.ir.tensor_checks import check_tensors, iter_nodes


def release_mapped(tensors) -> int:
    """Drop the resident pages of every ``ir.ExternalTensor`` among ``tensors`` that was read
    (others are skipped): ``madvise(MADV_DONTNEED)`` on its read-only file mapping, so its
    arrays and views stay valid and read the page cache again when next used. Returns how
    many mappings were advised."""
    released = 0
    for tensor in tensors:
        raw = tensor.raw if isinstance(tensor, ir.ExternalTensor) else None
        if raw is not None and not raw.closed:
            raw.madvise(mmap.MADV_DONTNEED)
            released += 1
    return released


def read_checked_proto(path: Path) -> tuple[onnx.ModelProto, set[Path]]:
    """The ModelProto of ``path`` (external weights not loaded), its external-data files
    checked, and the set of those files. The ONNX checker runs afterwards, on a copy without
    the weights' bytes (``check_structure``)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    proto = _parse(path)
    files = check_external_data(proto, path.parent)
    return proto, files


def embed_attribute_tensors(proto: onnx.ModelProto, base_dir: Path) -> int:
    """Read every tensor attribute held in external data (a ``Constant``'s value, in any graph or
    function) into the proto, from ``base_dir`` (checked by ``check_tensors``); return how many.
    Only initializers go to an external-data file when sparsec saves, so an attribute left
    external would point the output at a file that is not beside it."""
    count = 0
    for node in iter_nodes(proto):
        for attribute in node.attribute:
            tensors = ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
            for tensor in (t for t in tensors if uses_external_data(t)):
                load_external_data_for_tensor(tensor, str(base_dir))
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
                count += 1
    return count


def deserialize(proto: onnx.ModelProto, path: Path) -> ir.Model:
    """The onnx-ir model of a checked proto; what onnx-ir cannot represent is one ``InputError``
    naming its innermost reason (onnx-ir wraps it in one error per graph level)."""
    try:
        return ir.serde.deserialize_model(proto)
    except (
        Exception
    ) as error:  # onnx-ir raises SerdeError, TypeError, ValueError ... for what it cannot read
        reason: BaseException = error
        while reason.__cause__ is not None:
            reason = reason.__cause__
        raise InputError(
            f"{path}: cannot read this model ({type(reason).__name__}: {one_line(reason)})"
        ) from None


def check_structure(proto: onnx.ModelProto, path: Path) -> None:
    """Run the ONNX checker on ``proto`` with its large weights lifted out (``without_weights``;
    their bytes were checked by ``check_external_data``)."""
    light = without_weights(proto)
    _external_initializers_to_inputs(light)
    try:
        onnx.checker.check_model(light)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise InputError(
            f"{path}: the ONNX checker rejects this model: {one_line(error)}"
        ) from None


def _parse(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as error:
        raise InputError(
            f"{path}: not an ONNX model (protobuf parse failed: {one_line(error)})"
        ) from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise InputError(
            f"{path}: not an ONNX model (no graph found; is it truncated or another file type?)"
        )
    if not proto.opset_import:
        raise InputError(f"{path}: not an ONNX model (no opset_import; is it truncated?)")
    return proto


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> set[Path]:
    """The external-data files ``proto`` reads, after checking every tensor it holds (see
    ``tensor_checks``: sparse ones and those inside subgraphs and functions included)."""
    files = check_tensors(proto, base_dir)
    _check_interface(proto)
    return files


def _check_interface(proto: onnx.ModelProto) -> None:
    """Graph outputs, inputs and initializers with distinct names: a name listed twice is
    ambiguous to every runtime (the ONNX checker lets repeated outputs and inputs pass)."""
    graph = proto.graph
    for kind, values in (
        ("output", graph.output),
        ("input", graph.input),
        ("initializer", graph.initializer),
    ):
        counts = collections.Counter(v.name for v in values)
        twice = sorted(name for name, count in counts.items() if count > 1)
        if twice:
            raise InputError(
                f"graph {kind} '{twice[0]}' is listed {counts[twice[0]]} times; each must be listed once"
            )


def check_full(proto: onnx.ModelProto) -> str | None:
    """The first line of the checker's full-check complaint about ``proto``, or None if clean.

    Initializers held in external data are checked as typed graph inputs (their bytes were
    verified at load; the checker would look for them relative to the working directory).
    """
    _external_initializers_to_inputs(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as error:
        return one_line(error)
    return None


def without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` for the checker that costs no copy of the weights: every initializer
    is a typed graph input (as sparsec's reading treats them, whatever the IR version), only
    those of at most ``LIGHT_TENSOR_BYTES`` keep their data; metadata is left out (read as a
    dict, a repeated key is not an error); every other field is copied as it is."""
    light = onnx.ModelProto()
    _copy_fields(proto, light, skip=("graph", "metadata_props"))
    _copy_fields(proto.graph, light.graph, skip=("initializer", "metadata_props"))
    listed = {value.name for value in proto.graph.input}
    for tensor in proto.graph.initializer:
        if _declared_bytes(tensor) <= LIGHT_TENSOR_BYTES:
            light.graph.initializer.append(tensor)
        if tensor.name not in listed:  # every initializer an input, as IR < 4 requires
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    return light


def _declared_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes a tensor's dims and type declare (one per element for strings), read without
    touching its data (``ByteSize`` would encode a 100 MB tensor to measure it)."""
    count = math.prod(tensor.dims)
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # strings, undefined types: checked elsewhere
        return count


def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    """Every field set in protobuf message ``source`` but those named in ``skip``, copied into
    ``target``."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if isinstance(value, Message):
            getattr(target, field.name).CopyFrom(value)
        elif isinstance(value, (str, bytes, int, float)):
            setattr(target, field.name, value)
        else:  # a repeated field
            getattr(target, field.name).extend(value)


def _external_initializers_to_inputs(proto: onnx.ModelProto) -> None:
    graph = proto.graph
    external = [t for t in graph.initializer if uses_external_data(t)]
    listed = {i.name for i in graph.input}
    for tensor in external:
        graph.initializer.remove(tensor)
        if tensor.name not in listed:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
