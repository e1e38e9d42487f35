"""Sparse-encoded weights that onnxruntime runs unmodified, and the way back to dense.

``nm``: for weights that hold an N:M pattern along their reduction axis, the N values of every
run of M and their positions (``field_bits(M)`` bits each, only where N·bits ≤ M), decoded by
unpacking the positions the same way and ``ScatterElements`` into zeros along the run, then
Reshape/Transpose back to the weight's layout.

``bitmask``: a weight W (N elements) becomes two ordinary initializers, ``<W>__values`` (a zero
followed by the kept values, in order) and ``<W>__bits`` (one bit per element, packed eight to
a byte, little-endian), and a decoder of standard ops whose output keeps W's name:

    idx = Range(0, N, 1)                       int32 positions
    bit = (Gather(bytes, idx / 8) / Gather(2^k, idx % 8)) % 2
    W   = Reshape(Gather(values, CumSum(bit) · bit), shape)

``coo``: the weight stays a dense initializer in memory and is written as an ONNX
``sparse_initializer`` (values + int64 linear indices; see ``sparsec.ir.sparse_coo``), which
onnxruntime densifies at load; not a standard-op decoder, so other runtimes may refuse it, and
it only shrinks fp32 weights above 2/3 sparsity.

Every decoder input is an initializer, so onnxruntime's basic constant folding runs the decoder
once at session creation: outputs are bit-identical to the dense form and no decoder op is
left in the optimized graph (``check_encoded`` asserts both). Intermediates are int32 (int64
costs memory), there is no BitShift or Where (types and fp16 kernels), and the ops exist from
opset 11. ``densify`` decodes every encoded weight back into a plain initializer (the list is
in the ``sparsec.sparse_tensors`` metadata).

Encoding only where it pays: a weight is encoded exactly when the file gets smaller by it, as
measured, not estimated: ``_SizeProbe`` puts the weight alone in an empty copy of the model and
serializes it dense, then encoded (its initializers, decoder nodes and metadata record), and
the difference is the weight's saving. Weights with a positive saving are encoded, unless
their savings together do not pay for the metadata keys every encoded model carries (then none
is, and one diagnostic says so). So the encoding never makes the file larger; the pass checks
the model it leaves against the input file's size and warns when something else did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sparsec.analysis.weight_sites import weight_sites
from sparsec.ir.sparse_coo import coo_bytes
from sparsec.passes.base import Diagnostic, InPlacePass, PassError, PassResult
from sparsec.pruning.weights import parse_nm

TENSORS_KEY = "sparsec.sparse_tensors"
FORMAT_KEY = "sparsec.sparse_format"
DECODER_PREFIX = "sparsec_decode"


FORMATS = ("bitmask", "nm", "coo")
FIELD_BITS = (1, 2, 4, 8)  # packed field widths: a field never straddles two bytes


def field_bits(m: int) -> int:
    """Bits per stored N:M position: the smallest width in FIELD_BITS holding 0..m-1."""
    return next(b for b in FIELD_BITS if 2**b >= m)


def pack_fields(fields: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ints below 2**bits, packed little-endian into bytes (8 // bits per byte)."""
    per = 8 // bits
    padded = np.zeros(-(-fields.size // per) * per, dtype=np.uint16)
    padded[: fields.size] = fields.reshape(-1)
    return (padded.reshape(-1, per) << (bits * np.arange(per))).sum(axis=1).astype(np.uint8)


def unpack_fields(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    per = 8 // bits
    shifted = packed.astype(np.int64)[:, None] >> (bits * np.arange(per))
    return (shifted & (2**bits - 1)).reshape(-1)[:count]


def bitmask_bytes(array: np.ndarray) -> int:
    return (int(np.count_nonzero(array)) + 1) * array.dtype.itemsize + (array.size + 7) // 8


def nm_bytes(array: np.ndarray, n: int, m: int) -> int:
    groups = array.size // m
    return groups * n * array.dtype.itemsize + -(-groups * n * field_bits(m) // 8)


def nm_fits(array: np.ndarray, axis: int, n: int, m: int) -> bool:
    """Whether every run of m along ``axis`` holds at most n non-zeros (and m divides it)."""
    if array.shape[axis] % m:
        return False
    moved = np.moveaxis(array, axis, -1)
    return bool((np.count_nonzero(moved.reshape(-1, m), axis=1) <= n).all())


class SparseEncodePass(InPlacePass):
    """Store mostly-zero weights compactly, with a decoder onnxruntime folds at session creation."""

    name: ClassVar[str] = "sparse-encode"
    summary: ClassVar[str] = (
        "Store mostly-zero weights as values + bitmask or N:M positions, decoded by folding."
    )

    def __init__(self, format: str = "bitmask", nm: str = "") -> None:
        """Options of ``sparse-encode``.

        Args:
            format: How a weight is stored: ``bitmask`` (kept values + one bit per weight),
                ``nm`` (kept values + their positions in each run of M; needs ``nm``) or
                ``coo`` (an ONNX ``sparse_initializer``, onnxruntime only). A weight is
                encoded only when that makes the file smaller (decoder nodes included).
            nm: The N:M pattern the weights already hold, e.g. ``2:4`` (only with
                ``format=nm``, where N positions of ⌈log2 M⌉ bits, rounded up to 1, 2, 4 or 8,
                must fit in M bits).
        """
        self.format, self.nm = format, nm

    def _nm(self) -> tuple[int, int]:
        pattern = parse_nm(self.nm)
        if pattern is None:
            raise PassError(f"sparse-encode: nm='{self.nm}' is not an N:M pattern")
        return pattern

    def check_options(self) -> None:
        if self.format not in FORMATS:
            raise PassError(f"sparse-encode: unknown format '{self.format}' ({', '.join(FORMATS)})")
        if self.format == "nm":
            if parse_nm(self.nm) is None:
                raise PassError(
                    f"sparse-encode: format nm needs nm='N:M' (the pattern the weights hold), got '{self.nm}'"
                )
            n, m = self._nm()
            if n * field_bits(m) > m:
                raise PassError(
                    f"sparse-encode: {n}:{m} positions take {n * field_bits(m)} bits per {m} weights; "
                    "the nm format needs at most M (use bitmask)"
                )

    def requires(self, model) -> None:
        if self.format == "coo" and model.needs_external_data():
            raise PassError(
                "sparse-encode: format coo is not written with external data (the weights live in a "
                ".data file); use bitmask or nm"
            )
        if model.opset < 11 and self.format != "coo":
            raise PassError(
                f"sparse-encode: the decoder needs opset 11 or newer (the model has {model.opset})"
            )

    def call(self, model) -> PassResult:
        first = not json.loads(model.metadata(TENSORS_KEY) or "{}")  # not a fixed point's rerun
        probe = _SizeProbe(model)
        plans = self.plan(model, probe)
        fixed = probe.fixed_cost(model, self.format)
        total = sum(plan.saving for plan in plans)
        diagnostics = []
        if plans and total <= fixed:
            diagnostics.append(_not_worth_it(self.format, len(plans), total, fixed))
            plans = []
        elif not plans and first:
            diagnostics.append(_nothing_pays(self.format))
        sizes = self.apply(model, plans)
        diagnostics += [_encoded_line(size) for size in sizes]
        saved = total - fixed if sizes else 0
        growth = _growth_check(model, saved) if sizes or first else None
        result = PassResult(
            model,
            modified=bool(sizes),
            stats={"tensors_encoded": len(sizes), "bytes_saved": saved},
            diagnostics=diagnostics + ([growth] if growth else []),
        )
        result.artifacts["encoding"] = sizes
        return result

    def plan(self, model, probe: _SizeProbe | None = None) -> list[EncodingPlan]:
        """The weights whose encoding makes the file smaller, each with its measured saving."""
        encoded = json.loads(model.metadata(TENSORS_KEY) or "{}")
        axes = {site.name: site.axis for site in weight_sites(model, embeddings=True)[0]}
        probe, plans = probe or _SizeProbe(model), []
        for name, value in list(model.initializers().items()):
            array = model.constant(value) if _candidate(model, value) else None
            if array is None or array.dtype.kind != "f" or name in encoded:
                continue
            axis = axes.get(name)
            size = self._size(array, axis)
            if size is None or size >= array.nbytes:  # the data alone does not shrink
                continue
            saving, record = probe.saving(
                value, array, lambda m, v, a=array, x=axis: self._encode(m, v, a, x), encoded
            )
            if saving > 0:
                plans.append(EncodingPlan(name, axis, size, saving))
                encoded[name] = record  # the next weight's record is measured beside it
        return plans

    def apply(self, model, plans: list[EncodingPlan]) -> list[dict]:
        """Encode the planned weights; their sizes (the ``encoding`` artifact)."""
        encoded = json.loads(model.metadata(TENSORS_KEY) or "{}")
        sizes = []
        for plan in plans:
            value = model.initializers()[plan.name]
            array = model.constant(value)
            encoded[plan.name] = self._encode(model, value, array, plan.axis)
            sizes.append(
                {
                    "name": plan.name,
                    "format": self.format,
                    "bytes_dense": int(array.nbytes),
                    "bytes_encoded": plan.encoded_bytes,
                    "bytes_saved": plan.saving,
                }
            )
        if sizes:
            model.set_metadata(TENSORS_KEY, json.dumps(encoded, sort_keys=True))
            model.set_metadata(FORMAT_KEY, self.format)
        return sizes

    def _size(self, array: np.ndarray, axis: int | None) -> int | None:
        if self.format == "bitmask":
            return bitmask_bytes(array)
        if self.format == "coo":
            return coo_bytes(array)
        n, m = self._nm()
        return nm_bytes(array, n, m) if axis is not None and nm_fits(array, axis, n, m) else None

    def _encode(self, model, value, array: np.ndarray, axis: int | None) -> dict:
        if self.format == "bitmask":
            return _encode_bitmask(_Decoder(model, value), array)
        if self.format == "coo":
            model.set_sparse_initializer_names([*model.sparse_initializer_names(), value.name])
            return {"format": "coo", "shape": list(array.shape)}
        assert axis is not None  # _size found the N:M pattern along it
        return _encode_nm(_Decoder(model, value), array, axis, *self._nm())


@dataclass(frozen=True)
class EncodingPlan:
    """A weight to encode: its reduction axis (nm), its data bytes encoded, and the bytes the
    file loses by encoding it (measured: data, decoder nodes and metadata record included)."""

    name: str
    axis: int | None
    encoded_bytes: int
    saving: int


def _encoded_line(size: dict) -> Diagnostic:
    return Diagnostic(
        "info",
        "sparse.encoded",
        f"'{size['name']}': {100 * size['bytes_encoded'] / size['bytes_dense']:.1f} % of dense "
        f"bytes, {size['bytes_saved']} bytes saved with its decoder",
    )


def _nothing_pays(format: str) -> Diagnostic:
    return Diagnostic(
        "info",
        "sparse.nothing-encoded",
        f"no weight was {format}-encoded: none is sparse and large enough for its encoding and "
        "decoder nodes to take fewer bytes than its dense form; the output stays dense",
    )


def _not_worth_it(format: str, count: int, saving: int, fixed: int) -> Diagnostic:
    return Diagnostic(
        "info",
        "sparse.nothing-encoded",
        f"no weight was {format}-encoded: the {count} weight(s) that shrink would save "
        f"{saving} bytes, no more than the {fixed} bytes of metadata an encoded model carries; "
        "the output stays dense",
    )


def _growth_check(model, saved: int) -> Diagnostic | None:
    """A warning when the model as it stands would be written larger than the file it was
    loaded from (the encoding itself only ever saves bytes; other passes, value types or
    metadata can add some). Models written with external data are measured by weight bytes."""
    if model.source_bytes is None:
        return None
    written = model.weight_bytes() if model.needs_external_data() else _serialized_bytes(model)
    if written <= model.source_bytes:
        return None
    return Diagnostic(
        "warning",
        "sparse.file-grows",
        f"the model takes {written} bytes, more than the {model.source_bytes} of its input "
        f"file: its encoding saved {saved} bytes, the rest of the model grew more (passes "
        "before it, declared value types, metadata)",
    )


def _serialized_bytes(model) -> int:
    """The bytes of ``model`` written as one protobuf, weights inline."""
    return int(model.to_proto().ByteSize())


class _SizeProbe:
    """Measures what encoding one weight does to the file: the weight alone in an empty copy of
    the model (one node reading it, no metadata), serialized dense then encoded."""

    def __init__(self, model) -> None:
        self.template = _empty_copy(model)

    def saving(self, value, array: np.ndarray, encode: Callable, records: dict) -> tuple[int, dict]:
        """Dense bytes minus encoded bytes (initializers, decoder nodes, metadata record) of
        ``value`` holding ``array``, where ``encode(model, value)`` encodes it and returns its
        record, and ``records`` are those of the weights encoded before it (the metadata
        string they make, and its length prefix, are the file's); and the record."""
        probe = self.template.copy()
        reader = probe.nodes()[0]
        weight = probe.add_initializer(str(value.name), array)
        probe.set_input(reader, 0, weight)
        probe.set_metadata(TENSORS_KEY, json.dumps(records, sort_keys=True))
        dense = _serialized_bytes(probe)
        record = encode(probe, weight)
        probe.set_metadata(TENSORS_KEY, json.dumps({**records, value.name: record}, sort_keys=True))
        return dense - _serialized_bytes(probe), record

    def fixed_cost(self, model, format: str) -> int:
        """The bytes of the metadata keys an encoded model carries whatever it encodes (none
        when ``model`` already has them)."""
        if model.metadata(TENSORS_KEY) is not None and model.metadata(FORMAT_KEY) is not None:
            return 0
        probe = self.template.copy()
        bare = _serialized_bytes(probe)
        probe.set_metadata(TENSORS_KEY, "{}")
        probe.set_metadata(FORMAT_KEY, format)
        return _serialized_bytes(probe) - bare


def _empty_copy(model):
    """A copy of ``model`` with one node left, reading nothing, and no initializers, inputs,
    outputs, functions or metadata: the frame ``_SizeProbe`` puts one weight in."""
    copy = model.copy()
    copy.source_files, copy.source_bytes = set(), None
    graph = copy.graph
    nodes = list(graph)
    reader = next((node for node in nodes if node.inputs), nodes[0] if nodes else None)
    for node in reversed(nodes):
        if node is not reader:
            graph.remove(node, safe=False)
    if reader is not None:
        for index in range(len(reader.inputs)):
            reader.replace_input_with(index, None)
    for name in list(graph.initializers):
        graph.initializers.pop(name)
    graph.inputs.clear()
    graph.outputs.clear()
    copy.ir.metadata_props.clear()
    copy.ir.functions.clear()
    copy.touch()
    return copy


def _candidate(model, value) -> bool:
    uses = list(value.uses())
    return (
        model.constant_shape(value) is not None
        and not value.is_graph_input()
        and not value.is_graph_output()
        and bool(uses)
        and all(use.node.graph is model.graph for use in uses)
    )


def _range_dtype(count: int) -> type:
    """float32 holds every position exactly below 2**24 (and is never shape-folded); beyond, int32."""
    return np.float32 if count < 2**24 else np.int32


class _Decoder:
    """Builds a decoder for one weight: initializers named after it, nodes placed before its
    first consumer and named ``sparsec_decode/<weight>/...``; ``finish`` hands it the name."""

    def __init__(self, model, value) -> None:
        self.model, self.value, self.name = model, value, value.name
        order = {id(node): i for i, node in enumerate(model.nodes())}
        self.before = min(
            (use.node for use in value.uses()), key=lambda node: order.get(id(node), len(order))
        )

    def const(self, key: str, array: np.ndarray):
        return self.model.add_initializer(f"{self.name}__{key}", np.asarray(array))

    def op(self, op_type: str, inputs, **attrs):
        return self.model.add_node(
            op_type, inputs, attrs, before=self.before, name=f"{DECODER_PREFIX}/{self.name}"
        )

    def fields(self, packed, count: int, bits: int):
        """Unpack ``count`` little-endian ``bits``-wide fields from ``packed`` (int32 result):
        (byte[i // per] // 2**(bits·(i % per))) % 2**bits.

        The positions come from a float Range (exact below 2**24; Cast to int32) and the
        bytes are gathered before their Cast, so that no integer node reads constants only:
        sparsec's shape folding (``const-fold-shapes``, which folds small integer results of
        constants) leaves the decoder whole in a fixed-point pipeline, where it would otherwise
        turn a small weight's positions and bits into int32 initializers (and the file would
        grow). onnxruntime folds it all the same."""
        per = 8 // bits
        index = self.op(
            "Range",
            [
                self.const(key, np.array(v, _range_dtype(count)))
                for key, v in (("zero", 0), ("count", count), ("one", 1))
            ],
        )
        if _range_dtype(count) != np.int32:
            index = self.op("Cast", [index], to=6)  # 6: int32
        per_byte = self.const("per_byte", np.array(per, np.int32))
        byte = self.op(
            "Cast", [self.op("Gather", [packed, self.op("Div", [index, per_byte])])], to=6
        )  # 6: int32
        scale = self.op(
            "Gather",
            [
                self.const("scales", (2 ** (bits * np.arange(per))).astype(np.int32)),
                self.op("Mod", [index, per_byte]),
            ],
        )
        return self.op(
            "Mod",
            [self.op("Div", [byte, scale]), self.const("modulus", np.array(2**bits, np.int32))],
        )

    def finish(self, decoded) -> None:
        self.model.replace_initializer(self.value, decoded)


def _encode_bitmask(decoder: _Decoder, array: np.ndarray) -> dict:
    """W = Reshape(Gather([0, kept...], CumSum(bit) · bit), shape)."""
    flat = array.reshape(-1)
    keep = flat != 0
    values = decoder.const("values", np.concatenate([np.zeros(1, array.dtype), flat[keep]]))
    bits = decoder.const("bits", pack_fields(keep.astype(np.uint8), 1))
    bit = decoder.fields(bits, flat.size, 1)
    position = decoder.op(
        "Mul", [decoder.op("CumSum", [bit, decoder.const("axis", np.array(0, np.int32))]), bit]
    )
    decoder.finish(
        decoder.op(
            "Reshape",
            [
                decoder.op("Gather", [values, position]),
                decoder.const("shape", np.array(array.shape, np.int64)),
            ],
        )
    )
    return {
        "format": "bitmask",
        "values": values.name,
        "bits": bits.name,
        "shape": list(array.shape),
    }


def _encode_nm(decoder: _Decoder, array: np.ndarray, axis: int, n: int, m: int) -> dict:
    """Per run of m along the reduction axis: n values and their n positions (field_bits(m)
    bits each); W = Transpose(Reshape(ScatterElements(0, positions, values, axis=-1)))."""
    moved = np.moveaxis(array, axis, -1)
    groups = moved.reshape(-1, m)
    positions = np.sort(np.argsort(-np.abs(groups), axis=1, kind="stable")[:, :n], axis=1)
    values = decoder.const("values", np.take_along_axis(groups, positions, axis=1))
    bits = field_bits(m)
    packed = decoder.const("positions", pack_fields(positions.astype(np.uint8), bits))
    fields = decoder.fields(packed, positions.size, bits)
    indices = decoder.op(
        "Reshape",
        [
            decoder.op("Cast", [fields], to=7),  # 7: int64
            decoder.const("index_shape", np.array(positions.shape, np.int64)),
        ],
    )
    zeros = decoder.const("zeros_shape", np.array(groups.shape, np.int64))
    filled = decoder.op("ConstantOfShape", [zeros], value=np.zeros(1, array.dtype))
    scattered = decoder.op("ScatterElements", [filled, indices, values], axis=1)
    restored = decoder.op(
        "Reshape", [scattered, decoder.const("moved_shape", np.array(moved.shape, np.int64))]
    )
    perm = list(range(array.ndim - 1))
    perm.insert(axis, array.ndim - 1)
    decoder.finish(
        decoder.op("Transpose", [restored], perm=perm) if axis != array.ndim - 1 else restored
    )
    return {
        "format": "nm",
        "values": values.name,
        "positions": packed.name,
        "shape": list(array.shape),
        "axis": axis,
        "n": n,
        "m": m,
    }


def _decode(model, record: dict) -> np.ndarray:
    initializers = model.initializers()
    values = model.constant(initializers[record["values"]])
    shape = record["shape"]
    if record.get("format", "bitmask") == "bitmask":
        keep = unpack_fields(
            model.constant(initializers[record["bits"]]), int(np.prod(shape)), 1
        ).astype(bool)
        dense = np.zeros(keep.size, values.dtype)
        dense[keep] = values[1:]
        return dense.reshape(shape)
    m, axis = record["m"], record["axis"]
    positions = unpack_fields(
        model.constant(initializers[record["positions"]]), values.size, field_bits(m)
    )
    groups = np.zeros((values.shape[0], m), values.dtype)
    np.put_along_axis(groups, positions.reshape(values.shape), values, axis=1)
    moved_shape = [d for i, d in enumerate(shape) if i != axis] + [shape[axis]]
    return np.moveaxis(groups.reshape(moved_shape), -1, axis)


def densify(model) -> int:
    """Decode every encoded weight back into a plain initializer of its own name; returns how
    many. The decoders, now unused, are left for dead-code elimination."""
    encoded = json.loads(model.metadata(TENSORS_KEY) or "{}")
    decoded = {v.name: v for node in model.nodes() for v in node.outputs if v.name in encoded}
    for name, record in encoded.items():
        if name in decoded:  # else already a plain initializer (coo, or folded by onnxruntime)
            model.replace_by_constant(decoded[name], _decode(model, record))
    model.set_sparse_initializer_names([])
    model.set_metadata(TENSORS_KEY, "{}")
    model.set_metadata(FORMAT_KEY, "dense")
    return len(encoded)
