"""Quantized (QDQ) test models, written by onnxruntime's own static quantizer, into
``models/qdq/``: the form real int8 deployments take (issue 18, class 8: channel and head pruning
through QuantizeLinear/DequantizeLinear pairs with per-axis scales).

Run from anywhere (files go to ``models/qdq/``)::

    python models/make_qdq_models.py

Needs only onnxruntime (its ``quantization`` package), onnx and numpy: no generation-only
dependency. Each committed float model goes through ``quant_pre_process`` and
``quantize_static`` with QDQ format, int8 weights per channel (per-axis scales and zero points),
uint8 activations per tensor, calibrated on the first 32 images of
``models/digits_calib.npz`` (one at a time; MinMax calibration). Every output is checked with
``onnx.checker`` (full check) and against its float source in onnxruntime (top-1 agreement on
the digits test split for the digits CNN), and its sha256 prefix is printed; reruns with the same
onnxruntime give the same bytes. It writes:

* ``digits_cnn_qdq.onnx`` from ``digits_cnn.onnx`` (BatchNorm, squeeze-excite, Concat);
* ``vit_dynamo18_qdq.onnx`` from ``attention/vit_dynamo18.onnx`` (a 2-block ViT on digits).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
OUT = HERE / "qdq"
SOURCES = {
    "digits_cnn_qdq.onnx": HERE / "digits_cnn.onnx",
    "vit_dynamo18_qdq.onnx": HERE / "attention" / "vit_dynamo18.onnx",
}
CALIBRATION_IMAGES = 32


def quantize(source: Path, target: Path) -> Path:
    """``source`` through onnxruntime's static quantizer (QDQ, int8 weights per channel, uint8
    activations), calibrated on 32 of the committed calibration digits, written to ``target``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Digits(CalibrationDataReader):
        def __init__(self) -> None:
            images = np.load(HERE / "digits_calib.npz")["input"][:CALIBRATION_IMAGES]
            self.batches = iter([{"input": images[i : i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Digits(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    return target


def agreement(source: Path, quantized: Path) -> float:
    """Top-1 agreement of the two models on the digits test split."""
    images = np.load(HERE / "digits_test.npz")["input"]
    top1 = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        .run(None, {"input": images})[0]
        .argmax(1)
        for p in (source, quantized)
    ]
    return float((top1[0] == top1[1]).mean())


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, source in SOURCES.items():
        target = quantize(source, OUT / name)
        onnx.checker.check_model(str(target), full_check=True)
        kinds = {n.op_type for n in onnx.load(target).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= kinds, kinds
        agree = agreement(source, target)
        assert agree >= 0.9, f"{name}: top-1 agreement with the float model {agree:.3f}"
        digest = hashlib.sha256(target.read_bytes()).hexdigest()[:12]
        print(f"{name:24} {target.stat().st_size:7d} bytes  agreement {agree:.3f}  sha256 {digest}")


if __name__ == "__main__":
    main()
