"""Weight sparsity: file size and onnxruntime session-creation time per format, and accuracy of
magnitude vs Wanda scores, measured side by side in one run.

Usage::

    python benchmarks/sparsity.py [--formats MODEL.onnx ...] [--repeat 7]

Table 1 (formats), per model and pattern (2:4, 90 % unstructured): file bytes of the ``dense``,
``bitmask``, ``nm`` (2:4 only) and ``coo`` outputs as a fraction of the original, and the
median onnxruntime session creation time of each (default optimization level, ``--repeat``
sessions, interleaved). Default models: the timm resnet18 (``.cache/timm``) and MiniLM
(``.cache/minilm``) when built; MiniLM both with its embedding tables left dense (default) and
sparsified too (``emb``: ``--embeddings``).

Table 2 (accuracy): top-1 on the held-out digits (``models/digits_test.npz``) of the digits
CNN / MLP / ViT after 2:4 and 50 % unstructured sparsity, with magnitude and with Wanda scores
(calibration: ``models/digits_calib.npz``, 256 training samples), no recovery.

Table 3 (``--minilm``, needs ``.cache/minilm`` from models/make_minilm.py): mean cosine of
all-MiniLM-L6-v2 sentence embeddings to the original's on 384 held-out real sentences, after
2:4 and 50 %, magnitude vs Wanda (calibration: the other 128 sentences), no recovery; and 2:4
and 90 % with the embedding tables sparsified too (magnitude only: Wanda has no activation to
weigh a table by).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import minilm_sentences
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
FORMAT_MODELS = [ROOT / ".cache/timm/resnet18_legacy.onnx", minilm_sentences.MODEL]
PATTERNS = {"2:4": {"nm": "2:4"}, "90%": {"ratio": 0.9}}
FORMATS = ("dense", "bitmask", "nm", "coo")


def compress(
    source: Path,
    target: Path,
    sparse_format: str,
    score: str = "magnitude",
    calibration: Path | None = None,
    **pattern,
) -> None:
    from sparsec import api

    if score == "wanda" and calibration is None:
        calibration = MODELS / "digits_calib.npz"
    passes = api.sparsity_passes(
        score=score, calibration=calibration, sparse_format=sparse_format, **pattern
    )
    api.compress(source, target, pipeline=passes, latency_runs=0, force=True)


def has_embeddings(model: Path) -> bool:
    from sparsec.analysis.weight_sites import weight_sites
    from sparsec.ir import Model

    loaded = Model.load(model)
    return len(weight_sites(loaded, embeddings=True)[0]) > len(weight_sites(loaded)[0])


def session_ms(path: Path) -> float:
    start = time.perf_counter()
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (time.perf_counter() - start) * 1000


def format_rows(models: list[Path], repeat: int, folder: Path) -> list[str]:
    rows = []
    for model in models:
        for embeddings in (False, True) if has_embeddings(model) else (False,):
            for label, pattern in PATTERNS.items():
                print(f"  {model.stem} {label}{' emb' if embeddings else ''}...", file=sys.stderr)
                formats = [f for f in FORMATS if f != "nm" or "nm" in pattern]
                paths = {fmt: folder / f"{model.stem}_{fmt}.onnx" for fmt in formats}
                for fmt, path in paths.items():
                    compress(model, path, fmt, embeddings=embeddings, **pattern)
                times = {fmt: [] for fmt in paths}
                for _ in range(repeat):
                    for fmt, path in paths.items():
                        times[fmt].append(session_ms(path))
                size = model.stat().st_size
                cells = [
                    f"{paths[f].stat().st_size / size:8.3f} {statistics.median(times[f]):9.1f}"
                    if f in paths
                    else f"{'-':>8} {'-':>9}"
                    for f in FORMATS
                ]
                rows.append(
                    f"{model.stem:<22} {label:>4} {'emb' if embeddings else '':>3} "
                    + " ".join(cells)
                )
    return rows


def top1(path: Path) -> float:
    data = np.load(MODELS / "digits_test.npz")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": data["input"]})[0].argmax(1) == data["label"]).mean())


def accuracy_rows(folder: Path) -> list[str]:
    rows = []
    for name in ("digits_cnn", "digits_mlp", "digits_vit"):
        source = MODELS / f"{name}.onnx"
        cells = [f"{top1(source):6.3f}"]
        for pattern in ({"nm": "2:4"}, {"ratio": 0.5}):
            for score in ("magnitude", "wanda"):
                target = folder / f"{name}_{score}.onnx"
                compress(source, target, "dense", score=score, **pattern)
                cells.append(f"{top1(target):6.3f}")
        rows.append(f"{name:<12} " + " ".join(f"{c:>9}" for c in cells))
    return rows


def minilm_rows(folder: Path) -> list[str]:
    source = minilm_sentences.MODEL
    calibration = folder / "minilm_calibration.npz"
    np.savez(calibration, **minilm_sentences.sentence_feeds(slice(None, 128)))
    feeds = minilm_sentences.sentence_feeds(slice(128, None))
    reference = minilm_sentences.embed(source, feeds)
    rows = []
    for label, pattern, scores in (
        ("2:4", {"nm": "2:4"}, ("magnitude", "wanda")),
        ("50%", {"ratio": 0.5}, ("magnitude", "wanda")),
        ("2:4 emb", {"nm": "2:4", "embeddings": True}, ("magnitude",)),
        ("90% emb", {"ratio": 0.9, "embeddings": True}, ("magnitude",)),
    ):
        cells = []
        for score in scores:
            target = folder / f"minilm_{score}.onnx"
            compress(source, target, "dense", score=score, calibration=calibration, **pattern)
            cells.append(f"{minilm_sentences.cosines(target, feeds, reference).mean():9.4f}")
        rows.append(f"{label:<8} " + " ".join(cells))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="*", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--minilm", action="store_true", help="only the MiniLM embedding-cosine table"
    )
    args = parser.parse_args()
    if args.minilm:
        with tempfile.TemporaryDirectory() as folder:
            print(
                "MiniLM sentence-embedding cosine to the original (384 held-out sentences, no recovery)"
            )
            print(f"{'':<8} {'magnitude':>9} {'wanda':>9}")
            print("\n".join(minilm_rows(Path(folder))))
        return 0
    models = [
        m for m in (args.formats if args.formats is not None else FORMAT_MODELS) if m.exists()
    ]
    with tempfile.TemporaryDirectory() as folder:
        print(f"file size (x original) and session creation (ms, median of {args.repeat})")
        print(f"{'model':<22} {'':>4} {'':>3} " + " ".join(f"{f:>8} {'ms':>9}" for f in FORMATS))
        print("\n".join(format_rows(models, args.repeat, Path(folder))))
        print("\ntop-1 on held-out digits (no recovery)")
        print(
            f"{'model':<12} {'original':>9} {'2:4 mag':>9} {'2:4 wanda':>9} {'50% mag':>9} {'50% wanda':>9}"
        )
        print("\n".join(accuracy_rows(Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
