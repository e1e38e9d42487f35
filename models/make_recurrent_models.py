"""Small seeded recurrent models (LSTM, GRU, RNN with a Linear head) exported with PyTorch's
legacy exporter into ``models/recurrent/``: the hidden-size pruning tests read them.

Run from anywhere (files go next to this script): ``python models/make_recurrent_models.py``.
Needs torch (generation only). Weights are random (seed 0): the tests compare the pruned model
with its masked original, which needs no training.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parent / "recurrent"
SEQ, BATCH, FEATURES, CLASSES = 7, 2, 6, 5


class Recurrent(nn.Module):
    """``cell`` over [batch, seq, features] (batch_first), then a Linear head on every step."""

    def __init__(self, cell: type[nn.Module], hidden: int, **options) -> None:
        super().__init__()
        self.rnn = cell(FEATURES, hidden, batch_first=True, **options)
        directions = 2 if options.get("bidirectional") else 1
        self.head = nn.Linear(hidden * directions, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x)[0]
        return self.head(y)


MODELS = {
    "lstm.onnx": (nn.LSTM, 16, {"num_layers": 2}),
    "lstm_bidirectional.onnx": (nn.LSTM, 16, {"num_layers": 2, "bidirectional": True}),
    "gru.onnx": (nn.GRU, 16, {"num_layers": 2}),
    "rnn.onnx": (nn.RNN, 16, {"num_layers": 2}),
}


def export(name: str, cell, hidden: int, options: dict) -> Path:
    torch.manual_seed(0)
    model = Recurrent(cell, hidden, **options).eval()
    x = torch.randn(BATCH, SEQ, FEATURES)
    path = OUT / name
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, (cell, hidden, options) in MODELS.items():
        path = export(name, cell, hidden, options)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(f"{path.name}: {path.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
