"""Encoding only where it pays: ``sparse-encode`` encodes a weight exactly when the written file
gets smaller by it (data, decoder nodes and metadata record measured), encodes nothing when the
savings do not cover the metadata keys, never makes a file grow, and stays bit-exact in
onnxruntime. The truth each decision is checked against is the serialized size of the model
with and without that weight encoded."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, make_model
from onnx import TensorProto, helper, numpy_helper

from sparsec import api
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.sparse_format import (
    DECODER_PREFIX,
    EncodingPlan,
    SparseEncodePass,
    densify,
)
from sparsec.validate import check_encoded

F = TensorProto.FLOAT


def _model(*weights: np.ndarray) -> Model:
    """x · W1 · W2 ... → y, the weights named w1, w2, ..."""
    names = [f"w{i + 1}" for i in range(len(weights))]
    flow = ["x", *[f"h{i}" for i in range(len(weights) - 1)], "y"]
    proto = make_model(
        [helper.make_node("MatMul", [flow[i], n], [flow[i + 1]]) for i, n in enumerate(names)],
        [("x", F, [1, weights[0].shape[0]])],
        [("y", F, [1, weights[-1].shape[1]])],
        [numpy_helper.from_array(w.astype(np.float32), n) for w, n in zip(weights, names)],
    )
    return Model.from_proto(proto)


def _sparse(shape: tuple[int, int], nonzeros: int, seed: int = 1) -> np.ndarray:
    """A weight with ``nonzeros`` values at seeded random places."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(shape[0] * shape[1], np.float32)
    flat[rng.choice(flat.size, nonzeros, replace=False)] = rng.uniform(0.5, 1.5, size=nonzeros)
    return flat.reshape(shape)


def _written(model: Model, encode: SparseEncodePass, names: list[str], axis=None) -> int:
    """Bytes of ``model`` written with exactly ``names`` encoded, whether that pays or not."""
    copy = model.copy()
    encode.apply(copy, [EncodingPlan(name, axis, 0, 0) for name in names])
    return len(copy.to_proto().SerializeToString())


def _encoded(model: Model, encode: SparseEncodePass) -> set[str]:
    """The weights the pass encodes in a copy of ``model``."""
    return {size["name"] for size in encode(model.copy()).artifacts["encoding"]}


BIG = _sparse((64, 64), 400, seed=2)  # its encoding pays for the metadata keys


def _gain(nonzeros: int) -> tuple[Model, int]:
    """x · BIG · T[64, 32] with ``nonzeros`` in T, and the bytes encoding T adds to the file
    where BIG is encoded (negative: T's encoding pays)."""
    model, encode = _model(BIG, _sparse((64, 32), nonzeros)), SparseEncodePass("bitmask")
    return model, _written(model, encode, ["w1", "w2"]) - _written(model, encode, ["w1"])


def _last(predicate, low: int, high: int) -> int:
    """The largest k in [low, high) with predicate(k), for a predicate true at low, false at high
    and monotone in between."""
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if predicate(middle) else (low, middle)
    return low


def test_bitmask_decision_at_the_byte_boundary():
    """T with k nonzeros, k the largest whose encoding still shrinks the file: the pass encodes
    T at k (a few bytes saved) and not at k + 1 (a few bytes lost)."""
    assert _gain(0)[1] < 0 <= _gain(64 * 32)[1]
    k = _last(lambda n: _gain(n)[1] < 0, 0, 64 * 32)
    (smaller, saved), (larger, lost) = _gain(k), _gain(k + 1)
    assert -8 <= saved < 0 <= lost <= 8  # 4 bytes per stored float
    assert _encoded(smaller, SparseEncodePass("bitmask")) == {"w1", "w2"}
    assert _encoded(larger, SparseEncodePass("bitmask")) == {"w1"}


def _two_four(rng, rows: int, cols: int) -> np.ndarray:
    """A [rows, cols] MatMul weight holding 2:4 along its reduction axis (0)."""
    runs = np.moveaxis(rng.normal(size=(rows, cols)).astype(np.float32), 0, -1).reshape(-1, 4)
    runs[:, :2] = 0
    return np.moveaxis(runs.reshape(cols, rows), -1, 0).copy()


