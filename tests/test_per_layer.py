"""Per-layer ratios ``{glob: ratio}``: the precedence rule (``pruning/layer_ratios.py``), the cut
each pattern chose measured on the pruned model (kept output channels per layer) with the
exactness oracle, with --steps and global scope, the errors (bad text, a pattern matching no
layer, a target beside patterns) on the command line, recipes and --save-recipe round trips, and
``api.channel_passes``'s importance default (the CLI's)."""

from __future__ import annotations

import re

import pytest
from conftest import MODELS, oracle_error, prune
from test_group_of import resnet_like

from sparsec import api
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.pruning import layer_ratios
from sparsec.results import PassError
from sparsec.spec import JobSpec, load_recipe, recipe_text

DIGITS = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npz"
# groups of resnet_like: stem + layer1.0.conv2 (residual, 8), layer1.0.conv1 (8), layer2.0.conv1
# (16), layer2.0.conv2 (16), fc (output: kept)
RATIOS = {"layer2.*": 0.5, "*": 0.25, "layer1.0.conv1": 0.75}
WEIGHTS = {  # weight (output channels on axis 0): channels before, kept at RATIOS
    "stem.weight": (8, 6),  # '*' = 0.25
    "onnx::Conv_11": (8, 6),  # same group as stem (residual)
    "onnx::Conv_10": (8, 2),  # 'layer1.0.conv1' = 0.75: more literal than '*'
    "onnx::Conv_12": (16, 8),  # 'layer2.*' = 0.5
    "layer2.0.conv2.weight": (16, 8),
    "fc.weight": (10, 10),  # reaches the graph output
}


def out_channels(model: Model) -> dict[str, int]:
    return {name: model.constant_shape(model.value(name))[0] for name in WEIGHTS}


def test_parse_text_and_mapping_the_same():
    assert layer_ratios.parse("layer2.*=0.5, *=0.25|x=0") == {"layer2.*": 0.5, "*": 0.25, "x": 0.0}
    assert layer_ratios.parse({"a*": 0.1}) == {"a*": 0.1}
    assert layer_ratios.text({"a*": 0.1, "*": 0.3}) == "a*=0.1,*=0.3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a=1", r"pattern 'a': expected a ratio in \[0, 1\), got '1'"),
        ("a=x", "pattern 'a': expected a ratio"),
        ("=0.3", "expected GLOB=R"),
        ("a", "expected GLOB=R"),
        ("a=0.1,a=0.2", "'a' is given twice"),
        (",", "expected GLOB=R pairs"),
    ],
)
def test_parse_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        layer_ratios.parse(text)


def test_precedence_most_literal_then_smaller_ratio_then_first():
    ratios = {"*": 0.1, "layer*": 0.4, "layer4.*": 0.7, "*conv1": 0.2}
    assert layer_ratios.choose(ratios, ["layer4.0.conv1"]) == ("layer4.*", 0.7)  # 7 literal
    assert layer_ratios.specificity("layer*") == 5 == layer_ratios.specificity("*conv1")
    assert layer_ratios.choose(ratios, ["layer3.0.conv1"]) == ("*conv1", 0.2)  # tie: smaller
    assert layer_ratios.choose(ratios, ["layer3.0.conv2"]) == ("layer*", 0.4)
    assert layer_ratios.choose({"a?": 0.3, "?b": 0.3}, ["ab"]) == ("a?", 0.3)  # then first given
    assert layer_ratios.specificity("layer[12].*") == 6  # 'layer' and '.'
    assert layer_ratios.choose(ratios, ["fc"]) == ("*", 0.1)
    assert layer_ratios.choose({"x*": 0.5}, ["fc"]) is None


def test_each_pattern_cut_measured_and_exact():
    model, result = prune(resnet_like(), ratios=RATIOS)
    assert out_channels(model) == {name: kept for name, (_, kept) in WEIGHTS.items()}
    assert oracle_error(model, result.reference()) <= 1e-4
    notes = [d.message for d in result.diagnostics if d.code == "channel.layer-ratio"]
    assert notes[0].startswith("'layer2.*' = 0.5: group(s) ") and len(notes) == 3
    assert any("(1 of them kept whole" in note for note in notes if note.startswith("'*'"))


def test_the_plan_names_the_pattern_each_group_took():
    _, result = prune(resnet_like(), ratios=RATIOS)
    records = result.artifacts["plan"]["groups"]
    by_weight = {
        member.partition("[")[0]: (record["pattern"], record["pattern_ratio"], record["ratio"])
        for record in records
        for member in record["members"]
    }
    assert by_weight["onnx::Conv_10"] == ("layer1.0.conv1", 0.75, 0.75)
    assert by_weight["layer2.0.conv2.weight"] == ("layer2.*", 0.5, 0.5)
    assert by_weight["stem.weight"] == ("*", 0.25, 0.25)


