"""Signals sent to real ``sparsec compress`` runs that write external data over an existing pair,
and two runs writing one output at once: afterwards no temp file is left, and the output pair is
the old one or the complete new one (it loads and computes one of the two runs' outputs).

A run is ``python -m sparsec.entry`` (the console script's module) on a seeded 12 MB model of
three Gemm layers; the old pair comes from ``--sparsity 0.3``, the new run uses ``--sparsity 0.6``.
Signals land at start-up (once the handlers are in place), once the input's weights are mapped,
when the save's temp folder appears, and when the new data file is complete (watched in /proc and
in the output folder).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec.cli import main as cli_main

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads /proc (Linux)"
)

N, LAYERS = 1024, 3
OLD, NEW = ["--sparsity", "0.3"], ["--sparsity", "0.6"]
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
X = np.random.default_rng(11).standard_normal((2, N)).astype(np.float32)
DATA_NAME = re.compile(r"m\.onnx\.[0-9a-f]{8}\.data")


def _build(folder: Path) -> Path:
    rng = np.random.default_rng(5)
    nodes, weights, x = [], [], "x"
    for i in range(LAYERS):
        weights.append(
            numpy_helper.from_array(
                (rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32), f"w{i}"
            )
        )
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [out]))
        x = out
    graph = helper.make_graph(
        nodes,
        "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, N])],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folder.mkdir()
    onnx.save(proto, str(folder / "in.onnx"), save_as_external_data=True, location="in.onnx.data")
    return folder / "in.onnx"


def _start(source: Path, out: Path, settings: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    # A pytest started in the background ignores SIGINT, and so would the run (sparsec keeps an
    # inherited SIG_IGN); a signal this process catches is reset to the default in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sparsec.entry",
                "compress",
                str(source),
                "-o",
                str(out),
                *settings,
                "--latency-runs",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=out.parent,
            env=env,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The input model, the old pair's folder, and the outputs of the old and the new setting."""
    base = tmp_path_factory.mktemp("interrupt")
    source = _build(base / "src")
    old, new = base / "old" / "m.onnx", base / "new" / "m.onnx"
    for out, settings in ((old, OLD), (new, NEW)):  # in-process: the imports are paid already
        out.parent.mkdir()
        assert (
            cli_main(["compress", str(source), "-o", str(out), *settings, "--latency-runs", "0"])
            == 0
        )
    outputs = {"old": run_ort(old, {"x": X})[0], "new": run_ort(new, {"x": X})[0]}
    assert np.abs(outputs["old"] - outputs["new"]).max() > 0.1  # the two settings are told apart
    return source, old.parent, outputs


def _copy_old_pair(old_folder: Path, folder: Path) -> Path:
    folder.mkdir()
    for file in old_folder.iterdir():
        shutil.copy(file, folder / file.name)
    return folder / "m.onnx"


def _which_pair(folder: Path, outputs: dict[str, np.ndarray]) -> str:
    """'old' or 'new': the folder holds m.onnx and one data file of its own, nothing else (no
    temp file), and the pair loads and computes that run's outputs."""
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0] == "m.onnx" and DATA_NAME.fullmatch(names[1]), names
    y = run_ort(folder / "m.onnx", {"x": X})[0]
    matches = [name for name, expected in outputs.items() if np.array_equal(y, expected)]
    assert matches, "the output pair computes neither the old nor the new run's outputs"
    return matches[0]


