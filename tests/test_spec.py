"""The job specification (sparsec.spec): option conversion, the same checks for flags and recipe
keys, the combination rules, recipes (reading and writing) and --save-recipe end to end."""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import numpy_helper

from sparsec.errors import InputError, UsageError
from sparsec.jobs import check_spec, pipeline_of
from sparsec.spec import OPTION_BY_NAME, OPTIONS, JobSpec, load_recipe, recipe_text
from sparsec.spec.rules import RULES

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DIGITS = MODELS / "digits_cnn.onnx"
BASE = {"source": "m.onnx", "output": "o.onnx"}


def usage_error(values, where=""):
    """The message of the UsageError ``from_mapping`` raises for ``values``."""
    with pytest.raises(UsageError) as info:
        JobSpec.from_mapping(values, where=where)
    return str(info.value)


def converter_message(name, value):
    """What the option table's own converter says about ``value`` (the expected fragment)."""
    with pytest.raises(ValueError) as info:
        OPTION_BY_NAME[name].kind.convert(value)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# -- 1. JobSpec.from_mapping: conversion per kind ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("channels", 0.0, 0.0),  # [0, 1): zero is a ratio
        ("channels", 0.999, 0.999),
        ("channels", "0.25", 0.25),  # a flag's text
        ("heads", 0, 0.0),
        ("target_macs", 0.5, 0.5),
        ("target_params", 1e-3, 1e-3),
        ("max_params_ratio", 2.5, 2.5),  # (0, inf): above 1 is allowed
        ("max_layer_ratio", 1.0, 1.0),  # (0, 1]
        ("min_cosine", -1.0, -1.0),
        ("max_top1_drop", 100, 100.0),
        ("round_to", 8, 8),
        ("round_to", 8.0, 8),  # a TOML float that is an integer
        ("steps", "3", 3),
        ("seed", 0, 0),
        ("max_bytes", 10**12, 10**12),
        ("latency_runs", 0, 0),
        ("importance", "sparsegpt", "sparsegpt"),
        ("importance_scope", "global", "global"),
        ("sparse_format", "coo", "coo"),
        ("output", "out/model.onnx", "out/model.onnx"),
        ("report", "-", "-"),
        ("force", True, True),
        ("no_recover", False, False),
        ("exclude", "conv*", ("conv*",)),
        ("exclude", ["conv*", "head.*"], ("conv*", "head.*")),
        ("exclude", [], ()),
        ("input_shape", "input:1x1x8x8", ("input:1x1x8x8",)),
    ],
)
def test_from_mapping_converts(name, value, expected):
    spec = JobSpec.from_mapping({name: value})
    got = spec.values[name]
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("channels", 1.0),  # [0, 1): removing every channel is refused
        ("channels", -0.1),
        ("channels", math.nan),
        ("channels", math.inf),
        ("channels", True),
        ("channels", "half"),
        ("channels", [0.5]),
        ("target_macs", 0),  # (0, 1): a model of no MACs is refused
        ("target_macs", 0.0),
        ("target_macs", 1.0),
        ("target_params", 0),
        ("sparsity", 0),
        ("max_params_ratio", 0),
        ("max_layer_ratio", 0),
        ("min_cosine", 1.5),
        ("max_top1_drop", 100.5),
        ("round_to", 1.5),
        ("round_to", True),
        ("round_to", 0),
        ("steps", 1.5),
        ("steps", False),
        ("steps", "2.5"),
        ("seed", -1),
        ("max_bytes", 0),
        ("latency_runs", -1),
        ("importance", "L1"),
        ("importance", "none"),
        ("importance_scope", "both"),
        ("sparse_format", "csr"),
        ("output", "out/"),
        ("output", "out\\"),
        ("source", "models/"),
        ("report", 3),
        ("force", "true"),
        ("force", 1),
        ("exclude", 5),
        ("exclude", ["conv*", 5]),
        ("exclude", {"a": 1}),
        ("passes", 3),
        ("nm", 2),
    ],
)
def test_from_mapping_refuses(name, value):
    where = "recipe r.toml, job 'x': "
    message = usage_error({name: value}, where=where)
    # one line, starting with the prefix then the key, then what the table expects
    assert "\n" not in message
    assert message.startswith(f"{where}{name}: ")
    if not OPTION_BY_NAME[name].kind.many:
        assert message.endswith(converter_message(name, value))


