"""Shared test helpers: paths to committed models, the CLI fixture, and the names older tests use
for the public testing kit (``sparsec.testing``: ``run_ort``, ``assert_same_outputs``,
``make_model``, ``oracle_error`` are thin uses of it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsec.ir import Model
from sparsec.passes import Pipeline
from sparsec.passes.builtin import cleanup_passes
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.testing import assert_equivalent, run
from sparsec.testing import make_model as make_model  # the tests' name for it
from sparsec.testing import oracle_error as kit_oracle_error

os.environ["SPARSEC_STRICT_RULES"] = (
    "1"  # an axis rule that raises fails the test (not a silent barrier)
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(
    0, str(MODELS)
)  # the model-building scripts (fill_light_models, make_cleanup_model)


def run_ort(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a Model, proto or file in onnxruntime with all graph optimizations disabled."""
    return list(run(model, feeds).values())


def assert_same_outputs(
    reference, candidate, feeds, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    """Every output of ``candidate`` equals the reference's (``sparsec.testing``'s rules)."""
    assert_equivalent(reference, candidate, feeds, rtol=rtol, atol=atol)


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


def compress_report(cli, folder: Path, source, *args: str) -> tuple[int, str, dict]:
    """``sparsec compress SOURCE ARGS -o folder/o.onnx --report folder/r.json --latency-runs 0``
    in-process: (exit code, stderr, the report as JSON, or {} when none was written)."""
    import json

    report = folder / "r.json"
    code, _out, err = cli(
        "compress", str(source), *args, "-o", str(folder / "o.onnx"),
        "--report", str(report), "--latency-runs", "0",
    )  # fmt: skip
    return code, err, json.loads(report.read_text()) if report.exists() else {}


def prune(path_or_model, **options):
    """``channel-prune`` with ``options`` then cleanup, on a path or a Model: (model, result)."""
    model = path_or_model if isinstance(path_or_model, Model) else Model.load(path_or_model)
    result = Pipeline([ChannelPrunePass(**options), *cleanup_passes()], fixed_point=True)(model)
    return model, result


def oracle_error(model: Model, reference: Model, seed: int = 0) -> float:
    """max |pruned − masked original| / max |masked original| over every output; inf when an
    output of either is not finite (``sparsec.testing.oracle_error``)."""
    return kit_oracle_error(model, reference, seed)
