"""Latency that follows MACs: plain rounding vs ``--round-to auto`` (fast widths), per CNN.

Usage::

    python benchmarks/latency_macs.py [MODEL.onnx ...] [--ratio 0.5] [--runs 30] [--all]

Without models: the CNNs of the coverage suites that are present (``models/digits_cnn.onnx``,
``.cache/timm/*_legacy.onnx``, ``.cache/light/*.onnx``; models over 150 MB only with ``--all``).
Each model is compressed twice in a child process, ``sparsec compress MODEL --channels R`` with
``--round-to 1`` (plain) and ``--round-to auto``; then, in this process, the original and both
outputs run on one onnxruntime thread (1 intra-op, 1 inter-op) in interleaved rounds (the order
rotating each round), on the inputs ``coverage.measure_feeds`` makes, after 2 warm-ups each.

Columns (ratios are output / original):

* MACs: sparsec's report; lat: median of the per-round latency ratios' numerator over the
  original's (``sparsec.latency.summarize``: ratio of medians), ``±``: its noise (half the IQR of
  the per-round ratios over their median); lat/MACs: the figure issue 20 targets (<= 1.15).
* non-MAC: the report's other operations (elementwise, pooling, normalization, Resize, LRN:
  ``analysis.cost``), ratio after / before for the plain output: work that shrinks with the
  activations (about 1 - R), not with the MACs (about (1 - R)^2).
* kern non-MAC %: share of onnxruntime's own kernel time (profiled, 1 thread, median per node
  over the timed runs) spent in kernels other than Conv/Gemm/MatMul in the plain output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sparsec.latency import summarize  # noqa: E402

MAC_KERNELS = {"Conv", "FusedConv", "NchwcConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm"}
SPARSEC = [sys.executable, "-m", "sparsec.cli"]
BIG_BYTES = 150 * 2**20


def _coverage():
    spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks/coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def suite(all_sizes: bool) -> list[Path]:
    found = [ROOT / "models/digits_cnn.onnx"]
    found += sorted((ROOT / ".cache/timm").glob("*_legacy.onnx"))
    found += sorted((ROOT / ".cache/light").glob("*.onnx"))
    return [p for p in found if p.is_file() and (all_sizes or p.stat().st_size < BIG_BYTES)]


def compress(model: Path, out: Path, ratio: float, round_to: str) -> dict | str:
    """sparsec's report of one compression, or the last line of its error."""
    report = out.with_suffix(".json")
    cmd = [*SPARSEC, "compress", str(model), "--channels", str(ratio), "--round-to", round_to]
    cmd += ["-o", str(out), "--report", str(report), "--latency-runs", "0", "--force"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if not report.is_file() or not out.is_file():
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(report.read_text())


def session(path: Path, profile: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"latmacs_{os.getpid()}")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_ms(paths: list[Path], feeds: dict, runs: int) -> list[list[float]]:
    """Per model, its run times (ms) over ``runs`` rounds, the order rotating each round."""
    from time import perf_counter

    sessions = [session(p) for p in paths]
    for s in sessions:
        for _ in range(2):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in paths]
    for round_index in range(runs):
        for k in np.roll(np.arange(len(paths)), round_index):
            start = perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((perf_counter() - start) * 1000)
    return times


def non_mac_kernel_share(path: Path, feeds: dict, runs: int = 10) -> float:
    """Share of kernel time outside Conv/Gemm/MatMul (median per node over ``runs``)."""
    profiled = session(path, profile=True)
    for _ in range(runs + 2):
        profiled.run(None, feeds)
    trace = Path(profiled.end_profiling())
    per_node: dict[tuple, list[float]] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node.setdefault((event["name"], event["args"]["op_name"]), []).append(event["dur"])
    trace.unlink()
    medians = {key: float(np.median(d[2:] or d)) for key, d in per_node.items()}
    total = sum(medians.values()) or 1.0
    return sum(t for (_, op), t in medians.items() if op not in MAC_KERNELS) / total


def row(model: Path, ratio: float, runs: int, folder: Path, feeds_of) -> list[str]:
    reports = {}
    for mode in ("1", "auto"):
        reports[mode] = compress(model, folder / f"{model.stem}.{mode}.onnx", ratio, mode)
        if isinstance(reports[mode], str):
            return [model.stem, f"error ({mode}): {reports[mode][:80]}"]
    outputs = [model] + [folder / f"{model.stem}.{m}.onnx" for m in ("1", "auto")]
    feeds = feeds_of(session(model))
    times = interleaved_ms(outputs, feeds, runs)
    cells = [model.stem]
    for mode, candidate in zip(("1", "auto"), times[1:]):
        rep, latency = reports[mode], summarize(times[0], candidate)
        macs = rep["after"]["macs"] / max(rep["before"]["macs"], 1)
        cells += [f"{macs:.3f}", f"{latency.ratio:.3f} ±{latency.noise:.2f}"]
        cells.append(f"{latency.ratio / macs:.2f}" if macs else "?")
    plain = reports["1"]
    other = plain["after"]["other_ops"] / max(plain["before"]["other_ops"], 1)
    cells += [f"{other:.3f}", f"{100 * non_mac_kernel_share(outputs[1], feeds):.0f}"]
    return cells


HEADER = [
    "model",
    "MACs",
    "lat ±noise",
    "lat/MACs",
    "MACs auto",
    "lat auto ±noise",
    "lat/MACs auto",
    "non-MAC",
    "kern non-MAC %",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--all", action="store_true", help="also models over 150 MB")
    args = parser.parse_args()
    models = args.models or suite(args.all)
    feeds_of = lambda s: _coverage().measure_feeds(s, [])  # noqa: E731
    print(" | ".join(HEADER))
    print(" | ".join("---" for _ in HEADER))
    with tempfile.TemporaryDirectory(prefix="latmacs-") as folder:
        for model in models:
            print(" | ".join(row(model, args.ratio, args.runs, Path(folder), feeds_of)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