def test_from_mapping_none_is_left_out_and_get_gives_default():
    spec = JobSpec.from_mapping({"channels": None, "round_to": None})
    assert "channels" not in spec.values and "round_to" not in spec.values
    assert not spec.given("channels")
    assert spec.get("round_to") == OPTION_BY_NAME["round_to"].default
    assert spec.get("exclude") == ()


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("chanels", "channels"),
        ("max-top1-drop", "max_top1_drop"),  # a flag's spelling
        ("target_mac", "target_macs"),
        ("calibraton", "calibration"),
    ],
)
def test_unknown_key_did_you_mean(key, suggestion):
    where = "recipe r.toml, job 'x': "
    message = usage_error({**BASE, key: 1}, where=where)
    assert message.startswith(where)
    assert repr(key) in message
    assert repr(suggestion) in message


def test_unknown_key_without_a_close_match_still_one_line():
    message = usage_error({"zzzzqqqq": 1})
    assert "'zzzzqqqq'" in message
    assert "did you mean" not in message
    assert "\n" not in message


def test_command_line_only_option_is_not_a_recipe_key():
    assert not OPTION_BY_NAME["save_recipe"].recipe
    message = usage_error({**BASE, "save_recipe": "r.toml"})
    assert "'save_recipe'" in message


def test_save_recipe_key_is_not_suggested_as_itself():
    message = usage_error({**BASE, "save_recipe": "r.toml"})
    assert "did you mean 'save_recipe'" not in message


