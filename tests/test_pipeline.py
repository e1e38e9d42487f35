"""Pass contract, Pipeline and registry: names, options, describe() round trip, user passes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, ROOT, assert_same_outputs, make_model
from onnx import TensorProto, helper

import sparsec
from sparsec import api
from sparsec.analysis import shapes as shapes_module
from sparsec.analysis.inputs import bind_shapes
from sparsec.analysis.shapes import value_shapes
from sparsec.errors import InputError
from sparsec.ir import Model
from sparsec.passes import Pipeline, available, builtin, create, parse_pipeline
from sparsec.passes.builtin import default_pipeline

F = TensorProto.FLOAT
USER_PASS = ROOT / "passes" / "drop_relu_before_relu.py"


def _double_relu_model():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),
        helper.make_node("Relu", ["a"], ["b"], name="r2"),
        helper.make_node("Neg", ["b"], ["y"], name="neg"),
    ]
    return make_model(nodes, [("x", F, [4])], [("y", F, [4])])


def test_builtin_passes_are_registered_by_kebab_case_name():
    names = set(available())
    assert {"dead-code", "identity-elimination", "bn-fold", "const-fold-shapes"} <= names
    assert all(cls.summary for cls in available().values())


def test_describe_round_trips_through_the_parser():
    pipeline = Pipeline(
        parse_pipeline("identity-elimination,const-fold-shapes(max_elements=64),dead-code")
    )
    assert (
        pipeline.describe() == "identity-elimination,const-fold-shapes(max_elements=64),dead-code"
    )
    assert Pipeline(parse_pipeline(pipeline.describe())).describe() == pipeline.describe()
    assert (
        default_pipeline().describe()
        == "identity-elimination,bn-fold,const-fold-shapes,dead-channels,dead-code"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("no-such-pass", "unknown pass 'no-such-pass'"),
        ("dead-code(bogus=1)", "has no option bogus"),
        ("dead-code(oops", r"unclosed '\(' opened at character 10"),
        ("const-fold-shapes(max_elements)", "needs key=value"),
        ("missing.py:Cls", "not found"),
        (",,", "names no pass"),
        ("const-fold-shapes(max_elements=-5)", "max_elements must be at least 1"),
        ("const-fold-shapes(max_elements=2.5)", "expected int"),
    ],
)
def test_bad_pipeline_text_is_an_input_error(text, message):
    with pytest.raises(InputError, match=message):
        parse_pipeline(text)


def test_an_integer_is_taken_for_a_float_option():
    [example] = parse_pipeline(
        f"{ROOT / 'passes' / 'drop_tiny_channels.py'}:DropTinyChannelsPass(threshold=12)"
    )
    assert example.threshold == 12.0 and type(example.threshold) is float


def test_user_pass_from_a_file_runs_with_stats_and_diagnostics():
    proto = _double_relu_model()
    model = sparsec.Model.from_proto(proto)
    [user_pass] = parse_pipeline(f"{USER_PASS}:DoubleReluPass")
    assert user_pass.describe() == "double-relu"
    result = Pipeline([user_pass, create("dead-code")])(model)
    assert result.stats["double-relu.relus_removed"] == 1
    assert [d.code for d in result.diagnostics] == ["double-relu/removed"]
    assert [n.op_type for n in model.nodes()] == ["Relu", "Neg"]
    assert_same_outputs(proto, model.to_proto(), {"x": np.array([-1, 2, -3, 4], np.float32)})


def test_a_functional_pass_in_a_pipeline_returns_a_new_model_and_leaves_its_input_alone():
    class DropDoubleReluCopy(sparsec.FunctionalPass):
        name = "drop-double-relu-copy"

        def call(self, model):
            copy = model.copy()
            [outer] = [n for n in copy.nodes() if n.name == "r2"]
            copy.replace_all_uses(outer.outputs[0], outer.inputs[0])
            copy.remove_node(outer)
            return sparsec.PassResult(copy, modified=True, stats={"removed": 1})

    proto = _double_relu_model()
    model = sparsec.Model.from_proto(proto)
    version, before = model.version, model.to_proto().SerializeToString()
    result = Pipeline([DropDoubleReluCopy(), create("dead-code")])(model)
    assert result.model is not model and result.modified
    assert result.stats["drop-double-relu-copy.removed"] == 1
    assert [n.op_type for n in result.model.nodes()] == ["Relu", "Neg"]
    assert [n.op_type for n in model.nodes()] == [
        "Relu",
        "Relu",
        "Neg",
    ] and model.version == version
    assert model.to_proto().SerializeToString() == before
    assert_same_outputs(proto, result.model.to_proto(), {"x": np.array([-1, 2, -3, 4], np.float32)})

    class ReturnsItsInput(sparsec.FunctionalPass):
        name = "returns-its-input"

        def call(self, model):
            return sparsec.PassResult(model, modified=False)

    with pytest.raises(TypeError, match="functional but returned its input model"):
        ReturnsItsInput()(model)


def test_compress_writes_what_a_functional_pass_returns(tmp_path):
    class DropSecondRelu(sparsec.FunctionalPass):
        name = "drop-second-relu"

        def call(self, model):  # run to a fixed point by compress: a second round finds nothing
            copy = model.copy()
            outer = next((n for n in copy.nodes() if n.name == "r2"), None)
            if outer is not None:
                copy.replace_all_uses(outer.outputs[0], outer.inputs[0])
                copy.remove_node(outer)
            return sparsec.PassResult(copy, modified=outer is not None)

    source = tmp_path / "double_relu.onnx"
    onnx.save(_double_relu_model(), source)
    api.compress(
        source,
        tmp_path / "out.onnx",
        pipeline=[DropSecondRelu(), create("dead-code")],
        latency_runs=0,
    )
    written = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in written.graph.node] == ["Relu", "Neg"]
    assert {p.key: p.value for p in written.metadata_props}[
        "sparsec.pipeline"
    ] == "drop-second-relu,dead-code"


def test_fixed_point_stops_when_nothing_changes_and_sums_stats():
    model = sparsec.Model.load(MODELS / "cleanup_cnn.onnx")
    seen = []
    result = default_pipeline(on_pass=lambda p, r: seen.append((p.name, r.modified)))(model)
    assert len(seen) == 10 and not any(
        modified for _, modified in seen[5:]
    )  # round 2 confirms the fixed point
    assert result.stats["bn-fold.batchnorms_folded"] == 4


def test_validate_each_names_the_pass_that_broke_the_model():
    class BreakEverything(sparsec.InPlacePass):
        name = "break-everything"

        def call(self, model):
            neg = next(n for n in model.nodes() if n.op_type == "Neg")
            model.set_attr(neg, "note", "changed")
            return sparsec.PassResult(model, modified=True)

    failures = []

    def check(model, pass_text):
        if any("note" in n.attributes for n in model.nodes()):
            failures.append(pass_text)
            raise sparsec.ValidationError(f"{pass_text} changed the outputs")

    pipeline = Pipeline([create("dead-code"), BreakEverything()], validate="each", check=check)
    with pytest.raises(sparsec.ValidationError, match="break-everything"):
        pipeline(sparsec.Model.from_proto(_double_relu_model()))
    assert failures == ["break-everything"]


def test_validate_end_checks_once_with_the_whole_pipeline():
    calls = []
    pipeline = Pipeline(
        [create("identity-elimination"), create("dead-code")],
        validate="end",
        check=lambda model, text: calls.append((len(model.nodes()), text)),
    )
    model = sparsec.Model.from_proto(_double_relu_model())
    pipeline(model)
    assert calls == [(len(model.nodes()), pipeline.describe())]
    assert "identity-elimination" in calls[0][1] and "dead-code" in calls[0][1]


def test_in_place_contract_is_enforced():
    class ReturnsCopy(sparsec.InPlacePass):
        name = "returns-copy"

        def call(self, model):
            return sparsec.PassResult(model.copy(), modified=False)

    with pytest.raises(TypeError, match="in-place"):
        ReturnsCopy()(sparsec.Model.from_proto(_double_relu_model()))


def test_user_pruning_pass_is_checked_against_the_oracle(cli, tmp_path):
    """An out-of-tree pruning pass built on sparsec.prune_channels gets the same oracle gate."""
    out = tmp_path / "small.onnx"
    spec = f"{ROOT / 'passes' / 'drop_tiny_channels.py'}:DropTinyChannelsPass(threshold=12.0)"
    code, stdout, stderr = cli(
        "compress",
        ROOT / "models" / "digits_mlp.onnx",
        "-o",
        out,
        "--passes",
        spec,
        "--latency-runs",
        "0",
    )
    assert code == 0, stderr
    assert "oracle" in stdout and "passed" in stdout
    before, after = sparsec.Model.load(ROOT / "models" / "digits_mlp.onnx"), sparsec.Model.load(out)
    widths = [
        after.constant_shape(after.initializers()[n])[0] for n in ("fc1.weight", "fc2.weight")
    ]
    assert widths != [
        before.constant_shape(before.initializers()[n])[0] for n in ("fc1.weight", "fc2.weight")
    ]


def test_bad_option_values_are_refused_when_a_pass_is_created_by_name():
    with pytest.raises(InputError, match="ratio must be in"):
        parse_pipeline("channel-prune(ratio=1.5)")


def test_calibration_is_read_once_before_the_first_pass(monkeypatch):
    """A pipeline prepares every member first: the pruning pass's calibration data is read then
    (before the cleanup passes in front of it run) and handed to its call, not read again."""
    from sparsec.analysis import activations
    from sparsec.passes import calibrated

    reads, order = [], []
    real = activations.load_calibration
    monkeypatch.setattr(
        calibrated, "load_calibration", lambda *a, **k: reads.append(1) or real(*a, **k)
    )
    passes = parse_pipeline(
        f"dead-code,weight-sparsity(nm=2:4,score=wanda,calibration={MODELS / 'digits_calib.npz'})"
    )
    Pipeline(passes, on_pass=lambda member, _: order.append((member.name, len(reads))))(
        sparsec.Model.load(MODELS / "digits_mlp.onnx")
    )
    assert order == [("dead-code", 1), ("weight-sparsity", 1)]


SHAPE_KEEPING = list(
    {
        p.name: p
        for p in (*builtin.canonical_passes(), *builtin.cleanup_passes())
        if p.keeps_value_shapes
    }.values()
)
EXERCISING = {  # a model where each flagged pass changes something
    "packed_qkv_dynamo": {"split-qkv", "transpose-canonicalize"},
    "llama_gqa_legacy": {"shape-canonicalize", "const-fold-shapes", "dead-code"},
    "cleanup_cnn": {"bn-fold", "const-fold-shapes", "dead-code", "identity-elimination"},
}


@pytest.mark.parametrize(
    "path", sorted(MODELS.rglob("*.onnx")), ids=lambda p: str(p.relative_to(MODELS))
)
def test_passes_that_keep_value_shapes_do(path):
    """The flag's promise, on every bundled model: each value a pass leaves has the shape it
    had before (the passes run straight, so nothing is vouched: both sides are computed)."""
    model = Model.load(path)
    first = model.inputs[0]
    dims = model.shape_dims(first) or []
    bindings = [None]  # the default binding, and a batch of 3 where the batch is symbolic
    if dims and not isinstance(dims[0], int):
        bindings.append({first.name: (3, *bind_shapes(model)[first.name][1:])})
    checked = set()
    for member in SHAPE_KEEPING * 2:  # each twice: after the others too
        before = [value_shapes(model, binding) for binding in bindings]
        if not member(model).modified:
            continue
        for binding, known in zip(bindings, before):
            after = value_shapes(model, binding)
            changed = {n: (known[n], s) for n, s in after.items() if n in known and known[n] != s}
            assert not changed, f"{member.name} changed value shapes at {binding}: {changed}"
        checked.add(member.name)
    assert checked >= EXERCISING.get(path.stem, set())


def _count_whole_inferences(monkeypatch) -> list:
    """A list that gets an item per whole-graph shape inference ``value_shapes`` runs."""
    calls: list = []
    real = shapes_module.ir_shapes.infer_cached
    monkeypatch.setattr(
        shapes_module.ir_shapes,
        "infer_cached",
        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs),
    )
    return calls


def test_a_pipeline_carries_value_shapes_past_a_pass_that_keeps_them(monkeypatch):
    """After a cleanup pass, value shapes are not inferred again when every value left was
    known before it, and they equal a fresh computation."""
    model = Model.load(MODELS / "cleanup_cnn.onnx")
    value_shapes(model)  # what an analysis before the pipeline knew
    inferred = _count_whole_inferences(monkeypatch)
    result = Pipeline([builtin.IdentityEliminationPass(), builtin.DeadCodePass()])(model)
    assert result.modified
    carried = value_shapes(model)
    assert not inferred
    assert carried == value_shapes(model.copy())  # a copy takes nothing vouched: computed


def test_a_pass_that_may_change_shapes_stops_the_carry():
    """Shapes known before a pass without ``keeps_value_shapes`` are not vouched for past a
    later pass that has it: after it, shapes are computed on the graph as it is."""

    class Widen(sparsec.InPlacePass):  # unflagged: the input grows from 4 to 6 elements
        def call(self, model):
            model.set_dim(model.inputs[0], 0, 6)
            return sparsec.PassResult(model, modified=True)

    class Touch(sparsec.InPlacePass):  # flagged: changes nothing a shape depends on
        keeps_value_shapes = True

        def call(self, model):
            model.touch()
            return sparsec.PassResult(model, modified=True)

    model = Model.from_proto(_double_relu_model())
    assert value_shapes(model)["b"] == (4,)
    Pipeline([Widen(), Touch()])(model)
    assert value_shapes(model)["b"] == (6,)


def test_a_fixed_point_round_skips_a_pass_that_ran_on_the_model_as_it_is():
    """A member that left the model unchanged, with no change since, is not run again: the
    second round reruns only what ran before the last change."""
    runs: list[str] = []

    class Watch(sparsec.InPlacePass):
        def __init__(self, label: str, changes: int = 0) -> None:
            self.label, self.changes = label, changes

        def call(self, model):
            runs.append(self.label)
            changed = self.changes > 0
            if changed:
                self.changes -= 1
                model.touch()
            return sparsec.PassResult(model, modified=changed)

    model = Model.from_proto(_double_relu_model())
    result = Pipeline([Watch("a"), Watch("b", changes=1), Watch("c")], fixed_point=True)(model)
    assert result.modified
    assert runs == ["a", "b", "c", "a", "b"]  # round 2: c ran after the change and is skipped


@pytest.mark.parametrize(
    "path", sorted(MODELS.rglob("*.onnx")), ids=lambda p: str(p.relative_to(MODELS))
)
def test_carried_shapes_equal_computed_ones_after_the_cleanup(path):
    """After the canonical and cleanup passes, the shapes a pipeline carried (vouched, the
    nodes a pass added inferred one by one) are those a fresh computation finds (on a copy)."""
    model = Model.load(path)
    value_shapes(model)
    Pipeline([*builtin.canonical_passes(), *builtin.cleanup_passes()], fixed_point=True)(model)
    assert value_shapes(model) == value_shapes(model.copy())


def test_nodes_a_pass_adds_are_inferred_alone(monkeypatch):
    """split-qkv adds projections to a graph whose other shapes are known: the pipeline infers
    those nodes one by one, not the whole graph again."""
    model = Model.load(MODELS / "attention" / "packed_qkv" / "packed_qkv_dynamo.onnx")
    value_shapes(model)
    whole = _count_whole_inferences(monkeypatch)
    assert Pipeline([builtin.SplitQkvPass()])(model).modified
    added = value_shapes(model)
    assert not whole
    monkeypatch.undo()
    assert added == value_shapes(model.copy())


def test_a_lossy_pass_in_a_nested_pipeline_runs_once():
    runs = []

    class Cut(sparsec.InPlacePass):
        lossy = True

        def call(self, model):
            runs.append(1)
            model.touch()
            return sparsec.PassResult(model, modified=True)

    model = Model.from_proto(_double_relu_model())
    outer = Pipeline([Pipeline([Cut()]), builtin.DeadCodePass()], fixed_point=True)
    assert outer.passes[0].lossy
    outer(model)
    assert len(runs) == 1


def test_skipping_unchanged_members_changes_no_result(tmp_path):
    """The default pipeline with and without the skip of members that ran on the model as it
    is (a member not reporting its changes is never skipped): the same model, stats and
    diagnostics."""
    results = []
    for skip in (True, False):
        model = Model.load(MODELS / "cleanup_cnn.onnx")
        pipeline = default_pipeline()
        for member in pipeline.passes:
            member.reports_changes = skip
        result = pipeline(model)
        model.save(tmp_path / f"{skip}.onnx")
        results.append((result.stats, [d.message for d in result.diagnostics]))
    assert results[0] == results[1]
    assert (tmp_path / "True.onnx").read_bytes() == (tmp_path / "False.onnx").read_bytes()
