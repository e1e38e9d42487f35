"""The example user passes in ``passes/`` and the plugin package in ``examples/plugin``, each
tested with the public testing kit (``sparsec.testing``) as a user would: a cleanup rewrite
(exact against the original), a pruning pass choosing layers by name and an importance score
(exact against the oracle's masked original), a pass found through a real entry-point lookup;
and the guide ``docs/writing-a-pass.md``, whose Python blocks run in order."""

from __future__ import annotations

import numpy as np
import pytest
import tomllib
from conftest import MODELS, ROOT
from test_docs import _code_blocks, run_python_blocks

import sparsec
from sparsec.analysis import importance as importance_module
from sparsec.passes import registry
from sparsec.testing import GraphBuilder, as_model, assert_pass_exact, random_feeds, run

PASSES = ROOT / "passes"
PLUGIN = ROOT / "examples" / "plugin"
GUIDE = ROOT / "docs" / "writing-a-pass.md"


def example(spec: str, **options) -> sparsec.PassBase:
    """A pass of ``passes/`` by ``file.py:Class``, as ``--passes`` loads it."""
    return sparsec.create(f"{PASSES}/{spec}", options)


@pytest.fixture
def registries():
    """Restore the pass and importance registries the examples add to."""
    sparsec.available()  # the built-ins load once: keep them in the snapshot
    passes, scores = dict(registry._REGISTRY), dict(importance_module.IMPORTANCE)
    yield
    for table, saved in ((registry._REGISTRY, passes), (importance_module.IMPORTANCE, scores)):
        table.clear()
        table.update(saved)


def cnn(seed: int = 0):
    g = GraphBuilder((1, 3, 8, 8), seed=seed)
    g.conv(8, name="layer1.conv").relu().conv(8, name="layer2.conv").relu()
    return g.flatten().linear(4, name="head").build()


def out_channels(model: sparsec.Model, node_name: str) -> int:
    node = next(n for n in model.nodes() if n.name == node_name)
    return model.constant_shape(node.inputs[1])[0]


# ---------------------------------------------------------------- (a) a cleanup rewrite
def test_double_relu_is_exact_and_settles():
    model = GraphBuilder((1, 3, 8, 8)).conv(4).relu().relu(name="again").flatten().linear(3).build()
    result = assert_pass_exact(example("drop_relu_before_relu.py:DoubleReluPass"), model)
    assert result.stats == {"relus_removed": 1} and result.modified
    assert [d.code for d in result.diagnostics] == ["double-relu/removed"]
    assert [d.node for d in result.diagnostics] == ["again"]
    again = assert_pass_exact(example("drop_relu_before_relu.py:DoubleReluPass"), result.model)
    assert not again.modified and again.stats == {"relus_removed": 0}


def test_double_relu_keeps_a_graph_output():
    """The second Relu's output is the graph output: bypassing it would rename an output."""
    model = GraphBuilder((1, 6)).linear(4).relu().relu().build()
    result = assert_pass_exact(example("drop_relu_before_relu.py:DoubleReluPass"), model)
    assert [o.name for o in result.model.outputs] == [o.name for o in model.graph.output]


# ---------------------------------------------------------------- (b) pruning layers by name
def test_prune_layers_cuts_only_the_chosen_layer():
    pass_ = example("prune_layers_by_name.py:PruneLayersPass", layers="layer2*", ratio=0.5)
    result = assert_pass_exact(pass_, cnn())
    assert out_channels(result.model, "layer2.conv") == 4
    assert out_channels(result.model, "layer1.conv") == 8
    assert result.stats["channels_removed"] == 4 and result.diagnostics == []