# -- 2. flags and recipe keys: the same checks ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "flag_text", "recipe_value"),
    [
        ("channels", "1.5", "1.5"),
        ("target_macs", "0", "0"),
        ("round_to", "1.5", "1.5"),
        ("steps", "0", "0"),
        ("importance", "bogus", '"bogus"'),
        ("sparse_format", "csr", '"csr"'),
        ("max_top1_drop", "101", "101"),
        ("min_cosine", "2", "2"),
        ("output", "outdir/", '"outdir/"'),
    ],
)
def test_flag_and_recipe_key_fail_the_same(cli, tmp_path, name, flag_text, recipe_value):
    option = OPTION_BY_NAME[name]
    output = ["-o", flag_text] if name == "output" else ["-o", tmp_path / "o.onnx"]
    args = [] if name == "output" else [option.flag, flag_text]
    code, _, err = cli("compress", DIGITS, *output, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert option.flag in lines[0]
    assert converter_message(name, flag_text) in lines[0]

    keys = {"source": tomllib_quote(str(DIGITS)), "output": '"o.onnx"', name: recipe_value}
    body = "\n".join(f"{k} = {v}" for k, v in keys.items())
    recipe = write(tmp_path / "recipe" / "r.toml", f'[[job]]\nname = "j"\n{body}\n')
    code, _, err = cli("run", recipe)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"{name}:" in lines[0]
    assert "'j'" in lines[0]
    value = tomllib.loads(f"v = {recipe_value}")["v"]
    assert converter_message(name, value) in lines[0]
    assert not (tmp_path / "o.onnx").exists()
    assert not (tmp_path / "recipe" / "o.onnx").exists()


def tomllib_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_integer_in_exponent_form_same_verdict_for_flag_and_key(cli, tmp_path):
    recipe = write(
        tmp_path / "r.toml",
        f'[[job]]\nname = "j"\nsource = {tomllib_quote(str(DIGITS))}\noutput = "o.onnx"\n'
        "max_bytes = 1e6\n",
    )
    recipe_accepts = True
    try:
        load_recipe(recipe)
    except UsageError:
        recipe_accepts = False
    code, _, err = cli("compress", DIGITS, "-o", tmp_path / "o.onnx", "--max-bytes", "1e6")
    flag_accepts = code != 2 or "--max-bytes" not in err
    assert flag_accepts == recipe_accepts


# -- 3. combination rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    rule: object
    values: dict
    names: tuple[str, ...]  # the flags (or key) the message must name


CASES = [
    Broken(RULES[0], {"output": "o.onnx"}, ("source",)),
    Broken(RULES[0], {"source": "m.onnx"}, ("output",)),
    Broken(RULES[1], {**BASE, "channels": 0.5, "importance": "wanda"}, ("--importance",)),
    Broken(RULES[1], {**BASE, "nm": "2:4", "importance": "l2"}, ("--importance",)),
    Broken(RULES[1], {**BASE, "calibration": "c.npz", "passes": "dead-code"}, ("--calibration",)),
    Broken(
        RULES[2],
        {**BASE, "channels": 0.5, "calibration_samples": 8},
        ("--calibration-samples", "--calibration"),
    ),
    Broken(RULES[2], {**BASE, "channels": 0.5, "no_recover": True}, ("--no-recover",)),
    Broken(RULES[2], {**BASE, "nm": "2:4", "steps": 2}, ("--steps",)),
    Broken(
        RULES[2],
        {**BASE, "channels": 0.5, "calibration": "c.npz", "recover": "block", "no_recover": True},
        ("--recover", "--no-recover"),
    ),
    Broken(RULES[6], {**BASE, "channels": 0.5, "jobs": 2}, ("--jobs", "target")),
    Broken(RULES[2], {**BASE, "steps": 3}, ("--steps",)),
    Broken(RULES[3], {**BASE, "nm": "2:4", "round_to": 8}, ("--round-to",)),
    Broken(RULES[3], {**BASE, "sparsity": 0.5, "max_layer_ratio": 0.5}, ("--max-layer-ratio",)),
    Broken(RULES[3], {**BASE, "exclude": ["conv*"]}, ("--exclude",)),
    Broken(RULES[3], {**BASE, "importance_scope": "global"}, ("--importance-scope",)),
    Broken(RULES[3], {**BASE, "importance": "l1"}, ("--importance",)),
    Broken(RULES[3], {**BASE, "channels": 0.5, "seed": 3}, ("--seed",)),
    Broken(RULES[3], {**BASE, "nm": "2:4", "seed": 3}, ("--seed",)),
    Broken(RULES[4], {**BASE, "passes": "   "}, ("--passes",)),
    Broken(RULES[5], {**BASE, "block": "1x8"}, ("--block", "--sparsity")),
    Broken(RULES[5], {**BASE, "embeddings": True}, ("--embeddings",)),
    Broken(RULES[5], {**BASE, "sparse_format": "bitmask"}, ("--sparse-format",)),
    Broken(RULES[5], {**BASE, "nm": "2:4", "passes": "dead-code"}, ("--passes",)),
    Broken(RULES[5], {**BASE, "sparsity": 0.5, "channels": 0.5}, ("--channels",)),
    Broken(RULES[5], {**BASE, "nm": "2:4", "target_macs": 0.5}, ("--target-macs",)),
    Broken(RULES[5], {**BASE, "nm": "2:4", "plan_in": "p.json"}, ("--plan-in",)),
    Broken(RULES[5], {**BASE, "nm": "2:4", "sparsity": 0.5}, ("--nm", "--sparsity")),
    Broken(RULES[5], {**BASE, "nm": "2:4", "block": "1x8"}, ("--nm", "--block")),
    Broken(RULES[6], {**BASE, "target_macs": 0.5, "target_params": 0.5}, ("--target-macs",)),
    Broken(RULES[6], {**BASE, "target_macs": 0.5, "heads": 0.5}, ("--heads",)),
    Broken(RULES[6], {**BASE, "channels": 0.5, "passes": "dead-code"}, ("--passes",)),
    Broken(RULES[6], {**BASE, "plan_in": "p.json", "passes": "dead-code"}, ("--passes",)),
    Broken(RULES[6], {**BASE, "plan_in": "p.json", "channels": 0.5}, ("--plan-in", "--channels")),
    Broken(RULES[6], {**BASE, "plan_in": "p.json", "importance": "l2"}, ("--importance",)),
    Broken(RULES[6], {**BASE, "plan_in": "p.json", "round_to": 8}, ("--round-to",)),
    Broken(RULES[7], {**BASE, "labels": "y"}, ("--labels", "--eval")),
    Broken(
        RULES[7],
        {**BASE, "max_latency_ratio": 1.2, "latency_runs": 0},
        ("--max-latency-ratio", "--latency-runs"),
    ),
    Broken(RULES[7], {**BASE, "markdown": "-"}, ("--markdown",)),
    Broken(RULES[7], {**BASE, "junit": "-"}, ("--junit",)),
    Broken(RULES[8], {**BASE, "drop_blocks": 2, "importance": "l1"}, ("--importance",)),
    Broken(RULES[8], {**BASE, "drop_blocks": 2, "target_macs": 0.5}, ("--target-macs",)),
    Broken(RULES[8], {**BASE, "drop_blocks": 2, "exclude": ["a*"]}, ("--exclude",)),
    Broken(RULES[8], {**BASE, "drop_blocks": 2, "plan_out": "p.json"}, ("--plan-out",)),
    Broken(RULES[9], {**BASE, "channels": 0.5, "executor": "ray"}, ("--executor", "target")),
]


def test_every_rule_has_a_breaking_case():
    assert {case.rule for case in CASES} == set(RULES)


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[
        "-".join(
            [c.rule.__name__]
            + [k for k in c.values if k not in BASE]
            + [f"no_{k}" for k in BASE if k not in c.values]
        )
        for c in CASES
    ],
)
def test_rule_is_broken(case):
    spec = JobSpec.from_mapping(case.values)
    position = RULES.index(case.rule)
    for earlier in RULES[:position]:  # the case targets this rule alone
        earlier(spec)
    with pytest.raises(UsageError) as direct:
        case.rule(spec)
    with pytest.raises(UsageError) as checked:
        spec.check()
    assert str(checked.value) == str(direct.value)
    message = str(checked.value)
    assert "\n" not in message
    for name in case.names:
        assert name in message


