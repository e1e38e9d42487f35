"""Removable units (``analysis.blocks``): residual, projection, layer and transformer-layer
blocks found on exporter graphs and built graphs; their entry/exit/skip, params and MACs
against an independent count; and removing each by the contract's rewire (every use of
``exit`` reads ``skip``) gives a model equal to its reference (the branch times zero) in
onnxruntime, freeing exactly the block's ``nodes``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS, ROOT

from sparsec import inspection
from sparsec.analysis.blocks import Block, find_blocks
from sparsec.ir import Model
from sparsec.ir.cleanup import remove_unused
from sparsec.report import block_list_text
from sparsec.testing import GraphBuilder, assert_equivalent, random_feeds, run
from sparsec.testing.graphs import build, generate

BLOCKS = MODELS / "blocks"  # models/make_block_models.py
CACHE = ROOT / ".cache"


# ---------------------------------------------------------------- test helpers
def removed(model: Model, block: Block) -> Model:
    """The contract's removal: every use of ``exit`` reads ``skip``, then dead code goes."""
    copy = model.copy()
    values = copy.values_by_name()
    copy.replace_all_uses(values[block.exit], values[block.skip])
    remove_unused(copy)
    return copy


def zeroed(model: Model, *blocks: Block) -> Model:
    """The reference: each block's branch input of its Add multiplied by zero."""
    copy = model.copy()
    values = copy.values_by_name()
    for block in blocks:
        add = values[block.exit].producer()
        index = [v.name for v in add.inputs].index(block.branch)
        zero = copy.add_initializer(copy.unique_name("zero"), np.zeros((), np.float32))
        product = copy.add_node("Mul", [values[block.branch], zero], before=add)
        copy.set_input(add, index, product)
    return copy


def assert_removal_exact(model: Model, block: Block) -> None:
    """Removing ``block`` frees exactly its nodes, and equals its reference."""
    smaller, live = removed(model, block), model.copy()
    remove_unused(live)  # a graph may hold dead code before (the fuzzer's do)
    gone = {n.name for n in live.nodes()} - {n.name for n in smaller.nodes()}
    assert gone == set(block.nodes), f"block {block.id} frees {sorted(gone ^ set(block.nodes))}"
    reference = zeroed(model, block) if block.branch is not None else smaller
    feeds = random_feeds(model, seed=1)
    assert_equivalent(reference, smaller, feeds, context=f"block {block.id} ({block.kind})")
    if block.branch is not None:  # and the branch mattered: the original differs
        before, after = run(model, feeds), run(smaller, feeds)
        assert any(not np.allclose(before[k], after[k]) for k in before)


def measured_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """Every node output's shape as onnxruntime computes it on ``random_feeds``."""
    proto = model.to_proto()
    names = [o for n in proto.graph.node for o in n.output if o]
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    out = run(proto, random_feeds(model))
    feeds = random_feeds(model)
    return {**{k: v.shape for k, v in feeds.items()}, **{k: np.shape(v) for k, v in out.items()}}


def independent_cost(model: Model, block: Block) -> tuple[int, int]:
    """(params, MACs) of the block's nodes: the float constants only they read (initializers and
    Constant nodes, each once) and, per Conv, out elements × in/group channels × kernel; per
    MatMul, out elements × the left operand's last dim; per Gemm, out elements × K."""
    shapes, nodes = measured_shapes(model), {n.name: n for n in model.nodes()}
    params, macs, inside = 0, 0, set(block.nodes)
    constants = {v.name: v for name in block.nodes for v in nodes[name].inputs if v is not None}
    for value in constants.values():
        array, readers = model.constant(value), {n.name for n in model.consumers(value)}
        if array is not None and array.dtype.kind == "f" and readers <= inside:
            params += array.size
    for node in (nodes[name] for name in block.nodes):
        out = shapes.get(node.outputs[0].name)
        if node.op_type == "Conv":
            kernel = model.constant_shape(node.inputs[1])
            macs += int(np.prod(out)) * int(np.prod(kernel[1:]))
        elif node.op_type == "MatMul":
            macs += (
                int(np.prod(out))
                * shapes.get(node.inputs[0].name, model.constant_shape(node.inputs[0]))[-1]
            )
        elif node.op_type == "Gemm":
            trans = model.attr(node, "transA", 0)
            macs += int(np.prod(out)) * shapes[node.inputs[0].name][0 if trans else 1]
    return params, macs


