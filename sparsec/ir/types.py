"""Value types beyond tensors: maps for onnx-ir, and one printable name per type.

Invariant: every ONNX value type a valid model can declare (tensor, sparse tensor, sequence,
map, optional, nested) loads into the IR, survives edits and is written back unchanged.
onnx-ir 1.1 has no map type (its serde raises ``NotImplementedError`` on ``map_type``, and
every scikit-learn classifier converted by skl2onnx has one: ZipMap's
``seq(map(int64|string, tensor(float)))``). ``MapType`` fills that gap and ``install()``
teaches onnx-ir's serde to read and write it; a map has no tensor shape (None). It is
installed when ``sparsec.ir`` is imported, and does nothing if onnx-ir reads maps itself.

``type_name`` spells a type the way onnxruntime does (``tensor(float)``,
``seq(map(int64,tensor(float)))``, ``optional(tensor(int64))``).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir import serde


class MapType(ir.TypeProtocol):
    """``map(key, value)``: ``key_type`` a DataType, ``value_type`` a type (``dtype`` is the
    value's, as onnx-ir's sequence and optional types report their element's), and
    ``value_shape`` the value type's declared shape, if any (ZipMap declares a scalar), kept
    here because a map value has no shape of its own in the IR."""

    __slots__ = ("denotation", "key_type", "value_shape", "value_type")

    def __init__(
        self, key_type: ir.DataType, value_type, *, value_shape=None, denotation: str | None = None
    ) -> None:
        self.key_type = key_type
        self.value_type = value_type
        self.value_shape = value_shape
        self.denotation = denotation

    # onnx-ir's protocol declares these two as attributes; a map's are its value type's, read-only
    @property
    def elem_type(self):  # type: ignore[override]
        return self.value_type

    @property
    def dtype(self) -> ir.DataType:  # type: ignore[override]
        return self.value_type.dtype

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MapType) and (self.key_type, self.value_type) == (
            other.key_type,
            other.value_type,
        )

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"Map({self.key_type!r}, {self.value_type!r})"


def is_tensor(value_type) -> bool:
    """Whether a value of this type is a plain (dense) tensor; an unknown type (None) counts
    as one, as a value inferred later usually is."""
    return value_type is None or isinstance(value_type, ir.TensorType)


def type_name(value_type) -> str | None:
    """onnxruntime's spelling of a type (None when unknown)."""
    if value_type is None:
        return None
    if isinstance(value_type, ir.TensorType):
        return f"tensor({_element_name(value_type.dtype)})"
    if isinstance(value_type, ir.SparseTensorType):
        return f"sparse_tensor({_element_name(value_type.dtype)})"
    if isinstance(value_type, (ir.SequenceType, ir.OptionalType)):
        kind = "seq" if isinstance(value_type, ir.SequenceType) else "optional"
        return f"{kind}({type_name(value_type.elem_type)})"
    key = getattr(value_type, "key_type", None)  # a map, ours or a later onnx-ir's
    return (
        f"map({_element_name(key)},{type_name(value_type.value_type)})"
        if key is not None
        else repr(value_type)
    )


def _element_name(dtype: ir.DataType) -> str:
    """ONNX's name of an element type, as onnxruntime prints it ('float', 'int64', 'string')."""
    return onnx.helper.tensor_dtype_to_string(dtype.value).removeprefix("TensorProto.").lower()


def install() -> None:
    """Wrap onnx-ir's three type (de)serializers so they handle ``map_type`` (idempotent)."""
    if getattr(serde.serialize_type_into, "_sparsec_maps", False) or _reads_maps():
        return
    read_type, read_shape, write_type = (
        serde.deserialize_type_proto_for_type,
        serde.deserialize_type_proto_for_shape,
        serde.serialize_type_into,
    )
    write_shape = serde.serialize_shape_into

    def deserialize_type(proto: onnx.TypeProto):
        if not proto.HasField("map_type"):
            return read_type(proto)
        key, value = ir.DataType(proto.map_type.key_type), proto.map_type.value_type
        return MapType(
            key,
            deserialize_type(value),
            value_shape=deserialize_shape(value),
            denotation=proto.denotation or None,
        )

    def deserialize_shape(proto: onnx.TypeProto):
        return None if proto.HasField("map_type") else read_shape(proto)

    def serialize_type(type_proto: onnx.TypeProto, from_) -> None:
        if not isinstance(from_, MapType):
            return write_type(type_proto, from_)
        if from_.denotation:
            type_proto.denotation = from_.denotation
        type_proto.map_type.key_type = from_.key_type.value
        serialize_type(type_proto.map_type.value_type, from_.value_type)
        if from_.value_shape is not None:
            write_shape(type_proto.map_type.value_type, from_.value_shape)
        return None

    serialize_type._sparsec_maps = True  # type: ignore[attr-defined]  # the mark that makes install() idempotent
    # onnx-ir's serde calls these through its module globals (recursion included)
    serde.deserialize_type_proto_for_type = deserialize_type
    serde.deserialize_type_proto_for_shape = deserialize_shape
    serde.serialize_type_into = serialize_type


def _reads_maps() -> bool:
    """Whether this onnx-ir reads a map type by itself (a later release may)."""
    proto = onnx.helper.make_map_type_proto(
        onnx.TensorProto.INT64, onnx.helper.make_tensor_type_proto(1, [])
    )
    try:
        return serde.deserialize_type_proto_for_type(proto) is not None
    except Exception:  # onnx-ir 1.1: NotImplementedError wrapped in its SerdeError
        return False
