"""Channel shuffle (issue 18, class 3): ``Reshape [N, g, C/g, H, W]`` → ``Transpose`` swapping
the two parts → ``Reshape [N, C, H, W]`` prunes a sub-channel ``j`` of every shuffle group at
once (input position ``i·(C/g) + j``, output position ``j·g + i``); a split whose parts are not
swapped before they merge (heads into a MatMul, a transpose of other axes) keeps its outer part.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, make_model, oracle_error, prune
from make_coupling_models import Builder, head
from make_shuffle_model import shuffle
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model

SHUFFLE = MODELS / "couplings" / "channel_shuffle.onnx"
F = TensorProto.FLOAT


def params(model: Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.initializers().values())


def shuffles(model: Model) -> list[tuple]:
    """(split Reshape, Transpose, merge Reshape) of every channel shuffle, in graph order."""
    found = []
    for node in model.nodes():
        if node.op_type == "Transpose" and len(node.inputs[0].shape or ()) == 5:
            split, merge = node.inputs[0].producer(), next(iter(node.outputs[0].uses())).node
            found.append((split, node, merge))
    return found


def test_a_shuffle_unit_is_one_sub_channel_of_every_shuffle_group():
    model = Model.load(SHUFFLE)
    analysis = find_channel_groups(model)
    for split, _, merge in shuffles(model):
        x, y = split.inputs[0].name, merge.outputs[0].name
        group = next(g for g in analysis.groups if (x, 1) in g.atoms)
        assert group.prunable and (y, 1) in group.atoms
        size = group.sizes[(x, 1)]
        i, j = np.divmod(np.arange(size), size // 3)  # input position i·(C/g) + j
        assert (group.atoms[(x, 1)] == group.atoms[(y, 1)][j * 3 + i]).all()


def test_the_small_shufflenet_prunes_every_shuffle_group_exactly():
    original = params(Model.load(SHUFFLE))
    model, result = prune(SHUFFLE, ratio=0.5)
    touching = [
        g
        for g in find_channel_groups(Model.load(SHUFFLE)).groups
        if any(name.startswith("Transpose") for name in g.nodes)
    ]
    assert len(touching) == 2 and all(g.prunable for g in touching)
    assert result.stats["channel-prune.groups_pruned"] >= len(touching) + 1  # + the stream
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    assert params(model) < 0.5 * original


def test_the_pruned_shuffle_targets_hold_the_kept_sizes():
    """8 units of 3 sub-channels per bottleneck, half kept: 12 sub-channels in each of the 3
    shuffle groups; the spelled-out targets are rewritten, the self-adjusting ones stay."""
    model, _ = prune(SHUFFLE, ratio=0.5)
    targets = [
        [model.constant(node.inputs[1]).tolist() for node in (split, merge)]
        for split, _, merge in shuffles(model)
    ]
    assert targets == [
        [[1, 3, 12, 8, 8], [1, 36, 8, 8]],
        [[0, 3, -1, 4, 4], [0, -1, 4, 4]],
    ]


def shufflenet_v2(units: int = 3) -> onnx.ModelProto:
    """ShuffleNet v2 units: Split the stream in halves, 1×1 → depthwise 3×3 → 1×1 on the right
    half, Concat with the left half, shuffle in 2 groups (``Builder`` of the coupling models)."""
    b = Builder(19)
    x = b.op("Relu", [b.bn(b.conv("input", 3, 16, bias=False), 16)])
    for _ in range(units):
        halves = b.const(np.array([8, 8], np.int64), "split")
        left, right = b.op("Split", [x, halves], outputs=2, axis=1)
        right = b.op("Relu", [b.bn(b.conv(right, 8, 8, k=1, bias=False), 8)])
        right = b.bn(b.op("Conv", [right, b.weight(8, 1, 3, 3)], pads=[1] * 4, group=8), 8)
        right = b.op("Relu", [b.bn(b.conv(right, 8, 8, k=1, bias=False), 8)])
        joined = b.op("Concat", [left, right], axis=1)
        x = shuffle(b, joined, [1, 2, 8, 8, 8], [1, 16, 8, 8])
    return b.model([1, 3, 8, 8], head(b, x, 16))


def test_shufflenet_v2_units_prune_exactly():
    """Concat → shuffle → Split: a sub-channel ties the left half's channel to the branch
    output's, and the split halves take the shuffled pairs; every group with weights prunes."""
    model = Model.from_proto(shufflenet_v2())
    analysis = find_channel_groups(model)
    assert sum(g.prunable for g in analysis.groups) == 4  # the stream and 3 branches
    stream = next(g for g in analysis.groups if g.prunable and len(g.compute) > 3)
    assert stream.units == 16  # each stem channel its own unit (shuffle groups as units: 10)
    model, result = prune(model, ratio=0.5)
    assert result.stats["channel-prune.groups_pruned"] == 4
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4


