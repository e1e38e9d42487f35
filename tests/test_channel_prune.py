"""channel-prune: every prune is checked against the exactness oracle (the original with the
removed channels zeroed equals the pruned model in onnxruntime, max abs difference ≤ 1e-4 ×
max |output|), on one committed model per coupling kind and on the digits models."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import MODELS, make_model, oracle_error, prune
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.importance import IMPORTANCE
from sparsec.analysis.rules import AXIS_RULES
from sparsec.analysis.shapes import value_shapes
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.passes.channel_prune import ChannelPrunePass

COUPLINGS = sorted((MODELS / "couplings").glob("*.onnx"))
DIGITS = [MODELS / "digits_cnn.onnx", MODELS / "digits_mlp.onnx", MODELS / "digits_vit.onnx"]


def weight_shape(model: Model, name: str) -> tuple[int, ...]:
    return model.constant_shape(model.initializers()[name])


def test_the_committed_coupling_models_are_all_there():
    """The parametrized oracle tests run over them: a missing model must fail, not shrink them."""
    assert len(COUPLINGS) == 12  # with channel_shuffle (make_shuffle_model.py)


@pytest.mark.parametrize("path", COUPLINGS + DIGITS, ids=lambda p: p.stem)
def test_pruned_model_equals_masked_original(path):
    original_params = sum(int(np.prod(v.shape)) for v in Model.load(path).initializers().values())
    model, result = prune(path, ratio=0.5)
    assert result.stats["channel-prune.groups_pruned"] >= 1
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    params = sum(int(np.prod(v.shape)) for v in model.initializers().values())
    assert params < 0.75 * original_params


def test_masked_original_really_differs_from_the_original():
    """The oracle is not vacuous: zeroing the removed channels changes the original's outputs."""
    _model, result = prune(MODELS / "couplings" / "residual_add.onnx", ratio=0.5)
    original = Model.load(MODELS / "couplings" / "residual_add.onnx")
    assert oracle_error(original, result.reference()) > 1e-2


def test_split_sizes_group_and_num_groups_are_rewritten():
    concat_split, _ = prune(MODELS / "couplings" / "concat_split.onnx", ratio=0.5)
    split = next(n for n in concat_split.nodes() if n.op_type == "Split")
    assert concat_split.constant(split.inputs[1]).tolist() == [
        3,
        5,
    ]  # 6 and 10 channels, halved per segment
    grouped, _ = prune(MODELS / "couplings" / "grouped_depthwise.onnx", ratio=0.5)
    groups = [grouped.attr(n, "group", 1) for n in grouped.nodes() if n.op_type == "Conv"]
    assert groups == [
        1,
        4,
        8,
        1,
    ]  # grouped conv keeps 4 groups of fewer channels; depthwise follows its input
    normed, _ = prune(MODELS / "couplings" / "groupnorm_upsample.onnx", ratio=0.5)
    norm = next(n for n in normed.nodes() if n.op_type == "GroupNormalization")
    assert normed.attr(norm, "num_groups") == 2


def test_custom_domain_op_is_a_barrier_named_in_a_diagnostic():
    path = MODELS / "couplings" / "custom_barrier.onnx"
    before = Model.load(path)
    custom = next(n for n in before.nodes() if n.domain == "com.microsoft")
    into, out_of = (
        custom.inputs[0].producer().inputs[1].name,
        next(iter(custom.outputs[0].uses())).node.inputs[1].name,
    )
    model, result = prune(path, ratio=0.5)
    barriers = [d for d in result.diagnostics if d.code == "channel.barrier"]
    assert [d.node for d in barriers] == [custom.name] and "com.microsoft::Gelu" in barriers[
        0
    ].message
    assert weight_shape(model, into)[0] == weight_shape(before, into)[0] == 16
    assert weight_shape(model, out_of)[1] == 16
    assert oracle_error(model, result.reference()) <= 1e-4
    kept = [d for d in result.diagnostics if d.code == "channel.group-kept"]
    assert any("com.microsoft::Gelu" in d.message for d in kept)


def test_groups_reaching_outputs_are_kept_with_their_reason():
    analysis = find_channel_groups(Model.load(MODELS / "digits_cnn.onnx"))
    reasons = {g.reason for g in analysis.groups if not g.prunable}
    assert "reaches graph output 'logits'" in reasons
    assert all(g.units >= 2 for g in analysis.groups if g.prunable)


