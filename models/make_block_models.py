"""Generate the small committed depth-pruning test models in ``models/blocks/`` (issue 19).

Run from anywhere (the output folder is always next to this script)::

    /path/to/python models/make_block_models.py

Generation-only dependency (NOT a sparsec package dependency): ``pip install torch==2.13.0``.

Each file is a tiny PyTorch module with seeded random weights (``torch.manual_seed(SEED)`` before
each is built; every BatchNorm's running mean/variance and affine parameters and every
LayerNorm's weight and bias are redrawn from a seeded generator, so no norm is an identity),
exported by the legacy TorchScript exporter at opset 17 with a symbolic batch (and sequence):

* ``resnet_like.onnx``: stem Conv3x3(3→8)+BN+ReLU, then three BasicBlocks: 8→8 (identity
  shortcut), 8→16 stride 2 (shortcut Conv1x1+BN: a projection), 16→16 (identity); GAP, Linear
  (16→10). Input ``input`` [batch, 3, 16, 16] → ``logits`` [batch, 10].
* ``vit_like.onnx``: pre-LN encoder: patch Conv4x4/4 (1→32) → 16 tokens + a learned position
  embedding, two layers ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` (4 heads of 8, attention
  written out with Softmax, MLP 32→64→32 with GELU), final LN, mean over tokens, Linear(32→10).
  Input ``input`` [batch, 1, 16, 16] → ``logits`` [batch, 10].
* ``bert_like.onnx``: post-LN encoder (BERT's layout): word + position embeddings → LN, two
  layers ``LN(x + Attn(x))``, ``LN(h + MLP(h))`` (4 heads of 8, an additive attention mask
  ``(1 − mask)·−10⁴`` from the ``attention_mask`` input, MLP 32→64→32 GELU), a pooler
  (Linear+Tanh on the first token) and a classifier Linear(32→2). Inputs ``input_ids`` and
  ``attention_mask`` int64 [batch, seq] → ``logits`` [batch, 2].
* ``vgg_like.onnx``: a plain chain: Conv3x3(3→8)+BN+ReLU, Conv3x3(8→8)+BN+ReLU, MaxPool,
  Conv3x3(8→16)+ReLU, Conv3x3(16→16)+ReLU, Conv3x3(16→16)+ReLU, GAP, Linear(16→16)+ReLU,
  Linear(16→10). Input ``input`` [batch, 3, 16, 16] → ``logits`` [batch, 10].

Checks (the script exits 1 when one fails): ``onnx.checker.check_model(path, full_check=True)``,
each file < 200 KB, onnxruntime equals torch within 1e-4 × max |torch output| on seeded inputs
at batch 1 and 3. Reruns give the same bytes (a sha256 prefix of each file is printed).
"""

from __future__ import annotations

import hashlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

