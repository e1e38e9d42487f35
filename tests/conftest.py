"""Shared test helpers: paths to committed models, inline graph building, onnxruntime runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.builtin import cleanup_passes
from sparsec.passes.channel_prune import ChannelPrunePass

os.environ["SPARSEC_STRICT_RULES"] = (
    "1"  # an axis rule that raises fails the test (not a silent barrier)
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(
    0, str(MODELS)
)  # the model-building scripts (fill_light_models, make_cleanup_model)


def run_ort(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a proto or a file in onnxruntime with all graph optimizations disabled."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def assert_same_outputs(
    reference, candidate, feeds, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    """Every output of ``candidate`` equals the reference's (numpy.allclose semantics)."""
    expected, actual = run_ort(reference, feeds), run_ort(candidate, feeds)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def make_model(
    nodes, inputs, outputs, initializers=(), opset: int = 17, domains=(), **kwargs
) -> onnx.ModelProto:
    """A checked model from helper pieces (``inputs``/``outputs``: (name, dtype, shape) triples;
    ``domains``: extra opset domains at version 1)."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        list(initializers),
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, **kwargs)
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def cli(capfd):
    """Run the CLI in-process: returns (exit code, stdout, stderr), captured at the file-descriptor
    level, so that a library printing from C++ is caught too."""
    from sparsec.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capfd.readouterr()
        return code, captured.out, captured.err

    return invoke


def prune(path_or_model, **options):
    """``channel-prune`` with ``options`` then cleanup, on a path or a Model: (model, result)."""
    model = path_or_model if isinstance(path_or_model, Model) else Model.load(path_or_model)
    result = Pipeline([ChannelPrunePass(**options), *cleanup_passes()], fixed_point=True)(model)
    return model, result


def oracle_error(model: Model, reference: Model, seed: int = 0) -> float:
    """max |pruned − masked original| / max |masked original| over every output; inf when an
    output of either is not finite (``max`` would skip a NaN)."""
    feeds = random_inputs(reference, bind_shapes(reference), seed)
    worst = 0.0
    for expected, actual in zip(
        run_ort(reference.to_proto(), feeds), run_ort(model.to_proto(), feeds)
    ):
        assert expected.shape == actual.shape
        error = float(np.abs(expected - actual).max() / np.abs(expected).max())
        worst = max(
            worst, error if np.isfinite(error) and np.isfinite(expected).all() else float("inf")
        )
    return worst
