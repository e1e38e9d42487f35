"""--round-to auto (``pruning.fast_widths``): each segment keeps the candidate count with the
most kept units per measured second. The timer is injected (a model of a runtime that is fast
at multiples of 8), so nothing here asserts a timing; the pruned models pass the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import oracle_error, prune
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir import Model
from sparsec.pruning import fast_widths
from sparsec.pruning.fast_widths import FastWidths, LayerShape, candidates, layer_shapes
from sparsec.spec.options import OPTION_BY_NAME
from sparsec.testing.kit import make_model

WIDTH = 24


def conv_chain(width: int = WIDTH) -> Model:
    """x[1,3,12,12] → Conv(width, 3×3) → Relu → Conv(width, 1×1) → Relu → Conv(5, 1×1)."""
    rng = np.random.default_rng(0)
    shapes = {"w0": (width, 3, 3, 3), "w1": (width, width, 1, 1), "w2": (5, width, 1, 1)}
    weights = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in shapes.items()
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [("y", TensorProto.FLOAT, [1, 5, 12, 12])],
        weights,
    )
    return Model.from_proto(proto)


def blocky_timer(calls: list):
    """Seconds ∝ a layer's weight size, three times slower when a channel count is not a
    multiple of 8 (what ``measure`` would see on a runtime with 8-channel blocks)."""

    def timer(layers):
        calls.append(list(layers))
        return [
            math.prod(layer.weight) * (1 if all(c % 8 == 0 for c in layer.weight[:2]) else 3)
            for layer in layers
        ]

    return timer


def kept_widths(model: Model) -> list[int]:
    return [model.constant_shape(model.initializers()[n])[0] for n in ("w0", "w1")]


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(fast_widths, "_MEASURED", {})


def test_candidates_stay_in_the_window_and_bounds():
    for keep, units, least in [(14, 24, 3), (5, 64, 1), (100, 128, 13), (3, 4, 1)]:
        found = candidates(keep, units, least, 1 / 3)
        assert keep in found
        others = [k for k in found if k != keep]
        assert all(max(least, 1) <= k <= units for k in others)
        assert all(k <= max(keep * 4 / 3, fast_widths.BLOCK) for k in others)
        assert all(k >= keep * 2 / 3 for k in others)


def test_selection_takes_the_fast_width_and_passes_the_oracle(monkeypatch, fresh_cache):
    calls: list = []
    monkeypatch.setattr(fast_widths, "measure", blocky_timer(calls))
    plain, _ = prune(conv_chain(), ratio=0.45)
    assert kept_widths(plain) == [14, 14]  # floor(0.45·24) = 10 removed
    model, result = prune(conv_chain(), ratio=0.45, round_to=0)
    assert kept_widths(model) == [16, 16]  # 12, 14 and 16 measured: 16 is the fast one
    assert calls, "the timer was asked"
    assert oracle_error(model, result.reference()) <= 1e-4


def test_a_runtime_without_fast_widths_keeps_the_plain_count(monkeypatch, fresh_cache):
    monkeypatch.setattr(
        fast_widths, "measure", lambda layers: [math.prod(layer.weight) for layer in layers]
    )
    model, result = prune(conv_chain(), ratio=0.45, round_to=0)
    assert kept_widths(model) == [14, 14]
    assert oracle_error(model, result.reference()) <= 1e-4


def test_a_shape_is_timed_once_per_cache():
    calls: list = []
    layer = LayerShape("Conv", (1, 16, 8, 8), (16, 16, 1, 1), (("group", 1),))
    fast = FastWidths({"w": layer}, timer=blocky_timer(calls), cache={})
    reached = [(layer, 0, 16)]
    first = fast.choose(reached, 13, 16, 1)
    again = fast.choose(reached, 13, 16, 1)
    assert first == again == 16
    assert sum(len(c) for c in calls) == len({s for c in calls for s in c}) == len(calls[0])


def test_depthwise_and_grouped_convs_resize_consistently():
    depthwise = LayerShape("Conv", (1, 32, 8, 8), (32, 1, 3, 3), (("group", 32),))
    assert depthwise.resized(0, 16) == LayerShape(
        "Conv", (1, 16, 8, 8), (16, 1, 3, 3), (("group", 16),)
    )
    grouped = LayerShape("Conv", (1, 24, 8, 8), (24, 8, 3, 3), (("group", 3),))
    assert grouped.resized(0, 10) is None  # not a multiple of the 3 groups
    assert grouped.resized(1, 4).input == (1, 12, 8, 8)
    gemm = LayerShape("Gemm", (1, 64), (10, 64), (("transB", 1),))
    assert gemm.resized(1, 32).input == (1, 32) and gemm.resized(0, 5).input == (1, 64)


def test_layer_shapes_reads_every_conv_of_the_model():
    layers = layer_shapes(conv_chain())
    assert sorted(layers) == ["w0", "w1", "w2"]
    assert layers["w1"].input == (1, WIDTH, 12, 12) and layers["w1"].weight == (WIDTH, WIDTH, 1, 1)


def test_the_real_timer_times_a_one_op_model():
    (seconds,) = fast_widths.measure([LayerShape("Conv", (1, 8, 6, 6), (8, 8, 1, 1))], rounds=2)
    assert 0 < seconds < 10


def test_round_to_reads_auto_and_refuses_the_rest():
    convert = OPTION_BY_NAME["round_to"].kind.convert
    assert convert("auto") == "auto" and convert("16") == 16 and convert(8.0) == 8
    for bad in ("-1", "0", 0, "1.5", "fast", True):
        with pytest.raises(ValueError, match="integer >= 1 or 'auto'"):
            convert(bad)


def test_cli_round_to_auto_and_a_bad_value(cli, tmp_path):
    bad = cli(
        "compress",
        "models/digits_cnn.onnx",
        "--channels",
        "0.5",
        "--round-to",
        "x",
        "-o",
        str(tmp_path / "o.onnx"),
    )
    assert bad[0] != 0 and "round-to" in bad[2] and "Traceback" not in bad[2]


def test_flat_times_add_channels_but_never_uncut_a_segment():
    """Where every width costs the same (a layer bound by overhead), the largest candidate is
    free, except keeping every unit: a segment the ratio cuts stays cut unless that is faster."""
    layer = LayerShape("Conv", (1, 24, 8, 8), (24, 24, 1, 1), (("group", 1),))
    fast = FastWidths({"w": layer}, timer=lambda layers: [1.0 for _ in layers], cache={})
    assert fast.choose([(layer, 0, 24)], 13, 24, 1) == 16
    assert fast.choose([(layer, 0, 16)], 13, 16, 1) == 13


def test_a_grouped_convs_balanced_group_keeps_its_plain_count(monkeypatch, fresh_cache):
    """Bundles and tiles set a grouped conv's widths: no chooser for its balanced groups; the
    model still prunes exactly with --round-to auto."""
    from conftest import MODELS

    from sparsec.analysis.groups import find_channel_groups

    path = MODELS / "couplings" / "grouped_depthwise.onnx"
    model = Model.load(path)
    fast = FastWidths.of(model, timer=lambda layers: [1.0 for _ in layers], cache={})
    groups = find_channel_groups(model).groups
    assert any(g.balanced for g in groups)
    assert all((fast.chooser(g) is None) == bool(g.balanced) for g in groups)
    monkeypatch.setattr(fast_widths, "measure", lambda layers: [1.0 for _ in layers])
    pruned, result = prune(path, ratio=0.5, round_to=0)
    assert oracle_error(pruned, result.reference()) <= 1e-4


def test_cli_round_to_auto_prunes_exactly(cli, tmp_path, monkeypatch, fresh_cache):
    from conftest import MODELS, compress_report

    monkeypatch.setattr(fast_widths, "measure", blocky_timer([]))
    code, err, data = compress_report(
        cli, tmp_path, MODELS / "digits_cnn.onnx", "--channels", "0.5", "--round-to", "auto"
    )
    assert code in (0, 1), err  # 1: the collapse warning of a lossy run on random weights
    assert data["recipe_keys"]["round_to"] == "auto"
    assert data["oracle"]["passed"] is True
    assert data["macs_after"] < data["macs_before"]
