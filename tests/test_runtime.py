"""onnxruntime stays behind sparsec.ir.runtime, and its own messages never reach the user."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import MODELS, ROOT


def test_only_the_runtime_module_imports_onnxruntime():
    """Every session sparsec runs for its own work comes from sparsec.ir.runtime (the testing
    kit, sparsec.testing, runs models in onnxruntime directly on purpose: an independent check)."""
    importers = []
    for path in sorted((ROOT / "sparsec").rglob("*.py")):
        if "testing" in path.relative_to(ROOT / "sparsec").parts:
            continue
        if re.search(r"^\s*(import onnxruntime|from onnxruntime)", path.read_text(), re.MULTILINE):
            importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["sparsec/ir/runtime.py"]


def test_stderr_holds_only_sparsec_lines_when_onnxruntime_cannot_write_its_telemetry(tmp_path):
    """onnxruntime 1.32 prints an ANSI-coloured telemetry warning while being imported when
    $HOME/.cache cannot be created (a HOME below a plain file: unwritable even for root)."""
    (tmp_path / "file").write_text("")
    env = dict(os.environ, HOME=str(tmp_path / "file" / "home"))
    env.pop("XDG_CACHE_HOME", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparsec.entry",
            "compress",
            str(MODELS / "digits_cnn.onnx"),
            "--channels",
            "0.5",
            "-o",
            str(tmp_path / "small.onnx"),
            "--latency-runs",
            "0",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines and all(line.startswith(("  ", "warning: ")) for line in lines), (
        run.stderr
    )  # one progress line per pass that changed something, and sparsec's own warning
    assert "\x1b" not in run.stderr and "onnxruntime" not in run.stderr
