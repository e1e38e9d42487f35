"""Hostile and malformed inputs: one clear line, the right exit code, nothing written or read
from outside the model's folder.

Every case builds its files in a scratch folder (the working directory during the run, which
also holds a "secret" file of marker bytes that a careless reader would pick up). For each case:
the exit code; stderr is exactly one ``sparsec: error:`` line with no traceback and no raw
control character; nothing in the folder is created or changed (the input included); and for
the cases that must succeed, no output holds a marker byte pattern.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, run_ort
from onnx import TensorProto, helper, numpy_helper

WEIGHT = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
MARKER = np.full(16, 7.125, np.float32)  # what a tensor read from the wrong folder would hold
TOOL_PASS = (
    "import sys\nimport sparsec\n\n\nclass ExitPass(sparsec.InPlacePass):\n    name = 'exit-pass'\n"
    "    summary = 'calls sys.exit'\n\n    def call(self, model):\n        sys.exit(0)\n"
)


def _model(
    initializers=(), nodes=None, sparse=(), outputs=("y",), input_dims=(2, 4)
) -> onnx.ModelProto:
    """y = x @ W, with W given as ``initializers`` / ``sparse`` / a Constant in ``nodes``."""
    nodes = nodes if nodes is not None else []
    graph = helper.make_graph(
        nodes + [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_dims))],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [input_dims[0], 4])
            for name in outputs
        ],
        list(initializers),
        sparse_initializer=list(sparse),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _external(
    tensor: TensorProto, location: str, offset: str = "0", length: str | None = None
) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", offset)] + (
        [("length", length)] if length else []
    )
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _weight(location: str | None = None, **entries) -> TensorProto:
    tensor = numpy_helper.from_array(WEIGHT, "W")
    return _external(tensor, location, **entries) if location is not None else tensor


def _sparse(
    location: str | None = None, indices=(0, 5, 10, 15), values=(1, 2, 3, 4)
) -> onnx.SparseTensorProto:
    """A 4x4 sparse W; its values live in external data at ``location`` when given."""
    value_tensor = numpy_helper.from_array(np.array(values, np.float32), "W")
    if location is not None:
        _external(value_tensor, location, length=str(4 * len(values)))
    index_tensor = numpy_helper.from_array(np.array(indices, np.int64), "W_indices")
    return helper.make_sparse_tensor(value_tensor, index_tensor, [4, 4])


def _save(folder: Path, model: onnx.ModelProto, data: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in (data or {}).items():
        (folder / name).write_bytes(payload)
    onnx.save(model, str(folder / "m.onnx"))
    return folder / "m.onnx"


def _with_weight(tensor: TensorProto, **changes) -> onnx.ModelProto:
    for key, value in changes.items():
        if key == "dims":
            del tensor.dims[:]
            tensor.dims.extend(value)
        else:
            setattr(tensor, key, value)
    return _model([tensor])


def _hostile(tmp: Path) -> dict[str, tuple[list, int, str]]:
    """name -> (argv, exit code, a fragment of the error line)."""
    out = tmp / "out.onnx"
    weights = {"w.bin": WEIGHT.tobytes()}
    (tmp / "outside").mkdir()
    (tmp / "outside" / "w.bin").write_bytes(MARKER.tobytes())
    (tmp / "sparse.bin").write_bytes(
        MARKER[:4].tobytes()
    )  # in the working directory, not the model's folder
    hard = _save(tmp / "hard", _model([_weight("w.bin")]))
    os.link(tmp / "outside" / "w.bin", tmp / "hard" / "w.bin")
    constant = helper.make_node("Constant", [], ["W"], sparse_value=_sparse("sparse.bin"))
    exit_pass = tmp / "exit_pass.py"
    exit_pass.write_text(TOOL_PASS)
    newline_path = tmp / "odd\nsparsec: error: forged\x1b[31m.onnx"
    cnn = MODELS / "digits_cnn.onnx"
    existing = tmp / "existing.onnx"
    existing.write_bytes(cnn.read_bytes())
    cases = {
        "sparse values read from the working directory": (
            [
                "compress",
                _save(tmp / "s1", _model(sparse=[_sparse("sparse.bin")])),
                "-o",
                out,
                "--sparsity",
                "0.5",
            ],
            2,
            "is missing",
        ),
        "sparse values analyzed from the working directory": (
            ["analyze", _save(tmp / "s2", _model(sparse=[_sparse("sparse.bin")]))],
            2,
            "is missing",
        ),
        "sparse Constant read from the working directory": (
            ["analyze", _save(tmp / "s3", _model(nodes=[constant]))],
            2,
            "is missing",
        ),
        "sparse values escaping the folder": (
            ["analyze", _save(tmp / "s4", _model(sparse=[_sparse("../outside/w.bin")]))],
            2,
            "outside the model folder",
        ),
        "NUL byte in a location": (
            ["analyze", _save(tmp / "nul", _model([_weight("w\x00.bin")]), weights)],
            2,
            "unusable external data location",
        ),
        "5000-character location": (
            ["analyze", _save(tmp / "long", _model([_weight("a" * 5000)]), weights)],
            2,
            "unusable external data location",
        ),
        "location through a missing folder": (
            ["analyze", _save(tmp / "via", _model([_weight("nosuch/../w.bin")]), weights)],
            2,
            "is missing",
        ),
        "negative offset": (
            ["analyze", _save(tmp / "neg", _model([_weight("w.bin", offset="-4")]), weights)],
            2,
            "must be a non-negative integer",
        ),
        "fractional offset": (
            ["analyze", _save(tmp / "frac", _model([_weight("w.bin", offset="1.5")]), weights)],
            2,
            "must be a non-negative integer",
        ),
        "length that does not fit the dims": (
            ["analyze", _save(tmp / "len", _model([_weight("w.bin", length="8")]), weights)],
            2,
            "has length 8",
        ),
        "hard-linked data file": (["compress", hard, "-o", out], 2, "is a hard link"),
        "sparse index out of range": (
            ["analyze", _save(tmp / "oob", _model(sparse=[_sparse(indices=(0, 5, 10, 99))]))],
            2,
            "index outside its dims",
        ),
        "sparse indices not matching the values": (
            ["analyze", _save(tmp / "mismatch", _model(sparse=[_sparse(indices=(0, 5, 10))]))],
            2,
            "has 4 values",
        ),
        "duplicate output names": (
            ["compress", _save(tmp / "dup", _model([_weight()], outputs=("y", "y"))), "-o", out],
            2,
            "is listed 2 times",
        ),
        "data type 0": (
            ["analyze", _save(tmp / "t0", _with_weight(_weight(), data_type=0))],
            2,
            "data type 0",
        ),
        "data type 77": (
            ["compress", _save(tmp / "t77", _with_weight(_weight(), data_type=77)), "-o", out],
            2,
            "data type 77",
        ),
        "weight declaring 2^40 floats": (
            ["analyze", _save(tmp / "big", _with_weight(_weight(), dims=[2**20, 2**20]))],
            2,
            "the file is corrupt",
        ),
        "input dimension of 2^40": (
            ["compress", _save(tmp / "dim", _model([_weight()], input_dims=(2**40, 4))), "-o", out],
            2,
            "of this machine's memory",
        ),
        "input shape of 2^31 rows": (
            ["compress", cnn, "-o", out, "--input-shape", "input:2147483648x1x8x8"],
            2,
            "of this machine's memory",
        ),
        "sys.exit in a pass": (
            ["compress", cnn, "-o", out, "--passes", f"{exit_pass}:ExitPass"],
            3,
            "sys.exit(0)",
        ),
        "output with a trailing slash": (
            ["compress", cnn, "-o", f"{tmp}/newdir/"],
            2,
            "names a folder",
        ),
        "path holding a newline and an escape": (
            ["analyze", newline_path],
            2,
            "forged\\x1b[31m.onnx: no such file",
        ),
        "report that cannot be written": (
            ["compress", cnn, "-o", existing, "--channels", "0.5", "--report", "/dev/full"],
            2,
            "cannot write /dev/full",
        ),
        "plan that cannot be written": (
            ["compress", cnn, "-o", out, "--channels", "0.5", "--plan-out", "/dev/full"],
            2,
            "cannot write /dev/full",
        ),
        "validate that fails": (
            ["validate", cnn, MODELS / "digits_mlp.onnx"],
            1,
            "validation failed: output 'logits'",
        ),
    }
    return cases


def _case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return list(_hostile(Path(folder)))


def _snapshot(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def _assert_one_error_line(err: str, fragment: str) -> None:
    """stderr ends with the one error line; whatever precedes it is indented progress."""
    *progress, last = err.splitlines()
    assert err.endswith("\n") and last.startswith("sparsec: error: "), err
    assert all(line.startswith("  ") for line in progress), err
    assert "Traceback" not in err and "\x1b" not in err
    assert fragment in err, err


@pytest.mark.parametrize("case", _case_names())
def test_hostile_input_is_one_line_nothing_written(cli, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    argv, code, fragment = _hostile(tmp_path)[case]
    before = _snapshot(tmp_path)
    actual, _, err = cli(*argv)
    assert actual == code, err
    _assert_one_error_line(err, fragment)
    assert (
        _snapshot(tmp_path) == before
    )  # nothing written, left behind or changed, the inputs included


def _assert_no_marker(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert MARKER[:4].tobytes() not in path.read_bytes(), (
                f"{path} holds bytes of a file outside the model folder"
            )


def test_sparse_values_in_the_model_folder_are_read_from_there(cli, tmp_path, monkeypatch):
    """The same file name in the working directory (marker bytes) and in the model's folder
    (the real values): the model's folder wins, the run works and writes no marker byte."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sparse.bin").write_bytes(MARKER[:4].tobytes())
    values = np.array([1, 2, 3, 4], np.float32)
    source = _save(
        tmp_path / "model", _model(sparse=[_sparse("sparse.bin")]), {"sparse.bin": values.tobytes()}
    )
    out = tmp_path / "result" / "out.onnx"
    out.parent.mkdir()
    code, _, err = cli("compress", source, "-o", out, "--latency-runs", "0")
    assert code == 0, err
    _assert_no_marker(out.parent)
    dense = np.zeros(16, np.float32)
    dense[[0, 5, 10, 15]] = values
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], x @ dense.reshape(4, 4), rtol=1e-6)


