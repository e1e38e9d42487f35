"""Sensitivity sweeps for ``--target-macs``, before (every ratio of the fine grid, full-model runs,
every calibration sample: ``fast=False``) and after (the coarse-to-fine grid, each point run from
its cut's frontier, on a seeded subset of ``sensitivity.SUBSET`` samples; with ``--jobs 1`` and
``--jobs 2``), printed as a markdown table.

Usage::

    python benchmarks/sensitivity_speed.py [--target 0.66] [--before-groups 2] [--skip-recognizer]
        [--no-process]

Cases:

- digits CNN (``models/digits_cnn.onnx``), calibrated on ``models/digits_calib.npz`` (256
  training samples).
- PP-OCRv4 text recognizer (``.cache/pypi/ch_PP-OCRv4_rec_infer.onnx``, from
  benchmarks/pypi_models.py; skipped when absent), on 256 synthetic text-like 3x48x320 lines
  (``text_lines``: seeded, a light background with dark glyph-like strokes and noise; a
  stand-in for real crops, no readable text). Its full "before" sweep takes hours, so by
  default it is timed on ``--before-groups`` groups and extrapolated to all of them (marked
  ``~``; its allocation is then not computed). Its last row is the whole ``sparsec compress
  REC --input-shape x:1x3x48x320 --target-macs T --calibration LINES.npz`` process (load,
  canonical passes, the sweep with the blocks competing, the cut, the layer refit on all 256
  samples, validation, the quality check, save), timed from outside (``--no-process``: left
  out).

What is timed: the sweep and the allocation on the model as channel-prune sees it (canonical
passes run first, not timed). Columns: wall seconds, CPU seconds (this process and its
workers), groups, points measured, samples per point, the chosen group:ratio, the MACs the
allocation reaches (the pruned copy's, counted) and its real output error ||dy||^2/||y||^2 on
every calibration sample (what the allocation is for: the same or lower is the same quality).

Measured 2026-12-04 on this 2-core machine while other jobs ran (load average 8 to 15, so wall
seconds are inflated several times; CPU seconds are the comparable figure), ``--target 0.66``:

| model | sweep | wall s | CPU s | groups | points | samples | chosen | MACs | error |
|---|---|---|---|---|---|---|---|---|---|
| digits CNN | before | 6.3 | 2.5 | 3 | 24 | 256 | 1:0.4 | 0.579 | 0.3783 |
| digits CNN | after, --jobs 1 | 1.0 | 0.4 | 3 | 14 | 32 | 1:0.4 | 0.579 | 0.3783 |
| digits CNN | after, --jobs 2 | 10.1 | 3.9 | 3 | 14 | 32 | 1:0.4 | 0.579 | 0.3783 |
| PP-OCRv4 rec | before (2 groups, scaled) | ~7527 | ~3635 | 25 | ~200 | 256 | (not run) | | |
| PP-OCRv4 rec | after, --jobs 1 | 499.1 | 213.5 | 25 | 104 | 32 | 17:0.7 19:0.75 21:0.8 | 0.631 | 0.4233 |
| PP-OCRv4 rec | after, --jobs 2 | 502.4 | 182.9 | 25 | 104 | 32 | 17:0.7 19:0.75 21:0.8 | 0.631 | 0.4233 |

(the PP-OCRv4 rows above were measured on random-normal lines.) On the text-like lines, after,
--jobs 1, load average 9 to 13: 32 samples per point 1313 s wall, 250 CPU s, 111 points, chosen
2:0.8 17:0.8 20:0.8, MACs 0.598, error 0.2091; 16 (the default since) 1106 s wall, 174 CPU s,
110 points, 17:0.8 20:0.75 21:0.8, MACs 0.605, error 0.2091. The whole process before (32
samples): 2641 s wall, 551 CPU s; with 16: 591 s wall (a lighter load), 416 CPU s, the same
allocation as the 16-sample sweep above. docs/benchmarks.md has the breakdown. With the refit's
output errors from one original run and the cut, conv rows fitted a batch at a time and each
point's copy taking the original's shapes (2026-12-04, the two processes side by side, load 6 to
8): 386 -> 315 CPU s, 1118 -> 1027 s wall, peak RSS 1.97 GB both, the same allocation and refit
(calibration output error 0.2091 -> 0.05295); the refit alone 200 -> 144 CPU s.

(--jobs 2 spawns two workers, each loading the model and running its own reference: on the
tiny digits CNN that start-up is the whole cost.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparsec.analysis.activations import load_calibration
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.builtin import canonical_passes
from sparsec.pruning import budget
from sparsec.pruning.recovery import output_error
from sparsec.pruning.sensitivity import Sweep, cost_shapes
from sparsec.pruning.surgery import prune_channels

ROOT = Path(__file__).resolve().parents[1]
RECOGNIZER = ROOT / ".cache/pypi/ch_PP-OCRv4_rec_infer.onnx"
LINE = (3, 48, 320)  # benchmarks/pypi_models.py: --input-shape x:1x3x48x320


def text_lines(count: int, seed: int = 0, height: int = 48, width: int = 320) -> np.ndarray:
    """``count`` seeded text-like lines [count, 3, height, width] in the recognizer's input range
    (-1 to 1): a light background, then left to right glyph-sized boxes of 2 to 5 dark vertical
    or horizontal strokes, then noise (sigma 0.05)."""
    rng = np.random.default_rng(seed)
    lines = np.empty((count, 3, height, width), np.float32)
    for index in range(count):
        image = np.full((height, width), rng.uniform(0.7, 1.0), np.float32)
        x = int(rng.integers(2, 20))
        while x < width - 16:
            x += _glyph(image, x, rng) + int(rng.integers(1, 12))
        lines[index] = image + rng.normal(0, 0.05, image.shape).astype(np.float32)
    return lines


def _glyph(image: np.ndarray, x: int, rng: np.random.Generator) -> int:
    """Draw one glyph-like box of strokes at column ``x``; its width."""
    width, top, bottom = (
        int(rng.integers(8, 20)),
        int(rng.integers(6, 14)),
        int(rng.integers(34, 42)),
    )
    for _ in range(int(rng.integers(2, 6))):
        if rng.random() < 0.5:
            column = x + int(rng.integers(0, width - 2))
            image[top:bottom, column : column + 2] = rng.uniform(-1, -0.6)
        else:
            row = int(rng.integers(top, bottom - 2))
            image[row : row + 2, x : x + width] = rng.uniform(-1, -0.6)
    return width


def prepared(path: Path, shapes: dict[str, tuple[int, ...]]) -> Model:
    """The model as channel-prune sees it: input shapes bound, canonical passes run."""
    model = Model.load(path)
    model.input_shapes = dict(shapes)
    Pipeline(canonical_passes())(model)
    return model


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def quality(model: Model, samples, table, allocation) -> tuple[float, float]:
    """(MACs of the pruned copy / the original's, its output error on every sample)."""
    pruned = model.copy()
    prune_channels(pruned, find_channel_groups(pruned), table.removed(allocation))
    shapes = cost_shapes(model, samples)
    share = analyze_cost(pruned, shapes).macs / analyze_cost(model, shapes).macs
    return share, output_error(pruned, model, samples)


def row(label: str, model: Model, samples, target: float, fast: bool, jobs: int) -> list[str]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    table, allocation = budget.sweep_allocation(
        model,
        samples,
        {"target_macs": target},
        fast=fast,
        jobs=jobs,
        importance="activation",
        lossy_couplings=True,
    )
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    macs, error = quality(model, samples, table, allocation)
    chosen = " ".join(f"{g}:{r:g}" for g, r in sorted(allocation.items()) if r)
    return [
        label,
        f"{wall:.1f}",
        f"{cpu:.1f}",
        str(len(table.groups)),
        str(table.points()),
        str(table.samples),
        chosen,
        f"{macs:.3f}",
        f"{error:.4g}",
    ]


def extrapolated_before(model: Model, samples, groups: int) -> list[str]:
    """The full sweep timed on the first ``groups`` prunable groups, scaled to all of them."""
    every = [g.id for g in find_channel_groups(model, lossy=True).groups if g.prunable]
    wall, cpu = time.perf_counter(), cpu_seconds()
    with Sweep(
        model, samples, "activation", lossy_couplings=True, fast=False, groups=every[:groups]
    ) as sweep:
        table = sweep.table(budget.RATIOS)
    scale = len(every) / groups
    wall, cpu = (time.perf_counter() - wall) * scale, (cpu_seconds() - cpu) * scale
    points = round(table.points() * scale)
    return ["before (full runs, every ratio, every sample)", f"~{wall:.0f}", f"~{cpu:.0f}"] + [
        str(len(every)),
        f"~{points}",
        str(table.samples),
        "(not run)",
        "",
        "",
    ]


def whole_process(samples, target: float) -> list[str]:
    """The ``sparsec compress`` process on the recognizer, wall and CPU seconds from outside,
    the allocation line's figures from its report."""
    with tempfile.TemporaryDirectory(prefix="sparsec-sweep-") as folder:
        data, report = Path(folder) / "lines.npz", Path(folder) / "report.json"
        np.savez(data, x=samples["x"])
        command = [sys.executable, "-m", "sparsec.entry", "compress", str(RECOGNIZER)]
        command += ["--input-shape", "x:1x3x48x320", "--target-macs", f"{target:g}"]
        command += ["--calibration", str(data), "-o", str(Path(folder) / "out.onnx")]
        command += ["--report", str(report), "-q"]
        before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        note = _allocation_note(report) if not done.returncode else done.stderr.strip()[-80:]
    label = "whole `sparsec compress` process (sweep with blocks, refit, validation, quality)"
    return [label, f"{wall:.1f}", f"{cpu:.1f}", "", "", str(len(samples["x"])), note, "", ""]


def _allocation_note(report: Path) -> str:
    """The chosen group:ratio list of the run's allocation line, from its report."""
    text = json.dumps(json.loads(report.read_text()))
    start = text.find("chosen group:ratio ")
    return text[start + len("chosen group:ratio ") :].split(";")[0] if start >= 0 else ""


def case(name: str, model: Model, samples, args) -> list[list[str]]:
    print(f"{name}: {len(samples[next(iter(samples))])} samples", file=sys.stderr)
    before = (
        extrapolated_before(model, samples, args.before_groups)
        if args.before_groups
        else row(
            "before (full runs, every ratio, every sample)", model, samples, args.target, False, 1
        )
    )
    rows = [before]
    rows.append(row("after, --jobs 1", model, samples, args.target, True, 1))
    rows.append(row("after, --jobs 2", model, samples, args.target, True, 2))
    return [[name, *r] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.66, help="--target-macs")
    parser.add_argument(
        "--before-groups",
        type=int,
        default=2,
        help="recognizer: time the full sweep on this many groups and extrapolate (0: run it all)",
    )
    parser.add_argument("--skip-recognizer", action="store_true")
    parser.add_argument(
        "--no-process", action="store_true", help="recognizer: leave out the whole-process row"
    )
    args = parser.parse_args()
    head = [
        "model",
        "sweep",
        "wall s",
        "CPU s",
        "groups",
        "points",
        "samples",
        "chosen",
        "MACs",
        "error",
    ]
    rows: list[list[str]] = []
    digits = prepared(ROOT / "models/digits_cnn.onnx", {"input": (1, 1, 8, 8)})
    calibration = load_calibration(ROOT / "models/digits_calib.npz", digits)
    rows += case(
        "digits CNN", digits, calibration, argparse.Namespace(**{**vars(args), "before_groups": 0})
    )
    if RECOGNIZER.is_file() and not args.skip_recognizer:
        recognizer = prepared(RECOGNIZER, {"x": (1, *LINE)})
        lines = {"x": text_lines(256)}
        rows += case("PP-OCRv4 rec", recognizer, lines, args)
        if not args.no_process:
            rows.append(["PP-OCRv4 rec", *whole_process(lines, args.target)])
    print(
        f"target MACs {args.target:g}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