PASSING = {
    "channels": {
        **BASE,
        "channels": 0.5,
        "heads": 0.25,
        "ffn": 0.25,
        "importance": "activation",
        "importance_scope": "global",
        "max_layer_ratio": 0.8,
        "round_to": 8,
        "exclude": ["head*"],
        "steps": 2,
        "calibration": "c.npz",
        "calibration_samples": 16,
        "no_recover": True,
        "eval": "t.npz",
        "labels": "label",
        "max_top1_drop": 1,
        "min_cosine": 0.9,
        "max_params_ratio": 0.8,
        "max_macs_ratio": 0.8,
        "max_bytes": 10**6,
        "max_latency_ratio": 1.5,
        "latency_runs": 25,
        "report": "-",
        "markdown": "r.md",
        "junit": "r.xml",
        "input_shape": ["input:1x1x8x8"],
        "plan_out": "p.json",
        "force": True,
    },
    "weights": {
        **BASE,
        "nm": "2:4",
        "importance": "wanda",
        "importance_scope": "global",
        "calibration": "random",
        "seed": 3,
        "sparse_format": "nm",
        "embeddings": True,
        "exclude": "emb*",
    },
    "random-channels": {**BASE, "channels": 0.5, "importance": "random", "seed": 7},
    "block": {**BASE, "sparsity": 0.5, "block": "4x4", "sparse_format": "bitmask"},
    "target": {**BASE, "target_params": 0.5, "calibration": "c.npz", "steps": 2},
    "plan": {**BASE, "plan_in": "p.json", "calibration": "c.npz"},
    "passes": {**BASE, "passes": "identity-elimination,dead-code"},
    "cleanup": dict(BASE),
}


@pytest.mark.parametrize("values", PASSING.values(), ids=PASSING.keys())
def test_spec_passes_every_rule(values):
    spec = JobSpec.from_mapping(values)
    spec.check()
    for rule in RULES:
        rule(spec)


def test_check_reports_the_first_broken_rule():
    # breaks required_paths (no output) and quality_options (--labels without --eval)
    spec = JobSpec.from_mapping({"source": "m.onnx", "labels": "y"})
    with pytest.raises(UsageError) as info:
        spec.check()
    assert "'output'" in str(info.value)
    assert "--labels" not in str(info.value)


@pytest.mark.parametrize(
    ("values", "kind", "attributes"),
    [
        ({"channels": 0.25}, "ChannelPrunePass", {"ratio": 0.25, "importance": "l1"}),
        ({"nm": "2:4"}, "WeightSparsityPass", {"nm": "2:4", "score": "magnitude"}),
        (
            {"sparsity": 0.5, "block": "1x8"},
            "WeightSparsityPass",
            {"ratio": 0.5, "block": "1x8"},
        ),
        (
            {"target_macs": 0.5, "calibration": "digits_calib.npz"},
            "ChannelPrunePass",
            {"target_macs": 0.5, "importance": "activation"},
        ),
        (
            {"nm": "2:4", "importance": "sparsegpt", "calibration": "digits_calib.npz"},
            "WeightSparsityPass",
            {"score": "sparsegpt"},
        ),
    ],
    ids=["channels", "nm", "sparsity-block", "target-macs", "sparsegpt"],
)
def test_checked_spec_builds_its_pipeline(values, kind, attributes):
    spec = JobSpec.from_mapping({"source": "digits_cnn.onnx", "output": "o.onnx", **values}, MODELS)
    spec.check()
    passes = pipeline_of(spec)
    chosen = [p for p in passes if type(p).__name__ == kind]
    assert len(chosen) == 1
    for key, value in attributes.items():
        assert getattr(chosen[0], key) == value
    if "calibration" in values:
        assert Path(chosen[0].calibration).resolve() == (MODELS / values["calibration"]).resolve()


