"""--target-macs / --target-params: per-group ratios from measured sensitivity, then the refit;
on the trained digits CNN with its held-out split (issue 6's first acceptance point)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, oracle_error, run_ort

from sparsec import api
from sparsec.analysis.cost import analyze_cost
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.base import PassError
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.pruning.sensitivity import SUBSET

DIGITS, CALIB, TEST = (
    MODELS / "digits_cnn.onnx",
    MODELS / "digits_calib.npz",
    MODELS / "digits_test.npz",
)


def _accuracy(model: Model) -> float:
    data = np.load(TEST)
    return float(
        (
            run_ort(model.to_proto(), {"input": data["input"]})[0].argmax(axis=1) == data["label"]
        ).mean()
    )


def _macs(model: Model) -> int:
    return analyze_cost(model, {"input": (1, 1, 8, 8)}).macs


def _compress(**options) -> tuple[Model, object]:
    model = Model.load(DIGITS)
    return model, Pipeline(api.channel_passes(0.0, calibration=CALIB, **options), fixed_point=True)(
        model
    )


@pytest.mark.parametrize("steps", [1, 4])
def test_target_macs_two_thirds_keeps_digits_accuracy_within_a_point(steps):
    original = Model.load(DIGITS)
    model, result = _compress(target_macs=0.66, importance="activation", steps=steps)
    assert oracle_error(model, result.reference()) <= 1e-4
    assert _macs(model) <= 0.66 * _macs(original)
    assert (
        _accuracy(model) >= _accuracy(original) - 0.01
    )  # measured 0.997 -> 0.992 (1 step), 0.994 (4 steps)
    assert any(d.code == "channel.allocation" for d in result.diagnostics)


def test_target_params_is_met_and_without_refit_the_same_cut_loses_far_more():
    original = Model.load(DIGITS)
    model, _ = _compress(target_params=0.5)
    params = sum(v.const_value.size for v in model.initializers().values())
    assert params <= 0.5 * sum(v.const_value.size for v in original.initializers().values())
    unrefit, _ = _compress(target_macs=0.66, importance="activation", recover=False)
    refit, _ = _compress(target_macs=0.66, importance="activation")
    assert _accuracy(refit) > _accuracy(unrefit) + 0.2  # measured 0.61 without the refit


def test_a_target_needs_calibration_and_stands_alone(cli, tmp_path):
    with pytest.raises(PassError, match="needs calibration data"):
        ChannelPrunePass(target_macs=0.5).check_options()
    code, _, stderr = cli(
        "compress",
        DIGITS,
        "--target-macs",
        "0.5",
        "--channels",
        "0.5",
        "--calibration",
        CALIB,
        "-o",
        tmp_path / "x.onnx",
    )
    assert code == 2 and "choose every group's ratio: drop --channels" in stderr


def test_analyze_sensitivity_prints_the_table(cli):
    code, stdout, stderr = cli(
        "analyze",
        DIGITS,
        "--sensitivity",
        "--calibration",
        CALIB,
        "--calibration-samples",
        "32",
        "--json",
    )
    assert code == 0, stderr
    table = json.loads(stdout)["sensitivity"]
    assert (
        table["samples"] == min(SUBSET, 32)
        and table["importance"] == "activation"
        and len(table["groups"]) == 3
    )
    code, _, stderr = cli("analyze", DIGITS, "--sensitivity")
    assert code == 2 and "give --calibration" in stderr


def test_analyze_sensitivity_in_worker_processes_gives_the_same_table(cli):
    args = ["analyze", DIGITS, "--sensitivity", "--calibration", CALIB]
    args += ["--calibration-samples", "32", "--json"]
    tables = []
    for jobs in ("1", "2"):
        code, stdout, stderr = cli(*args, "--jobs", jobs)
        assert code == 0, stderr
        tables.append(json.loads(stdout)["sensitivity"])
    assert tables[0]["groups"] == tables[1]["groups"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--jobs", "2"], "--jobs goes with --sensitivity"),
        (["--executor", "ray"], "--executor goes with --sensitivity"),
        (["--sensitivity", "--calibration", str(CALIB), "--executor", "nowhere"], "--executor"),
    ],
)
def test_analyze_sweep_options_are_checked_first(cli, extra, words):
    code, _, stderr = cli("analyze", DIGITS, *extra)
    assert code == 2 and words in stderr and "Traceback" not in stderr


def test_analyze_help_names_the_sweep_subset_size(cli):
    code, out, _err = cli("analyze", "--help")
    assert code == 0 and f"subset of {SUBSET} of the samples" in " ".join(out.split())


def test_one_sample_sensitivity_shows_no_error_bar(cli):
    code, out, err = cli(
        "analyze", DIGITS, "--sensitivity", "--calibration", CALIB, "--calibration-samples", "1"
    )
    table = out[out.index("sensitivity:") :]
    assert code == 0, err
    assert "1 sample," in table and "+-" not in table
