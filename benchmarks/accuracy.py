"""Accuracy before and after compression, with and without recovery, on real data, measured side
by side in one run and printed as markdown tables.

Usage::

    python benchmarks/accuracy.py [--quick] [--calibration-samples 256]

Table 1 (digits): top-1 on the held-out split (``models/digits_test.npz``) of the committed
digits CNN / MLP / ViT, original and after: ``--channels 0.5`` one-shot (l1, no calibration);
activation importance without refit; activation + refit; the same + block reconstruction
(``--recover block``, needs torch); activation + refit with ``--steps 4``;
for the CNN also ``--target-macs 0.66`` without refit, with refit, with refit and ``--steps 4``,
and with ``--calibration random`` (l1, the CLI's default there) + refit; then ``--nm 2:4``
magnitude, Wanda without refit, Wanda + refit, Wanda + refit + block reconstruction and SparseGPT
(masks chosen in the refit). MiniLM adds ``--heads 0.5 --ffn 0.5`` with refit vs block.
Calibration: ``models/digits_calib.npz`` (256 training-split samples). Columns: top-1, Δ vs the
original in points, MACs after / before (sparsec's count; 2:4 keeps the dense count), seconds
of the compress call (load, passes, validation, save).

Table 2 (MiniLM, needs ``.cache/minilm`` from models/make_minilm.py; skipped by ``--quick``):
calibrated on the first ``--calibration-samples`` sentences of ``calibration.npz``, evaluated on
the 512 sentences of ``sentences.npz`` (a disjoint draw). Per setting: mean and minimum cosine of
the sentence embeddings to the original's, nearest-neighbour agreement (for each evaluation
sentence, its most similar other evaluation sentence under the pruned model is the one under
the original: fraction), MACs after / before and seconds.

Table 3 (memory, skipped by ``--quick``): peak RSS of ``--heads 0.25 --ffn 0.25`` with
activation importance and the refit on MiniLM, calibrated on 512 sentences, run in a child
process (its ``ru_maxrss``), against the 4 GB bound of issue 6.

Progress goes to stderr, one line per setting. A setting that fails shows its one-line error in
its row.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import minilm_sentences
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DIGITS = ("digits_cnn", "digits_mlp", "digits_vit")
DIGITS_CALIBRATION = MODELS / "digits_calib.npz"
MEMORY_BOUND_MB = 4096
MEMORY_SAMPLES = 512  # issue 6: calibration with 512 samples within 4 GB


def digits_settings(name: str) -> list[tuple[str, str, dict]]:
    """(label, kind, options) of every digits row for model ``name``."""
    real = {"importance": "activation", "calibration": DIGITS_CALIBRATION}
    rows = [
        ("channels 0.5, l1 one-shot", "channels", {"ratio": 0.5}),
        (
            "channels 0.5, activation, no refit",
            "channels",
            {"ratio": 0.5, **real, "recover": False},
        ),
        ("channels 0.5, activation + refit", "channels", {"ratio": 0.5, **real}),
        (
            "channels 0.5, activation + refit + block reconstruction",
            "channels",
            {"ratio": 0.5, **real, "recover": "block"},
        ),
        (
            "channels 0.5, activation + refit, steps 4",
            "channels",
            {"ratio": 0.5, **real, "steps": 4},
        ),
    ]
    if name == "digits_cnn":
        target = {"ratio": 0.0, "target_macs": 0.66}
        rows += [
            (
                "target-macs 0.66, activation, no refit",
                "channels",
                {**target, **real, "recover": False},
            ),
            ("target-macs 0.66, activation + refit", "channels", {**target, **real}),
            (
                "target-macs 0.66, activation + refit, steps 4",
                "channels",
                {**target, **real, "steps": 4},
            ),
            (
                "target-macs 0.66, random calibration (l1) + refit",
                "channels",
                {**target, "calibration": "random"},
            ),
        ]
    return rows + sparsity_settings(DIGITS_CALIBRATION)


def sparsity_settings(calibration: Path) -> list[tuple[str, str, dict]]:
    return [
        ("2:4 magnitude", "sparsity", {"nm": "2:4"}),
        (
            "2:4 wanda, no refit",
            "sparsity",
            {"nm": "2:4", "score": "wanda", "calibration": calibration, "recover": False},
        ),
        (
            "2:4 wanda + refit",
            "sparsity",
            {"nm": "2:4", "score": "wanda", "calibration": calibration},
        ),
        (
            "2:4 wanda + refit + block reconstruction",
            "sparsity",
            {"nm": "2:4", "score": "wanda", "calibration": calibration, "recover": "block"},
        ),
        (
            "2:4 sparsegpt (masks chosen in the refit)",
            "sparsity",
            {"nm": "2:4", "score": "sparsegpt", "calibration": calibration},
        ),
    ]


def minilm_settings(calibration: Path) -> list[tuple[str, str, dict]]:
    quarter = {"ratio": 0.0, "heads": 0.25, "ffn": 0.25}
    half = {"ratio": 0.0, "heads": 0.5, "ffn": 0.5}
    real = {"importance": "activation", "calibration": calibration}
    return [
        ("heads 0.25 ffn 0.25, l1 one-shot", "channels", quarter),
        (
            "heads 0.25 ffn 0.25, activation, no refit",
            "channels",
            {**quarter, **real, "recover": False},
        ),
        ("heads 0.25 ffn 0.25, activation + refit", "channels", {**quarter, **real}),
        ("heads 0.5, activation + refit", "channels", {"ratio": 0.0, "heads": 0.5, **real}),
        ("ffn 0.5, activation + refit", "channels", {"ratio": 0.0, "ffn": 0.5, **real}),
        ("heads 0.5 ffn 0.5, activation + refit", "channels", {**half, **real}),
        (
            "heads 0.5 ffn 0.5, activation + refit + block reconstruction",
            "channels",
            {**half, **real, "recover": "block"},
        ),
        *sparsity_settings(calibration),
    ]


def run(source: Path, target: Path, kind: str, options: dict) -> tuple[object, float]:
    """(CompressResult or the one-line error, seconds)."""
    from sparsec import api

    start = time.perf_counter()
    try:
        passes = (
            api.channel_passes(**options) if kind == "channels" else api.sparsity_passes(**options)
        )
        result = api.compress(source, target, pipeline=passes, latency_runs=0, force=True)
    except Exception as error:  # every failure becomes its row's one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        result = f"error: {type(error).__name__}: {first}"
    return result, time.perf_counter() - start


def progress(text: str, started: float) -> None:
    print(f"  [{time.perf_counter() - started:7.1f}s] {text}...", file=sys.stderr, flush=True)


def macs_ratio(result) -> str:
    return f"{result.after.macs / result.before.macs:.3f}" if result.before.macs else "-"


def top1(path: Path) -> float:
    data = np.load(MODELS / "digits_test.npz")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": data["input"]})[0].argmax(1) == data["label"]).mean())


def digits_table(folder: Path, started: float) -> list[str]:
    rows = ["| model | setting | top-1 | Δ (points) | MACs | s |", "|---|---|---:|---:|---:|---:|"]
    for name in DIGITS:
        source = MODELS / f"{name}.onnx"
        original = top1(source)
        rows.append(f"| {name} | original | {original:.3f} | | 1.000 | |")
        for label, kind, options in digits_settings(name):
            progress(f"{name} {label}", started)
            target = folder / f"{name}.onnx"
            result, seconds = run(source, target, kind, options)
            if isinstance(result, str):
                rows.append(f"| {name} | {label} | {result} | | | {seconds:.1f} |")
                continue
            accuracy = top1(target)
            rows.append(
                f"| {name} | {label} | {accuracy:.3f} | {100 * (accuracy - original):+.1f} | "
                f"{macs_ratio(result)} | {seconds:.1f} |"
            )
    return rows


def nearest(embeddings: np.ndarray) -> np.ndarray:
    """Per row, the index of the most cosine-similar other row."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def minilm_row(
    label: str, target: Path, feeds: dict, reference: np.ndarray, result, seconds: float
) -> str:
    if isinstance(result, str):
        return f"| {label} | {result} | | | | {seconds:.1f} |"
    pruned = minilm_sentences.embed(target, feeds)  # once, for the cosine and the neighbours
    cosine = minilm_sentences.row_cosines(pruned, reference)
    agreement = float((nearest(pruned) == nearest(reference)).mean())
    return (
        f"| {label} | {cosine.mean():.4f} | {cosine.min():.4f} | {agreement:.3f} | {macs_ratio(result)} | "
        f"{seconds:.1f} |"
    )