def test_checked_passes_text_builds_its_pipeline():
    spec = JobSpec.from_mapping({**BASE, "passes": "identity-elimination, dead-code"})
    spec.check()
    passes = pipeline_of(spec)
    assert [p.name for p in passes] == ["identity-elimination", "dead-code"]


def test_a_bad_pass_option_in_a_recipe_is_refused_before_the_model_loads(tmp_path):
    spec = JobSpec.from_mapping(
        {**BASE, "source": str(tmp_path / "absent.onnx"), "passes": "dead-code(nope=1)"}
    )
    with pytest.raises(InputError, match="pass 'dead-code' has no option nope"):
        check_spec(spec)


def test_cleanup_spec_builds_the_default_pipeline():
    spec = JobSpec.from_mapping(BASE)
    spec.check()
    assert pipeline_of(spec) is None


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"target_macs": 0.5}, id="target-macs-without-calibration"),
        pytest.param(
            {"channels": 0.5, "importance": "activation"}, id="activation-without-calibration"
        ),
        pytest.param(
            {"sparsity": 0.5, "importance": "sparsegpt"}, id="sparsegpt-without-calibration"
        ),
        pytest.param({"sparsity": 0.5, "sparse_format": "nm"}, id="format-nm-without-nm"),
        pytest.param({"nm": "4:2"}, id="nm-not-n-below-m"),
    ],
)
def test_check_spec_refuses_what_the_passes_refuse(values):
    """check() holds the combination rules; a pass's own option values (a target without
    calibration, an N:M pattern) are refused by jobs.check_spec, before anything runs."""
    spec = JobSpec.from_mapping({"source": "digits_cnn.onnx", "output": "o.onnx", **values}, MODELS)
    with pytest.raises(InputError):
        check_spec(spec)


def test_save_recipe_of_a_pass_refused_option_writes_nothing(cli, tmp_path):
    recipe = tmp_path / "R.toml"
    code, _, err = cli(
        "compress", DIGITS, "-o", tmp_path / "o.onnx", "--target-macs", "0.5",
        "--save-recipe", recipe,
    )  # fmt: skip
    assert code == 2 and "calibration" in err
    assert not recipe.exists()


# -- zero values: given() treats 0 as "left out" ----------------------------------------------


def test_zero_gate_limit_is_kept():
    spec = JobSpec.from_mapping({**BASE, "max_top1_drop": 0, "min_cosine": 0.0})
    assert spec.gates() == {"max_top1_drop": 0.0, "min_cosine": 0.0}


def test_cli_zero_top1_drop_gate_is_enforced(cli, tmp_path):
    output = tmp_path / "o.onnx"
    report = tmp_path / "r.json"
    code, _, _ = cli(
        "compress", DIGITS, "-o", output, "--channels", "0.5", "--latency-runs", "0",
        "--max-top1-drop", "0", "--report", report,
    )  # fmt: skip
    import json

    gates = json.loads(report.read_text())["gates"]
    assert [g["option"] for g in gates] == ["--max-top1-drop"]
    assert code == (0 if gates[0]["passed"] else 1)


def test_cli_latency_gate_with_zero_runs_is_refused(cli, tmp_path):
    code, _, err = cli(
        "compress", DIGITS, "-o", tmp_path / "o.onnx", "--channels", "0.25",
        "--max-latency-ratio", "1.5", "--latency-runs", "0",
    )  # fmt: skip
    assert code == 2
    assert "--latency-runs" in err
    assert not (tmp_path / "o.onnx").exists()


def test_recipe_text_keeps_zero_values(tmp_path):
    values = {**BASE, "channels": 0.5, "latency_runs": 0, "rtol": 0.0, "max_top1_drop": 0.0}
    spec = JobSpec.from_mapping(values, tmp_path)
    recipe = write(tmp_path / "r.toml", recipe_text("j", spec, tmp_path))
    [(_, loaded)] = load_recipe(recipe)
    for key in ("latency_runs", "rtol", "max_top1_drop"):
        assert loaded.values.get(key) == values[key], key


# -- 4. recipes -------------------------------------------------------------------------------