def summary(blocks: list[Block]) -> list[tuple]:
    return [(b.id, b.kind, b.role, b.scope, b.parts, b.removable) for b in blocks]


# ---------------------------------------------------------------- exporter graphs
def test_resnet_like_identity_and_projection_blocks():
    model = Model.load(BLOCKS / "resnet_like.onnx")
    blocks = find_blocks(model)
    assert summary(blocks) == [
        (0, "residual", "conv", "layer1", (), True),
        (1, "projection", "conv", "layer2", (), True),
        (2, "residual", "conv", "layer3", (), True),
    ]
    first, projection, last = blocks
    assert (first.entry, first.exit, first.skip, first.branch) == (
        "/stem/stem.2/Relu_output_0",
        "/layer1/Add_output_0",
        "/stem/stem.2/Relu_output_0",
        "/layer1/conv2/Conv_output_0",
    )
    assert projection.entry == "/layer1/Relu_1_output_0"  # x, not the shortcut's output
    assert projection.skip == "/layer2/down/down.0/Conv_output_0"  # the shortcut Conv (BN folded)
    assert projection.branch == "/layer2/conv2/Conv_output_0"  # the side with more MACs
    assert last.entry == last.skip == "/layer2/Relu_1_output_0"
    for block in blocks:
        assert (block.params, block.macs) == independent_cost(model, block)
        assert_removal_exact(model, block)


def test_pre_ln_encoder_attention_and_mlp_residuals_make_transformer_layers():
    model = Model.load(BLOCKS / "vit_like.onnx")
    blocks = find_blocks(model)
    assert summary(blocks) == [
        (0, "residual", "attention", "blocks.0.attn", (), True),
        (1, "residual", "mlp", "blocks.0.mlp", (), True),
        (2, "transformer-layer", "", "blocks.0", (0, 1), True),
        (3, "residual", "attention", "blocks.1.attn", (), True),
        (4, "residual", "mlp", "blocks.1.mlp", (), True),
        (5, "transformer-layer", "", "blocks.1", (3, 4), True),
    ]
    for layer in (blocks[2], blocks[5]):
        attention, mlp = (blocks[i] for i in layer.parts)
        assert layer.entry == layer.skip == attention.entry and layer.exit == mlp.exit
        assert mlp.entry == attention.exit  # pre-LN: nothing between the two residuals
        assert set(layer.nodes) == set(attention.nodes) | set(mlp.nodes)
        assert (layer.params, layer.macs) == (
            attention.params + mlp.params,
            attention.macs + mlp.macs,
        )
        # pre-LN: dropping the layer is zeroing both branches
        assert_equivalent(zeroed(model, attention, mlp), removed(model, layer), random_feeds(model))
    assert blocks[0].entry == "/Add_output_0"  # tokens + position embedding
    for block in blocks:
        assert (block.params, block.macs) == independent_cost(model, block)
        assert_removal_exact(model, block)


def test_post_ln_encoder_layers_span_from_one_output_norm_to_the_next():
    """BERT's layout; the attention mask (from another input) is no path of the data flow."""
    model = Model.load(BLOCKS / "bert_like.onnx")
    blocks = find_blocks(model)
    assert summary(blocks) == [
        (0, "residual", "attention", "layers.0.attn", (), True),
        (1, "residual", "mlp", "layers.0.mlp", (), True),
        (2, "transformer-layer", "", "layers.0", (0, 1), True),
        (3, "residual", "attention", "layers.1.attn", (), True),
        (4, "residual", "mlp", "layers.1.mlp", (), True),
        (5, "transformer-layer", "", "layers.1", (3, 4), True),
        (6, "layer", "mlp", "pooler", (), True),  # Linear(32→32)+Tanh
    ]
    assert blocks[0].entry == "/ln/LayerNormalization_output_0"  # the embeddings' norm
    assert blocks[1].entry == "/layers.0/ln1/LayerNormalization_output_0"  # inside the norms
    assert (blocks[2].entry, blocks[2].exit) == (
        "/ln/LayerNormalization_output_0",
        "/layers.0/ln2/LayerNormalization_output_0",
    )
    assert blocks[5].entry == blocks[2].exit
    for block in blocks:
        assert (block.params, block.macs) == independent_cost(model, block)
        assert_removal_exact(model, block)