def test_prune_layers_warns_about_typos_and_unprunable_layers():
    pass_ = example("prune_layers_by_name.py:PruneLayersPass", layers="head|layr1*", ratio=0.5)
    result = assert_pass_exact(pass_, cnn())
    assert not result.modified
    codes = {d.code: d for d in result.diagnostics}
    assert set(codes) == {"prune-layers/kept", "prune-layers/unmatched"}
    assert codes["prune-layers/kept"].node == "head" and "layr1*" in str(
        codes["prune-layers/unmatched"]
    )
    with pytest.raises(sparsec.PassError, match="ratio"):
        example("prune_layers_by_name.py:PruneLayersPass", ratio=1.0)


def test_prune_layers_on_an_exported_model_from_the_command_line(cli, tmp_path):
    spec = f"{PASSES}/prune_layers_by_name.py:PruneLayersPass(layers=/se/*|/pw/*,ratio=0.5)"
    out = tmp_path / "small.onnx"
    code, _, err = cli("compress", MODELS / "digits_cnn.onnx", "-o", out, "--passes", spec)
    assert code == 0, err
    small = sparsec.Model.load(out)
    assert out_channels(small, "/se/reduce/Conv") < out_channels(
        sparsec.Model.load(MODELS / "digits_cnn.onnx"), "/se/reduce/Conv"
    )


def test_drop_tiny_channels_removes_the_weak_channels_never_a_whole_group():
    model = as_model(cnn())
    analysis = sparsec.find_channel_groups(model)
    context = sparsec.ImportanceContext(model)
    scores = {g.id: sparsec.group_scores(g, "l1", context) for g in analysis.groups if g.prunable}
    threshold = float(np.median(np.concatenate(list(scores.values()))))
    weak = sum(int(min((s < threshold).sum(), len(s) - 1)) for s in scores.values())
    pass_ = example("drop_tiny_channels.py:DropTinyChannelsPass", threshold=threshold)
    result = assert_pass_exact(pass_, model)
    assert result.stats["channels_removed"] == weak > 0
    everything = example("drop_tiny_channels.py:DropTinyChannelsPass", threshold=1e9)
    kept = assert_pass_exact(everything, model)
    assert kept.stats["channels_removed"] == sum(len(s) - 1 for s in scores.values())


# ---------------------------------------------------------------- (c) an importance plugin
def two_channel_conv():
    """Conv 3 → 2 channels → 1×1 Conv 2 → 3: channel 0 has one large weight, channel 1 many
    medium ones, the next conv reads both alike; so ``l1`` keeps channel 1, ``max-abs`` 0."""
    weight = np.full((2, 3, 3, 3), 0.2, np.float32)
    weight[0] = 0.0
    weight[0, 0, 1, 1] = 3.0
    g = GraphBuilder((1, 3, 6, 6))
    g.op("Conv", weight, shape=[1, 2, 6, 6], kernel_shape=[3, 3], pads=[1, 1, 1, 1]).relu()
    g.op("Conv", np.full((3, 2, 1, 1), 0.1, np.float32), shape=[1, 3, 6, 6], name="next")
    return g.flatten().linear(2).model()


def test_max_abs_ranks_channels_by_their_largest_weight(registries):
    example("max_abs_importance.py:MaxAbsPrunePass")  # loading the file registers the score
    model = two_channel_conv()
    group = next(g for g in sparsec.find_channel_groups(model).groups if g.units == 2)
    ctx = sparsec.ImportanceContext(model)
    l1, max_abs = (sparsec.group_scores(group, m, ctx) for m in ("l1", "max-abs"))
    np.testing.assert_allclose(l1, [3.0 + 0.3, 27 * 0.2 + 0.3], rtol=1e-5)
    np.testing.assert_allclose(max_abs, [3.0, 0.2], rtol=1e-6)


def test_max_abs_prunes_exactly_through_channel_prune(registries):
    pass_ = example("max_abs_importance.py:MaxAbsPrunePass", ratio=0.5)
    result = assert_pass_exact(pass_, two_channel_conv())
    conv = next(n for n in result.model.nodes() if n.op_type == "Conv")
    kept = result.model.constant(conv.inputs[1])
    assert kept.shape[0] == 1 and kept.max() == 3.0  # the channel l1 would have dropped
    by_name = assert_pass_exact(
        sparsec.create("channel-prune", {"ratio": 0.5, "importance": "max-abs"}),
        two_channel_conv(),
    )
    assert by_name.stats == result.stats


