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


def _outputs(session, feeds):
    return session.run(feeds, session.output_names)


def _digits():
    import numpy as np

    from sparsec.ir import Model

    model = Model.load(MODELS / "digits_cnn.onnx")
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    return model, {model.inputs[0].name: x}


def _no_room(*_args, **_kwargs):
    raise OSError(28, "No space left on device")


def test_a_session_without_room_for_its_temporary_copy_goes_as_bytes(monkeypatch):
    import numpy as np

    from sparsec.ir import runtime

    model, feeds = _digits()
    expected = _outputs(runtime.session_for(model), feeds)
    monkeypatch.setattr(runtime.ir, "save", _no_room)
    got = _outputs(runtime.session_for(model), feeds)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_a_model_that_must_go_as_a_file_without_room_is_one_error_line(monkeypatch):
    import pytest

    from sparsec.errors import InputError
    from sparsec.ir import runtime

    model, _feeds = _digits()
    monkeypatch.setattr(runtime.ir, "save", _no_room)
    monkeypatch.setattr(runtime, "can_truncate", lambda model: False)  # as past 2 GB
    with pytest.raises(InputError, match="TMPDIR") as caught:
        runtime.session_for(model)
    assert "\n" not in str(caught.value)


def test_a_file_whose_copy_cannot_be_written_is_read_as_it_is(monkeypatch):
    import numpy as np

    from sparsec.ir import runtime

    _model, feeds = _digits()
    path = MODELS / "digits_cnn.onnx"
    expected = _outputs(runtime.session_for_file(path), feeds)
    copies = []

    def refused(proto, path, **kwargs):
        copies.append(path)
        _no_room()

    monkeypatch.setattr(runtime, "EXTERNAL_COPY_BYTES", 0)  # this small file is copied too
    monkeypatch.setattr(runtime.onnx, "save_model", refused)
    got = _outputs(runtime.session_for_file(path), feeds)
    assert copies, "the copy was attempted"
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_validate_under_a_small_file_size_limit_still_runs(tmp_path):
    """A file-size limit below the model's size (the temporary copy cannot be written): the
    bytes go to onnxruntime instead; no traceback, no internal error."""
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    model = str(MODELS / "digits_cnn.onnx")
    run = subprocess.run(
        [sys.executable, "-m", "sparsec.entry", "validate", model, model],
        capture_output=True,
        text=True,
        preexec_fn=limited,
        check=False,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.glob("sparsec-*")), "temporary folders are removed"