def minilm_table(folder: Path, samples: int, started: float) -> list[str]:
    source, calibration = minilm_sentences.MODEL, folder / "minilm_calibration.npz"
    np.savez(
        calibration,
        **minilm_sentences.sentence_feeds(slice(0, samples), minilm_sentences.CALIBRATION),
    )
    feeds = minilm_sentences.sentence_feeds()
    reference = minilm_sentences.embed(source, feeds)
    rows = [
        "| setting | mean cosine | min cosine | NN agreement | MACs | s |",
        "|---|---:|---:|---:|---:|---:|",
        "| original | 1.0000 | 1.0000 | 1.000 | 1.000 | |",
    ]
    for label, kind, options in minilm_settings(calibration):
        progress(f"minilm {label}", started)
        target = folder / "minilm.onnx"
        result, seconds = run(source, target, kind, options)
        rows.append(minilm_row(label, target, feeds, reference, result, seconds))
    return rows


MEMORY_CHILD = """
import sys
from sparsec import api
api.compress(sys.argv[1], sys.argv[2], latency_runs=0, force=True, pipeline=api.channel_passes(
    0.0, heads=0.25, ffn=0.25, importance="activation", calibration=sys.argv[3]))
"""


def memory_table(folder: Path, started: float, samples: int = MEMORY_SAMPLES) -> list[str]:
    """Peak RSS of a calibrated MiniLM compress in a child process (this process starts no other)."""
    calibration = folder / "minilm_memory_calibration.npz"
    np.savez(
        calibration,
        **minilm_sentences.sentence_feeds(slice(0, samples), minilm_sentences.CALIBRATION),
    )
    progress(
        f"memory: minilm heads 0.25 ffn 0.25 + refit, {samples} calibration samples, child process",
        started,
    )
    start = time.perf_counter()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_CHILD,
            str(minilm_sentences.MODEL),
            str(folder / "minilm_memory.onnx"),
            str(calibration),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KB
    label = f"heads 0.25 ffn 0.25, activation + refit, {samples} calibration samples"
    rows = ["| setting | peak RSS (MB) | bound (MB) | within | s |", "|---|---:|---:|---|---:|"]
    if child.returncode != 0:
        error = (child.stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
        return [*rows, f"| {label} | error: {error} | {MEMORY_BOUND_MB} | | {seconds:.1f} |"]
    within = "yes" if peak <= MEMORY_BOUND_MB else "NO"
    return [*rows, f"| {label} | {peak:.0f} | {MEMORY_BOUND_MB} | {within} | {seconds:.1f} |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the digits table")
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=256,
        metavar="N",
        help="MiniLM calibration sentences (of the 1024 in calibration.npz) for table 2; default 256",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    print("$ " + shlex.join(["python", *sys.argv]))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        print(
            f"\n## Digits: top-1 on the held-out split ({DIGITS_CALIBRATION.name}: 256 training samples)\n"
        )
        print("\n".join(digits_table(folder, started)))
        if not args.quick:
            print_minilm(folder, args.calibration_samples, started)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def print_minilm(folder: Path, samples: int, started: float) -> None:
    if not all(
        path.exists()
        for path in (
            minilm_sentences.MODEL,
            minilm_sentences.SENTENCES,
            minilm_sentences.CALIBRATION,
        )
    ):
        print("\n(MiniLM tables skipped: build .cache/minilm with models/make_minilm.py)")
        return
    print(
        f"\n## MiniLM: calibrated on {samples} sentences of calibration.npz, evaluated on the 512 of "
        "sentences.npz\n"
    )
    print("\n".join(minilm_table(folder, samples, started)))
    print(
        f"\n## Memory: calibrated compress in a child process, {MEMORY_SAMPLES} calibration samples\n"
    )
    print("\n".join(memory_table(folder, started)))


if __name__ == "__main__":
    sys.exit(main())