def test_plain_chain_layers_are_the_shape_keeping_convs_and_linears():
    model = Model.load(BLOCKS / "vgg_like.onnx")
    blocks = find_blocks(model)
    assert [(b.kind, b.role, b.entry, b.exit) for b in blocks] == [
        ("layer", "conv", "/2/Relu_output_0", "/5/Relu_output_0"),  # Conv(8→8)+BN+ReLU
        ("layer", "conv", "/8/Relu_output_0", "/10/Relu_output_0"),  # Conv(16→16)+ReLU
        ("layer", "conv", "/10/Relu_output_0", "/12/Relu_output_0"),
        ("layer", "mlp", "/14/Flatten_output_0", "/16/Relu_output_0"),  # Linear(16→16)+ReLU
    ]
    assert all(b.skip == b.entry and b.branch is None for b in blocks)
    for block in blocks:
        assert (block.params, block.macs) == independent_cost(model, block)
        assert_removal_exact(model, block)


# ---------------------------------------------------------------- built graphs
def test_a_residual_whose_exit_is_a_graph_output_is_listed_not_removable():
    g = GraphBuilder((1, 8, 6, 6), seed=3)
    skip = g.current
    g.conv(8, name="b0.conv1").relu().conv(8, name="b0.conv2").add(skip, name="b0.add").output()
    skip = g.current
    g.conv(8, name="b1.conv1").relu().conv(8, name="b1.conv2").add(skip, name="b1.add").relu()
    model = g.model()
    first, second = find_blocks(model)
    assert (first.kind, first.removable) == ("residual", False)
    assert first.reason == f"its exit {first.exit} is a graph output"
    assert first.nodes and first.macs > 0  # what it would free, still counted
    assert (second.kind, second.removable, second.reason) == ("residual", True, None)
    assert second.entry == first.exit
    assert_removal_exact(model, second)
    row = inspection.blocks(model)[0]
    assert (row["removable"], row["reason"]) == (False, first.reason)


def test_a_block_with_unnamed_nodes_is_found_and_kept():
    g = GraphBuilder((1, 8, 6, 6), seed=3)
    skip = g.current
    g.conv(8).relu().conv(8).add(skip).relu()
    proto = g.build()
    for node in proto.graph.node:
        node.name = ""
    (block,) = find_blocks(Model.from_proto(proto))
    assert (block.kind, block.removable, block.nodes) == ("residual", False, ("",) * 4)
    assert block.reason == "some of its nodes have no name (Block.nodes names what removal frees)"


def test_an_add_without_a_compute_weight_in_its_branch_is_no_block():
    """x + 0.044715·x³ (tanh-GELU's inner sum) and x + bias are elementwise, not blocks."""
    g = GraphBuilder((1, 3, 6, 6), seed=1)
    g.conv(8, name="c1")
    x = g.current
    g.op("Pow", np.array(3.0, np.float32)).op("Mul", np.array(0.044715, np.float32)).add(x)
    g.op("Add", np.ones((1, 8, 1, 1), np.float32)).relu().conv(4, name="c2")
    assert find_blocks(g.model()) == []


