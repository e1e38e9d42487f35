"""Compile time, sparsec vs onnxsim, measured side by side: median of interleaved repetitions;
and sparsec's compile time against graph size (``--scaling``).

Usage (needs ``pip install -e '.[bench]'`` for onnxsim >= 0.8.1)::

    python benchmarks/compile_time.py [MODEL.onnx ...] [--ratio 0.5] [--repeat 5]
    python benchmarks/compile_time.py --scaling [--sizes 1000,2000,5000,10000,20000]
        [--plot compile_scaling.png]

Default models: every model of ``benchmarks/coverage.py``'s suites present on this machine
(``models/digits_*.onnx``, ``.cache/light``, ``.cache/pypi`` with the input shapes or inputs
``pypi_models.extra_args`` gives, ``.cache/timm``); nothing is downloaded or built.

Compile time = load + passes + save, in this process, for both tools: sparsec runs
``api.compress`` as ``sparsec compress --channels R`` does and sums its report's ``timings_s``
``load``, ``passes`` and ``save`` (preparing inputs, validation and the before/after figures are
not compiling and are left out), onnxsim runs ``apply_structured_pruning(model, sparsity=R)`` between
``onnx.load`` and ``onnx.save``. The two alternate run by run, so machine noise hits both alike;
the table shows the median, the fastest run and the ratio of medians (sparsec / onnxsim; below 1
means sparsec is faster).

``--scaling`` generates seeded chains of residual blocks (Conv → BN → Relu → Conv → BN → Add →
Tanh, 8 channels on a 4×4 image, so that weights do not dominate; the Tanh keeps thousands of
blocks finite) of about each ``--sizes``
node count, compiles each (median of ``--repeat``, every size once per repetition so that load
on a shared machine hits all sizes alike) and prints nodes, seconds, microseconds per node and
the time relative to the smallest graph (linear: that ratio tracks the node ratio).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODES_PER_BLOCK = 7  # the generated residual block: Conv, BN, Relu, Conv, BN, Add, Tanh


def suite_models() -> list[Path]:
    """The coverage suites' models present here, in coverage.py's order."""
    digits = [ROOT / "models" / f"digits_{n}.onnx" for n in ("cnn", "mlp", "cnn_dynamo")]
    cache = ROOT / ".cache"
    found = [
        *digits,
        *sorted((cache / "light").glob("*.onnx")),
        *sorted((cache / "pypi").glob("*.onnx")),
        *sorted((cache / "timm").glob("*.onnx")),
    ]
    return [path for path in found if path.exists()]


def extra_args(model: Path) -> list[str]:
    """The ``sparsec compress`` arguments a pypi-suite model needs (``--input-shape``...)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pypi_models import extra_args as pypi_extra_args

    return pypi_extra_args(model)


def sparsec_compile(source: Path, target: Path, ratio: float, extra: list[str]) -> float:
    """Seconds of load + passes + save of ``sparsec compress SOURCE --channels RATIO`` (its
    report's ``timings_s``; validation, measuring and preparing inputs are not counted). The
    garbage of the runs before is collected first, untimed, so that no run pays for another's
    (a 20,000-node compress leaves ~1.4 million objects to collect)."""
    from sparsec import api

    gc.collect()

    shapes = [extra[i + 1] for i, arg in enumerate(extra) if arg == "--input-shape"]
    inputs = next((extra[i + 1] for i, arg in enumerate(extra) if arg == "--inputs"), None)
    result = api.compress(
        source,
        target,
        pipeline=api.channel_passes(ratio),
        input_shapes=shapes,
        inputs=inputs,
        force=True,
        latency_runs=0,
    )
    return sum(result.timings_s.get(lap, 0.0) for lap in ("load", "passes", "save"))


def onnxsim_compile(source: Path, target: Path, ratio: float) -> float:
    import onnx
    import onnxsim

    gc.collect()  # as before sparsec's: no run pays for the garbage of another
    start = time.perf_counter()
    model = onnxsim.apply_structured_pruning(onnx.load(str(source)), sparsity=ratio)
    onnx.save(model, str(target))
    return time.perf_counter() - start