def _two_channel_model(small_channel: int) -> Model:
    """x → Conv(4 channels, channel ``small_channel`` tiny) → Relu → Conv(→ 3)."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(4, 2, 1, 1)).astype(np.float32) + 1.0
    w1[small_channel] *= 1e-3
    w2 = rng.normal(size=(3, 4, 1, 1)).astype(np.float32)
    w2[:, small_channel] *= 1e-3
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["y"]),
        ],
        [("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [("y", TensorProto.FLOAT, [1, 3, 3, 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return Model.from_proto(proto)


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_norm_importance_removes_the_weakest_channel(importance):
    _model, result = prune(_two_channel_model(small_channel=2), ratio=0.25, importance=importance)
    kept = result.artifacts["plan"]["initializers"]["w1"][0]["kept"]
    assert kept == [0, 1, 3]


def test_random_importance_is_seeded():
    plans = [
        prune(MODELS / "digits_cnn.onnx", ratio=0.5, importance="random", seed=s)[1].artifacts[
            "plan"
        ]
        for s in (1, 1, 2)
    ]
    assert plans[0] == plans[1] and plans[0] != plans[2]


def test_round_to_keeps_multiples():
    model, _ = prune(MODELS / "digits_mlp.onnx", ratio=0.3, round_to=16)
    hidden = [weight_shape(model, name)[0] for name in ("fc1.weight", "fc2.weight")]
    assert all(size % 16 == 0 for size in hidden) and hidden != [128, 64]


def test_global_scope_respects_max_layer_ratio_and_never_empties():
    model, result = prune(
        MODELS / "digits_cnn.onnx", ratio=0.9, scope="global", max_layer_ratio=0.5
    )
    plan = result.artifacts["plan"]["initializers"]
    for axes in plan.values():
        for entry in axes:
            assert len(entry["kept"]) >= entry["size"] // 2
    model, result = prune(MODELS / "digits_mlp.onnx", ratio=0.99, max_layer_ratio=1.0)
    assert (
        weight_shape(model, "fc2.weight")[0] >= 1
        and oracle_error(model, result.reference()) <= 1e-4
    )


def _uniform_then_skewed(group, ctx) -> np.ndarray:
    """The MLP's first hidden layer scores evenly (0.9..1.1), the second has 3/4 near-zero units."""
    if ("fc1.weight", 0) in group.constants:
        return np.linspace(0.9, 1.1, group.units)
    return np.where(np.arange(group.units) < 3 * group.units // 4, 1e-3, 1.0)


@pytest.mark.parametrize("scope, hidden", [("local", [64, 32]), ("global", [80, 16])])
def test_global_scope_ranks_units_across_groups(monkeypatch, scope, hidden):
    """Local removes half of each hidden layer; global ranks all 192 units by score relative to
    their group's mean and cuts the lowest 96: the 48 near-zero units of fc2 (relative ≈ 0) and
    48 of fc1's even ones (relative 0.9..1.1, below fc2's strong units at ≈ 4)."""
    monkeypatch.setitem(IMPORTANCE, "uniform-then-skewed", _uniform_then_skewed)
    model, result = prune(
        MODELS / "digits_mlp.onnx", ratio=0.5, scope=scope, importance="uniform-then-skewed"
    )
    assert [weight_shape(model, name)[0] for name in ("fc1.weight", "fc2.weight")] == hidden
    assert oracle_error(model, result.reference()) <= 1e-4


def test_exclude_protects_matching_groups():
    """A protected node or initializer keeps every one of its axes: fc3 keeps its inputs, so
    the fc2 → fc3 group stays whole while fc1 → fc2 is pruned."""
    model, result = prune(MODELS / "digits_mlp.onnx", ratio=0.5, exclude="fc3*")
    assert weight_shape(model, "fc1.weight")[0] == 64
    assert weight_shape(model, "fc2.weight") == (64, 64)  # [out, in]: in halved, out protected
    assert any("excluded by --exclude 'fc3*'" in d.message for d in result.diagnostics)


def test_plan_round_trip_repeats_the_same_cut(tmp_path):
    first, result = prune(MODELS / "digits_cnn.onnx", ratio=0.5, importance="random", seed=3)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(result.artifacts["plan"]))
    second, _ = prune(MODELS / "digits_cnn.onnx", plan=str(plan))
    for name, value in first.initializers().items():
        np.testing.assert_array_equal(
            first.constant(value), second.constant(second.initializers()[name])
        )


def _keep_one_more(plan: dict) -> None:
    """stem_bn.bias keeps a channel that the rest of its group drops."""
    entry = plan["initializers"]["stem_bn.bias"][0]
    entry["kept"] = sorted(entry["kept"] + [min(set(range(entry["size"])) - set(entry["kept"]))])