def _handlers_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM (sparsec.entry's handler; Python alone does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # it has exited: nothing to wait for
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _model_loaded(pid: int) -> bool:
    """Whether the process has memory-mapped the input's weights (the run is past start-up)."""
    try:
        return "in.onnx.data" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return True


def _save_started(folder: Path) -> bool:
    return any(p.name.startswith(".m.onnx.") for p in folder.iterdir())


def _data_written(folder: Path, before: set[tuple[str, int]]) -> bool:
    """A complete new data file exists: in the save's temp folder, or (the old save) in place."""
    found = {
        (p.name, p.stat().st_ino)
        for p in [*folder.glob("m.onnx*.data"), *folder.glob(".m.onnx.*.tmp/*.data")]
    }
    return bool(found - before)


def _wait(process: subprocess.Popen, ready, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_start_up_prints_one_line_and_changes_nothing(runs, tmp_path, signum):
    source, old_folder, outputs = runs
    out = _copy_old_pair(old_folder, tmp_path / "out")
    process = _start(source, out, NEW)
    _wait(process, lambda: _handlers_installed(process.pid))
    process.send_signal(signum)  # sparsec.cli (onnx, onnxruntime, numpy) is still loading
    code, err = _finish(process)
    assert (code, err) == (EXIT_CODES[signum], "sparsec: aborted\n")
    assert _which_pair(out.parent, outputs) == "old"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "when", ["once the model is loaded", "when the save starts", "when the data is written"]
)
def test_a_signal_leaves_the_old_or_the_new_pair_and_no_temp_file(runs, tmp_path, signum, when):
    source, old_folder, outputs = runs
    out = _copy_old_pair(old_folder, tmp_path / "out")
    before = {(p.name, p.stat().st_ino) for p in out.parent.iterdir()}
    process = _start(source, out, NEW)
    ready = {
        "once the model is loaded": lambda: _model_loaded(process.pid),
        "when the save starts": lambda: _save_started(out.parent),
        "when the data is written": lambda: _data_written(out.parent, before),
    }[when]
    _wait(process, ready)
    if process.poll() is None:
        process.send_signal(signum)
    code, err = _finish(process)
    assert "Traceback" not in err and err.count("sparsec:") <= 1, err
    pair = _which_pair(out.parent, outputs)
    if code == 0:  # the signal came after the run finished
        assert pair == "new", err
    else:
        assert code == EXIT_CODES[signum] and err.splitlines()[-1] == "sparsec: aborted", err
    print(f"{when}, {signal.Signals(signum).name}: exit {code}, {pair} pair")


def test_two_runs_writing_one_output_leave_one_complete_pair(runs, tmp_path):
    source, old_folder, outputs = runs
    out = _copy_old_pair(old_folder, tmp_path / "out")
    started = [_start(source, out, NEW), _start(source, out, OLD)]
    for process in started:
        code, err = _finish(process)
        assert code == 0, err
    assert _which_pair(out.parent, outputs) in ("old", "new")


def test_the_console_script_sets_up_signals_before_anything_heavy_loads():
    """``sparsec`` runs ``sparsec.entry:main``, and importing it loads none of onnx, onnxruntime,
    numpy (an eager ``sparsec/__init__`` would load them before any handler is in place)."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"sparsec": "sparsec.entry:main"}
    probe = "import sys, sparsec.entry; print(sorted({'onnx', 'onnxruntime', 'numpy', 'onnx_ir'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_an_error_raised_while_a_signal_unwinds_still_exits_as_aborted(cli, tmp_path):
    """A library's cleanup that fails while the interrupt unwinds the stack (a TypeError in a
    finally, seen once from onnx-ir's threaded external-data writer) is the signal's, not an
    internal error."""
    (tmp_path / "cut.py").write_text(
        "import signal\n\nimport sparsec\nfrom sparsec.entry import Interrupted\n\n\n"
        "class CutShortPass(sparsec.InPlacePass):\n"
        "    def call(self, model):\n"
        "        try:\n            raise Interrupted(signal.SIGTERM)\n"
        "        finally:\n            raise TypeError('cleanup failed while unwinding')\n"
    )
    code, _, err = cli(
        "compress",
        ROOT / "models" / "digits_cnn.onnx",
        "-o",
        tmp_path / "out.onnx",
        "--passes",
        f"{tmp_path / 'cut.py'}:CutShortPass",
    )
    assert code == 143 and err.strip().splitlines()[-1] == "sparsec: aborted"
    assert not (tmp_path / "out.onnx").exists()
