"""Compile time, sparsec vs onnxsim, measured side by side: median of interleaved repetitions.

Usage (needs ``pip install -e '.[bench]'`` for onnxsim >= 0.8.1)::

    python benchmarks/compile_time.py [MODEL.onnx ...] [--ratio 0.5] [--repeat 7]

Default models: the timm resnet18 exports (``.cache/timm``, from models/make_timm_models.py)
and the filled light zfnet512 (``.cache/light``, from models/fill_light_models.py).

Compile time = load + prune + save, in this process, for both tools: sparsec runs what
``sparsec compress --channels R`` runs (its pass pipeline; validation and the before/after
figures are not compiling and are left out), onnxsim runs
``apply_structured_pruning(model, sparsity=R)`` between ``onnx.load`` and ``onnx.save``.
The two alternate run by run, so machine noise hits both alike; the table shows the median,
the fastest run and the ratio of medians (sparsec / onnxsim; below 1 means sparsec is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [
    ROOT / ".cache/timm/resnet18_legacy.onnx",
    ROOT / ".cache/timm/resnet18_dynamo.onnx",
    ROOT / ".cache/light/zfnet512.onnx",
]


def sparsec_compile(source: Path, target: Path, ratio: float) -> float:
    from sparsec import api
    from sparsec.ir import Model
    from sparsec.passes import Pipeline

    start = time.perf_counter()
    model = Model.load(source)
    Pipeline(api.channel_passes(ratio), fixed_point=True)(model)
    model.save(target, force=True)
    return time.perf_counter() - start


def onnxsim_compile(source: Path, target: Path, ratio: float) -> float:
    import onnx
    import onnxsim

    start = time.perf_counter()
    model = onnxsim.apply_structured_pruning(onnx.load(str(source)), sparsity=ratio)
    onnx.save(model, str(target))
    return time.perf_counter() - start


def measure(model: Path, ratio: float, repeat: int, out_dir: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"sparsec": [], "onnxsim": []}
    for _ in range(repeat):
        times["sparsec"].append(sparsec_compile(model, out_dir / "sparsec.onnx", ratio))
        times["onnxsim"].append(onnxsim_compile(model, out_dir / "onnxsim.onnx", ratio))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    models = [m for m in (args.models or DEFAULT_MODELS) if m.exists()]
    print(
        f"compile seconds (load + prune + save), ratio {args.ratio}, median of {args.repeat} interleaved runs"
    )
    print(f"{'model':<24} {'sparsec':>8} {'(best)':>8} {'onnxsim':>8} {'(best)':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for model in models:
            print(f"  {model.stem}...", file=sys.stderr)
            times = measure(model, args.ratio, args.repeat, Path(folder))
            mine, theirs = statistics.median(times["sparsec"]), statistics.median(times["onnxsim"])
            print(
                f"{model.stem:<24} {mine:8.3f} {min(times['sparsec']):8.3f} {theirs:8.3f} "
                f"{min(times['onnxsim']):8.3f} {mine / theirs:6.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