def _empty_se(plan: dict) -> None:
    for entries in plan["initializers"].values():
        for entry in entries:
            entry["kept"] = (
                [] if entry["size"] == 8 else entry["kept"]
            )  # the 8-channel SE bottleneck


def _plan_of_the_mlp(plan: dict) -> None:
    _, mlp = prune(MODELS / "digits_mlp.onnx", ratio=0.5)
    plan["initializers"] = mlp.artifacts["plan"]["initializers"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p["initializers"]["stem.weight"][0].update(size=99),
            "stem.weight axis 0 has size 16, plan says 99",
        ),
        (
            lambda p: p["initializers"].update(
                {"head.bias": [{"axis": 0, "size": 10, "kept": [0, 1, 2, 3, 4]}]}
            ),
            "cannot be pruned: reaches graph output 'logits'",
        ),
        (_empty_se, "plan would empty a tensor of group"),
        (
            _keep_one_more,
            "the kept indices of stem_bn.bias axis 0 disagree with the rest of its group",
        ),
        (_plan_of_the_mlp, "which no prunable channel group of this model holds"),
    ],
)
def test_plan_that_does_not_fit_is_refused(tmp_path, edit, message):
    """A well-formed plan that does not fit this model is an InputError naming what is wrong."""
    _, result = prune(MODELS / "digits_cnn.onnx", ratio=0.5)
    plan = result.artifacts["plan"]
    edit(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(InputError, match=re.escape(message)):
        prune(MODELS / "digits_cnn.onnx", plan=str(path))


def test_rules_cover_the_ops_the_engine_promises():
    promised = """Conv ConvTranspose Gemm MatMul BatchNormalization InstanceNormalization GroupNormalization
    LayerNormalization Add Sub Mul Div Relu Sigmoid Gelu Clip PRelu Where Pow MaxPool AveragePool GlobalAveragePool
    GlobalMaxPool Resize Pad Concat Split Slice Flatten Reshape Transpose Squeeze Unsqueeze Gather Expand ReduceMean
    ReduceSum Softmax Identity Cast Dropout""".split()
    assert [op for op in promised if ("", op) not in AXIS_RULES] == []


def test_external_data_model_prunes_through_the_cli(cli, tmp_path):
    out = tmp_path / "small.onnx"
    code, stdout, stderr = cli(
        "compress",
        MODELS / "digits_cnn_dynamo.onnx",
        "--channels",
        "0.5",
        "-o",
        out,
        "--latency-runs",
        "0",
    )
    assert code == 0, stderr
    assert list(tmp_path.glob("small.onnx.*.data")) and "oracle" in stdout and "passed" in stdout


def test_cli_channels_report_plan_and_groups(cli, tmp_path):
    out, report, plan = tmp_path / "small.onnx", tmp_path / "report.json", tmp_path / "plan.json"
    code, stdout, stderr = cli(
        "compress",
        MODELS / "digits_cnn.onnx",
        "--channels",
        "0.5",
        "-o",
        out,
        "--report",
        report,
        "--plan-out",
        plan,
        "--inputs",
        MODELS / "digits_test.npz",
        "--latency-runs",
        "0",
    )
    assert code == 0, stderr
    figures = json.loads(report.read_text())
    assert (
        figures["oracle"]["passed"]
        and figures["oracle"]["max_abs_error"] <= 1e-4 * figures["oracle"]["max_abs_output"]
    )
    assert figures["params_after"] < 0.6 * figures["params_before"] and figures["groups"] == {
        "total": 4,
        "pruned": 3,
    }
    again = tmp_path / "again.onnx"
    code, _, stderr = cli(
        "compress",
        MODELS / "digits_cnn.onnx",
        "--plan-in",
        plan,
        "-o",
        again,
        "--latency-runs",
        "0",
    )
    assert code == 0, stderr
    assert Model.load(again).initializers().keys() == Model.load(out).initializers().keys()
    code, stdout, _ = cli("analyze", MODELS / "digits_cnn.onnx", "--groups")
    assert (
        code == 0
        and "channel groups: 4 (3 prunable)" in stdout
        and "kept: reaches graph output 'logits'" in stdout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--channels", "0.5", "--passes", "dead-code"], "--passes cannot be combined"),
        (["--channels", "1.5"], "--channels"),
        (["--plan-in", "missing.json"], "plan file missing.json not found"),
    ],
)
def test_cli_bad_channel_flags_are_one_line_exit_2(cli, tmp_path, args, message):
    out = tmp_path / "x.onnx"
    code, _, stderr = cli("compress", MODELS / "digits_cnn.onnx", "-o", out, *args)
    assert code == 2 and stderr.count("\n") == 1 and message in stderr and not out.exists()