def test_defaults_apply_and_job_keys_win(tmp_path):
    recipe = write(
        tmp_path / "r.toml",
        """
[defaults]
source = "m.onnx"
round_to = 8
latency_runs = 3
exclude = "head*"

[[job]]
name = "a"
output = "a.onnx"
channels = 0.25

[[job]]
name = "b"
output = "b.onnx"
channels = 0.5
round_to = 16
exclude = ["conv1*", "conv2*"]
""",
    )
    jobs = load_recipe(recipe)
    assert [name for name, _ in jobs] == ["a", "b"]
    a, b = (spec for _, spec in jobs)
    assert a.get("round_to") == 8 and b.get("round_to") == 16
    assert a.get("latency_runs") == b.get("latency_runs") == 3
    assert a.get("exclude") == ("head*",)
    assert b.get("exclude") == ("conv1*", "conv2*")
    assert (a.get("channels"), b.get("channels")) == (0.25, 0.5)
    assert a.values["source"] == b.values["source"] == "m.onnx"
    assert "name" not in a.values
    a.check()
    b.check()


def test_default_key_is_checked_like_a_job_key(tmp_path):
    recipe = write(
        tmp_path / "r.toml",
        '[defaults]\nround_to = 0\n\n[[job]]\nname = "a"\nsource = "m.onnx"\noutput = "o.onnx"\n',
    )
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert "round_to" in str(info.value)
    assert "'a'" in str(info.value)


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "recipes"
    write(
        folder / "r.toml",
        f"""
[[job]]
name = "a"
source = "../models/m.onnx"
output = "out/o.onnx"
calibration = "data/c.npz"
report = "-"
plan_in = {tomllib_quote(str(tmp_path / "abs" / "plan.json"))}
""",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    [(_, spec)] = load_recipe(Path("project/recipes/r.toml"))  # relative to the cwd
    monkeypatch.chdir(elsewhere)  # the spec must not depend on the cwd any more
    assert spec.path("source").resolve() == (tmp_path / "project" / "models" / "m.onnx").resolve()
    assert spec.path("output").resolve() == (folder / "out" / "o.onnx").resolve()
    assert spec.path("calibration").resolve() == (folder / "data" / "c.npz").resolve()
    assert spec.path("plan_in") == tmp_path / "abs" / "plan.json"
    assert spec.path("report") == Path("-")
    assert spec.path("eval") is None
    assert spec.path("source").is_absolute()


def test_calibration_random_is_not_a_path(tmp_path):
    recipe = write(
        tmp_path / "r.toml",
        '[[job]]\nname = "a"\nsource = "m.onnx"\noutput = "o.onnx"\nchannels = 0.5\n'
        'calibration = "random"\n',
    )
    [(_, spec)] = load_recipe(recipe)
    assert spec.path("calibration") == Path("random")


JOBS3 = """
[[job]]
name = "first"
source = "m.onnx"
output = "1.onnx"

[[job]]
name = "second"
source = "m.onnx"
output = "2.onnx"
channels = 0.5

[[job]]
name = "third"
source = "m.onnx"
output = "3.onnx"
"""


def test_only_picks_one_job(tmp_path):
    recipe = write(tmp_path / "r.toml", JOBS3)
    [(name, spec)] = load_recipe(recipe, only="second")
    assert name == "second"
    assert spec.get("channels") == 0.5
    assert [n for n, _ in load_recipe(recipe)] == ["first", "second", "third"]


def test_only_unknown_name_lists_the_names(tmp_path):
    recipe = write(tmp_path / "r.toml", JOBS3)
    with pytest.raises(UsageError) as info:
        load_recipe(recipe, only="fourth")
    message = str(info.value)
    assert "'fourth'" in message
    for name in ("first", "second", "third"):
        assert name in message


def test_run_only_unknown_name_on_the_cli(cli, tmp_path):
    recipe = write(tmp_path / "r.toml", JOBS3)
    code, _, err = cli("run", recipe, "--only", "fourth")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "fourth" in err and "second" in err
    assert not any(tmp_path.glob("*.onnx"))


def test_duplicate_job_names(tmp_path):
    recipe = write(tmp_path / "r.toml", JOBS3.replace('"third"', '"first"'))
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert "'first'" in str(info.value)
    assert str(recipe) in str(info.value)


@pytest.mark.parametrize("name_line", ["", 'name = ""', 'name = "  "', "name = 3"])
def test_job_without_a_name(tmp_path, name_line):
    recipe = write(
        tmp_path / "r.toml",
        f'[[job]]\nname = "ok"\nsource = "m.onnx"\noutput = "o.onnx"\n\n'
        f'[[job]]\n{name_line}\nsource = "m.onnx"\noutput = "p.onnx"\n',
    )
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    message = str(info.value)
    assert "job 2" in message  # which job, counted from 1
    assert "name" in message


@pytest.mark.parametrize(
    "text",
    [
        "",
        '[defaults]\nsource = "m.onnx"\n',
        "job = []\n",
        'job = "a"\n',
    ],
    ids=["empty", "defaults-only", "empty-list", "not-tables"],
)
def test_recipe_without_jobs(tmp_path, text):
    recipe = write(tmp_path / "r.toml", text)
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert "[[job]]" in str(info.value)


def test_job_that_is_not_a_table(tmp_path):
    recipe = write(tmp_path / "r.toml", "job = [1]\n")
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert "job 1" in str(info.value)


def test_unknown_top_level_table(tmp_path):
    recipe = write(
        tmp_path / "r.toml",
        '[default]\nsource = "m.onnx"\n\n[[job]]\nname = "a"\noutput = "o.onnx"\n',
    )
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert "'default'" in str(info.value)
    assert str(recipe) in str(info.value)


def test_unknown_top_level_key(tmp_path):
    recipe = write(
        tmp_path / "r.toml",
        'channels = 0.5\n\n[[job]]\nname = "a"\nsource = "m.onnx"\noutput = "o.onnx"\n',
    )
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert "'channels'" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["[[job]\nname = 'a'\n", "[[job]]\nname = 'a'\nname = 'b'\n", "x = [\n", "\xff\xfe"],
    ids=["bracket", "duplicate-key", "unterminated", "binary"],
)
def test_invalid_toml_is_one_input_error(tmp_path, text):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError) as info:
        load_recipe(recipe)
    assert not isinstance(info.value, UsageError)
    message = str(info.value)
    assert str(recipe) in message
    assert "TOML" in message
    assert "\n" not in message


