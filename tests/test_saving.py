"""sparsec.ir.saving: a model and its external data switch as one; the data file's name and removal
rule; external data in means external data out. (Signals sent to real runs: test_interrupt.py.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import pytest
from conftest import ROOT, make_model, run_ort
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir import Model, write_text

N = 64
X = np.random.default_rng(7).standard_normal((2, N)).astype(np.float32)


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """These tests raise SIGINT and expect Python's KeyboardInterrupt: install Python's own
    handler again (an earlier test that started Ray in this process may leave Ray's C-level
    handler, which Python's ``signal.getsignal`` does not show)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _external_model(
    folder: Path, seed: int, name: str = "in.onnx", data: str | None = None, bias: bool = False
) -> Path:
    """Two Gemm layers whose weights live in ``data`` (default ``<name>.data``) beside ``name``;
    ``bias`` puts a bias first in the data file (the weights' offsets move)."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((N, N)).astype(np.float32), f"w{i}")
        for i in range(2)
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w0", *["b0"] * bias], ["h"]),
        helper.make_node("Gemm", ["h", "w1"], ["y"]),
    ]
    if bias:
        weights.insert(0, numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b0"))
    proto = make_model(
        nodes, [("x", TensorProto.FLOAT, [2, N])], [("y", TensorProto.FLOAT, [2, N])], weights
    )
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(
        proto,
        str(folder / name),
        save_as_external_data=True,
        location=data or name + ".data",
        size_threshold=0,
    )
    return folder / name


def _outputs(path: Path) -> np.ndarray:
    return run_ort(path, {"x": X})[0]


def _sparsec_data_files(folder: Path, out: str = "m.onnx") -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if re.fullmatch(re.escape(out) + r"\.[0-9a-f]{8}\.data", p.name)
    )


def _assert_one_pair(folder: Path, expected: np.ndarray) -> None:
    """``folder`` holds m.onnx and exactly one data file of its own, no temp file, and the pair
    computes ``expected``."""
    np.testing.assert_array_equal(_outputs(folder / "m.onnx"), expected)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["m.onnx", *_sparsec_data_files(folder)] and len(names) == 2, names


def test_saving_twice_writes_a_fresh_data_file_and_removes_the_previous_one(tmp_path):
    first, second = _external_model(tmp_path / "a", 0), _external_model(tmp_path / "b", 1)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    written = Model.load(first).save(out)
    [data_one] = _sparsec_data_files(out.parent)
    assert written == out.stat().st_size + (out.parent / data_one).stat().st_size
    _assert_one_pair(out.parent, _outputs(first))
    Model.load(second).save(out)
    [data_two] = _sparsec_data_files(out.parent)
    assert data_two != data_one
    _assert_one_pair(out.parent, _outputs(second))
    single = tmp_path / "single.onnx"
    onnx.save(onnx.load(str(first)), str(single))
    Model.load(single).save(
        out
    )  # a one-file model over an external-data pair: the pair's data goes
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]


def test_a_model_loaded_with_external_data_keeps_it_when_every_weight_changed(tmp_path):
    model = Model.load(_external_model(tmp_path, 0))
    for value in model.initializers().values():
        model.resize_initializer(value, model.constant(value) * 2)
    assert not model.has_external_data()  # no weight is read from the file any more
    out = tmp_path / "m.onnx"
    model.save(out)
    assert len(_sparsec_data_files(tmp_path)) == 1 and out.stat().st_size < N * N * 4


def test_only_sparsec_data_files_the_previous_output_read_are_removed(tmp_path):
    user = _external_model(
        tmp_path, 0, name="m.onnx", data="m.onnx.data"
    )  # e.g. torch's own layout
    stray = tmp_path / "m.onnx.0123abcd.data"  # named like sparsec's, but m.onnx does not read it
    stray.write_bytes(b"not ours to judge")
    Model.load(_external_model(tmp_path / "src", 1)).save(user)
    assert (tmp_path / "m.onnx.data").is_file() and stray.is_file()
    assert len(_sparsec_data_files(tmp_path)) == 2  # the stray file and the new one


def test_data_the_input_model_reads_is_never_removed(tmp_path):
    out = tmp_path / "m.onnx"
    Model.load(_external_model(tmp_path / "src", 0)).save(out)
    shutil.copy(out, tmp_path / "copy.onnx")  # reads m.onnx's data file too
    model = Model.load(tmp_path / "copy.onnx")
    model.resize_initializer(model.initializers()["w0"], np.zeros((N, N), np.float32))
    model.save(out)
    assert len(_sparsec_data_files(tmp_path)) == 2
    np.testing.assert_array_equal(
        _outputs(tmp_path / "copy.onnx"), _outputs(tmp_path / "src" / "in.onnx")
    )


def test_a_signal_during_the_commit_is_delivered_once_the_pair_has_switched(tmp_path, monkeypatch):
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    Model.load(_external_model(tmp_path / "a", 0)).save(out)
    new = _external_model(tmp_path / "b", 1, bias=True)
    real_replace = os.replace

    def replace(source, destination):  # Ctrl-C just before the model file is replaced
        if Path(destination) == out:
            signal.raise_signal(signal.SIGINT)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        Model.load(new).save(out)
    monkeypatch.undo()
    _assert_one_pair(out.parent, _outputs(new))


def test_an_interrupted_write_leaves_the_previous_pair_and_no_temp_file(tmp_path, monkeypatch):
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    old = _external_model(tmp_path / "a", 0)
    Model.load(old).save(out)
    real_save = onnx_ir.save

    def interrupted(
        *args, **kwargs
    ):  # Ctrl-C once the weights are written, before anything is replaced
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_ir, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Model.load(_external_model(tmp_path / "b", 1, bias=True)).save(out)
    monkeypatch.undo()
    _assert_one_pair(out.parent, _outputs(old))


@pytest.mark.parametrize("creator", ["mkdtemp", "mkstemp"])
def test_a_signal_as_a_temp_path_is_created_leaves_nothing_once_the_process_exits(
    tmp_path, monkeypatch, creator
):
    """SIGINT landing the moment the model's temp folder (mkdtemp) or a report's temp file
    (mkstemp) exists, before any ``try`` guards it: the path is known to the exit-time cleanup."""
    from sparsec.ir import saving

    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    model = Model.load(_external_model(tmp_path / "a", 0))
    real = getattr(saving.tempfile, creator)

    def signalled(*args, **kwargs):
        made = real(*args, **kwargs)
        if creator == "mkdtemp" or Path(made[1]).name.startswith(".report"):
            signal.raise_signal(signal.SIGINT)
        return made

    monkeypatch.setattr(saving.tempfile, creator, signalled)
    with pytest.raises(KeyboardInterrupt), model.staged_save(out) as stage:
        stage.add_side_file(out.parent / "report.json", "{}")
        stage.commit()
    monkeypatch.undo()
    saving._remove_pending()  # what atexit runs when the process ends
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_force_onto_the_input_works_for_one_file_and_is_refused_for_external_data(cli, tmp_path):
    single = tmp_path / "single.onnx"
    onnx.save(onnx.load(str(_external_model(tmp_path / "src", 0))), str(single))
    code, _, err = cli("compress", single, "-o", single, "--force", "--latency-runs", "0")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single.onnx", "src"]
    external = _external_model(tmp_path / "ext", 1)
    code, _, err = cli("compress", external, "-o", external, "--force", "--latency-runs", "0")
    assert code == 2 and "--force cannot overwrite" in err
    assert sorted(p.name for p in external.parent.iterdir()) == ["in.onnx", "in.onnx.data"]


def test_a_side_file_written_to_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "shared" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp left


def test_a_link_into_proc_is_written_through_not_renamed_over(tmp_path):
    """/dev/stdout -> /proc/self/fd/1 with stdout redirected to a file: a rename over the link
    would replace /dev/stdout itself for every process; the text must go through the fd."""
    redirected = tmp_path / "stdout.txt"
    with open(redirected, "w") as handle:
        handle.write("printed before\n")
        handle.flush()
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{handle.fileno()}")
        write_text(link, "plan\n")
    assert link.is_symlink()
    assert redirected.read_text() == "printed before\nplan\n"  # appended, not truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stdout", "stdout.txt"]


def test_a_model_output_through_a_link_into_proc_is_refused(tmp_path, cli):
    """``-o /dev/stdout`` with stdout redirected to a file: saving renames over its path, which
    would replace the link itself; refused before any work."""
    redirected = tmp_path / "stdout.txt"
    with open(redirected, "w") as handle:
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{handle.fileno()}")
        code, _, err = cli("compress", ROOT / "models" / "digits_cnn.onnx", "-o", link)
    assert code == 2 and "is not a regular file" in err
    assert link.is_symlink() and redirected.read_text() == ""


def test_a_regular_file_under_dev_is_a_file_like_any_other(tmp_path):
    from sparsec.ir.saving import is_stream

    assert is_stream(Path("/dev/stdout")) and is_stream(Path("/dev/null"))
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        assert not is_stream(shm / "sparsec-test-absent.onnx")
