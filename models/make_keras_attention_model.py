"""Attention as TensorFlow writes it: a Keras ``MultiHeadAttention`` block exported by tf2onnx,
written to ``models/tf/keras_mha.onnx`` (not under ``models/attention/``: ``tests/test_heads.py``
takes every file there as a form ``--heads`` prunes, and this one does not yet).

Run from anywhere (the output goes next to this script)::

    /path/to/python models/make_keras_attention_model.py

Generation-only dependencies (NOT sparsec package dependencies)::

    pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnxruntime==1.31.1

One pre-norm encoder block on tokens: input ``input`` [batch, 16, 32] → ``LayerNormalization`` →
``MultiHeadAttention(num_heads=4, key_dim=8)`` (self-attention) → residual → ``LayerNormalization``
→ ``Dense(64, relu)`` → ``Dense(32)`` → residual → ``Dense(10)``, output [batch, 16, 10]. Every
weight redrawn from ``numpy.random.default_rng(0)`` (kernels N(0, 1/fan_in), biases and
LayerNorm β N(0, 0.1), γ U[0.5, 1.5]: Keras's zeros and ones hide bugs). tf2onnx (opset 17) writes
what the tests must read: LayerNorm as ``GlobalAveragePool`` over the last axis, ``Sub``,
``Mul``, ``Sqrt``, ``Reciprocal``; Keras's ``EinsumDense`` kernels folded to [32, 32] ``MatMul``
weights with constant Reshapes to [-1, 16, 4, 8]; each attention ``einsum`` decomposed into
``Unsqueeze`` → ``Transpose`` → a ``Reshape`` to [B·H, T, D] whose target is built at run time
(``ReduceProd`` of dims read by ``Shape`` → ``Gather``, and ``Max`` of two such for the
broadcast batch) → ``MatMul`` → ``Reshape`` back → ``Squeeze``; the ``Dense`` layers as
``Reshape`` [-1, C] → ``MatMul`` → ``Reshape`` to ``Cast(Concat(Gather(Cast(Shape(x), int32),
[0, 1]), [width]), int64)``.

Checks: ``onnx.checker`` (full), onnxruntime equal to Keras within 1e-5 on seeded inputs of
batch 1 and 3, < 200 KB. Reruns give the same weights and the same graph up to node order and
helper names (tf2onnx orders some nodes and names its helper constants by Python object ids, so
the bytes differ): the script prints a sha256 prefix of the weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

OUT = Path(__file__).resolve().parent / "tf" / "keras_mha.onnx"
SEED, SEQ, DIM, HEADS, KEY_DIM, MLP, CLASSES, OPSET = 0, 16, 32, 4, 8, 64, 10, 17
MAX_FILE_BYTES, TOLERANCE = 200_000, 1e-5


def build() -> keras.Model:
    keras.utils.set_random_seed(SEED)
    tokens = keras.Input((SEQ, DIM), name="input")
    x = keras.layers.LayerNormalization()(tokens)
    x = tokens + keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)(x, x)
    hidden = keras.layers.Dense(MLP, activation="relu")(keras.layers.LayerNormalization()(x))
    x = x + keras.layers.Dense(DIM)(hidden)
    model = keras.Model(tokens, keras.layers.Dense(CLASSES)(x))
    model.set_weights(
        [redraw(w, np.random.default_rng(SEED + k)) for k, w in enumerate(model.get_weights())]
    )
    return model


def redraw(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A kernel N(0, 1/fan_in); a vector N(0, 0.1), or U[0.5, 1.5] if it was ones (γ)."""
    if weight.ndim >= 2:
        fan_in = weight.shape[0] if weight.ndim == 2 else int(np.prod(weight.shape[:-1]))
        return rng.normal(0, np.sqrt(1 / fan_in), weight.shape).astype(np.float32)
    if np.all(weight == 1):
        return rng.uniform(0.5, 1.5, weight.shape).astype(np.float32)
    return rng.normal(0, 0.1, weight.shape).astype(np.float32)


def export(model: keras.Model) -> onnx.ModelProto:
    spec = [tf.TensorSpec([None, SEQ, DIM], tf.float32, name="input")]

    @tf.function(input_signature=spec)
    def forward(x):
        return model(x)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    proto.producer_version = ""
    return proto


def weights_digest(proto: onnx.ModelProto) -> str:
    """sha256 prefix of the float weights (their bytes, sorted): equal on every run, while the
    file's bytes are not (tf2onnx orders some nodes, and names the constants it deduplicates,
    by Python object ids)."""
    arrays = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    blobs = sorted(a.tobytes() for a in arrays if a.dtype == np.float32)
    return hashlib.sha256(b"".join(blobs)).hexdigest()[:12]


def check(model: keras.Model, path: Path) -> float:
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, SEQ, DIM)).astype(np.float32)
        got = session.run(None, {"input": x})[0]
        worst = max(worst, float(np.abs(got - model(x).numpy()).max()))
    assert worst <= TOLERANCE, worst
    assert path.stat().st_size < MAX_FILE_BYTES
    return worst


def main() -> None:
    model = build()
    OUT.parent.mkdir(exist_ok=True)
    proto = export(model)
    onnx.save(proto, OUT)
    diff = check(model, OUT)
    size, nodes = OUT.stat().st_size, len(proto.graph.node)
    print(
        f"{OUT.name}: {size} bytes, {nodes} nodes, keras max|diff| {diff:.0e}, "
        f"weights sha256 {weights_digest(proto)}"
    )


if __name__ == "__main__":
    main()