def test_a_constant_holding_a_sparse_value_loads_and_compresses(cli, tmp_path):
    values = np.array([1, 2, 3, 4], np.float32)
    constant = helper.make_node("Constant", [], ["W"], sparse_value=_sparse())
    source = _save(tmp_path / "model", _model(nodes=[constant]))
    out = tmp_path / "out.onnx"
    code, _, err = cli("compress", source, "-o", out, "--latency-runs", "0")
    assert code == 0, err
    expected = np.zeros(16, np.float32)
    expected[[0, 5, 10, 15]] = values
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], x @ expected.reshape(4, 4), rtol=1e-6)


def test_a_failed_validate_prints_its_table_and_one_error_line(cli):
    code, out, err = cli("validate", MODELS / "digits_cnn.onnx", MODELS / "digits_mlp.onnx")
    assert code == 1 and "logits" in out
    _assert_one_error_line(err, "validation failed: output 'logits' max abs error")


def test_an_external_constant_is_read_from_the_model_folder_and_written_inline(
    cli, tmp_path, monkeypatch
):
    """A Constant whose value lives in external data: read from the model's folder whatever the
    working directory (which holds marker bytes under the same name), and the output carries it
    (only initializers go to an output's data file; an external attribute would point at a file
    that is not beside the output)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cw.bin").write_bytes(MARKER.tobytes())
    value = _external(numpy_helper.from_array(WEIGHT), "cw.bin", length=str(WEIGHT.nbytes))
    constant = helper.make_node("Constant", [], ["W"], value=value)
    source = _save(tmp_path / "model", _model(nodes=[constant]), {"cw.bin": WEIGHT.tobytes()})
    out = tmp_path / "result" / "out.onnx"
    out.parent.mkdir()
    code, _, err = cli("compress", source, "-o", out, "--latency-runs", "0")
    assert code == 0, err
    _assert_no_marker(out.parent)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], x @ WEIGHT, rtol=1e-6)


def test_packed_types_are_counted_in_bits(cli, tmp_path):
    """4-bit and 2-bit weights hold two and four elements per byte (the ONNX checker accepts
    them; they are not corrupt)."""
    for name, bits, opset in (("FLOAT4E2M1", 4, 23), ("INT4", 4, 23), ("INT2", 2, 25)):
        count = 8
        tensor = helper.make_tensor(
            "w", getattr(TensorProto, name), [count], vals=b"\x00" * (count * bits // 8), raw=True
        )
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [count])
        graph = helper.make_graph(
            [helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)],
            "g",
            [],
            [output],
            [tensor],
        )
        onnx.save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]),
            str(tmp_path / "m.onnx"),
        )
        code, _, err = cli("analyze", tmp_path / "m.onnx")
        assert code == 0, (name, err)