def test_plan_out_without_a_pruning_pass_is_refused_before_any_work(cli, tmp_path):
    out = tmp_path / "x.onnx"
    code, _, stderr = cli(
        "compress", MODELS / "digits_cnn.onnx", "-o", out, "--plan-out", tmp_path / "p.json"
    )
    assert code == 2 and "--plan-out needs a pass that writes a plan" in stderr and not out.exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(version=99), "version 99"),
        (lambda p: p.update(initializers=None), "'initializers' must map"),
        (
            lambda p: p["initializers"].update({"stem.weight": {"axis": 0}}),
            "entry 'stem.weight' must be a list",
        ),
        (
            lambda p: p["initializers"]["stem.weight"][0].update(kept=[0, 99]),
            "kept indices must lie in 0..15",
        ),
        (lambda p: p["initializers"]["stem.weight"][0].update(kept=[3, 1]), "ascending"),
        (lambda p: p["initializers"]["stem.weight"][0].update(kept=["a"]), "kept: [int, ...]"),
    ],
)
def test_malformed_plans_are_one_clear_line(cli, tmp_path, edit, message):
    _, result = prune(MODELS / "digits_cnn.onnx", ratio=0.5)
    plan = result.artifacts["plan"]
    edit(plan)
    path, out = tmp_path / "plan.json", tmp_path / "x.onnx"
    path.write_text(json.dumps(plan))
    code, _, stderr = cli("compress", MODELS / "digits_cnn.onnx", "--plan-in", path, "-o", out)
    assert code == 2 and stderr.count("\n") == 1 and message in stderr and not out.exists()


def test_plan_in_refuses_selection_flags(cli, tmp_path):
    code, _, stderr = cli(
        "compress",
        MODELS / "digits_cnn.onnx",
        "--plan-in",
        MODELS / "digits_cnn.onnx",
        "--seed",
        "3",
        "-o",
        tmp_path / "x.onnx",
    )
    assert code == 2 and "drop --seed" in stderr


def test_warnings_for_unmatched_exclude_and_nothing_pruned():
    _, result = prune(MODELS / "digits_mlp.onnx", ratio=0.5, exclude="nomatch*|fc*")
    codes = {d.code for d in result.diagnostics}
    assert {"channel.exclude-unmatched", "channel.nothing-pruned"} <= codes
    describe = ChannelPrunePass(ratio=0.5).describe()
    assert describe == "channel-prune(ratio=0.5,importance=l1)"


@pytest.mark.parametrize(
    "options",
    [
        {"ratio": 0.25, "importance": "l2"},
        {"ratio": 0.75, "importance": "random", "seed": 5},
        {"ratio": 0.6, "scope": "global", "round_to": 2, "importance": "bn-scale"},
    ],
    ids=["quarter-l2", "three-quarters-random", "global-round-to-2"],
)
@pytest.mark.parametrize("path", COUPLINGS, ids=lambda p: p.stem)
def test_every_selection_keeps_the_oracle(path, options):
    """Whatever is removed, surgery and oracle agree (selection cannot break consistency)."""
    model, result = prune(path, **options)
    assert model.check() is None
    assert oracle_error(model, result.reference(), seed=1) <= 1e-4


@pytest.mark.parametrize(
    "path", sorted(MODELS.rglob("*.onnx")), ids=lambda p: str(p.relative_to(MODELS))
)
def test_the_shapes_a_cut_vouches_for_are_the_pruned_models(path):
    """After a cut, value shapes come from the ones known before it, shrunk on the cut axes
    (``surgery.cut_shapes``): they equal a fresh computation on the pruned graph (a copy,
    which takes nothing vouched), on every bundled model."""
    model = Model.load(path)
    before = value_shapes(model)
    if not ChannelPrunePass(ratio=0.5)(model).modified:
        return
    vouched = value_shapes(model)
    fresh = value_shapes(model.copy())
    assert vouched == fresh
    if path.stem in ("digits_cnn", "resnet_like", "residual_add"):
        assert vouched != {n: s for n, s in before.items() if n in vouched}  # channels were cut


def test_a_cut_vouches_for_the_analysis_binding_only():
    """A kept count holds at the binding the group analysis used: where an axis folds the batch
    in (attention's batch x heads), shapes known at another batch are not carried past the cut."""
    model = Model.load(MODELS / "attention" / "vit_sdpa_dynamo18.onnx")
    batch3 = {model.inputs[0].name: (3, 1, 8, 8)}
    value_shapes(model, batch3)
    assert ChannelPrunePass(ratio=0.5)(model).modified
    assert value_shapes(model, batch3) == value_shapes(model.copy(), batch3)
