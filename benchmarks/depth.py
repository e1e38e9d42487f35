"""Depth pruning (``--drop-blocks``) with recovery vs without, measured side by side and printed
as a markdown table.

Usage::

    python benchmarks/depth.py [--quick] [--calibration-samples 256]

Per model: the original, then ``--drop-blocks`` 1, 2 and 0.25 (of the finest units), each ranked
by block influence on calibration data (ShortGPT's 1 − cos(input, output) of each block) and by
``--importance output`` (the output error of removing each block alone; on MiniLM for 2 only,
each run there takes minutes), with the refit of the layers after the dropped blocks (recovery,
the default) and without (``--no-recover``). Columns: params and MACs after / before (sparsec's counts), quality, the
blocks dropped, seconds of the compress call (load, passes, oracle gate, save).

- digits CNN / ViT (``models/``): top-1 on the 360 held-out samples of ``digits_test.npz``,
  calibrated on ``digits_calib.npz`` (256 training samples).
- MiniLM (``.cache/minilm``, from models/make_minilm.py; skipped when absent or with
  ``--quick``): mean cosine of the 512 sentence embeddings of ``sentences.npz`` to the
  original's, calibrated on the first ``--calibration-samples`` sentences of ``calibration.npz``
  (a disjoint draw), as benchmarks/accuracy.py does.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import minilm_sentences
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DIGITS_CALIBRATION = MODELS / "digits_calib.npz"
COUNTS = (1, 2, 0.25)
DIGITS_SETTINGS = [(count, score) for count in COUNTS for score in ("influence", "output")]
MINILM_SETTINGS = [*((count, "influence") for count in COUNTS), (2, "output")]


def top1(path: Path) -> float:
    data = np.load(MODELS / "digits_test.npz")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": data["input"]})[0].argmax(1) == data["label"]).mean())


def compress(source: Path, target: Path, setting: tuple, calibration: Path, recover: bool):
    """(CompressResult or the one-line error, seconds)."""
    from sparsec import api

    start = time.perf_counter()
    count, importance = setting
    try:
        passes = api.block_passes(
            count, importance=importance, calibration=calibration, recover=recover
        )
        result = api.compress(source, target, pipeline=passes, latency_runs=0, force=True)
    except Exception as error:  # every failure becomes its row's one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        result = f"error: {type(error).__name__}: {first}"
    return result, time.perf_counter() - start


def rows_for(
    name: str,
    source: Path,
    calibration: Path,
    quality: Callable[[Path], float],
    settings: list[tuple[float, str]],
    folder: Path,
    started: float,
) -> list[str]:
    rows = [f"| {name} | original | 1.000 | 1.000 | {quality(source):.4f} | | |"]
    for setting in settings:
        for recover in (True, False):
            label = f"drop {setting[0]}, {setting[1]}, {'refit' if recover else 'no refit'}"
            print(f"  [{time.perf_counter() - started:6.1f}s] {name} {label}", file=sys.stderr)
            target = folder / f"{name}.onnx"
            result, seconds = compress(source, target, setting, calibration, recover)
            if isinstance(result, str):
                rows.append(f"| {name} | {label} | | | {result} | | {seconds:.1f} |")
                continue
            dropped = ", ".join(b["scope"] or b["exit"] for b in result.blocks or [])
            rows.append(
                f"| {name} | {label} | {result.after.params / result.before.params:.3f} | "
                f"{result.after.macs / result.before.macs:.3f} | {quality(target):.4f} | "
                f"{dropped} | {seconds:.1f} |"
            )
    return rows


def minilm_rows(folder: Path, samples: int, started: float) -> list[str]:
    paths = (minilm_sentences.MODEL, minilm_sentences.SENTENCES, minilm_sentences.CALIBRATION)
    if not all(path.exists() for path in paths):
        return ["| minilm | skipped: build .cache/minilm with models/make_minilm.py | | | | | |"]
    calibration = folder / "minilm_calibration.npz"
    np.savez(
        calibration,
        **minilm_sentences.sentence_feeds(slice(0, samples), minilm_sentences.CALIBRATION),
    )
    feeds = minilm_sentences.sentence_feeds()
    reference = minilm_sentences.embed(minilm_sentences.MODEL, feeds)

    def cosine(path: Path) -> float:
        return float(minilm_sentences.cosines(path, feeds, reference).mean())

    model = minilm_sentences.MODEL
    return rows_for("minilm", model, calibration, cosine, MINILM_SETTINGS, folder, started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the digits models")
    parser.add_argument("--calibration-samples", type=int, default=256, metavar="N")
    args = parser.parse_args()
    started = time.perf_counter()
    print("$ " + shlex.join(["python", *sys.argv]))
    print(
        "\n| model | setting | params | MACs | quality (digits: top-1; minilm: mean cosine) | "
        "dropped | s |\n|---|---|---:|---:|---:|---|---:|"
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for model in ("digits_cnn", "digits_vit"):
            source = MODELS / f"{model}.onnx"
            rows = rows_for(
                model, source, DIGITS_CALIBRATION, top1, DIGITS_SETTINGS, folder, started
            )
            print("\n".join(rows), flush=True)
        if not args.quick:
            print("\n".join(minilm_rows(folder, args.calibration_samples, started)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
