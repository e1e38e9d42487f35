"""``--ffn 0.5`` on every transformer test model: each MLP's hidden width (the prunable ffn
groups' units, after the canonicalization passes) before and after, read from the graphs.

Usage::

    python benchmarks/ffn_widths.py

Models: the committed digits ViT and ``models/attention/*.onnx``, plus MiniLM (``.cache/minilm``)
and ``.cache/transformers`` when built (models/make_minilm.py, models/make_transformer_models.py).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from heads import default_models

from sparsec import Model, api
from sparsec.analysis.groups import find_channel_groups


def ffn_widths(path: Path) -> list[int]:
    model = Model.load(path)
    for canonical in api.canonical_passes():
        canonical(model)
    return sorted(
        g.units for g in find_channel_groups(model).groups if g.kind == "ffn" and g.prunable
    )


def main() -> int:
    print(f"{'model':<24} {'MLP widths before':<40} {'after':<40} halved")
    with tempfile.TemporaryDirectory() as folder:
        for path in default_models():
            out = Path(folder) / "out.onnx"
            api.compress(
                path, out, pipeline=api.channel_passes(0.0, ffn=0.5), latency_runs=0, force=True
            )
            before, after = ffn_widths(path), ffn_widths(out)
            halved = len(before) == len(after) and all(a == b // 2 for a, b in zip(after, before))
            print(
                f"{path.stem:<24} {_short(before):<40} {_short(after):<40} {'yes' if halved else 'NO'}",
                flush=True,
            )
    return 0


def _short(widths: list[int]) -> str:
    return f"{len(widths)} x {widths[0]}" if widths and len(set(widths)) == 1 else str(widths)


if __name__ == "__main__":
    sys.exit(main())
