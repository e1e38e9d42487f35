"""Attention-head and MLP-neuron removal: size, cost and latency ratios per transformer model,
and the MiniLM sentence-embedding cosine, measured in one run.

Usage::

    python benchmarks/heads.py [--latency-runs 20] [--no-minilm] [MODEL.onnx ...]

Table 1, per model and flag (``--heads 0.5``, ``--ffn 0.5``): attention blocks and heads per
block before → after (read back from the output graph with ``sparsec analyze --heads``), and
params / MACs / latency ratios (latency: sparsec's own measurement while validating,
onnxruntime default threads, median of ``--latency-runs`` on its seeded random input). Default
models: the committed digits ViT and ``models/attention/*.onnx``, MiniLM (``.cache/minilm``)
and ``.cache/transformers`` when built.

Table 2 (needs ``.cache/minilm`` from models/make_minilm.py): mean cosine between the original
and pruned all-MiniLM-L6-v2 sentence embeddings on 512 real sentences, for ``--heads 0.25 / 0.5``
and ``--ffn 0.25 / 0.5`` (l1 importance, no calibration, no recovery).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import minilm_sentences

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {"heads 0.5": {"heads": 0.5}, "ffn 0.5": {"ffn": 0.5}}


def default_models() -> list[Path]:
    found = [ROOT / "models/digits_vit.onnx", *sorted((ROOT / "models/attention").glob("*.onnx"))]
    found += [
        ROOT / ".cache/minilm" / f"{n}.onnx"
        for n in ("minilm_legacy", "minilm_dynamo", "minilm_dynamo23")
    ]
    found += sorted((ROOT / ".cache/transformers").glob("*.onnx"))
    return [p for p in found if p.exists()]


def prune(source: Path, target: Path, latency_runs: int, **ratios) -> tuple[str, object]:
    """(heads per block after, CompressResult) or (error line, None)."""
    from sparsec import api
    from sparsec.errors import SparsecError

    try:
        result = api.compress(
            source,
            target,
            pipeline=api.channel_passes(
                0.0, heads=ratios.get("heads", -1.0), ffn=ratios.get("ffn", -1.0)
            ),
            latency_runs=latency_runs,
            force=True,
        )
    except SparsecError as error:
        return f"error: {error}", None
    return heads_per_block(target), result


def heads_per_block(path: Path) -> str:
    from sparsec import api

    blocks = api.attention_heads(api.Model.load(path))
    return (
        " ".join(
            f"{b['heads']}/{b['kv_heads']}" if b["heads"] != b["kv_heads"] else str(b["heads"])
            for b in blocks
        )
        or "-"
    )


def model_rows(models: list[Path], latency_runs: int, folder: Path) -> list[str]:
    rows = []
    for model in models:
        before = heads_per_block(model)
        for label, ratios in FLAGS.items():
            print(f"  {model.stem} {label}...", file=sys.stderr)
            after, result = prune(model, folder / "out.onnx", latency_runs, **ratios)
            if result is None:
                rows.append(f"{model.stem:<26} {label:<9} {after}")
                continue
            b, a = result.before, result.after
            v = result.validation
            latency = (
                f"{v.latency_ms_candidate / v.latency_ms_reference:7.3f}"
                if latency_runs and v.latency_ms_reference
                else f"{'-':>7}"
            )
            rows.append(
                f"{model.stem:<26} {label:<9} {_short(before):>14} {_short(after):>14} "
                f"{a.params / b.params:7.3f} {a.macs / b.macs:7.3f} {latency}"
            )
    return rows


def _short(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def minilm_rows(folder: Path) -> list[str]:
    feeds = minilm_sentences.sentence_feeds()
    reference = minilm_sentences.embed(minilm_sentences.MODEL, feeds)
    rows = []
    for ratios in ({"heads": 0.25}, {"heads": 0.5}, {"ffn": 0.25}, {"ffn": 0.5}):
        label = " ".join(f"--{k} {v:g}" for k, v in ratios.items())
        print(f"  minilm {label}...", file=sys.stderr)
        _, result = prune(minilm_sentences.MODEL, folder / "minilm.onnx", 0, **ratios)
        cosine = minilm_sentences.cosines(folder / "minilm.onnx", feeds, reference)
        rows.append(
            f"{label:<14} {cosine.mean():8.4f} {cosine.min():8.4f} "
            f"{result.after.params / result.before.params:7.3f} {result.after.macs / result.before.macs:7.3f}"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument(
        "--no-minilm", action="store_true", help="skip the MiniLM embedding-cosine table"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print("heads per block before → after (q/kv when they differ), ratios after / before")
        print(
            f"{'model':<26} {'flag':<9} {'heads before':>14} {'heads after':>14} {'params':>7} {'MACs':>7} {'lat':>7}"
        )
        print(
            "\n".join(model_rows(args.models or default_models(), args.latency_runs, Path(folder)))
        )
        if not args.no_minilm and minilm_sentences.SENTENCES.exists():
            print(
                "\nMiniLM sentence-embedding cosine to the original (512 sentences, no calibration, no recovery)"
            )
            print(f"{'':<14} {'mean':>8} {'min':>8} {'params':>7} {'MACs':>7}")
            print("\n".join(minilm_rows(Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
