"""Sparse-encoded weights that onnxruntime runs unmodified, and the way back to dense.

``bitmask``: a weight W (N elements) becomes two ordinary initializers, ``<W>__values`` (a zero
followed by the kept values, in order) and ``<W>__bits`` (one bit per element, packed eight to
a byte, little-endian), and a decoder of standard ops whose output keeps W's name:

    idx = Range(0, N, 1)                       int32 positions
    bit = (Gather(bytes, idx / 8) / Gather(2^k, idx % 8)) % 2
    W   = Reshape(Gather(values, CumSum(bit) · bit), shape)

Every decoder input is an initializer, so onnxruntime's basic constant folding runs the decoder
once at session creation: outputs are bit-identical to the dense form and no decoder op is
left in the optimized graph (``check_encoded`` asserts both). Intermediates are int32 (int64
costs memory), there is no BitShift or Where (types and fp16 kernels), and the ops exist from
opset 11. A tensor is encoded only with at least ``min_elements`` elements and when the
encoding is at most ``max_ratio`` of its dense bytes. ``densify`` decodes every encoded weight
back into a plain initializer (the list is in the ``sparsec.sparse_tensors`` metadata).
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np

from sparsec.passes.base import Diagnostic, InPlacePass, PassError, PassResult
from sparsec.passes.registry import register

TENSORS_KEY = "sparsec.sparse_tensors"
FORMAT_KEY = "sparsec.sparse_format"
DECODER_PREFIX = "sparsec_decode"


def encoded_bytes(array: np.ndarray) -> int:
    kept = int(np.count_nonzero(array))
    return (kept + 1) * array.dtype.itemsize + (array.size + 7) // 8


@register
class SparseEncodePass(InPlacePass):
    """Store mostly-zero weights as kept values + a packed bitmask, decoded at session creation."""

    name: ClassVar[str] = "sparse-encode"
    summary: ClassVar[str] = "Store mostly-zero weights as values + bitmask with a decoder onnxruntime folds."

    def __init__(self, format: str = "bitmask", min_elements: int = 16384, max_ratio: float = 0.9) -> None:
        self.format, self.min_elements, self.max_ratio = format, min_elements, max_ratio

    def requires(self, model) -> None:
        if self.format != "bitmask":
            raise PassError(f"sparse-encode: format '{self.format}' is not available yet (bitmask is)")
        if model is not None and model.opset < 11:
            raise PassError(f"sparse-encode: the decoder needs opset 11 or newer (the model has {model.opset})")

    def call(self, model) -> PassResult:
        encoded = json.loads(model.metadata(TENSORS_KEY) or "{}")
        diagnostics, sizes = [], []
        for name, value in list(model.initializers().items()):
            array = model.constant(value) if _candidate(model, value, self.min_elements) else None
            if array is None or array.dtype.kind != "f" or name in encoded:
                continue
            ratio = encoded_bytes(array) / array.nbytes
            if ratio > self.max_ratio:
                continue
            encoded[name] = _encode(model, value, array)
            sizes.append({"name": name, "format": self.format, "bytes_dense": int(array.nbytes),
                          "bytes_encoded": encoded_bytes(array)})
            diagnostics.append(Diagnostic("info", "sparse.encoded", f"'{name}': {100 * ratio:.1f} % of dense bytes"))
        if diagnostics:
            model.set_metadata(TENSORS_KEY, json.dumps(encoded, sort_keys=True))
            model.set_metadata(FORMAT_KEY, self.format)
        result = PassResult(model, modified=bool(diagnostics), stats={"tensors_encoded": len(diagnostics)},
                            diagnostics=diagnostics)
        result.artifacts["encoding"] = sizes
        return result


def _candidate(model, value, min_elements: int) -> bool:
    shape = model.constant_shape(value)
    return (shape is not None and int(np.prod(shape)) >= min_elements and not value.is_graph_input()
            and not value.is_graph_output() and bool(list(value.uses())))


def _encode(model, value, array: np.ndarray) -> dict:
    """Replace ``value`` by values + bits initializers and a decoder; returns the record."""
    name, flat = value.name, array.reshape(-1)
    keep = flat != 0
    values = model.add_initializer(f"{name}__values", np.concatenate([np.zeros(1, array.dtype), flat[keep]]))
    bits = model.add_initializer(f"{name}__bits", np.packbits(keep, bitorder="little"))
    const = {key: model.add_initializer(f"{name}__{key}", data) for key, data in (
        ("zero", np.array(0, np.int32)), ("count", np.array(flat.size, np.int32)), ("one", np.array(1, np.int32)),
        ("eight", np.array(8, np.int32)), ("two", np.array(2, np.int32)),
        ("pow2", (2 ** np.arange(8)).astype(np.int32)), ("shape", np.array(array.shape, np.int64)))}
    first_use = min((use.node for use in value.uses()), key=_position(model))
    tag = f"{DECODER_PREFIX}/{name}"

    def op(op_type, inputs, **attrs):
        return model.add_node(op_type, inputs, attrs, before=first_use, name=tag)

    index = op("Range", [const["zero"], const["count"], const["one"]])
    byte = op("Gather", [op("Cast", [bits], to=6), op("Div", [index, const["eight"]])])  # 6: int32
    bit = op("Mod", [op("Div", [byte, op("Gather", [const["pow2"], op("Mod", [index, const["eight"]])])]), const["two"]])
    position = op("Mul", [op("CumSum", [bit, const["zero"]]), bit])
    decoded = op("Reshape", [op("Gather", [values, position]), const["shape"]])
    model.replace_initializer(value, decoded)
    return {"values": values.name, "bits": bits.name, "shape": list(array.shape)}


def _position(model):
    order = {id(node): i for i, node in enumerate(model.nodes())}
    return lambda node: order.get(id(node), len(order))


def densify(model) -> int:
    """Decode every encoded weight back into a plain initializer of its own name; returns how
    many. The decoders, now unused, are left for dead-code elimination."""
    encoded = json.loads(model.metadata(TENSORS_KEY) or "{}")
    values_by_name = {v.name: v for n in model.nodes() for v in n.outputs if v.name}
    initializers = model.initializers()
    for name, record in encoded.items():
        values = model.constant(initializers[record["values"]])
        keep = np.unpackbits(model.constant(initializers[record["bits"]]), count=int(np.prod(record["shape"])),
                             bitorder="little").astype(bool)
        dense = np.zeros(keep.size, values.dtype)
        dense[keep] = values[1:]
        model.replace_by_constant(values_by_name[name], dense.reshape(record["shape"]))
    model.set_metadata(TENSORS_KEY, "{}")
    model.set_metadata(FORMAT_KEY, "dense")
    return len(encoded)