def test_unmatched_groups_are_kept_and_say_why():
    model, result = prune(resnet_like(), ratios={"layer2.0.conv1": 0.5})
    channels = out_channels(model)
    assert channels["onnx::Conv_12"] == 8
    assert [channels[n] for n in ("stem.weight", "onnx::Conv_10", "layer2.0.conv2.weight")] == [
        8,
        8,
        16,
    ]
    kept = [d.message for d in result.diagnostics if d.code == "channel.group-kept"]
    assert sum("no per-layer ratio pattern matches its layers" in m for m in kept) == 3


def test_steps_reach_the_same_cut():
    one, _ = prune(resnet_like(), ratios=RATIOS)
    model, result = prune(resnet_like(), ratios=RATIOS, steps=2)
    assert out_channels(model) == out_channels(one)
    assert result.stats["channel-prune.steps"] == 2
    assert oracle_error(model, result.reference()) <= 1e-4


def test_global_scope_ranks_per_pattern_and_is_exact():
    model, result = prune(resnet_like(), ratios={"layer2.*": 0.5, "*": 0.25}, scope="global")
    channels = out_channels(model)
    removed = 32 - channels["onnx::Conv_12"] - channels["layer2.0.conv2.weight"]
    assert removed == 16  # the pattern's share of its two groups' units, whichever group
    assert oracle_error(model, result.reference()) <= 1e-4


def test_max_layer_ratio_caps_a_pattern_and_warns():
    model, result = prune(resnet_like(), ratios={"*": 0.8}, max_layer_ratio=0.5)
    assert out_channels(model)["onnx::Conv_12"] == 8
    assert any(d.code == "channel.ratio-capped" for d in result.diagnostics)


def test_pattern_matching_no_layer_is_an_error():
    with pytest.raises(PassError, match=r"pattern 'layr2\.\*' matches no layer.*closest"):
        prune(resnet_like(), ratios={"layr2.*": 0.5, "*": 0.2})


def test_pass_refuses_patterns_with_a_target():
    with pytest.raises(PassError, match="per-layer ratios choose the cut"):
        ChannelPrunePass(ratios="a=0.5", target_macs=0.5, calibration="random").check_options()


def test_pass_describe_reads_back():
    from sparsec.passes.registry import parse_pipeline

    pass_ = ChannelPrunePass(ratios={"layer2.*": 0.5, "*": 0.25})
    again = parse_pipeline(pass_.describe())[0]
    assert again.ratios == pass_.ratios == "layer2.*=0.5|*=0.25"
    assert "ratio=" not in pass_.describe().replace("ratios=", "")


def test_api_takes_a_mapping(tmp_path):
    passes = api.channel_passes({"se.*": 0.5, "*": 0.25})
    prune_pass = next(p for p in passes if isinstance(p, ChannelPrunePass))
    assert prune_pass.ratios == "se.*=0.5|*=0.25"
    out = tmp_path / "small.onnx"
    api.compress(DIGITS, out, pipeline=passes, latency_runs=0)
    small = Model.load(out)
    assert small.constant_shape(small.value("se.reduce.weight"))[0] == 4
    assert small.constant_shape(small.value("stem.weight"))[0] == 12


@pytest.mark.parametrize("calibration", [None, "random", CALIB])
def test_api_importance_default_is_the_clis(calibration):
    passes = api.channel_passes(0.5, calibration=calibration)
    chosen = next(p for p in passes if isinstance(p, ChannelPrunePass)).importance
    values = {"source": "m.onnx", "output": "o.onnx", "channels": 0.5}
    if calibration is not None:
        values["calibration"] = str(calibration)
    assert chosen == JobSpec.from_mapping(values).importance()
    assert chosen == ("activation" if calibration == CALIB else "l1")


def test_api_explicit_importance_wins():
    passes = api.channel_passes(0.5, importance="l2", calibration=CALIB)
    assert next(p for p in passes if isinstance(p, ChannelPrunePass)).importance == "l2"