def _split_link(perm: list[int], split_shape: list[int], merge_shape: list[int]):
    """The (member, index) a split Reshape links its input channel axis to, when its output
    goes through Transpose ``perm`` into a merging Reshape (conv channels on both sides)."""
    rng = np.random.default_rng(18)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"]),
        helper.make_node("Reshape", ["c", "split"], ["parts"]),
        helper.make_node("Transpose", ["parts"], ["moved"], perm=perm),
        helper.make_node("Reshape", ["moved", "merge"], ["merged"]),
        helper.make_node("Conv", ["merged", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=[12, 3, 1, 1]).astype(np.float32), "w1"),
        numpy_helper.from_array(
            rng.normal(size=[5, merge_shape[1], 1, 1]).astype(np.float32), "w2"
        ),
        numpy_helper.from_array(np.array(split_shape, np.int64), "split"),
        numpy_helper.from_array(np.array(merge_shape, np.int64), "merge"),
    ]
    out_shape = [1, 5, merge_shape[2], merge_shape[3]]
    proto = make_model(nodes, [("x", F, [1, 3, 2, 4])], [("y", F, out_shape)], inits, opset=13)
    model = Model.from_proto(proto)
    coupling = find_channel_groups(model).couplings[1]
    return [(e.b, e.index.tolist()) for e in coupling.edges if e.a == ("c", 1)]


@pytest.mark.parametrize(
    "perm, merge_shape, expected",
    [
        ([0, 2, 1, 3, 4], [1, 12, 2, 4], (("parts", 2), [q % 4 for q in range(12)])),  # swapped
        ([0, 1, 2, 4, 3], [1, 12, 4, 2], (("parts", 1), [q // 4 for q in range(12)])),  # H ↔ W
        ([0, 1, 2, 3, 4], [1, 12, 2, 4], (("parts", 1), [q // 4 for q in range(12)])),  # none
    ],
)
def test_a_split_follows_the_part_its_merge_links(perm, merge_shape, expected):
    assert _split_link(perm, [1, 3, 4, 2, 4], merge_shape) == [expected]


def test_heads_split_into_a_matmul_keeps_the_outer_part():
    """[B, T, C] → [B, T, H, D] → Transpose → MatMul: no merge of H and D, H stays linked."""
    rng = np.random.default_rng(18)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("Reshape", ["q", "heads"], ["qh"]),
        helper.make_node("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["qh"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=[8, 8]).astype(np.float32), "wq"),
        numpy_helper.from_array(np.array([1, 3, 2, 4], np.int64), "heads"),
    ]
    proto = make_model(nodes, [("x", F, [1, 3, 8])], [("scores", F, [1, 2, 3, 3])], inits)
    coupling = find_channel_groups(Model.from_proto(proto)).couplings[1]
    links = [(e.b, e.index.tolist()) for e in coupling.edges if e.a == ("q", 2)]
    assert links == [(("qh", 2), [q // 4 for q in range(8)])]


def test_the_light_shufflenet_prunes_exactly(tmp_path):
    """The onnx wheel's ShuffleNet v1 (g = 4), weights filled at random, Softmax cut off so the
    oracle compares logits. Every group but the input's and the output's prunes, the stage-2
    bottlenecks of 4 × 34 channels too: their sub-channels are not a multiple of 4, so the
    grouped 1×1 conv after the shuffle loses a different set of local positions in each of its
    groups (as many in each), which its weight's per-group gather cuts."""
    from fill_light_models import fill, light_path

    proto = onnx.load(fill(light_path("shufflenet"), tmp_path / "shufflenet.onnx"))
    softmax = proto.graph.node[-1]
    assert softmax.op_type == "Softmax"
    proto.graph.output[0].name = softmax.input[0]
    proto.graph.node.remove(softmax)
    original = Model.from_proto(proto)
    groups = find_channel_groups(original).groups
    kept = [g for g in groups if not g.prunable]
    assert len(kept) == 2 and all("reaches graph" in g.reason for g in kept)
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    assert result.stats["channel-prune.groups_pruned"] == len(groups) - 2
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    assert params(model) <= 0.6 * params(original)
    before, after = original.initializers(), model.initializers()
    grouped = [  # the grouped (not depthwise) convs' weights: cut on both axes, 4 x 34 too
        node.inputs[1].name
        for node in original.nodes()
        if node.op_type == "Conv"
        and 1 < original.attr(node, "group", 1) < before[node.inputs[1].name].shape[0]
    ]
    assert 34 in {before[name].shape[1] for name in grouped}
    assert all(after[n].shape[1] < before[n].shape[1] for n in grouped)


def test_the_light_shufflenet_keeps_round_to_widths(tmp_path):
    """Whole tiles (what balances a trunk read by grouped convs of several widths) are taken only
    where they remove from no segment more than its count, which ``round_to`` set: with
    ``round_to=8`` every conv keeps a multiple of 8 output channels (the trunk, whose tiles
    cannot reach one, stays whole), and the cut is exact."""
    from fill_light_models import fill, light_path

    proto = onnx.load(fill(light_path("shufflenet"), tmp_path / "shufflenet.onnx"))
    model, result = prune(Model.from_proto(proto), ratio=0.5, round_to=8)
    assert result.stats["channel-prune.groups_pruned"] > 0
    assert oracle_error(model, result.reference()) <= 1e-4
    weights = model.initializers()
    widths = {
        node.name: weights[node.inputs[1].name].shape[0]
        for node in model.nodes()
        if node.op_type == "Conv"
    }
    assert all(width % 8 == 0 for width in widths.values()), widths
