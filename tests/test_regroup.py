"""Reshapes that regroup several axes into several axes (``rules.refine``): MobileViT's unfold
``[B, C, H, W] → [B·C·nh, ph, nw, pw] → T(1, 2) → [B, C, N, P] → T(1, 3) → [B·P, N, C]`` and its
fold prune C through the whole chain, exactly, whether the batch is 1, 2 or symbolic and the
targets are spelled out or ``-1``; a block without a common refinement stays blocked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_model, oracle_error, prune
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.analysis.rules import Coupling
from sparsec.analysis.rules.layout import link_regroup
from sparsec.analysis.rules.refine import refine, spans, stride_map, stride_of
from sparsec.ir import Model
from sparsec.pruning.oracle import oracle_gap
from sparsec.testing import random_feeds

F = TensorProto.FLOAT
C_IN, C, H, W, PH, PW, C_OUT = 3, 6, 6, 4, 2, 2, 5
NH, NW = H // PH, W // PW
N, P = NH * NW, PH * PW
TIMM = Path(__file__).resolve().parent.parent / ".cache" / "timm"


@pytest.mark.parametrize(
    "ins, outs, parts",
    [
        ((2, 64, 16), (1024, 2), [2, 64, 8, 2]),
        ((64, 28, 28), (896, 2, 14, 2), [64, 14, 2, 14, 2]),  # MobileViT's unfold
        ((896, 14, 2, 2), (64, 196, 4), [64, 14, 14, 2, 2]),
        ((12,), (3, 4), [3, 4]),  # a plain split is its own refinement
        ((6, 4), (4, 6), None),  # cut 4 does not divide cut 6
        ((2, 3), (7,), None),  # not one product
    ],
)
def test_the_common_refinement_cuts_at_both_sides_cumulative_products(ins, outs, parts):
    assert refine(ins, outs) == parts
    if parts is not None:
        for sizes in (ins, outs):
            runs = spans(sizes, parts)
            assert [int(np.prod([parts[k] for k in run])) for run in runs] == list(sizes)
            assert [k for run in runs for k in run] == list(range(len(parts)))


def test_a_stride_map_is_recognised_by_its_stride_and_size():
    assert stride_map([64, 14], 0).tolist()[:16] == [0] * 14 + [1, 1]
    assert stride_of(stride_map([2, 64, 14], 1)) == (14, 64)
    assert stride_of(stride_map([64, 14], 1)) == (1, 14)
    assert stride_of(np.arange(5) + 2) is None  # an offset (Split), not a part
    assert stride_of(np.zeros(4, dtype=int)) is None


def test_a_block_without_refinement_stays_blocked():
    coupling = Coupling()
    x, y = type("V", (), {"name": "x"})(), type("V", (), {"name": "y"})()
    link_regroup(coupling, x, (1, 6, 4), y, (1, 4, 6))
    assert not coupling.edges
    assert set(coupling.reasons) == {("x", 1), ("x", 2)}


def test_a_whole_axis_whose_part_a_merged_axis_does_not_follow_is_blocked():
    """(2, 3, 4) → (12, 2): parts (2, 3, 2, 2); without a trace the 12 follows its outermost
    part (the 2), so the 3 would shrink under an axis that cannot follow it: blocked."""
    coupling = Coupling()
    x, y = type("V", (), {"name": "x"})(), type("V", (), {"name": "y"})()
    link_regroup(coupling, x, (2, 3, 4), y, (12, 2))
    assert set(coupling.reasons) == {("x", 1)}
    assert "axis 0 of 'y', which follows another part" in coupling.reasons[("x", 1)]
    maps = {e.a: e.index for e in coupling.edges}
    assert (maps[("y", 0)] == np.arange(12) // 6).all()
    assert (maps[("x", 2)] == np.arange(4) % 2).all() and maps[("y", 1)] is None


def test_unfold_axes_follow_the_parts_that_are_whole_axes_on_the_other_side():
    coupling = Coupling()
    x, y = type("V", (), {"name": "x"})(), type("V", (), {"name": "y"})()
    link_regroup(coupling, x, (1, C, H, W), y, (C * NH, PH, NW, PW))
    maps = {e.a: e.index for e in coupling.edges}
    assert maps[("x", 1)] is None  # C is a whole part
    assert (maps[("y", 0)] == np.arange(C * NH) // NH).all()  # C·nh follows C
    assert (maps[("x", 2)] == np.arange(H) % PH).all()  # H follows ph (a whole output axis)
    assert set(coupling.reasons) == {("y", 3)}  # W → (nw, pw) is a plain split: pw blocked


def _targets(batch: int | str, spelled: bool) -> list[list[int]]:
    b = batch if isinstance(batch, int) and spelled else -1
    merged = (lambda k: b * k) if b != -1 else (lambda k: -1)
    return [
        [merged(C * NH), PH, NW, PW],
        [b, C, N, P],
        [merged(P), N, C],
        [b, P, N, C],
        [merged(C * NH), NW, PH, PW],
        [b, C, H, W],
    ]


def mobilevit_block(rng, batch: int | str = 1, spelled: bool = True, matmul: bool = True):
    """Conv 1×1 → unfold → MatMul (the attention's width; or nothing) → Relu → fold → Conv 1×1."""
    targets = [f"t{k}" for k in range(6)]
    steps = [("x1", "Reshape", "u0"), ("u0", "Transpose", "u1"), ("u1", "Reshape", "u2")]
    steps += [("u2", "Transpose", "u3"), ("u3", "Reshape", "tokens")]
    steps += [("a", "Reshape", "f0"), ("f0", "Transpose", "f1"), ("f1", "Reshape", "f2")]
    steps += [("f2", "Transpose", "f3"), ("f3", "Reshape", "x2")]
    perms = iter([[0, 2, 1, 3], [0, 3, 2, 1], [0, 3, 2, 1], [0, 2, 1, 3]])
    names = iter(targets)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["x1"])]
    for source, op, out in steps:
        if op == "Reshape":
            nodes.append(helper.make_node(op, [source, next(names)], [out]))
        else:
            nodes.append(helper.make_node(op, [source], [out], perm=next(perms)))
        if out == "tokens":
            nodes += [
                helper.make_node("MatMul", ["tokens", "wm"], ["m"]),
                helper.make_node("Relu", ["m" if matmul else "tokens"], ["a"]),
            ]
    nodes.append(helper.make_node("Conv", ["x2", "w2"], ["y"]))
    arrays = {
        "w1": rng.standard_normal((C, C_IN, 1, 1)),
        "wm": rng.standard_normal((C, C)),
        "w2": rng.standard_normal((C_OUT, C, 1, 1)),
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    inits += [
        numpy_helper.from_array(np.array(t, dtype=np.int64), name)
        for name, t in zip(targets, _targets(batch, spelled))
    ]
    return make_model(
        nodes, [("x", F, [batch, C_IN, H, W])], [("y", F, [batch, C_OUT, H, W])], inits
    )


@pytest.mark.parametrize(
    "batch, spelled", [(1, True), (1, False), (2, True), (2, False), ("batch", False)]
)
def test_the_unfold_attention_fold_chain_prunes_c_exactly(rng, batch, spelled):
    proto = mobilevit_block(rng, batch, spelled)
    groups = find_channel_groups(Model.from_proto(proto)).groups
    keyed = [g for g in groups if {("w1", 0), ("wm", 0)} <= set(g.compute)]
    assert len(keyed) == 1 and keyed[0].prunable and keyed[0].units == C
    back = [g for g in groups if {("wm", 1), ("w2", 1)} <= set(g.compute)]
    assert len(back) == 1 and back[0].prunable and back[0].units == C
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    assert result.stats["channel-prune.groups_pruned"] == 2
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    reference = result.reference()
    for n in (1, 3) if batch == "batch" else ():
        assert oracle_gap(model, reference, random_feeds(reference, batch=n)) <= 1e-4


@pytest.mark.skipif(
    not (TIMM / "mobilevit_xxs_dynamo.onnx").exists(),
    reason="needs .cache/timm (models/make_timm_models.py)",
)
def test_mobilevit_prunes_its_transformer_widths_exactly():
    """The dynamo export (constant targets with -1 for the batch merges): the 64-, 80- and
    96-wide conv_1x1 → attention → conv_proj groups prune (the 96-wide one through a Resize
    whose sizes are ``Concat(Shape(x, 0, 2), [7, 7])``: its N, C follow the pruning)."""
    path = TIMM / "mobilevit_xxs_dynamo.onnx"
    groups = find_channel_groups(Model.load(path)).groups
    widths = [
        g
        for g in groups
        if any(name.endswith("conv_1x1.weight") and a == 0 for name, a in g.compute)
    ]
    assert sorted((g.units, g.prunable) for g in widths) == [(64, True), (80, True), (96, True)]
    model, result = prune(path, ratio=0.5)
    assert oracle_error(model, result.reference()) <= 1e-4


@pytest.mark.parametrize("batch", [1, 2])
def test_a_merge_traces_its_channel_back_through_an_unfold(rng, batch):
    """Without the token MatMul, the fold's B·C·nh finds C (not B) by tracing C back through
    the unfold's refined reshapes to the first conv."""
    proto = mobilevit_block(rng, batch, spelled=True, matmul=False)
    groups = find_channel_groups(Model.from_proto(proto)).groups
    (group,) = [g for g in groups if ("w1", 0) in g.compute]
    assert group.prunable and ("w2", 1) in group.compute and group.units == C
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    assert oracle_error(model, result.reference()) <= 1e-4


def _torchscript_unfold(rng):
    """The unfold's first target as TorchScript writes it with a symbolic batch:
    ``[B * C * nh, ph, nw, pw]`` with ``B * C`` read by two Shape → Gather at run time."""
    proto = mobilevit_block(rng, "batch", spelled=False)
    graph = proto.graph
    kept = [t for t in graph.initializer if t.name != "t0"]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.extend(
        numpy_helper.from_array(np.array(v, np.int64), name)
        for name, v in (("i0", 0), ("i1", 1), ("nh", NH), ("axis0", [0]), ("rest", [PH, NW, PW]))
    )
    computed = [
        helper.make_node("Shape", ["x1"], ["s0"]),
        helper.make_node("Shape", ["x1"], ["s1"]),
        helper.make_node("Gather", ["s0", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s1", "i1"], ["c"], axis=0),
        helper.make_node("Mul", ["b", "c"], ["bc"]),
        helper.make_node("Mul", ["bc", "nh"], ["bcn"]),
        helper.make_node("Unsqueeze", ["bcn", "axis0"], ["first"]),
        helper.make_node("Concat", ["first", "rest"], ["t0"], axis=0),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([nodes[0], *computed, *nodes[1:]])
    return proto


def test_a_batch_times_channels_target_read_at_run_time_follows_the_channels(rng):
    """TorchScript's B·C·nh (legacy MobileViT): at batch 1 the product follows C (B, of size 1
    here, is the read), so the chain prunes, exactly at batch 1 and at batches 2 and 3."""
    proto = _torchscript_unfold(rng)
    groups = find_channel_groups(Model.from_proto(proto)).groups
    (group,) = [g for g in groups if ("w1", 0) in g.compute]
    assert group.prunable and group.units == C
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    reference = result.reference()
    for n in (1, 2, 3):
        assert oracle_gap(model, reference, random_feeds(reference, batch=n)) <= 1e-4


@pytest.mark.skipif(
    not (TIMM / "mobilevit_xxs_legacy.onnx").exists(),
    reason="needs .cache/timm (models/make_timm_models.py)",
)
def test_legacy_mobilevit_prunes_its_transformer_widths():
    groups = find_channel_groups(Model.load(TIMM / "mobilevit_xxs_legacy.onnx")).groups
    widths = [g for g in groups if g.units == 64 and any("MatMul" in n for n, _ in g.compute)]
    assert widths and all(g.prunable for g in widths)


def _batch_hidden_in_a_later_axis(rng) -> object:
    """[N, 6, 6, 4] → Reshape [18, -1, 2, 2] → Mul by a per-row constant → Reshape back: at
    batch 1 the -1 is 4 and C·H = 36 regroups as 18 × 2, but at batch N the -1 absorbs N too."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["x1"]),
        helper.make_node("Reshape", ["x1", "t1"], ["u"]),
        helper.make_node("Mul", ["u", "s"], ["us"]),
        helper.make_node("Reshape", ["us", "t2"], ["x2"]),
        helper.make_node("Conv", ["x2", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(5, 6, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=(18, 1, 1, 1)).astype(np.float32), "s"),
        numpy_helper.from_array(np.array([18, -1, 2, 2], np.int64), "t1"),
        numpy_helper.from_array(np.array([-1, 6, 6, 4], np.int64), "t2"),
    ]
    return make_model(
        nodes, [("x", F, ["N", 3, 6, 4])], [("y", F, ["N", 5, 6, 4])], inits, opset=17
    )


def test_a_cut_exact_only_at_batch_1_is_refused_and_batch_2_analyses_it(cli, tmp_path, rng):
    """With a symbolic batch fed at batch 1 the analysis sees a free size-1 batch axis; the
    oracle also runs at batch 2, so a cut that is wrong there is refused (nothing written), and
    ``--input-shape`` at batch 2 analyses the model where the batch is visible: kept, exact."""
    import onnx

    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_batch_hidden_in_a_later_axis(rng), source)
    code, _, stderr = cli("compress", source, "--channels", "0.5", "-o", out)
    assert code != 0 and "at batch 2" in stderr and "--input-shape" in stderr
    assert not out.exists()
    code, stdout, stderr = cli(
        "compress", source, "--channels", "0.5", "--input-shape", "x:2x3x6x4", "-o", out
    )
    assert code == 0, stderr
    assert "oracle (equal to the original" in stdout and out.exists()


def test_a_model_that_runs_at_batch_1_only_skips_the_batch_2_check(cli, tmp_path, rng):
    """A symbolic batch that a constant Reshape target pins to 1: the masked original does not
    run at batch 2, so the oracle checks batch 1 alone and the cut is written."""
    import onnx

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"]),
        helper.make_node("Reshape", ["h", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array([1, 6, 16], np.int64), "flat"),
        numpy_helper.from_array(rng.normal(size=(16, 5)).astype(np.float32), "w2"),
    ]
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(
        make_model(nodes, [("x", F, ["N", 3, 4, 4])], [("y", F, [1, 6, 5])], inits, opset=17),
        source,
    )
    code, stdout, stderr = cli("compress", source, "--channels", "0.5", "-o", out)
    assert code == 0, stderr
    assert "oracle (equal to the original" in stdout and out.exists()


def test_the_oracle_checks_both_batches_with_one_session_per_model(rng, monkeypatch):
    """Batch 1 and batch 2 run on the same two sessions (the masked original's, the pruned
    model's): four runs, two sessions."""
    from sparsec.ir import runtime
    from sparsec.passes import Pipeline
    from sparsec.passes.channel_prune import ChannelPrunePass
    from sparsec.pruning.oracle_gate import run_oracle

    made, runs = [], []

    class Counted(runtime.Session):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        def run(self, feeds, outputs=None):
            runs.append(next(iter(feeds.values())).shape[0])
            return super().run(feeds, outputs)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(4, 6, 1, 1)).astype(np.float32), "w2"),
    ]
    proto = make_model(nodes, [("x", F, ["N", 3, 4, 4])], [("y", F, ["N", 4, 4, 4])], inits)
    model = Model.from_proto(proto)
    feeds = random_feeds(model, seed=0)
    model.input_shapes = {"x": (1, 3, 4, 4)}
    result = Pipeline([ChannelPrunePass(ratio=0.5)])(model)
    assert result.modified
    monkeypatch.setattr(runtime, "Session", Counted)
    assert run_oracle(result.reference, result.model, feeds, "random").passed
    assert len(made) == 2 and sorted(runs) == [1, 1, 2, 2]
