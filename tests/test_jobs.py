"""Jobs end to end: gates on the bundled digits model, the README's recipe, verify."""

from __future__ import annotations

import json
import re
from pathlib import Path

import xmlschema
from conftest import MODELS

ROOT = Path(__file__).resolve().parents[1]
DIGITS = MODELS / "digits_cnn.onnx"


def test_missed_gate_exits_1_and_writes_only_the_reports(cli, tmp_path):
    out = tmp_path / "half.onnx"
    reports = [tmp_path / name for name in ("r.json", "r.xml", "r.md")]
    code, _, err = cli(
        "compress", DIGITS, "-o", out, "--channels", "0.5", "--eval", MODELS / "digits_test.npz",
        "--max-top1-drop", "1", "--latency-runs", "0",
        "--report", reports[0], "--junit", reports[1], "--markdown", reports[2],
    )  # fmt: skip
    assert code == 1 and "--max-top1-drop" in err.splitlines()[-1]
    assert not out.exists() and all(p.exists() for p in reports)
    report = json.loads(reports[0].read_text())
    [gate] = report["gates"]
    assert report["status"] == "failed" and not gate["passed"] and gate["measured"] > 1
    assert not report["output"]["written"]
    xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "junit.xsd")).validate(str(reports[1]))
    assert (
        "--max-top1-drop" in reports[1].read_text() and "--max-top1-drop" in reports[2].read_text()
    )


def test_default_safety_warns_on_a_collapse_only(cli, tmp_path):
    code, _, err = cli(
        "compress", DIGITS, "-o", tmp_path / "a.onnx", "--channels", "0.5", "--latency-runs", "0"
    )
    assert code == 0 and any(line.startswith("warning: ") for line in err.splitlines())
    code, _, err = cli(
        "compress", DIGITS, "-o", tmp_path / "b.onnx", "--target-macs", "0.66",
        "--calibration", MODELS / "digits_calib.npz", "--latency-runs", "0",
    )  # fmt: skip
    assert code == 0 and not any(line.startswith("warning: ") for line in err.splitlines())


def test_readme_recipe_runs_and_verify_follows_its_changes(cli, tmp_path):
    readme = (ROOT / "README.md").read_text()
    recipe_text = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    recipe = tmp_path / "compress.toml"
    recipe.write_text(recipe_text.replace('"models/', f'"{MODELS.as_posix()}/'))
    code, _, err = cli("run", recipe, "--junit", tmp_path / "j.xml")
    assert code == 0, err
    output = tmp_path / "digits_small.onnx"
    assert output.exists()
    assert cli("verify", output)[0] == 0
    recipe.write_text(recipe.read_text().replace("target_macs = 0.66", "target_macs = 0.6"))
    code, out, _ = cli("verify", output)
    assert code == 1 and "target_macs" in out


def test_validate_gates_decide_instead_of_the_elementwise_check(cli, tmp_path):
    half = tmp_path / "half.onnx"
    assert cli("compress", DIGITS, "-o", half, "--channels", "0.5", "--latency-runs", "0")[0] == 0
    params = [json.loads(cli("analyze", m, "--json")[1])["params"] for m in (DIGITS, half)]
    ratio = params[1] / params[0]
    report = tmp_path / "v.json"
    code, _, err = cli(
        "validate", DIGITS, half, "--max-params-ratio", f"{ratio + 0.01}", "--report", report
    )
    assert code == 0, err  # lossy: the element-wise check alone would fail it
    [gate] = json.loads(report.read_text())["gates"]
    assert gate["passed"] and abs(gate["measured"] - ratio) < 1e-9
    code, _, err = cli(
        "validate", DIGITS, half, "--eval", MODELS / "digits_test.npz", "--max-top1-drop", "1"
    )
    assert code == 1 and "--max-top1-drop" in err