def test_a_residual_nested_in_a_layer_is_listed_with_the_layer():
    """MobileViT's shape: x → conv → (h + f(h)) → Concat(x, ·) → conv back to x's channels. The
    inner residual's exit is no cut value (x bypasses it) yet it is a block; the whole is a layer."""
    g = GraphBuilder((1, 8, 6, 6), seed=2)
    x = g.current
    h = g.conv(8, name="local").current
    g.conv(8, name="inner.conv1").relu(name="inner.relu").conv(8, name="inner.conv2")
    y = g.add(h, name="inner.add").current
    g.op("Concat", x, axis=1, shape=[1, 16, 6, 6], name="cat")
    g.conv(8, name="fusion").relu(name="fusion.relu").conv(4, name="head")
    model = g.model()
    inner, outer = find_blocks(model)
    assert (inner.kind, inner.entry, inner.skip, inner.exit) == ("residual", h, h, y)
    assert set(inner.nodes) == {"inner.conv1", "inner.relu", "inner.conv2", "inner.add"}
    assert (outer.kind, outer.role, outer.entry) == ("layer", "conv", x)
    assert model.values_by_name()[outer.exit].producer().name == "fusion.relu"
    assert set(inner.nodes) < set(outer.nodes)
    for block in (inner, outer):
        assert (block.params, block.macs) == independent_cost(model, block)
        assert_removal_exact(model, block)


def test_params_are_what_removal_frees_a_shared_weight_stays():
    """Two residual blocks reading one weight (ALBERT-style tying): neither frees it alone."""
    g = GraphBuilder((1, 3, 6, 6), seed=4)
    x = g.conv(8, name="stem").relu().current
    g.conv(8, name="a.conv1", bias=False).relu().conv(8, name="a.conv2", bias=False)
    y = g.add(x, name="a.add").current
    g.conv(8, name="b.conv1", bias=False).relu().conv(8, name="b.conv2", bias=False).add(y)
    proto = g.build()
    weights = {n.name: n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    for node in proto.graph.node:
        if node.name == "b.conv2":
            node.input[1] = weights["a.conv2"]  # tie b.conv2 to a.conv2
    model = Model.from_proto(proto)
    remove_unused(model)  # b.conv2's own weight goes
    first, second = find_blocks(model)
    assert (first.params, second.params) == (8 * 8 * 9, 8 * 8 * 9)  # each frees its conv1 only
    for block in (first, second):
        assert (block.params, block.macs) == independent_cost(model, block)
        assert_removal_exact(model, block)


def test_blocks_are_cached_until_the_model_changes():
    model = Model.load(BLOCKS / "resnet_like.onnx")
    first = find_blocks(model)
    assert find_blocks(model) is first
    remove_unused(removed(model, first[0]))  # a copy's edit: this model is unchanged
    assert find_blocks(model) is first
    values = model.values_by_name()
    model.replace_all_uses(values[first[0].exit], values[first[0].skip])
    remove_unused(model)
    assert [b.kind for b in find_blocks(model)] == ["projection", "residual"]


def test_every_block_of_fuzzed_graphs_is_removed_exactly():
    """The fuzzer's seeded graphs (residual, squeeze-excite, attention, If/Loop blocks, dead
    code): each removable block frees exactly its nodes and equals its reference."""
    found = 0
    for seed in range(40):
        model = Model.from_proto(build(generate(seed)))
        for block in find_blocks(model):
            if block.removable:
                assert_removal_exact(model, block)
                found += 1
    assert found >= 40  # 48 at this writing: the sweep checks something


# ---------------------------------------------------------------- bundled models, CLI
def test_bundled_digits_models():
    vit = Model.load(MODELS / "digits_vit.onnx")
    assert [(b.kind, b.role, b.parts) for b in find_blocks(vit)] == [
        ("residual", "attention", ()),
        ("residual", "mlp", ()),
        ("transformer-layer", "", (0, 1)),
    ] + [("residual", "attention", ()), ("residual", "mlp", ()), ("transformer-layer", "", (3, 4))]
    cnn = Model.load(MODELS / "digits_cnn.onnx")
    residual, gate = find_blocks(cnn)
    assert (residual.kind, residual.role, residual.skip) == ("residual", "conv", residual.entry)
    assert (gate.kind, gate.scope) == ("layer", "se")  # the squeeze-excite gate x·σ(W₂ relu(W₁ x̄))
    for model in (vit, cnn):
        for block in find_blocks(model):
            assert (block.params, block.macs) == independent_cost(model, block)
            assert_removal_exact(model, block)


def test_analyze_blocks_cli_text_and_json(cli):
    path = BLOCKS / "resnet_like.onnx"
    code, out, _ = cli("analyze", path, "--blocks")
    assert code == 0
    assert "blocks: 3 (residual 2, projection 1; 3 removable)" in out  # one role each
    assert "projection  conv  layer2" in out
    code, out, _ = cli("analyze", path, "--blocks", "--json")
    rows = json.loads(out)["blocks"]
    assert [r["kind"] for r in rows] == ["residual", "projection", "residual"]
    total = json.loads(out)["macs"]
    assert rows[1]["macs_share"] == pytest.approx(rows[1]["macs"] / total)


def test_block_list_text_prints_why_not_and_a_score_when_rows_carry_one():
    g = GraphBuilder((1, 8, 6, 6), seed=3)
    skip = g.current
    g.conv(8, name="b0.conv1").relu().conv(8, name="b0.conv2").add(skip, name="b0.add")
    rows = inspection.blocks(g.model())
    text = block_list_text(rows)
    assert text.splitlines()[0] == "blocks: 1 (residual 1; 0 removable)"
    assert f"kept: its exit {rows[0]['exit']} is a graph output" in text
    assert "score" not in text
    scored = block_list_text([dict(rows[0], score=0.01234567)])
    assert scored.splitlines()[1].split()[-1] == "score"
    assert scored.splitlines()[2].split()[-1] == "0.01235"


# ---------------------------------------------------------------- .cache models (skip when absent)
def _cached(*parts: str) -> Path:
    path = CACHE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path.relative_to(ROOT)}")
    return path


