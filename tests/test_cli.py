"""The command line: outputs, JSON keys, exit codes, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, assert_same_outputs
from onnx import TensorProto, helper

CLEANUP = MODELS / "cleanup_cnn.onnx"


def test_analyze_json_has_params_macs_and_inputs(cli):
    code, out, err = cli(
        "analyze", MODELS / "digits_cnn.onnx", "--json", "--input-shape", "input:2x1x8x8"
    )
    summary = json.loads(out)
    assert code == 0 and not err
    assert summary["params"] > 5000 and summary["macs"] > 0
    assert summary["inputs"][0]["bound_shape"] == [2, 1, 8, 8]
    assert summary["op_histogram"]["Conv"] == 7 and summary["opsets"][""] == 17


def test_analyze_text_gives_the_json_counts(cli):
    code, out, _ = cli("analyze", MODELS / "digits_cnn_dynamo.onnx")
    summary = json.loads(cli("analyze", MODELS / "digits_cnn_dynamo.onnx", "--json")[1])
    exact = {
        label: int(count.replace(",", ""))
        for label, count in re.findall(r"^(params|MACs) .*\(([\d,]+)\)", out, re.M)
    }
    assert code == 0 and exact == {"params": summary["params"], "MACs": summary["macs"]}
    conv = re.search(r"^Conv +(\d+) ", out, re.M)
    assert conv and int(conv.group(1)) == summary["op_histogram"]["Conv"]


def _table_row(text: str, label: str) -> list[str]:
    """The cells after ``label`` on its row of a printed table."""
    return re.search(rf"^{label} +(.+)$", text, re.M).group(1).split()


def test_compress_cleans_up_validates_and_reports(cli, tmp_path):
    out, report = tmp_path / "clean.onnx", tmp_path / "report.json"
    code, stdout, stderr = cli(
        "compress", CLEANUP, "-o", out, "--report", report, "--latency-runs", "3"
    )
    assert code == 0, stderr
    data = json.loads(report.read_text())
    for key in (
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "bytes_before",
        "bytes_after",
        "validation",
        "pipeline",
    ):
        assert key in data
    assert data["validation"]["passed"] and data["bytes_after"] == out.stat().st_size
    assert data["params_after"] < data["params_before"]
    assert _table_row(stdout, "nodes") == [
        str(data["nodes_before"]),
        str(data["nodes_after"]),
        f"{data['nodes_after'] / data['nodes_before']:.3f}",
    ]
    for row in ("params", "MACs", "file bytes"):
        key = {"params": "params", "MACs": "macs", "file bytes": "bytes"}[row]
        assert _table_row(stdout, row)[-1] == f"{data[key + '_after'] / data[key + '_before']:.3f}"
    assert "latency ms" in stdout
    assert (
        "bn-fold: batchnorms_folded=4" in stderr and "sparsec: error" not in stderr
    )  # progress goes to stderr
    saved = onnx.load(str(out))
    assert not {"BatchNormalization", "Identity", "Dropout"} & {n.op_type for n in saved.graph.node}
    assert {p.key: p.value for p in saved.metadata_props}["sparsec.pipeline"] == data["pipeline"]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_same_outputs(CLEANUP, out, {"x": x})


def test_compress_external_data_model_with_user_inputs(cli, tmp_path):
    out = tmp_path / "cnn.onnx"
    code, _, err = cli(
        "compress",
        MODELS / "digits_cnn_dynamo.onnx",
        "-o",
        out,
        "--inputs",
        MODELS / "digits_test.npz",
        "--latency-runs",
        "0",
    )
    assert code == 0, err
    assert [p.name for p in tmp_path.glob("cnn.onnx.*.data")] and len(list(tmp_path.iterdir())) == 2
    assert_same_outputs(
        MODELS / "digits_cnn_dynamo.onnx",
        out,
        {"input": np.load(MODELS / "digits_test.npz")["input"]},
    )


def test_validate_fails_when_the_candidate_lacks_an_output(cli, tmp_path):
    both = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("a", "b")],
    )
    reference, candidate = tmp_path / "both.onnx", tmp_path / "one.onnx"
    onnx.save(helper.make_model(both, opset_imports=[helper.make_opsetid("", 17)]), str(reference))
    del both.output[1]
    onnx.save(helper.make_model(both, opset_imports=[helper.make_opsetid("", 17)]), str(candidate))
    assert cli("validate", reference, reference, "--latency-runs", "0")[0] == 0
    assert cli("validate", reference, candidate, "--latency-runs", "0")[0] == 1


def test_validate_exit_codes(cli, tmp_path):
    code, out, _ = cli(
        "validate",
        MODELS / "digits_cnn.onnx",
        MODELS / "digits_cnn_dynamo.onnx",
        "--json",
        "--latency-runs",
        "1",
        "--inputs",
        MODELS / "digits_test.npz",
    )
    assert code == 0 and json.loads(out)["outputs"][0]["top1"] == 1.0
    proto = onnx.load(str(MODELS / "digits_mlp.onnx"))
    weight = next(t for t in proto.graph.initializer if len(t.dims) == 2)
    array = onnx.numpy_helper.to_array(weight).copy()
    array[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(proto, str(tmp_path / "changed.onnx"))
    code, out, _ = cli(
        "validate", MODELS / "digits_mlp.onnx", tmp_path / "changed.onnx", "--latency-runs", "0"
    )
    assert code == 1 and "FAIL" in out


def test_passes_lists_names_and_descriptions(cli):
    code, out, _ = cli("passes")
    assert code == 0 and "dead-code" in out and "bn-fold" in out


def _bad_inputs(tmp_path):
    """name -> (argv, file that must not be written)."""
    text = tmp_path / "text.onnx"
    text.write_text("hello\n")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(CLEANUP.read_bytes()[:2000])
    bad_graph = tmp_path / "bad_graph.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph), str(bad_graph))
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    shutil.copy(
        MODELS / "digits_cnn_dynamo.onnx", ext_dir / "m.onnx"
    )  # its .data file is not copied
    escape_dir = tmp_path / "escape"
    escape_dir.mkdir()
    proto = onnx.load(str(MODELS / "digits_cnn_dynamo.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../digits_cnn_dynamo.onnx.data"
    (escape_dir / "m.onnx").write_bytes(proto.SerializeToString())
    shutil.copy(MODELS / "digits_cnn_dynamo.onnx.data", tmp_path)
    ext_copy = tmp_path / "ext_copy"
    ext_copy.mkdir()
    shutil.copy(MODELS / "digits_cnn_dynamo.onnx", ext_copy)
    shutil.copy(MODELS / "digits_cnn_dynamo.onnx.data", ext_copy)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 3, 8, 8), np.float32))
    same = tmp_path / "same.onnx"
    shutil.copy(CLEANUP, same)
    broken_pass = tmp_path / "broken.py"
    broken_pass.write_text("def broken(:\n")
    not_a_pass = tmp_path / "not_a_pass.py"
    not_a_pass.write_text("class Helper:\n    pass\n")
    cnn = MODELS / "digits_cnn.onnx"
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    nan = tmp_path / "nan.npz"
    np.savez(nan, input=np.full((2, 1, 8, 8), np.nan, np.float32))
    no_outputs = tmp_path / "no_outputs.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(no_outputs)
    )
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    out = tmp_path / "out.onnx"
    return {
        "missing file": (["compress", tmp_path / "nope.onnx", "-o", out], "no such file"),
        "text file": (["compress", text, "-o", out], "not an ONNX model"),
        "truncated": (["compress", truncated, "-o", out], "not an ONNX model"),
        "checker": (["compress", bad_graph, "-o", out], "checker"),
        "external data missing": (["compress", ext_dir / "m.onnx", "-o", out], "missing"),
        "external data escapes": (
            ["compress", escape_dir / "m.onnx", "-o", out],
            "outside the model folder",
        ),
        "output is input": (["compress", same, "-o", same], "refusing to overwrite"),
        "output is the input's external data": (
            [
                "compress",
                ext_copy / "digits_cnn_dynamo.onnx",
                "-o",
                ext_copy / "digits_cnn_dynamo.onnx.data",
            ],
            "refusing to overwrite",
        ),
        "report is input": (
            ["compress", same, "-o", out, "--report", same],
            "refusing to overwrite",
        ),
        "output folder missing": (
            ["compress", same, "-o", tmp_path / "no" / "out.onnx"],
            "does not exist",
        ),
        "npy instead of npz": (
            ["compress", same, "-o", out, "--inputs", npy],
            "not an .npz archive",
        ),
        "option of the wrong type": (
            ["compress", same, "-o", out, "--passes", "const-fold-shapes(max_elements=abc)"],
            "expected int",
        ),
        "input shape against fixed dims": (
            ["analyze", MODELS / "digits_cnn.onnx", "--input-shape", "input:1x2x8x8"],
            "fixed dims",
        ),
        "zero dim": (["compress", same, "-o", out, "--input-shape", "x:0x3x8x8"], "positive dims"),
        "negative tolerance": (["compress", same, "-o", out, "--rtol", "-1"], "--rtol"),
        "input shape names no input": (
            ["compress", CLEANUP, "-o", out, "--input-shape", "image:1x3x8x8"],
            "no input 'image'",
        ),
        "unknown pass": (
            ["compress", CLEANUP, "-o", out, "--passes", "dead-code,shrink-everything"],
            "unknown pass",
        ),
        "unknown pass option": (
            ["compress", CLEANUP, "-o", out, "--passes", "dead-code(speed=11)"],
            "has no option speed",
        ),
        "unknown flag": (["compress", CLEANUP, "-o", out, "--channels-please"], "No such option"),
        "target with a ratio": (
            [
                "compress",
                MODELS / "digits_cnn.onnx",
                "-o",
                out,
                "--target-macs",
                "0.5",
                "--channels",
                "0.5",
            ],
            "choose every group's ratio: drop --channels",
        ),
        "two targets": (
            [
                "compress",
                MODELS / "digits_cnn.onnx",
                "-o",
                out,
                "--target-macs",
                "0.5",
                "--target-params",
                "0.5",
            ],
            "give --target-macs or --target-params, not both",
        ),
        "target with N:M": (
            ["compress", cnn, "-o", out, "--target-macs", "0.5", "--nm", "2:4"],
            "--target-macs/--target-params and --plan-in",
        ),
        "passes with a ratio": (
            [
                "compress",
                MODELS / "digits_cnn.onnx",
                "-o",
                out,
                "--channels",
                "0.5",
                "--passes",
                "dead-code",
            ],
            "--passes cannot be combined",
        ),
        "plan with a scope": (
            [
                "compress",
                MODELS / "digits_cnn.onnx",
                "-o",
                out,
                "--plan-in",
                CLEANUP,
                "--importance-scope",
                "global",
                "--max-layer-ratio",
                "0.5",
            ],
            "drop --importance-scope, --max-layer-ratio",
        ),
        "empty inputs file": (
            ["compress", cnn, "-o", out, "--inputs", empty],
            "not a readable .npz/.npy file",
        ),
        "NaN calibration": (
            ["compress", cnn, "-o", out, "--channels", "0.5", "--calibration", nan],
            "holds NaN or infinite",
        ),
        "empty pass list": (
            ["compress", cnn, "-o", out, "--passes", ""],
            "--passes '' names no pass",
        ),
        "negative seed": (
            [
                "compress",
                cnn,
                "-o",
                out,
                "--channels",
                "0.5",
                "--importance",
                "random",
                "--seed",
                "-5",
            ],
            "Invalid value for '--seed'",
        ),
        "input shape with inputs": (
            [
                "compress",
                cnn,
                "-o",
                out,
                "--inputs",
                MODELS / "digits_test.npz",
                "--input-shape",
                "input:2x1x8x8",
            ],
            "--input-shape and --inputs both set",
        ),
        "input shape twice": (
            ["analyze", cnn, "--input-shape", "input:2x1x8x8", "--input-shape", "input:3x1x8x8"],
            "is given a shape twice",
        ),
        "validate other inputs": (["validate", cnn, CLEANUP], "reads input(s) x that"),
        "graph without outputs": (["analyze", no_outputs], "the graph has no outputs"),
        "output is a FIFO": (
            ["compress", same, "-o", fifo],
            "is not a regular file (a device, FIFO, socket, or a link into /proc like /dev/stdout)",
        ),
        "report is the output": (
            ["compress", same, "-o", out, "--report", out],
            "is given as two outputs",
        ),
        "plan is the report": (
            [
                "compress",
                MODELS / "digits_cnn.onnx",
                "-o",
                out,
                "--channels",
                "0.5",
                "--report",
                tmp_path / "r.json",
                "--plan-out",
                tmp_path / "r.json",
            ],
            "is given as two outputs",
        ),
        "calibration without sensitivity": (
            ["analyze", cnn, "--calibration", MODELS / "digits_calib.npz"],
            "go with --sensitivity",
        ),
        "weight score for channels": (
            ["compress", cnn, "-o", out, "--channels", "0.5", "--importance", "magnitude"],
            "--importance magnitude scores weights for --nm/--sparsity",
        ),
        "channel ranking for weights": (
            ["compress", cnn, "-o", out, "--nm", "2:4", "--importance", "l1"],
            "--importance l1 ranks channels",
        ),
        "sparse format without sparsity": (
            ["compress", cnn, "-o", out, "--sparse-format", "nm"],
            "--sparse-format needs --nm or --sparsity",
        ),
        "plan is a folder": (["compress", cnn, "-o", out, "--plan-in", tmp_path], "is a directory"),
        "pass file does not import": (
            ["compress", cnn, "-o", out, "--passes", f"{broken_pass}:X"],
            "failed to import: SyntaxError",
        ),
        "pass class missing": (
            ["compress", cnn, "-o", out, "--passes", f"{not_a_pass}:Missing"],
            "has no class 'Missing'; its pass classes: none",
        ),
        "not a pass class": (
            ["compress", cnn, "-o", out, "--passes", f"{not_a_pass}:Helper"],
            "'Helper' in",
        ),
        "validate missing": (["validate", CLEANUP, tmp_path / "nope.onnx"], "no such file"),
        "analyze text": (["analyze", text], "not an ONNX model"),
    }


def _case_names() -> list[str]:
    """Every case of ``_bad_inputs`` (its files made once in a scratch folder to list them)."""
    with tempfile.TemporaryDirectory() as folder:
        return list(_bad_inputs(Path(folder)))


BAD_CASES = _case_names()


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(cli, tmp_path, case):
    argv, message = _bad_inputs(tmp_path)[case]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, _out, err = cli(*argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sparsec: error: ") and message in err
    assert not (tmp_path / "out.onnx").exists()
    assert {
        p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")
    } == before  # nothing written or touched


def test_analyze_counts_macs_at_the_shapes_of_user_inputs(cli):
    _, single, _ = cli("analyze", MODELS / "digits_mlp.onnx", "--json")
    _, batch, _ = cli(
        "analyze", MODELS / "digits_mlp.onnx", "--json", "--inputs", MODELS / "digits_test.npz"
    )
    assert json.loads(batch)["macs"] == 360 * json.loads(single)["macs"]


FAULTY_PASSES = '''
import numpy as np
import sparsec


def _first_matrix(model):
    return next(v for v in model.initializers().values()
                if model.constant(v) is not None and model.constant(v).ndim == 2)


class NudgePass(sparsec.InPlacePass):
    """Claims to be exact but scales a weight."""
    name = "nudge"

    def call(self, model):
        weight = _first_matrix(model)
        model.set_constant(weight, model.constant(weight) * 1.5)
        return sparsec.PassResult(model, True)


class WrongReferencePass(sparsec.InPlacePass):
    """Zeroes half a weight but names the unmasked input as its oracle reference."""
    name = "wrong-reference"
    lossy = True

    def call(self, model):
        original = model.copy()
        weight = _first_matrix(model)
        array = model.constant(weight).copy()
        array[: len(array) // 2] = 0
        model.set_constant(weight, array)
        return sparsec.PassResult(model, True, reference=lambda: original)


class UnknownOpPass(sparsec.InPlacePass):
    """Inserts a node of an operator that does not exist."""
    name = "unknown-op"

    def call(self, model):
        first = model.nodes()[0]
        model.add_node("NoSuchOperator", [first.inputs[0]], before=first)
        return sparsec.PassResult(model, True)


class CrashPass(sparsec.InPlacePass):
    """A bug in a pass."""
    name = "crash"

    def call(self, model):
        raise RuntimeError("boom")
'''


@pytest.mark.parametrize(
    "cls, code, message",
    [
        ("NudgePass", 1, "validation failed (nothing written): output 'logits'"),
        ("WrongReferencePass", 1, "oracle check failed (nothing written)"),
        ("UnknownOpPass", 1, "fails the ONNX checker (nothing written)"),
        ("CrashPass", 3, "pass 'crash' failed: RuntimeError: boom"),
    ],
)
def test_every_gate_before_writing_stops_a_faulty_pass(cli, tmp_path, cls, code, message):
    """Each check compress makes before it writes (ONNX checker, exactness oracle, validation
    against the input; a pass that crashes) is one error line after the passes' progress lines,
    its exit code, and no file."""
    (tmp_path / "faulty.py").write_text(FAULTY_PASSES)
    out = tmp_path / "out.onnx"
    status, _, err = cli(
        "compress",
        MODELS / "digits_mlp.onnx",
        "-o",
        out,
        "--passes",
        f"{tmp_path / 'faulty.py'}:{cls}",
        "--latency-runs",
        "0",
    )
    assert status == code, err
    lines = err.splitlines()
    assert lines[-1].startswith("sparsec: error: ") and message in lines[-1]
    assert all(line.startswith("  ") for line in lines[:-1])  # progress: '  <pass>: <what it did>'
    assert not out.exists()


def test_a_report_may_go_to_a_stream_but_a_model_may_not(cli, tmp_path):
    """JSON is written through its path (/dev/null stays a device); a model is renamed into place,
    which would replace the device node, so -o /dev/null is refused."""
    out = tmp_path / "x.onnx"
    code, _, stderr = cli(
        "compress", CLEANUP, "-o", out, "--report", "/dev/null", "--latency-runs", "0"
    )
    assert code == 0 and out.exists() and Path("/dev/null").is_char_device(), stderr
    code, _, stderr = cli("compress", CLEANUP, "-o", "/dev/null")
    assert code == 2 and "is not a regular file" in stderr and Path("/dev/null").is_char_device()


def test_usage_errors_point_at_their_subcommand_help(cli, tmp_path):
    code, _, err = cli("compress", CLEANUP, "-o", tmp_path / "x.onnx", "--channels", "2")
    assert code == 2 and err.endswith("(see 'sparsec compress --help')\n")
    assert cli("no-such-command")[2].endswith("(see 'sparsec --help')\n")
    code, _, err = cli(
        "compress", CLEANUP, "-o", tmp_path / "x.onnx", "--channels", "0.5", "--jobs", "2"
    )
    assert code == 2 and err.endswith("(see 'sparsec compress --help')\n")  # a spec rule's line


def test_bare_sparsec_prints_the_help(cli):
    code, out, err = cli()
    assert code == 0 and out.startswith("Usage: sparsec") and "compress" in out and not err