def _batch_one_mlp(path: Path) -> Path:
    """x [N, 8] -> Gemm 16 -> Relu -> Reshape [1, 16] -> Gemm 4: runs at batch 1 only."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from sparsec.testing import make_model

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 16], np.int64), "one_row"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "one_row"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "w2"], ["y"], name="fc2", transB=1),
    ]
    proto = make_model(
        nodes, [("x", TensorProto.FLOAT, ["N", 8])], [("y", TensorProto.FLOAT, [1, 4])], weights
    )
    import onnx

    onnx.save(proto, path)
    return path


def test_a_failed_default_quality_measurement_warns_and_never_blocks_a_valid_model(cli, tmp_path):
    source, out = _batch_one_mlp(tmp_path / "m.onnx"), tmp_path / "out.onnx"
    code, _, err = cli("compress", source, "-o", out, "--channels", "0.5")
    assert code == 0 and out.exists(), err
    assert "warning: quality not measured (onnxruntime failed to run the model" in err


def test_a_quality_gate_that_cannot_be_measured_fails_the_run(cli, tmp_path):
    source, out = _batch_one_mlp(tmp_path / "m.onnx"), tmp_path / "out.onnx"
    code, _, err = cli("compress", source, "-o", out, "--channels", "0.5", "--min-cosine", "0.5")
    assert code != 0 and not out.exists()
    assert "onnxruntime failed to run the model" in err


def test_random_feeds_the_model_cannot_take_get_a_shapes_hint(cli, tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsec.testing import make_model

    shape = numpy_helper.from_array(np.array([1, 3, 4], np.int64), "three_by_four")
    proto = make_model(
        [helper.make_node("Reshape", ["x", "three_by_four"], ["y"], name="reshape")],
        [("x", TensorProto.FLOAT, ["N", "L"])],
        [("y", TensorProto.FLOAT, [1, 3, 4])],
        [shape],
    )
    onnx.save(proto, tmp_path / "m.onnx")
    code, _, err = cli("compress", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "random (seed 0) at x 1x128" in err and "--input-shape NAME:DxD" in err
    code, _, err = cli(
        "compress", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--input-shape", "x:1x12"
    )
    assert code == 0, err


def test_a_compressed_model_failing_where_the_original_runs_fails_the_run(
    cli, tmp_path, monkeypatch
):
    """The default quality check only forgives samples the original cannot run either."""
    import sparsec.evaluate as evaluate_module
    from sparsec.errors import InputError
    from sparsec.ir import Model

    real = evaluate_module.session

    def candidate_breaks(model, *args, **kwargs):
        opened = real(model, *args, **kwargs)
        if not isinstance(model, Model):  # the original is read from its path
            return opened

        class Broken:
            output_names, output_types = opened.output_names, opened.output_types

            def run(self, feeds):
                raise InputError("onnxruntime failed to run the model: simulated at batch 64")

        return Broken()

    monkeypatch.setattr(evaluate_module, "session", candidate_breaks)
    out = tmp_path / "out.onnx"
    code, _, err = cli("compress", MODELS / "digits_cnn.onnx", "-o", out, "--channels", "0.5")
    assert code == 1 and not out.exists()
    assert "the compressed model fails on samples the original runs (nothing written)" in err


def test_collapse_advice_leaves_out_what_the_run_already_did():
    from types import SimpleNamespace

    from sparsec.jobs import collapse_warning
    from sparsec.spec.job import JobSpec

    output = SimpleNamespace(name="logits", agreement=0.1, cosine=0.2)
    evaluation = SimpleNamespace(outputs=[output], data="test.npz")
    plain = collapse_warning(evaluation, JobSpec.from_mapping({"channels": 0.5}))
    assert "--calibration DATA" in plain and "a lower ratio" in plain and "--eval" in plain
    given = JobSpec.from_mapping({"drop_blocks": 2, "calibration": "c.npz", "eval": "t.npz"})
    advice = collapse_warning(evaluation, given)
    assert "--calibration" not in advice and "--eval" not in advice
    assert "fewer blocks" in advice and "a lower ratio" not in advice
    assert "more calibration samples" in advice and "more calibration" not in plain
    random = collapse_warning(evaluation, JobSpec.from_mapping({"calibration": "random"}))
    assert "more calibration samples" not in random


def test_a_pass_warning_reaches_the_report_warnings_and_the_markdown(cli, tmp_path):
    """A cut that removed nothing warns in the pass's diagnostics: the report's ``warnings``
    list (what CI renderings read) holds it too, with the job's quality warning."""
    report, markdown = tmp_path / "r.json", tmp_path / "r.md"
    code, _, _ = cli(
        "compress", MODELS / "digits_mlp.onnx", "-o", tmp_path / "m.onnx", "--channels", "0.5",
        "--exclude", "fc*", "--report", report, "--markdown", markdown, "--latency-runs", "0",
    )  # fmt: skip
    assert code == 0
    warnings = json.loads(report.read_text())["warnings"]
    assert any("channel.nothing-pruned" in line for line in warnings)
    assert "channel.nothing-pruned" in markdown.read_text()
