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