def test_max_abs_from_the_command_line(cli, tmp_path, registries):
    spec = (
        f"{PASSES}/max_abs_importance.py:MaxAbsPrunePass(ratio=0),"
        "channel-prune(ratio=0.25,importance=max-abs)"
    )
    out = tmp_path / "small.onnx"
    code, _, err = cli("compress", MODELS / "digits_cnn.onnx", "-o", out, "--passes", spec)
    assert code == 0, err
    assert "importance=max-abs" in (sparsec.Model.load(out).metadata("sparsec.pipeline") or "")


def test_the_importance_example_in_the_architecture_is_the_plugin_file():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = next(b for b in _code_blocks(text, "python") if "def max_abs" in b)
    body = block[block.index("@sparsec.register_importance") :].strip()
    assert body in (PASSES / "max_abs_importance.py").read_text(encoding="utf-8")


# ---------------------------------------------------------------- an entry-point plugin package
def fake_install(site, monkeypatch) -> list[str]:
    """Make ``examples/plugin`` importable and visible to ``importlib.metadata`` the way an
    install would: its source folder on ``sys.path`` and a ``.dist-info`` folder carrying the
    entry points its ``pyproject.toml`` declares. Returns the declared pass names."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    points = project["entry-points"][registry.ENTRY_POINT_GROUP]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = [f"[{registry.ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    monkeypatch.syspath_prepend(str(site))
    return list(points)


def test_the_plugin_pass_is_found_by_its_entry_point(tmp_path, monkeypatch, registries):
    assert "drop-mul-by-one" not in sparsec.available()
    assert fake_install(tmp_path / "site", monkeypatch) == ["drop-mul-by-one"]
    found = sparsec.available()["drop-mul-by-one"]
    assert found.__module__ == "sparsec_example_plugin.passes"
    model = GraphBuilder((1, 6)).linear(4).op("Mul", np.ones(4, np.float32)).relu().build()
    result = assert_pass_exact("drop-mul-by-one", model)
    assert result.stats == {"muls_removed": 1}
    assert [n.op_type for n in result.model.nodes()] == ["Gemm", "Relu"]


def test_the_plugin_pass_keeps_a_mul_that_broadcasts(tmp_path, monkeypatch, registries):
    fake_install(tmp_path / "site", monkeypatch)
    model = GraphBuilder((1, 4)).op("Mul", np.ones((3, 4), np.float32), shape=[3, 4]).build()
    result = assert_pass_exact("drop-mul-by-one", model)
    assert not result.modified


# ---------------------------------------------------------------- the guide
def test_the_guides_python_blocks_run_in_order(tmp_path, monkeypatch, registries):
    """Every ```python block of docs/writing-a-pass.md, in one namespace, in a temp folder that
    sees the repository's models/ and passes/ (the user's working copy)."""
    monkeypatch.chdir(tmp_path)
    run_python_blocks(GUIDE, tmp_path, ("models", "passes", "examples"), minimum=6)


def test_the_guide_names_every_example():
    text = GUIDE.read_text(encoding="utf-8")
    for path in ("drop_relu_before_relu.py", "prune_layers_by_name.py", "max_abs_importance.py"):
        assert f"passes/{path}" in text
    assert "examples/plugin" in text and "## onnx-ir passes in a sparsec pipeline" in text


def test_random_feeds_run_every_example_model():
    """The kit's feeds fit the models the examples use (a smoke check of the fixtures)."""
    for model in (cnn(), two_channel_conv()):
        assert all(np.isfinite(v).all() for v in run(model, random_feeds(model)).values())