def _kinds(rows: list[dict]) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        key = f"{row['kind']}/{row['role']}" if row["role"] else row["kind"]
        found[key] = found.get(key, 0) + 1
    return found


def test_resnet50_zoo_graph_lists_its_16_bottlenecks():
    rows = inspection.blocks(Model.load(_cached("light", "resnet50.onnx")))
    assert _kinds(rows) == {"residual/conv": 12, "projection/conv": 4}
    assert [r["scope"] for r in rows][:4] == [
        "gpu_0/res2_0",
        "gpu_0/res2_1",
        "gpu_0/res2_2",
        "gpu_0/res3_0",
    ]
    assert all(r["removable"] for r in rows)


def test_minilm_lists_12_sub_blocks_and_6_layers():
    rows = inspection.blocks(Model.load(_cached("minilm", "minilm_legacy.onnx")))
    assert block_list_text(rows).startswith(
        "blocks: 18 (residual 12 (attention 6, mlp 6), transformer-layer 6; 18 removable)"
    )
    assert _kinds(rows) == {"residual/attention": 6, "residual/mlp": 6, "transformer-layer": 6}
    layers = [r for r in rows if r["kind"] == "transformer-layer"]
    assert [r["scope"] for r in layers] == [f"bert.encoder.layer.{i}" for i in range(6)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18_legacy.onnx", {"residual/conv": 5, "projection/conv": 3}),
        ("convnext_atto_dynamo.onnx", {"residual/conv": 12}),
        ("mobilenetv3_small_100_legacy.onnx", {"residual/conv": 6, "layer/conv": 6}),
        (
            "mobilevit_xxs_legacy.onnx",  # 9 transformer layers nested in 3 MobileViT blocks
            {
                "residual/conv": 3,
                "layer/conv": 1,
                "layer/attention": 3,
                "residual/attention": 9,
                "residual/mlp": 9,
                "transformer-layer": 9,
            },
        ),
        ("efficientnet_b0_dynamo.onnx", {"residual/conv": 9, "layer/conv": 10}),
        (
            "vit_tiny_patch16_224_dynamo.onnx",
            {"residual/attention": 12, "residual/mlp": 12, "transformer-layer": 12},
        ),
    ],
)
def test_timm_models(name, expected):
    model = Model.load(_cached("timm", name))
    assert _kinds([b.to_json() for b in find_blocks(model)]) == expected
