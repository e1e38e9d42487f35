"""A PP-OCR-style DB text detector (issue 18, item 1): MobileNetV3-like backbone with hardswish
and squeeze-excite, an FPN of Conv + nearest ``Resize`` (by ``scales`` and by a ``sizes`` vector
that names the channel count) + ``Add`` + ``Concat``, and the DB head Conv → BatchNorm → Relu →
``ConvTranspose`` → BatchNorm → Relu → ``ConvTranspose`` → Sigmoid. Pruned at 0.5 it must equal
its masked original, with every group but the input's and the map's cut.

The minimal graphs below pin the forms one by one: ConvTranspose (its output channels on W axis
1, bias over them, grouped with C_in ≠ C_out, BatchNorm after), and Resize by a ``sizes`` vector
(constant, or built at run time from ``Shape``), at the opsets Paddle writes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, oracle_error, prune
from make_ocr_models import db_detector

from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model
from sparsec.testing import GraphBuilder

DETECTOR = MODELS / "ocr" / "db_detector.onnx"


def params(model: Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.initializers().values())


def prune_half(model: Model) -> Model:
    """Prune 0.5 and assert the oracle (the pruned model equals its masked original)."""
    model, result = prune(model, ratio=0.5)
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    return model


def nodes(model: Model, op_type: str) -> list:
    return [n for n in model.graph.all_nodes() if n.op_type == op_type]


def test_committed_detector_is_the_script_output():
    assert onnx.load(DETECTOR).SerializeToString() == db_detector().SerializeToString()


def test_detector_prunes_at_half_and_passes_the_oracle():
    before = params(Model.load(DETECTOR))
    model = prune_half(Model.load(DETECTOR))
    assert params(model) / before <= 0.40  # every group but the input's and the map's is cut
    first, second = (model.constant(n.inputs[1]).shape for n in nodes(model, "ConvTranspose"))
    assert first == (3, 3, 2, 2) and second == (3, 1, 2, 2)  # [C_in, C_out, k, k], halved
    for resize in nodes(model, "Resize"):
        if len(resize.inputs) > 3:  # the sizes vector names the halved channel count
            assert model.constant(resize.inputs[3])[1] == 4 == resize.inputs[0].shape[1]


def test_detector_groups_read_right():
    """Every group is prunable but the one reaching the input; the head's two groups are the
    Conv → ConvTranspose input channels and the ConvTranspose → ConvTranspose channels."""
    model = Model.load(DETECTOR)
    groups = find_channel_groups(model).groups
    blocked = [g for g in groups if not g.prunable]
    assert len(blocked) == 1 and "graph input" in blocked[0].reason
    convt = [n.inputs[1].name for n in nodes(model, "ConvTranspose")]
    head = [g for g in groups if any(name in convt for name, _ in g.members)]
    axes = sorted(sorted((name in convt, axis) for name, axis in g.constants) for g in head)
    assert len(head) == 2 and all(g.prunable for g in head)
    assert (True, 0) in axes[0] + axes[1] and (True, 1) in axes[0] + axes[1]


@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_batchnorm_head(group, bias):
    """ConvTranspose 6 → 12 channels (stride 2), grouped, then BatchNorm → Relu → ConvTranspose
    to one map: its input and output channels are both prunable groups."""
    rng = np.random.default_rng(group)
    g = GraphBuilder((1, 3, 6, 6), opset=11, seed=group).conv(6, bias=False).batchnorm().relu()
    inputs = [rng.normal(size=(6, 12 // group, 2, 2)).astype(np.float32)]
    inputs += [rng.uniform(-0.5, 0.5, 12).astype(np.float32)] if bias else []
    g.op(
        "ConvTranspose",
        *inputs,
        shape=[1, 12, 12, 12],
        kernel_shape=[2, 2],
        strides=[2, 2],
        group=group,
    )
    g.batchnorm().relu()
    g.op(
        "ConvTranspose",
        rng.normal(size=(12, 1, 2, 2)).astype(np.float32),
        rng.uniform(-0.5, 0.5, 1).astype(np.float32),
        shape=[1, 1, 24, 24],
        kernel_shape=[2, 2],
        strides=[2, 2],
    )
    model = prune_half(g.op("Sigmoid").model())
    first, second = (model.constant(n.inputs[1]).shape for n in nodes(model, "ConvTranspose"))
    assert first[0] < 6 and first[1] < 12 // group and second == (first[1] * group, 1, 2, 2)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("form", ["constant", "shape", "sliced", "shape_start_end", "scaled"])
def test_resize_sizes_names_the_channels(opset, form):
    """Conv → Resize (sizes [N, C, 2H, 2W]) → Conv: a constant C is rewritten with the pruned
    count; sizes that take [N, C] from ``Shape(X)[0:2]`` (``F.interpolate(x, size=...)`` as
    TorchScript writes it; ``Shape(X, start=0, end=2)`` from opset 15, as dynamo writes it)
    follow the pruning by themselves. A shape vector used whole in
    arithmetic (``Shape(X) * [1, 1, 2, 2]``, or ``Shape(X) * 2``, which doubles the channels
    too) is a read: X's channels stay whole, exactly."""
    g = GraphBuilder((1, 3, 4, 4), opset=opset, seed=opset).conv(8).relu()
    x, empty = g.current, np.array([], np.float32)
    if form == "constant":
        sizes = np.array([1, 8, 8, 8], np.int64)
    elif form == "sliced" or (form == "shape_start_end" and opset < 15):
        g.op("Shape", shape=[4])
        g.op("Slice", np.array([0], np.int64), np.array([2], np.int64), shape=[2])
        sizes = g.op("Concat", np.array([8, 8], np.int64), axis=0, shape=[4]).current
    elif form == "scaled":
        g.op("Shape", shape=[4])
        sizes = g.op("Mul", np.array(2, np.int64), shape=[4]).current
    elif form == "shape_start_end":
        g.op("Shape", shape=[2], start=0, end=2)
        sizes = g.op("Concat", np.array([8, 8], np.int64), axis=0, shape=[4]).current
    else:
        g.op("Shape", shape=[4])
        sizes = g.op("Mul", np.array([1, 1, 2, 2], np.int64), shape=[4]).current
    g._state = type(g._state)(x, [1, 8, 4, 4], "image")  # back on the conv's output
    scales = empty if opset < 13 else ""
    channels = 16 if form == "scaled" else 8
    g.op(
        "Resize",
        empty,
        scales,
        sizes,
        shape=[2 if form == "scaled" else 1, channels, 8, 8],
        mode="nearest",
    )
    model = prune_half(g.conv(5).model())
    after = model.constant(nodes(model, "Conv")[1].inputs[1]).shape[1]  # the conv after Resize
    assert after == (channels if form in ("shape", "scaled") else 4)
