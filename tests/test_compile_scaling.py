"""Compile time grows linearly with the graph: checked by counting, never by timing.

The ``--channels`` pipeline runs on generated residual chains of two sizes (4x apart); the
expensive whole-graph primitives (shape inference, structure digests, onnxruntime sessions,
name tables) must run as many times on both, and the nodes visited by every graph walk must
grow no faster than the graph. A per-node walk (a quadratic pass) or a per-node shape
inference fails here. The shape-inference fallback's cone (``ir/cone.py``) is checked to compute
what the whole model computes, from a few nodes.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sparsec import api
from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.analysis.shapes import value_shapes
from sparsec.ir import Model, digest, runtime
from sparsec.ir import shapes as ir_shapes
from sparsec.ir.cone import cone
from sparsec.passes import Pipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compile_time import residual_chain  # noqa: E402  (the benchmark's generated graph)


@pytest.fixture
def counts(monkeypatch) -> Counter:
    """Calls of the expensive primitives, and nodes visited by graph walks, while active."""
    counter: Counter = Counter()

    def counted(owner, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counter[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for owner, name in (
        (ir_shapes, "infer"),
        (digest, "structure"),
        (runtime.Session, "__init__"),
        (Model, "values_by_name"),
    ):
        counted(owner, name)
    walk = ir.Graph.__iter__

    def visiting(graph):
        for node in walk(graph):
            counter["node visits"] += 1
            yield node

    monkeypatch.setattr(ir.Graph, "__iter__", visiting)
    return counter


def _compile_counts(nodes: int, counts: Counter) -> tuple[int, Counter]:
    model = residual_chain(nodes, seed=0)
    size = len(model.nodes())
    counts.clear()
    Pipeline(api.channel_passes(0.5), fixed_point=True)(model)
    return size, Counter(counts)


def test_compile_work_grows_linearly_with_the_graph(counts):
    small_nodes, small = _compile_counts(200, counts)
    large_nodes, large = _compile_counts(800, counts)
    assert large_nodes >= 3.5 * small_nodes
    assert small["infer"] > 0 and small["structure"] > 0  # the counters see the pipeline
    for primitive in ("infer", "structure", "__init__", "values_by_name"):  # __init__: sessions
        assert large[primitive] == small[primitive], (primitive, small, large)
    growth = large["node visits"] / small["node visits"]
    assert growth <= 1.1 * large_nodes / small_nodes, (small, large)


def _run_time_expand() -> Model:
    """A symbolic batch, and an Expand whose shape is computed at run time from the batch
    (Shape -> Gather -> Concat -> Reshape -> Equal -> Where), as the legacy exporter writes a
    class token's: the batch is bound, but shape inference does not see through it."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 1, 4] y) {
        h = Relu(x)
        s = Shape(h)
        zero = Constant<value = int64[1] {0}>()
        n = Gather<axis = 0>(s, zero)
        tail = Constant<value = int64[2] {1, 4}>()
        target = Concat<axis = 0>(n, tail)
        flat = Constant<value = int64[1] {-1}>()
        r = Reshape(target, flat)
        minus = Constant<value = int64[3] {-1, -1, -1}>()
        eq = Equal(r, minus)
        ones = Constant<value = int64[3] {1, 1, 1}>()
        shape = Where(eq, ones, r)
        token = Constant<value = float[1, 1, 4] {1, 2, 3, 4}>()
        e = Expand(token, shape)
        one = Constant<value = int64[1] {1}>()
        h3 = Unsqueeze(h, one)
        y = Add(e, h3)
    }
    """
    return Model.from_proto(onnx.parser.parse_model(text))


def test_cone_computes_what_the_whole_model_computes_from_few_nodes():
    model = _run_time_expand()
    model.input_shapes = {"x": (3, 4)}
    inferred = ir_shapes.infer(model, bind_shapes(model))
    assert not all(isinstance(d, int) for d in inferred.get("e") or [None])  # inference: unknown
    shapes = value_shapes(model)
    assert shapes["e"] == (3, 1, 4)  # measured by the fallback, on the cone
    proto = cone(model, ["e", "shape"], shapes)
    assert proto is not None
    ops = [node.op_type for node in proto.graph.node]
    assert "Relu" not in ops and "Shape" not in ops  # stopped at Shape(h): h's shape is known
    assert not proto.graph.input  # nothing left to feed
    feeds = random_inputs(model, bind_shapes(model), seed=0)
    whole = runtime.session_for(model, extra_outputs=["e", "shape"], optimization="disable")
    expected = whole.run(feeds, ["e", "shape"])
    got = runtime.Session(proto.SerializeToString(), optimization="disable").run(
        feeds, ["e", "shape"]
    )
    for name in ("e", "shape"):
        np.testing.assert_array_equal(got[name], expected[name])


def test_cone_reaches_the_inputs_when_no_shape_is_known():
    model = _run_time_expand()
    proto = cone(model, ["h"], {})
    assert proto is not None
    assert [node.op_type for node in proto.graph.node] == ["Relu"]
    assert [value.name for value in proto.graph.input] == ["x"]
    assert cone(model, ["no such value"], {}) is None


@pytest.mark.skipif(
    not (ROOT / ".cache/timm/vit_tiny_patch16_224_legacy.onnx").exists(),
    reason="needs .cache/timm (models/make_timm_models.py)",
)
def test_cone_probe_gives_the_whole_model_probe_shapes_on_vit():
    model = Model.load(ROOT / ".cache/timm/vit_tiny_patch16_224_legacy.onnx")
    shapes = value_shapes(model)
    whole = runtime.session_for(
        model, extra_outputs=["/Expand_output_0"], optimization="disable", lean=True
    ).run(random_inputs(model, bind_shapes(model), seed=0), ["/Expand_output_0"])
    assert shapes["/Expand_output_0"] == whole["/Expand_output_0"].shape == (1, 1, 192)