SEED = 0
OUT_DIR = Path(__file__).resolve().parent / "blocks"
MAX_FILE_BYTES = 200_000
TOLERANCE = 1e-4
HIDDEN, HEADS, MLP, VOCAB, SEQ = 32, 4, 64, 50, 8
MAX_POSITIONS = 128  # sparsec feeds a symbolic seq as 128 tokens


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.layer3 = BasicBlock(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class Attention(nn.Module):
    """Written-out multi-head self-attention (Softmax visible), optional additive mask."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.out = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x, mask=None):
        b, s, _ = x.shape
        q, k, v = (
            p(x).reshape(b, s, HEADS, HIDDEN // HEADS).transpose(1, 2)
            for p in (self.query, self.key, self.value)
        )
        scores = q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5
        if mask is not None:
            scores = scores + mask
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, HIDDEN)
        return self.out(context)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(HIDDEN, MLP), nn.GELU(), nn.Linear(MLP, HIDDEN))


class PreLNLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(HIDDEN), Attention()
        self.ln2, self.mlp = nn.LayerNorm(HIDDEN), mlp()

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViTLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, HIDDEN, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 16, HIDDEN) * 0.1)
        self.blocks = nn.Sequential(PreLNLayer(), PreLNLayer())
        self.norm, self.head = nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, 10)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(1))


class PostLNLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.ln1 = Attention(), nn.LayerNorm(HIDDEN)
        self.mlp, self.ln2 = mlp(), nn.LayerNorm(HIDDEN)

    def forward(self, x, mask):
        h = self.ln1(x + self.attn(x, mask))
        return self.ln2(h + self.mlp(h))


class BertLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words, self.positions = (
            nn.Embedding(VOCAB, HIDDEN),
            nn.Embedding(MAX_POSITIONS, HIDDEN),
        )
        self.ln = nn.LayerNorm(HIDDEN)
        self.layers = nn.ModuleList([PostLNLayer(), PostLNLayer()])
        self.pooler, self.classifier = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 2)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.ln(self.words(input_ids) + self.positions(positions))
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def conv_bn_relu(c_in: int, c_out: int, bn: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, 1, 1), *([nn.BatchNorm2d(c_out)] if bn else []), nn.ReLU()]


def vgg_like() -> nn.Sequential:
    return nn.Sequential(
        *conv_bn_relu(3, 8),
        *conv_bn_relu(8, 8),
        nn.MaxPool2d(2),
        *conv_bn_relu(8, 16, bn=False),
        *conv_bn_relu(16, 16, bn=False),
        *conv_bn_relu(16, 16, bn=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


def randomize_norms(model: nn.Module) -> None:
    """No norm is an identity: BN statistics and affine, LN affine, from a seeded generator."""
    g = torch.Generator().manual_seed(SEED)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.data = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var.data = torch.rand(m.running_var.shape, generator=g) + 0.5


def image_feeds(shape: tuple[int, ...], batch: int) -> dict:
    rng = np.random.default_rng(SEED + batch)
    return {"input": rng.standard_normal((batch, *shape[1:])).astype(np.float32)}


def text_feeds(batch: int) -> dict:
    rng = np.random.default_rng(SEED + batch)
    ids = rng.integers(0, VOCAB, (batch, SEQ), dtype=np.int64)
    mask = np.ones((batch, SEQ), np.int64)
    mask[0, -3:] = 0  # padding in one row
    return {"input_ids": ids, "attention_mask": mask}


SPECS = {
    # name: (builder, input names, dynamic axes per input, feeds(batch))
    "resnet_like": (
        ResNetLike,
        ["input"],
        {"input": {0: "batch"}},
        lambda b: image_feeds((1, 3, 16, 16), b),
    ),
    "vit_like": (
        ViTLike,
        ["input"],
        {"input": {0: "batch"}},
        lambda b: image_feeds((1, 1, 16, 16), b),
    ),
    "bert_like": (
        BertLike,
        ["input_ids", "attention_mask"],
        {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        text_feeds,
    ),
    "vgg_like": (
        vgg_like,
        ["input"],
        {"input": {0: "batch"}},
        lambda b: image_feeds((1, 3, 16, 16), b),
    ),
}


def export(name: str) -> Path:
    build, inputs, dynamic, feeds = SPECS[name]
    torch.manual_seed(SEED)
    model = build().eval()
    randomize_norms(model)
    args = tuple(torch.from_numpy(a) for a in feeds(2).values())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            buffer,
            input_names=inputs,
            output_names=["logits"],
            dynamic_axes={**dynamic, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    path = OUT_DIR / f"{name}.onnx"
    path.write_bytes(buffer.getvalue())
    return _check(path, model, feeds)


def _check(path: Path, model: nn.Module, feeds) -> Path:
    onnx.checker.check_model(str(path), full_check=True)
    size = path.stat().st_size
    assert size < MAX_FILE_BYTES, f"{path.name}: {size} bytes"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        feed = feeds(batch)
        with torch.no_grad():
            expected = model(*(torch.from_numpy(a) for a in feed.values())).numpy()
        got = session.run(None, feed)[0]
        error = float(np.abs(got - expected).max())
        assert error <= TOLERANCE * float(np.abs(expected).max()), f"{path.name}: {error}"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    nodes = len(onnx.load(str(path)).graph.node)
    print(f"{path.name:18} {size:>7} bytes  {nodes:>4} nodes  sha256 {digest}")
    return path


def main() -> int:
    torch.set_num_threads(2)
    OUT_DIR.mkdir(exist_ok=True)
    failed = 0
    for name in SPECS:
        try:
            export(name)
        except AssertionError as error:
            print(f"FAILED {error}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