@pytest.mark.parametrize(
    "flag, message",
    [
        ("a=2", r"'--channels': pattern 'a': expected a ratio in \[0, 1\), got '2'"),
        ("half", r"'--channels': expected a number in \[0, 1\), got 'half' \(or GLOB=R pairs"),
        ("=0.5", "'--channels': expected GLOB=R"),
        ("nope*=0.3,*=0.2", "pattern 'nope\\*' matches no layer"),
    ],
)
def test_cli_errors_are_one_line(cli, tmp_path, flag, message):
    code, _, err = cli("compress", DIGITS, "-o", tmp_path / "o.onnx", "--channels", flag)
    assert code == 2 and not (tmp_path / "o.onnx").exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_cli_refuses_patterns_with_a_target(cli, tmp_path):
    code, _, err = cli(
        "compress",
        DIGITS,
        "-o",
        tmp_path / "o.onnx",
        "--channels",
        "se.*=0.5",
        "--target-macs",
        "0.5",
        "--calibration",
        "random",
    )
    assert code == 2 and "--target-macs/--target-params choose every group's ratio" in err


def test_cli_plain_float_still_works(cli, tmp_path):
    code, _, err = cli(
        "compress", DIGITS, "-o", tmp_path / "o.onnx", "--channels", "0.25", "--latency-runs", "0"
    )
    assert code == 0, err
    small = Model.load(tmp_path / "o.onnx")
    assert small.constant_shape(small.value("stem.weight"))[0] == 12


def test_recipe_table_reads_and_round_trips(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[job]]\nname = "j"\nsource = "m.onnx"\noutput = "o.onnx"\n'
        'channels = {"layer2.*" = 0.5, "*" = 0.25}\n'
    )
    [(_, spec)] = load_recipe(recipe)
    assert spec.values["channels"] == {"layer2.*": 0.5, "*": 0.25}
    again = tmp_path / "again.toml"
    again.write_text(recipe_text("j", spec, tmp_path))
    [(_, back)] = load_recipe(again)
    assert back.values["channels"] == spec.values["channels"]
    assert list(back.values["channels"]) == ["layer2.*", "*"]  # the order is kept


def test_recipe_table_bad_value_names_job_and_key(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[job]]\nname = "j"\nsource = "m.onnx"\noutput = "o.onnx"\nchannels = {"a*" = 1.5}\n'
    )
    with pytest.raises(InputError, match=r"job 'j': channels: pattern 'a\*': expected a ratio"):
        load_recipe(recipe)


def test_save_recipe_then_run_makes_the_same_model(cli, tmp_path):
    flag = "se.*=0.5,/pw/*=0.75,*=0.25"
    code, _, err = cli(
        "compress",
        DIGITS,
        "-o",
        tmp_path / "a.onnx",
        "--channels",
        flag,
        "--latency-runs",
        "0",
        "--save-recipe",
        tmp_path / "r.toml",
    )
    assert code == 0, err
    assert (
        'channels = {"se.*" = 0.5, "/pw/*" = 0.75, "*" = 0.25}' in (tmp_path / "r.toml").read_text()
    )
    text = (tmp_path / "r.toml").read_text().replace('"a.onnx"', '"b.onnx"')
    (tmp_path / "r.toml").write_text(text)
    code, _, err = cli("run", tmp_path / "r.toml")
    assert code == 0, err
    a, b = Model.load(tmp_path / "a.onnx"), Model.load(tmp_path / "b.onnx")
    for name in ("stem.weight", "pw.weight", "se.reduce.weight"):
        assert a.constant_shape(a.value(name)) == b.constant_shape(b.value(name))
    assert a.constant_shape(a.value("pw.weight"))[0] == 8  # 32 channels, 0.75 removed
    assert a.constant_shape(a.value("se.reduce.weight"))[0] == 4
    assert a.constant_shape(a.value("stem.weight"))[0] == 12


def test_heads_option_overrides_patterns_for_head_groups():
    model, result = prune(MODELS / "digits_vit.onnx", ratio=0.0, ratios={"*": 0.25}, heads=0.5)
    q = model.constant_shape(model.value("onnx::MatMul_172"))
    assert q is not None and q[1] == 16  # 4 heads of 8 -> 2 heads
    notes = [d.message for d in result.diagnostics if d.code == "channel.layer-ratio"]
    assert notes == ["'*' = 0.25: group(s) 1, 3, 5, 6 (1 of them kept whole: see analyze --groups)"]
    assert oracle_error(model, result.reference()) <= 1e-4


def test_exclude_wins_over_a_pattern():
    model, result = prune(resnet_like(), ratios=RATIOS, exclude="fc.weight")  # fc's input group
    channels = out_channels(model)
    assert channels["layer2.0.conv2.weight"] == 16 and channels["onnx::Conv_12"] == 8
    assert oracle_error(model, result.reference()) <= 1e-4