def test_invalid_toml_on_the_cli(cli, tmp_path):
    recipe = write(tmp_path / "r.toml", "[[job]\n")
    code, out, err = cli("run", recipe)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "TOML" in lines[0] and "r.toml" in lines[0]


def test_missing_recipe_and_folder(tmp_path):
    with pytest.raises(InputError) as info:
        load_recipe(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)
    with pytest.raises(InputError) as info:
        load_recipe(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("channels", '"half"'), ("force", '"yes"'), ("steps", "1.5"), ("exclude", "[1, 2]")],
)
def test_wrong_type_names_recipe_job_and_key(tmp_path, key, value):
    recipe = write(
        tmp_path / "r.toml",
        JOBS3.replace("channels = 0.5", f"{key} = {value}"),
    )
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    message = str(info.value)
    assert str(recipe) in message
    assert "'second'" in message
    assert re.search(rf"\b{key}\b", message)
    assert "\n" not in message


# -- 5. recipe_text round trip ----------------------------------------------------------------


def test_recipe_text_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    models = tmp_path / "models ü"
    models.mkdir()
    weird = 'we"ird\\ näme ✓\t.onnx'
    values = {
        "source": weird,
        "output": "out/ö 'x'.onnx",
        "calibration": "calib/данные.npz",
        "eval": str(tmp_path / "abs" / "t.npz"),  # an absolute path
        "report": "-",
        "markdown": "r.md",
        "channels": float(rng.uniform(0.01, 0.9)),
        "max_layer_ratio": 1 / 3,
        "importance": "activation",
        "round_to": int(rng.integers(2, 64)),
        "steps": 3,
        "calibration_samples": 17,
        "no_recover": True,
        "force": True,
        "exclude": ["conv*", 'a"b\\c', "ü?", "tab\there"],
        "input_shape": ["input:1x1x8x8"],
        "rtol": 1e-7,
        "atol": 2.5e-12,
        "max_top1_drop": 1.25,
        "min_cosine": -0.5,
        "max_bytes": 10**12 + 7,
        "latency_runs": 11,
        "labels": 'lab"el',
        "seed": 5,
    }
    spec = JobSpec.from_mapping(values, models)
    folder = tmp_path / "recipes" / "deep"
    text = recipe_text('job "q" ✓', spec, folder)
    assert str(tmp_path) not in text  # every path written relative to the recipe's folder
    recipe = write(folder / "r.toml", text)
    [(name, loaded)] = load_recipe(recipe)
    assert name == 'job "q" ✓'
    assert set(loaded.values) == set(spec.values)
    for key, value in spec.values.items():
        if OPTION_BY_NAME[key].path and value != "-":
            assert loaded.path(key).resolve() == spec.path(key).resolve(), key
        else:
            assert loaded.values[key] == value, key
            assert type(loaded.values[key]) is type(value), key
    assert loaded.path("report") == Path("-")
    assert loaded.base != spec.base


