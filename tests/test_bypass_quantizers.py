"""Activation quantizers bypassed (``analysis.quantized.activation_quantizers``,
``pruning.oracle.bypass_quantizers`` / ``same_quantizers``): a per-tensor QuantizeLinear →
DequantizeLinear pair on an activation becomes an Identity, a quantized weight's
DequantizeLinear stays, and the bypassed model computes exactly what the same graph without the
pair computes. The oracle and the fuzz harness compare bypassed models when a quantizer turns
float rounding into a whole step (end to end: the ``seed101064`` and ``seed100604`` graphs in
``tests/fuzz_regressions``)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.analysis.quantized import activation_quantizers
from sparsec.ir import Model
from sparsec.pruning.oracle import bypass_quantizers, same_quantizers
from sparsec.testing import fuzz
from sparsec.testing.graphs import build

CONV = {"op": "conv", "seed": 1, "out": 6, "k": 3, "qdq": True, "per_axis": False}
HEAD = {"op": "head", "seed": 3, "classes": 5, "gemm": True}


def _graph(blocks: list[dict], opset: int) -> dict:
    return {
        "seed": 0,
        "opset": opset,
        "batch": "1",
        "weights": "initializer",
        "input": {"kind": "image", "shape": [1, 4, 6, 6]},
        "blocks": blocks,
    }


def _quantized(scale: float = 0.05, opset: int = 13) -> Model:
    blocks = [CONV, {"op": "qdq_act", "seed": 2, "scale": scale}, HEAD]
    return Model.from_proto(build(_graph(blocks, opset)))


@pytest.mark.parametrize("opset", [11, 13])
def test_the_activation_pair_becomes_an_identity_and_the_weight_stays_quantized(opset):
    model = _quantized(opset=opset)
    assert len(activation_quantizers(model)) == 1
    bypassed = bypass_quantizers(model)
    ops = [node.op_type for node in bypassed.nodes()]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == 1 and "Identity" in ops
    assert len(model.nodes()) == len(ops) + 1  # Q and DQ out, Identity in; the original kept
    plain = build(_graph([CONV, HEAD], opset))
    feeds = fuzz.feeds_for(plain)
    got = fuzz.run_model(bypassed.to_proto(), feeds)
    assert all(np.array_equal(a, b) for a, b in zip(got, fuzz.run_model(plain, feeds)))


def test_same_quantizers_needs_the_same_scales_and_some_quantizer():
    assert same_quantizers(_quantized(), _quantized())
    assert not same_quantizers(_quantized(0.05), _quantized(0.02))
    plain = Model.from_proto(build(_graph([CONV, HEAD], 13)))
    assert not same_quantizers(plain, plain)


def _float_initializer(model: Model, rank: int) -> str:
    return next(
        name
        for name, value in model.initializers().items()
        if model.constant(value).dtype == np.float32 and model.constant(value).ndim == rank
    )


def test_the_gate_still_refuses_a_wrong_model_that_quantizes_alike():
    """A wrong cut (a kept weight changed) in a model whose quantizers match its reference's:
    the bypassed comparison fails too, and the refusal names the output. A pair that differs by
    float rounding only (a bias nudged by 1e-6) passes."""
    from sparsec.errors import ValidationError
    from sparsec.pruning.oracle_gate import run_oracle

    reference = _quantized()
    feeds = fuzz.feeds_for(reference.to_proto())
    wrong, nudged = _quantized(), _quantized()
    weight = wrong.value(_float_initializer(wrong, 2))  # the head's Gemm weight
    wrong.resize_initializer(weight, wrong.constant(weight) * 1.5)
    assert same_quantizers(reference, wrong)
    with pytest.raises(ValidationError, match="differs from the masked original"):
        run_oracle(reference, wrong, feeds, "test feeds")
    bias = nudged.value(_float_initializer(nudged, 1))
    nudged.resize_initializer(bias, nudged.constant(bias) + np.float32(1e-6))
    result = run_oracle(reference, nudged, feeds, "test feeds")
    assert result.passed


def test_only_the_batches_that_fail_plainly_are_compared_again_with_quantizers_bypassed(
    monkeypatch,
):
    """Batch 1 matches plainly and keeps that verdict (and label); batch 2 differs by a flipped
    rounding step and is judged with the quantizers bypassed."""
    from sparsec.pruning import oracle_gate
    from sparsec.validate import Validation

    asked: list = []

    def fake_validate(reference, model, runs):
        asked.append([label for _, label in runs])
        bypassed = reference == "bypassed"
        return [
            Validation(passed=bypassed or label == "batch 1", rtol=0, atol=0, inputs=label)
            for _, label in runs
        ]

    monkeypatch.setattr(oracle_gate, "_validate", fake_validate)
    monkeypatch.setattr(oracle_gate, "same_quantizers", lambda a, b: True)
    monkeypatch.setattr(oracle_gate, "bypass_quantizers", lambda model: "bypassed")
    results = oracle_gate._compare("masked", "pruned", [({}, "batch 1"), ({}, "batch 2")])
    assert [r.passed for r in results] == [True, True]
    assert results[0].inputs == "batch 1"
    assert "bypassed" in results[1].inputs and results[1].inputs.startswith("batch 2")
    assert len(asked) == 2 and len(asked[1]) == 1
