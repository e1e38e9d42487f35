"""CRNN-style recognizers (issue 18, item 2): the channels of a conv backbone reach the sequence
model through a height-pooling step (Squeeze / Reshape / Transpose / a run-time ``view``) and
must stay prunable there. Every form of ``models/make_crnn_model.py`` prunes at 0.5 as far as a
conv + linear stack can (every group but the CTC classes), equal to its masked original.

Three forms were blocked before, each with a minimal graph here: a merge whose channel axis is
the *inner* part (NHWC ``[N, W, H, C]`` → ``[N, W, H·C]``), PyTorch's ``x.view(b, c * h, w)``
exported with dynamic shapes (a ``Mul`` of two run-time dims in the Reshape target), and a
height pooling over a permuted ``[N, W, C, H]`` (a pool whose kernel is 1 along C).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, make_model, oracle_error, prune
from make_crnn_model import FORMS, build
from onnx import TensorProto, helper, numpy_helper

from sparsec.analysis.groups import find_channel_groups
from sparsec.ir import Model

F = TensorProto.FLOAT
FULL_PRUNE = 0.30  # params ratio at 0.5 when every group but the classes is cut (0.26 measured)


def params(model: Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.initializers().values())


def prune_half(proto: onnx.ModelProto) -> tuple[Model, float]:
    """Prune 0.5; assert the oracle; return the model and its params ratio."""
    before = params(Model.from_proto(proto))
    model, result = prune(Model.from_proto(proto), ratio=0.5)
    assert model.check() is None
    assert oracle_error(model, result.reference()) <= 1e-4
    return model, params(model) / before


def group_with(proto: onnx.ModelProto, member: tuple[str, int]):
    groups = find_channel_groups(Model.from_proto(proto)).groups
    return next(g for g in groups if member in g.atoms)


def blocked(proto: onnx.ModelProto) -> list[str]:
    return [g.reason for g in find_channel_groups(Model.from_proto(proto)).groups if not g.prunable]


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("form", FORMS)
def test_every_crnn_form_prunes_like_a_conv_linear_stack(form, opset):
    proto = build(form, opset=opset, dynamic=True)
    reasons = blocked(proto)
    assert len(reasons) == 1 and "graph output 'probs'" in reasons[0]  # only the CTC classes stay
    _, ratio = prune_half(proto)
    assert ratio <= FULL_PRUNE


@pytest.mark.parametrize("opset", [12, 13])  # Squeeze axes: attribute, then input
def test_squeeze_form_at_the_axes_input_boundary(opset):
    _, ratio = prune_half(build("squeeze", opset=opset, dynamic=False))
    assert ratio <= FULL_PRUNE


# ---------------------------------------------------------------- the two fixed forms, minimal
def _conv(rng, c_in: int, c_out: int) -> list:
    return [
        numpy_helper.from_array(rng.normal(size=(c_out, c_in, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=c_out).astype(np.float32), "b"),
    ]


def _linear(rng, d_in: int, d_out: int) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(size=(d_in, d_out)).astype(np.float32), "m")


def test_channels_merged_as_the_inner_part_of_an_nhwc_sequence_stay_prunable(rng):
    """Conv [1, 8, 2, 5] → Transpose [0, 3, 2, 1] → [1, 5, 2, 8] → Reshape [1, 5, 16] → MatMul:
    channel c owns merged positions h·8 + c (a stride, not a run)."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"]),
        helper.make_node("Transpose", ["h"], ["t"], perm=[0, 3, 2, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["s"]),
        helper.make_node("MatMul", ["s", "m"], ["y"]),
    ]
    inits = [*_conv(rng, 3, 8), numpy_helper.from_array(np.array([1, 5, 16]), "shape")]
    proto = make_model(
        nodes, [("x", F, [1, 3, 2, 5])], [("y", F, [1, 5, 4])], [*inits, _linear(rng, 16, 4)]
    )
    group = group_with(proto, ("w", 0))
    assert group.prunable, group.reason
    assert group.atoms[("s", 2)].tolist() == [group.atoms[("w", 0)][q % 8] for q in range(16)]
    model, _ = prune_half(proto)
    assert model.initializers()["w"].shape[0] == 4 and model.initializers()["m"].shape[0] == 8