def test_recipe_text_writes_only_recipe_options(tmp_path):
    spec = JobSpec.from_mapping({**BASE, "channels": 0.5}, tmp_path)
    spec = spec.with_values(save_recipe="r.toml")  # as compress might carry it
    table = tomllib.loads(recipe_text("j", spec, tmp_path))
    [job] = table["job"]
    assert set(job) == {"name", "source", "output", "channels"}
    recipe_names = {o.name for o in OPTIONS if o.recipe}
    assert set(job) - {"name"} <= recipe_names


# -- 6. compress --save-recipe, then run ------------------------------------------------------


def test_save_recipe_runs_to_the_same_model(cli, tmp_path, monkeypatch):
    work = tmp_path / "work"
    source = tmp_path / "src" / "digits cnn.onnx"
    source.parent.mkdir()
    shutil.copy(DIGITS, source)
    out = work / "out" / "o.onnx"
    recipe = work / "recipes" / "R.toml"
    out.parent.mkdir(parents=True)
    recipe.parent.mkdir()
    monkeypatch.chdir(work)
    code, _, err = cli(
        "compress", source, "-o", "out/o.onnx", "--channels", "0.25", "--latency-runs", "0",
        "--round-to", "2", "--exclude", "head*", "--save-recipe", "recipes/R.toml",
    )  # fmt: skip
    assert code == 0, err
    assert out.is_file() and recipe.is_file()
    first = initializers(out)
    out.rename(work / "first.onnx")

    [job] = tomllib.loads(recipe.read_text(encoding="utf-8"))["job"]
    assert job["channels"] == 0.25
    assert job["round_to"] == 2
    assert job["exclude"] == ["head*"]
    assert "save_recipe" not in job
    assert not Path(job["source"]).is_absolute()  # relative to the recipe's folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = cli("run", recipe)
    assert code == 0, err
    assert out.is_file()
    second = initializers(out)
    assert first.keys() == second.keys()
    assert len(first) > 0
    for name, array in first.items():
        assert array.dtype == second[name].dtype, name
        np.testing.assert_array_equal(second[name], array, err_msg=name)
    # and it did prune: fewer parameters than the source
    assert sum(a.size for a in first.values()) < sum(a.size for a in initializers(source).values())


def test_save_recipe_keeps_latency_runs_zero(cli, tmp_path):
    recipe = tmp_path / "R.toml"
    code, _, err = cli(
        "compress", DIGITS, "-o", tmp_path / "o.onnx", "--channels", "0.25",
        "--latency-runs", "0", "--save-recipe", recipe,
    )  # fmt: skip
    assert code == 0, err
    [job] = tomllib.loads(recipe.read_text(encoding="utf-8"))["job"]
    assert job.get("latency_runs") == 0


def test_save_recipe_of_a_broken_combination_writes_nothing(cli, tmp_path):
    recipe = tmp_path / "R.toml"
    code, _, err = cli(
        "compress", DIGITS, "-o", tmp_path / "o.onnx", "--nm", "2:4", "--channels", "0.5",
        "--save-recipe", recipe,
    )  # fmt: skip
    assert code == 2
    assert "--channels" in err
    assert not recipe.exists()
    assert not (tmp_path / "o.onnx").exists()


def test_sweep_keys_in_defaults_apply_to_the_jobs_with_a_target(tmp_path):
    """``jobs``/``executor`` in [defaults] shape the target jobs' sweeps and are left out of a
    job without a target (there they used to fail it); in a job's own table they are checked."""
    head = '[defaults]\njobs = 2\nexecutor = "local"\nsource = "m.onnx"\n\n'
    jobs = '[[job]]\nname = "t"\noutput = "t.onnx"\ntarget_macs = 0.6\ncalibration = "random"\n\n'
    jobs += '[[job]]\nname = "c"\noutput = "c.onnx"\nchannels = 0.5\n'
    (target, plain) = load_recipe(write(tmp_path / "r.toml", head + jobs))
    assert target[1].given("jobs") and target[1].given("executor")
    assert not plain[1].given("jobs") and not plain[1].given("executor")
    plain[1].check()  # the combination rules pass
    own = '[[job]]\nname = "c"\nsource = "m.onnx"\noutput = "c.onnx"\nchannels = 0.5\njobs = 2\n'
    [(_, spec)] = load_recipe(write(tmp_path / "own.toml", own))
    with pytest.raises(UsageError, match="needs a target"):
        spec.check()