def measure(model: Path, ratio: float, repeat: int, out_dir: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"sparsec": [], "onnxsim": []}
    extra = extra_args(model)
    for _ in range(repeat):
        times["sparsec"].append(sparsec_compile(model, out_dir / "sparsec.onnx", ratio, extra))
        times["onnxsim"].append(onnxsim_compile(model, out_dir / "onnxsim.onnx", ratio))
    return times


def compare(models: list[Path], ratio: float, repeat: int) -> None:
    """The side-by-side table, one row per model as it is measured."""
    print(f"compile seconds (load + passes + save), ratio {ratio}, median of {repeat} interleaved")
    print(f"{'model':<34} {'sparsec':>8} {'(best)':>8} {'onnxsim':>8} {'(best)':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for model in models:
            times = measure(model, ratio, repeat, Path(folder))
            mine, theirs = statistics.median(times["sparsec"]), statistics.median(times["onnxsim"])
            print(
                f"{model.stem:<34} {mine:8.3f} {min(times['sparsec']):8.3f} {theirs:8.3f} "
                f"{min(times['onnxsim']):8.3f} {mine / theirs:6.2f}",
                flush=True,
            )


def residual_chain(nodes: int, seed: int = 0):
    """A seeded chain of residual blocks with about ``nodes`` nodes (a ``sparsec.Model``)."""
    from sparsec.testing import GraphBuilder

    g = GraphBuilder((1, 8, 4, 4), seed=seed)
    for index in range(max(1, round(nodes / NODES_PER_BLOCK))):
        skip = g.current
        g.conv(8, name=f"block{index}.conv1").batchnorm().relu()
        g.conv(8, name=f"block{index}.conv2").batchnorm().add(skip).act("Tanh")
    return g.model()


def scaling(sizes: list[int], ratio: float, repeat: int, plot: Path | None) -> None:
    """Compile generated graphs of each size, the sizes in turn within each repetition (so that
    machine noise hits every size alike); print (and plot) the curve of medians."""
    print(
        f"compile seconds (load + passes + save) against graph size, ratio {ratio}, "
        f"median of {repeat}, sizes interleaved"
    )
    print(f"{'nodes':>7} {'seconds':>9} {'us/node':>8} {'x time':>7} {'x nodes':>8}")
    with tempfile.TemporaryDirectory() as folder:
        sources, counts = [], []
        for size in sizes:
            model, source = residual_chain(size), Path(folder) / f"chain{size}.onnx"
            model.save(source, force=True)
            sources.append(source)
            counts.append(len(list(model.nodes())))
        times: list[list[float]] = [[] for _ in sizes]
        for _ in range(repeat):
            for index, source in enumerate(sources):
                out = Path(folder) / "out.onnx"
                times[index].append(sparsec_compile(source, out, ratio, []))
    curve = [(count, statistics.median(t)) for count, t in zip(counts, times)]
    base_nodes, base_seconds = curve[0]
    for count, seconds in curve:
        print(
            f"{count:7d} {seconds:9.3f} {1e6 * seconds / count:8.1f} "
            f"{seconds / base_seconds:7.2f} {count / base_nodes:8.2f}"
        )
    if plot is not None:
        plot_curve(curve, plot)


def plot_curve(curve: list[tuple[int, float]], path: Path) -> None:
    """Seconds against nodes, with the line through the smallest graph's time per node."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes, seconds = zip(*curve)
    per_node = seconds[0] / nodes[0]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(nodes, seconds, "o-", label="sparsec compress --channels 0.5")
    axes.plot(nodes, [n * per_node for n in nodes], "--", color="grey", label="linear")
    axes.set_xlabel("graph nodes (generated residual Conv/BN chain)")
    axes.set_ylabel("compile seconds (load + passes + save)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scaling", action="store_true", help="compile time against graph size")
    parser.add_argument("--sizes", default="1000,2000,5000,10000,20000")
    parser.add_argument("--plot", type=Path, help="with --scaling: write the curve to this PNG")
    args = parser.parse_args()
    if args.scaling:
        sizes = [int(s) for s in args.sizes.split(",")]
        scaling(sizes, args.ratio, args.repeat, args.plot)
        return 0
    compare([m for m in (args.models or suite_models()) if m.exists()], args.ratio, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
