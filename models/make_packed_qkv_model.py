"""Generate the small packed-QKV attention test models in ``models/attention/packed_qkv/``.

Run from the repository root (the output folder is always next to this script)::

    /path/to/python models/make_packed_qkv_model.py

Generation-only dependencies (NOT sparsec package dependencies)::

    pip install torch==2.13.0 onnxscript

A two-block pre-LayerNorm encoder written the way timm's ViT writes its attention: one packed
``qkv = Linear(dim, 3 * dim)``, ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``,
``F.scaled_dot_product_attention``, ``reshape(B, N, attn_dim)``, ``proj``; MLP 32 -> 64 -> 32
with GELU. Hidden 32, 4 heads of dim 8. Random weights (``torch.manual_seed(0)``), LayerNorm
affine parameters and Linear biases redrawn (fresh ones are identities or zeros and hide bugs).
Input ``input`` [batch, seq, 32] (tokens, no patch embedding), output ``output``
[batch, seq, 32]. It writes:

* ``packed_qkv_legacy.onnx``: the legacy TorchScript exporter, opset 17, batch and seq dynamic
  (the Reshape target is a Concat of run-time dims and constants; the parts are taken with
  Split + Squeeze).
* ``packed_qkv_dynamo.onnx``: the dynamo exporter, opset 18, batch dynamic and seq 16 as
  timm's ViT (a constant Reshape target with -1; the parts are taken with Slice + Squeeze).

Checks: ``onnx.checker.check_model(full_check=True)``, < 200 KB, a single file, and onnxruntime
equal to torch within 1e-5 (max abs diff) on seeded inputs of several shapes. The dynamo
stack-trace metadata (absolute paths of this machine) is removed. Reruns give the same bytes (a
sha256 prefix is printed). It takes a few seconds and downloads nothing.

The files go to a subfolder so that ``tests/test_heads.py`` (which takes every
``models/attention/*.onnx`` as a form that ``--heads`` handles without ``split-qkv``) does not
pick them up; ``tests/test_split_qkv.py`` uses them.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

SEED = 0
OUT_DIR = (
    Path(__file__).resolve().parent / "attention" / "packed_qkv"
)  # a subfolder: not in test_heads' glob
DIM, HEADS, MLP, BLOCKS, SEQ = 32, 4, 64, 2, 16
MAX_FILE_BYTES, TOLERANCE = 200_000, 1e-5
warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX")
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


class Attention(nn.Module):
    """timm's ``Attention`` (fused path), without q/k norms and dropouts."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.head_dim = HEADS, DIM // HEADS
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(
            x.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        )  # timm: attn_dim


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(DIM), Attention()
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, MLP), nn.GELU(), nn.Linear(MLP, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block() for _ in range(BLOCKS)])
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x))


def build() -> Encoder:
    torch.manual_seed(SEED)
    model = Encoder()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)
            elif isinstance(mod, nn.Linear):
                mod.bias.normal_(0.0, 0.1)
    return model.eval()


def export(model: Encoder, path: Path, dynamo: bool) -> None:
    path.unlink(missing_ok=True)
    example = (torch.zeros(2, SEQ, DIM),)
    if dynamo:
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            opset_version=18,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        proto = program.model_proto
        for node in proto.graph.node:
            kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
        onnx.save_model(proto, str(path), save_as_external_data=False)
    else:
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}},
        )


def check(model: Encoder, path: Path, shapes: list[tuple[int, int]]) -> str:
    onnx.checker.check_model(str(path), full_check=True)
    assert not path.with_name(path.name + ".data").exists(), path
    size = path.stat().st_size
    assert size < MAX_FILE_BYTES, (path.name, size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    diff = 0.0
    for b, n in shapes:
        x = rng.standard_normal((b, n, DIM)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = session.run(["output"], {"input": x})[0]
        assert got.shape == ref.shape, (path.name, got.shape, ref.shape)
        diff = max(diff, float(np.abs(got - ref).max()))
    assert diff <= TOLERANCE, (path.name, diff)
    nodes = len(onnx.load(str(path)).graph.node)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return (
        f"{path.name:<26}{size:>8} bytes {nodes:>4} nodes  torch max|diff| {diff:.0e}  sha256 {sha}"
    )


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model = build()
    for name, dynamo, shapes in (
        ("packed_qkv_legacy.onnx", False, [(1, 1), (2, 16), (3, 7)]),
        ("packed_qkv_dynamo.onnx", True, [(1, SEQ), (2, SEQ), (5, SEQ)]),
    ):
        path = OUT_DIR / name
        export(model, path, dynamo)
        print(check(model, path, shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