def test_parse_a_list_of_texts_as_the_text_form():
    assert layer_ratios.parse(["se.*=0.5", "*=0.25"]) == layer_ratios.parse("se.*=0.5,*=0.25")
    assert layer_ratios.parse(("a=0.1|b=0.2", "c=0")) == {"a": 0.1, "b": 0.2, "c": 0.0}
    assert layer_ratios.parse('["se.*=0.5", "*=0.25"]') == {"se.*": 0.5, "*": 0.25}  # its text
    assert layer_ratios.parse("[ab]*=0.5") == {"[ab]*": 0.5}  # a glob class is no list


@pytest.mark.parametrize(
    "value, message",
    [
        (["se.*=5"], r"^pattern 'se\.\*': expected a ratio in \[0, 1\), got '5'$"),
        ("['se.*=5']", r"^pattern 'se\.\*': expected a ratio in \[0, 1\), got '5'$"),
        ([0.5], r"^expected GLOB=R text in the list, got 0.5"),
        ([("a", 0.5)], r"^expected GLOB=R text in the list, got \('a', 0.5\)"),
        ([], "expected GLOB=R pairs"),
        (["a=0.1", "a=0.2"], "'a' is given twice"),
    ],
)
def test_parse_refuses_a_bad_list_clearly(value, message):
    with pytest.raises(ValueError, match=message):
        layer_ratios.parse(value)


def test_pass_takes_a_list_in_python_and_in_passes_text():
    from sparsec.passes.registry import parse_pipeline

    listed = ChannelPrunePass(ratios=["se.*=0.5", "*=0.25"])
    assert listed.ratios == "se.*=0.5|*=0.25"
    [parsed] = parse_pipeline('channel-prune(ratios=["se.*=0.5", "*=0.25"])')
    assert parsed.ratios == listed.ratios
    parsed.check_options()
    model, result = prune(DIGITS, ratios=["se.*=0.5", "*=0.25"])
    assert model.constant_shape(model.value("se.reduce.weight"))[0] == 4
    assert oracle_error(model, result.reference()) <= 1e-4
    with pytest.raises(PassError, match=r"^channel-prune: ratios: pattern '\*': .* got '2'$"):
        parse_pipeline('channel-prune(ratios=["se.*=0.5", "*=2"])')[0].check_options()


def test_cli_passes_with_a_bad_list_is_one_clear_line(cli, tmp_path):
    passes = 'channel-prune(ratios=["se.*=0.5", "*=1.5"])'
    code, _, err = cli("compress", DIGITS, "-o", tmp_path / "o.onnx", "--passes", passes)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "pattern '*': expected a ratio in [0, 1), got '1.5'" in err and "['" not in err


def test_describe_says_ratios_takes_a_list(cli):
    code, out, _ = cli("passes", "--describe", "channel-prune")
    assert code == 0
    line = next(line for line in out.splitlines() if line.strip().startswith("ratios:"))
    assert "list[str]" in line and "a list of `GLOB=R` texts" in " ".join(out.split())


def test_a_pattern_differing_in_case_suggests_the_names():
    with pytest.raises(PassError, match=r"pattern 'Se\.\*' matches no layer.*closest: 'se\."):
        prune(DIGITS, ratios="Se.*=0.5")


@pytest.mark.parametrize("ratio", [0.3, 0.9])
def test_ratio_beside_ratios_is_refused(ratio):
    """``ratios`` replace ``ratio``: one given beside them would be silently dropped."""
    with pytest.raises(PassError, match=rf"give ratio or ratios, not both .*'\*={ratio:g}'"):
        ChannelPrunePass(ratios="*=0.2", ratio=ratio).check_options()


def test_ratio_unset_or_zero_beside_ratios_is_accepted():
    ChannelPrunePass(ratios="*=0.2").check_options()  # ratio's default
    ChannelPrunePass(ratios="*=0.2", ratio=0.0).check_options()  # api.channel_passes' own
    prune_pass = next(
        p for p in api.channel_passes({"*": 0.2}) if isinstance(p, ChannelPrunePass)
    )  # the CLI's --channels builds it this way: never both
    assert prune_pass.ratio == 0.0 and prune_pass.ratios == "*=0.2"


def test_the_pass_itself_defaults_to_the_clis_importance():
    assert ChannelPrunePass().importance == "l1"
    assert ChannelPrunePass(calibration=str(CALIB)).importance == "activation"
    assert ChannelPrunePass(calibration="random").importance == "l1"
    assert ChannelPrunePass(importance="l2", calibration=str(CALIB)).importance == "l2"