@pytest.mark.parametrize("pool", ["AveragePool", "MaxPool"])
def test_channels_through_a_pool_of_kernel_one_on_their_axis_stay_prunable(rng, pool):
    """Conv [1, 8, 2, 5] → Transpose [0, 3, 1, 2] → [1, 5, 8, 2] → pool kernel (1, 2) →
    Squeeze(3) → MatMul: the channels are a spatial axis of the pool, pooled with kernel 1."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"]),
        helper.make_node("Transpose", ["h"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node(pool, ["t"], ["p"], kernel_shape=[1, 2], strides=[1, 2]),
        helper.make_node("Squeeze", ["p", "three"], ["s"]),
        helper.make_node("MatMul", ["s", "m"], ["y"]),
    ]
    inits = [*_conv(rng, 3, 8), numpy_helper.from_array(np.array([3]), "three")]
    proto = make_model(
        nodes, [("x", F, [1, 3, 2, 5])], [("y", F, [1, 5, 4])], [*inits, _linear(rng, 8, 4)]
    )
    group = group_with(proto, ("w", 0))
    assert group.prunable, group.reason
    model, _ = prune_half(proto)
    assert model.initializers()["w"].shape[0] == 4 and model.initializers()["m"].shape[0] == 4


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])  # c * h, h * c
def test_a_view_of_c_times_h_read_at_run_time_follows_the_pruning(rng, order):
    """``b, c, h, w = x.size(); x.view(b, c * h, w)`` exported with dynamic shapes."""
    gathers = [
        helper.make_node("Gather", ["shape_of", f"k{k}"], [f"d{k}"], axis=0) for k in range(4)
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"]),
        helper.make_node("Shape", ["h"], ["shape_of"]),
        *gathers,
        helper.make_node("Mul", [f"d{order[0]}", f"d{order[1]}"], ["ch"]),
        *[helper.make_node("Unsqueeze", [d, "zero"], [f"u{d}"]) for d in ("d0", "ch", "d3")],
        helper.make_node("Concat", ["ud0", "uch", "ud3"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "m"], ["y"]),
    ]
    inits = [
        *_conv(rng, 3, 8),
        *[numpy_helper.from_array(np.array(k), f"k{k}") for k in range(4)],
        numpy_helper.from_array(np.array([0]), "zero"),
        _linear(rng, 16, 4),
    ]
    proto = make_model(
        nodes, [("x", F, ["n", 3, 2, "w"])], [("y", F, ["n", "w", 4])], inits, opset=13
    )
    group = group_with(proto, ("w", 0))
    assert group.prunable, group.reason
    model, _ = prune_half(proto)
    assert model.initializers()["w"].shape[0] == 4 and model.initializers()["m"].shape[0] == 8


def test_a_product_of_dims_of_two_tensors_stays_a_read(rng):
    """c of one tensor times h of another is not a merge of that tensor's axes: blocked."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"]),
        helper.make_node("Shape", ["h"], ["shape_h"]),
        helper.make_node("Shape", ["x"], ["shape_x"]),
        helper.make_node("Gather", ["shape_h", "k1"], ["c"], axis=0),
        helper.make_node("Gather", ["shape_x", "k2"], ["hh"], axis=0),
        helper.make_node("Mul", ["c", "hh"], ["ch"]),
        helper.make_node("Unsqueeze", ["ch", "zero"], ["uch"]),
        helper.make_node("Concat", ["one", "uch", "five"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "m"], ["y"]),
    ]
    inits = [
        *_conv(rng, 3, 8),
        *[numpy_helper.from_array(np.array(k), f"k{k}") for k in (1, 2)],
        *[numpy_helper.from_array(np.array([v]), name) for v, name in ((0, "zero"), (1, "one"))],
        numpy_helper.from_array(np.array([5]), "five"),
        _linear(rng, 16, 4),
    ]
    proto = make_model(nodes, [("x", F, [1, 3, 2, 5])], [("y", F, [1, 5, 4])], inits, opset=13)
    group = group_with(proto, ("w", 0))
    assert not group.prunable and "read at run time" in group.reason


# ---------------------------------------------------------------- the committed model
def test_committed_crnn_is_what_the_script_builds_and_prunes_fully():
    path = MODELS / "crnn.onnx"
    assert onnx.load(path) == build("view", opset=13, dynamic=True, seed=0)
    _, ratio = prune_half(onnx.load(path))
    assert ratio <= FULL_PRUNE


def _paddle_flatten(rng, height) -> onnx.ModelProto:
    """Paddle's ``flatten(2)``: the shape vector is cast to int32 and back around its Slice.
    ``height`` 2 fixed, or symbolic with a constant Reshape of the input that runs only at
    height 2 (so the analysis must use the run's input shapes to measure anything)."""
    nodes = [
        helper.make_node("Reshape", ["x", "fixed"], ["x2"]),
        helper.make_node("Conv", ["x2", "w", "b"], ["h"]),
        helper.make_node("Shape", ["h"], ["shape_of"]),
        helper.make_node("Cast", ["shape_of"], ["shape32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["shape32", "start", "stop"], ["nc32"]),
        helper.make_node("Cast", ["nc32"], ["nc"], to=TensorProto.INT64),
        helper.make_node("Concat", ["nc", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "m"], ["y"]),
    ]
    inits = [
        *_conv(rng, 3, 8),
        numpy_helper.from_array(np.array([0, 3, 2, 5]), "fixed"),
        numpy_helper.from_array(np.array([0], np.int32), "start"),
        numpy_helper.from_array(np.array([2], np.int32), "stop"),
        numpy_helper.from_array(np.array([-1]), "minus1"),
        _linear(rng, 8, 4),
    ]
    return make_model(
        nodes, [("x", F, ["n", 3, height, 5])], [("y", F, ["n", 10, 4])], inits, opset=13
    )


def test_a_shape_vector_cast_around_its_slice_follows_the_pruning(rng):
    """The [N, C] entries read through Cast copies of the shape vector are still x's own dims."""
    model, _ = prune_half(_paddle_flatten(rng, 2))
    assert model.initializers()["w"].shape[0] == 4 and model.initializers()["m"].shape[0] == 4


def test_passes_analyse_the_model_at_the_input_shapes_of_the_run(cli, tmp_path, rng):
    """With a symbolic height that only one value fits, ``--input-shape`` binds the passes'
    analysis too (not only validation): the channels are pruned, exactly."""
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_paddle_flatten(rng, "h"), source)
    code, stdout, stderr = cli(
        "compress", source, "--channels", "0.5", "--input-shape", "x:2x3x2x5", "-o", out
    )
    assert code == 0, stderr
    weights = {t.name: list(t.dims) for t in onnx.load(out).graph.initializer}
    assert weights["w"][0] == 4 and weights["m"] == [4, 4]
    assert "oracle (equal to the original" in stdout