def test_nm_decision_matches_the_file_size(rng):
    """T [64, cols] at 2:4 beside a large 2:4 weight: T is encoded exactly when the file with
    it encoded is smaller; small T's decoder costs more than it saves, large T's less."""
    encode, decisions = SparseEncodePass("nm", nm="2:4"), []
    for cols in (2, 4, 8, 16, 32, 64):
        model = _model(_two_four(rng, 64, 256), _two_four(rng, 256, cols))
        with_t = _written(model, encode, ["w1", "w2"], axis=0)
        pays = with_t < _written(model, encode, ["w1"], axis=0)
        assert ("w2" in _encoded(model, encode)) == pays, cols
        decisions.append(pays)
    assert True in decisions and False in decisions


def test_savings_below_the_metadata_cost_encode_nothing():
    """One weight whose encoding saves a few bytes, fewer than the metadata keys cost: nothing is
    encoded (the file would grow), and one info diagnostic says so."""
    plan = SparseEncodePass("bitmask").plan
    k = _last(lambda n: bool(plan(_model(_sparse((64, 32), n)))), 0, 64 * 32)
    model = _model(_sparse((64, 32), k))
    dense = len(model.to_proto().SerializeToString())
    assert _written(model, SparseEncodePass("bitmask"), ["w1"]) > dense  # it would grow
    result = SparseEncodePass("bitmask")(model)
    assert result.stats["tensors_encoded"] == 0
    assert [(d.code, d.severity) for d in result.diagnostics] == [
        ("sparse.nothing-encoded", "info")
    ]
    assert "metadata" in result.diagnostics[0].message
    assert len(model.to_proto().SerializeToString()) == dense


def test_a_large_tensor_is_encoded_and_the_file_shrinks():
    model = _model(_sparse((512, 256), 512 * 256 // 10))
    dense = len(model.to_proto().SerializeToString())
    result = SparseEncodePass("bitmask")(model)
    assert result.stats["tensors_encoded"] == 1
    written = len(model.to_proto().SerializeToString())
    assert written < 0.15 * dense and result.stats["bytes_saved"] == dense - written


def test_a_model_that_grew_elsewhere_is_reported():
    model = _model(_sparse((512, 256), 1000))
    model.source_bytes = 1000  # as if loaded from a much smaller file
    result = SparseEncodePass("bitmask")(model)
    warnings = [d for d in result.diagnostics if d.code == "sparse.file-grows"]
    assert result.stats["tensors_encoded"] == 1 and len(warnings) == 1
    assert warnings[0].severity == "warning" and "1000" in warnings[0].message


DIGITS_RUNS = [
    pytest.param({"nm": "2:4", "sparse_format": "nm"}, id="nm 2:4"),
    pytest.param({"ratio": 0.5, "sparse_format": "bitmask"}, id="bitmask 50%"),
    pytest.param({"ratio": 0.9, "sparse_format": "bitmask"}, id="bitmask 90%"),
]


@pytest.mark.parametrize("options", DIGITS_RUNS)
def test_the_digits_cnn_never_grows_and_stays_bit_exact(tmp_path, options):
    """What ``compress --nm/--sparsity ... --sparse-format`` runs (a fixed point of sparsity,
    cleanup and encoding) on the 43 K-parameter CNN: a file smaller than the input and than
    the dense run's, outputs bit-identical to the decoded model's in onnxruntime."""
    written = {}
    for sparse_format in ("dense", options["sparse_format"]):
        model = Model.load(MODELS / "digits_cnn.onnx")
        passes = api.sparsity_passes(**{**options, "sparse_format": sparse_format})
        result = Pipeline(passes, fixed_point=True)(model)
        result.model.save(tmp_path / f"{sparse_format}.onnx")
        written[sparse_format] = (tmp_path / f"{sparse_format}.onnx").stat().st_size
    encoded = result.model
    assert result.stats["sparse-encode.tensors_encoded"] >= 1
    assert written[options["sparse_format"]] < min(written["dense"], encoded.source_bytes)
    assert not [d for d in result.diagnostics if d.code == "sparse.file-grows"]
    decoded = encoded.copy()
    densify(decoded)
    feeds, _ = api.prepare_feeds(encoded)
    assert check_encoded(encoded, decoded, feeds, DECODER_PREFIX) is None
