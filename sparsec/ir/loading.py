"""Reading an ONNX file defensively: every way a file can be bad becomes one ``InputError`` line.

Order of checks: the path exists and is a file; the bytes parse as a ModelProto with a graph;
every external-data reference stays inside the model's folder, exists, and is long enough;
the ONNX checker accepts the model (run with the weights lifted out, so its cost does not grow
with the weights). An embedded tensor whose bytes do not fit its dims is reported when it is
first read (``Model.constant``). Only then is the model handed to onnx-ir, which
memory-maps external weights instead of reading them.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from sparsec.errors import InputError, one_line


def read_checked_proto(path: Path) -> tuple[onnx.ModelProto, set[Path]]:
    """The ModelProto of ``path`` (external weights not loaded), its external-data files
    checked, and the set of those files. The ONNX checker runs afterwards on the deserialised
    model (``check_structure``), without the weights' bytes."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    proto = _parse(path)
    files = check_external_data(proto, path.parent)
    return proto, files


def check_structure(proto: onnx.ModelProto, path: Path) -> None:
    """Run the ONNX checker on a proto whose large weights were lifted out (see
    ``Model.load``); embedded weights are checked here for a byte count matching their dims."""
    _external_initializers_to_inputs(proto)  # their bytes were checked by check_external_data
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise InputError(f"{path}: the ONNX checker rejects this model: {one_line(error)}") from None


def _parse(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not an ONNX model (protobuf parse failed: {one_line(error)})") from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise InputError(f"{path}: not an ONNX model (no graph found; is it truncated or another file type?)")
    if not proto.opset_import:
        raise InputError(f"{path}: not an ONNX model (no opset_import; is it truncated?)")
    return proto


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> set[Path]:
    """The external-data files ``proto`` reads, after refusing any that escapes ``base_dir``,
    is missing, or is shorter than its tensors need."""
    root = base_dir.resolve()
    files = set()
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = Path(info.location)
        target = (root / location).resolve()
        if location.is_absolute() or not target.is_relative_to(root):
            raise InputError(
                f"external data '{info.location}' of tensor '{tensor.name}' resolves outside the model folder {root}; refusing to read it"
            )
        if not target.is_file():
            raise InputError(f"external data file '{info.location}' of tensor '{tensor.name}' is missing (looked in {root})")
        needed = (info.offset or 0) + (info.length or _tensor_bytes(tensor))
        if needed > target.stat().st_size:
            raise InputError(
                f"external data file '{info.location}' is too short for tensor '{tensor.name}' "
                f"(needs {needed} bytes, has {target.stat().st_size}); is it truncated?"
            )
        files.add(target)
    return files


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes a fixed-size tensor occupies (0 when the dtype has no fixed size, e.g. strings)."""
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * itemsize if tensor.data_type != onnx.TensorProto.STRING else 0


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


def _external_initializers_to_inputs(proto: onnx.ModelProto) -> None:
    graph = proto.graph
    external = [t for t in graph.initializer if uses_external_data(t)]
    listed = {i.name for i in graph.input}
    for tensor in external:
        graph.initializer.remove(tensor)
        if tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))

