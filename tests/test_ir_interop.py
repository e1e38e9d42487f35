"""sparsec passes and onnx-ir passes run in each other's pass managers, and ``Model`` answers
from the live graph after edits made through plain onnx-ir."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import MODELS, make_model, oracle_error, prune, run_ort
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.passes import InPlacePass, PassResult, Pipeline


class FoldDoubleRelu(ir.passes.InPlacePass):
    """A plain onnx-ir pass (no sparsec in it): Relu(Relu(x)) -> Relu(x)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "Relu":
                continue
            inner = node.inputs[0].producer()
            if inner is not None and inner.op_type == "Relu":
                ir.convenience.replace_all_uses_with(
                    node.outputs[0], inner.outputs[0], replace_graph_outputs=True
                )
                model.graph.remove(node, safe=True)
                modified = True
        return ir.passes.PassResult(model, modified)


def _double_relu() -> sparsec.Model:
    """x -> Conv -> Relu -> Relu -> Conv -> y (the last Conv keeps the graph output a Conv's)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Relu", ["r1"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w2"], ["y"], name="conv2"),
    ]
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        weights,
    )
    return sparsec.Model.from_proto(proto)


def _outputs(model: sparsec.Model) -> list[np.ndarray]:
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    return run_ort(model.to_proto(), feeds)


def test_an_onnx_ir_pass_runs_in_a_sparsec_pipeline():
    model = _double_relu()
    before = _outputs(model)
    result = Pipeline([FoldDoubleRelu(), sparsec.create("dead-code")], fixed_point=True)(model)
    assert result.modified and result.model is model
    assert [n.op_type for n in model.nodes()] == ["Conv", "Relu", "Conv"]
    assert model.value("r2") is None  # the cached name table saw the onnx-ir edit
    np.testing.assert_allclose(_outputs(model)[0], before[0], rtol=1e-6)
    assert Pipeline([FoldDoubleRelu()]).describe() == "fold-double-relu"


def test_a_functional_onnx_ir_pass_gives_a_new_model_in_a_pipeline():
    model = _double_relu()
    result = Pipeline([ir.passes.functionalize(FoldDoubleRelu())])(model)
    assert result.model is not model and result.modified
    assert len(model.nodes()) == 4 and len(result.model.nodes()) == 3  # the input is untouched


def test_a_sparsec_pass_runs_in_onnx_ir_pass_manager():
    model = _double_relu()
    model.graph.append(ir.node("Neg", [model.graph.node(0).outputs[0]], name="unused_neg"))
    manager = ir.passes.PassManager([sparsec.create("dead-code"), FoldDoubleRelu()], steps=2)
    result = manager(model.ir)
    assert result.model is model.ir and result.modified
    assert [n.op_type for n in model.ir.graph] == ["Conv", "Relu", "Conv"]


def test_the_onnx_ir_result_carries_sparsec_stats_and_functionalize_works():
    model = _double_relu()
    model.graph.append(ir.node("Neg", [model.graph.node(0).outputs[0]], name="unused_neg"))
    result = ir.passes.functionalize(sparsec.create("dead-code"))(model.ir)
    assert isinstance(result, ir.passes.PassResult)
    assert result.model is not model.ir  # a copy was pruned, the input kept its node
    assert "unused_neg" in [n.name for n in model.ir.graph]
    assert "unused_neg" not in [n.name for n in result.model.graph]
    assert result.sparsec.stats["nodes_removed"] >= 1


def test_a_sparsec_pipeline_inside_pass_manager_and_the_reverse():
    model = _double_relu()
    inner = Pipeline([sparsec.create("dead-code")])
    outer = Pipeline([ir.passes.PassManager([FoldDoubleRelu(), inner])])
    assert outer(model).modified
    assert [n.op_type for n in model.nodes()] == ["Conv", "Relu", "Conv"]


def test_model_lookups_are_live_after_onnx_ir_edits():
    model = _double_relu()
    relu2 = model.producer(model.value("r2"))
    assert relu2 is not None and relu2.name == "relu2"
    groups_before = sparsec.find_channel_groups(model)
    relu2.outputs[0].replace_all_uses_with(relu2.inputs[0], replace_graph_outputs=True)
    model.graph.remove(relu2, safe=True)  # plain onnx-ir: no Model method, no touch()
    assert model.value("r2") is None
    assert model.consumers(model.value("r1"))[0].name == "conv2"
    groups_after = sparsec.find_channel_groups(model)
    assert groups_after is not groups_before  # the cached analysis was not reused
    assert "relu2" not in str([g.describe() for g in groups_after.groups])


def test_edit_through_onnx_ir_then_prune_passes_the_oracle():
    model = sparsec.Model.load(MODELS / "digits_cnn.onnx")
    sparsec.find_channel_groups(model)  # a cached analysis of the graph before the edit
    relu = next(n for n in model.nodes() if n.op_type == "Relu")
    relu.outputs[0].replace_all_uses_with(relu.inputs[0], replace_graph_outputs=True)
    model.graph.remove(relu, safe=True)
    pruned, result = prune(model, ratio=0.5)
    assert result.modified and pruned.check() is None
    assert all(n.name != relu.name for n in pruned.nodes())
    assert oracle_error(pruned, result.reference()) < 1e-4


class ScaleForever(InPlacePass):
    """Doubles a weight on every run: never settles."""

    name = "scale-forever"
    summary = "Doubles the first weight each time."

    def call(self, model) -> PassResult:
        weight = next(iter(model.initializers().values()))
        model.resize_initializer(weight, model.constant(weight) * 2)
        return PassResult(model, modified=True)


def test_a_fixed_point_that_does_not_settle_stops_with_a_warning_naming_the_pass(caplog):
    model = _double_relu()
    rounds = []
    pipeline = Pipeline(
        [ScaleForever(), sparsec.create("dead-code")],
        fixed_point=True,
        max_rounds=3,
        on_pass=lambda p, r: rounds.append(p.name),
    )
    result = pipeline(model)
    warnings = [d for d in result.diagnostics if d.code == "pipeline.not-settled"]
    assert rounds.count("scale-forever") == 3
    assert len(warnings) == 1 and "scale-forever" in warnings[0].message
    assert "dead-code" not in warnings[0].message  # it settled
    logged = [r.getMessage() for r in caplog.records if r.name == "sparsec.passes"]
    assert logged == [f"warning: {warnings[0].message}"]  # on stderr before validation runs


def test_a_settling_fixed_point_gives_no_warning():
    result = Pipeline([FoldDoubleRelu(), sparsec.create("dead-code")], fixed_point=True)(
        _double_relu()
    )
    assert not [d for d in result.diagnostics if d.code == "pipeline.not-settled"]


def test_a_non_pass_member_is_refused():
    with pytest.raises(TypeError, match="sparsec or onnx-ir pass"):
        Pipeline([lambda model: model])


IR_PASS_FILE = '''
import onnx_ir as ir


class FoldDoubleReluPass(ir.passes.InPlacePass):
    """Relu(Relu(x)) -> Relu(x), written for onnx-ir."""

    def call(self, model):
        modified = False
        for node in list(model.graph):
            inner = node.inputs[0].producer() if node.op_type == "Relu" else None
            if inner is not None and inner.op_type == "Relu":
                node.outputs[0].replace_all_uses_with(inner.outputs[0], replace_graph_outputs=True)
                model.graph.remove(node, safe=True)
                modified = True
        return ir.passes.PassResult(model, modified)
'''


def test_an_onnx_ir_pass_class_loads_from_a_file_by_name(tmp_path, cli):
    (tmp_path / "irpass.py").write_text(IR_PASS_FILE)
    spec = f"{tmp_path / 'irpass.py'}:FoldDoubleReluPass"
    created = sparsec.create(spec)
    assert created.name == "fold-double-relu" and created.in_place
    model = _double_relu()
    model.save(tmp_path / "in.onnx")
    code, _, err = cli(
        "compress",
        tmp_path / "in.onnx",
        "-o",
        tmp_path / "out.onnx",
        "--passes",
        f"{spec},dead-code",
    )
    assert code == 0, err
    written = sparsec.Model.load(tmp_path / "out.onnx")
    assert [n.op_type for n in written.nodes()] == ["Conv", "Relu", "Conv"]


def test_a_node_renamed_through_onnx_ir_is_seen_by_cached_lookups():
    model = sparsec.Model.load(MODELS / "digits_cnn.onnx")
    conv = next(n for n in model.nodes() if n.op_type == "Conv" and n.name != "/stem/Conv")
    old = conv.name
    before = sparsec.group_of(model, old)  # caches the layer lookup
    conv.name = "/renamed/Conv"
    assert sparsec.group_of(model, "/renamed/Conv").id == before.id
    with pytest.raises(KeyError):
        sparsec.group_of(model, old)


def test_a_functionalized_sparsec_pass_keeps_its_stats_and_oracle_in_a_pipeline():
    from sparsec.testing import assert_pass_exact

    pruning = ir.passes.functionalize(sparsec.create("channel-prune", {"ratio": 0.5}))
    result = assert_pass_exact(pruning, MODELS / "digits_cnn.onnx")  # needs the reference
    assert result.stats["channels_removed"] > 0
    piped = Pipeline([ir.passes.functionalize(sparsec.create("dead-code"))])(
        sparsec.Model.load(MODELS / "cleanup_cnn.onnx")
    )
    assert piped.stats["dead-code.nodes_removed"] > 0  # named after the wrapped pass


class NeedsOpset99(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        if model.opset_imports.get("", 0) < 99:
            raise ValueError("needs opset 99")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, False)


def test_an_onnx_ir_precondition_is_a_pass_error_not_an_internal_one():
    with pytest.raises(
        sparsec.PassError, match="pass 'needs-opset99' cannot run on this model: needs opset 99"
    ):
        Pipeline([NeedsOpset99()])(_double_relu())


def test_onnx_ir_passes_are_described_with_their_options_and_never_as_a_builtin():
    from onnx_ir.passes.common import IdentityEliminationPass, LiftConstantsToInitializersPass

    pipeline = Pipeline([IdentityEliminationPass(), LiftConstantsToInitializersPass(size_limit=4)])
    assert pipeline.describe() == (
        "onnx-ir-identity-elimination,lift-constants-to-initializers(size_limit=4)"
    )


def test_a_pass_class_without_a_name_is_named_after_itself():
    class MyCleanupPass(InPlacePass):
        def call(self, model) -> PassResult:
            return PassResult(model, modified=False)

    assert MyCleanupPass.name == "my-cleanup" and MyCleanupPass().describe() == "my-cleanup"
    assert sparsec.InPlacePass.name == ""  # the base classes stay unnamed


def test_a_pass_class_given_for_an_instance_is_named_in_the_error():
    with pytest.raises(TypeError, match=r"pass instances: FoldDoubleRelu\(\), not the class"):
        Pipeline([FoldDoubleRelu])
    with pytest.raises(
        sparsec.InputError, match=r"is a file: name the class in it, 'mine\.py:ClassName'"
    ):
        sparsec.create("mine.py")


def test_opset_and_intermediate_shape_edits_invalidate_cached_analyses():
    model = sparsec.Model.load(MODELS / "digits_cnn.onnx")
    first = sparsec.value_shapes(model)
    assert sparsec.value_shapes(model) is first  # a hit while nothing changes
    model.ir.opset_imports[""] = model.ir.opset_imports[""]  # the same: still a hit
    assert sparsec.value_shapes(model) is first
    relu = next(n for n in model.nodes() if n.op_type == "Relu")
    relu.outputs[0].shape = ir.Shape([7])  # a declared shape changed through onnx-ir
    assert sparsec.value_shapes(model) is not first


def test_stale_cache_entries_are_dropped_not_kept_alive():
    model = sparsec.Model.load(MODELS / "digits_cnn.onnx")
    sparsec.find_channel_groups(model)
    assert model._cache  # one entry, kept with the graph's structure
    before = {v.const_value for v in model.initializers().values()}
    prune(model, ratio=0.5)  # its analyses were cached on the graphs along the way
    replaced = before - {v.const_value for v in model.initializers().values()}
    held = {id(part) for entry in model._cache.values() for part in entry[1]}
    assert replaced and not {id(t) for t in replaced} & held  # the cut's old tensors can go


@pytest.mark.parametrize(
    "class_name, name",
    [
        ("RemoveUnusedNodesPass", "remove-unused-nodes"),
        ("ONNXCleanupPass", "onnx-cleanup"),
        ("QKVSplit", "qkv-split"),
        ("Conv2DFoldPass", "conv2d-fold"),
    ],
)
def test_a_class_name_becomes_a_kebab_case_pass_name(class_name, name):
    from sparsec.passes.base import _kebab

    assert _kebab(class_name) == name


def test_a_pass_refusing_its_options_in_its_constructor_is_an_input_error(tmp_path):
    (tmp_path / "picky.py").write_text(
        "import sparsec\n\n\nclass PickyPass(sparsec.InPlacePass):\n"
        "    def __init__(self, level: int = 1) -> None:\n"
        "        if level > 3:\n            raise ValueError('level must be at most 3')\n"
        "        self.level = level\n\n"
        "    def call(self, model):\n        return sparsec.PassResult(model, False)\n"
    )
    with pytest.raises(sparsec.InputError, match="PickyPass refused its options: level must"):
        sparsec.create(f"{tmp_path / 'picky.py'}:PickyPass", {"level": 5})
