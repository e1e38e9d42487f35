"""What ``sparsec.ir`` promises about onnx-ir: public names only, and the onnx calls it makes on
a model leave the model as it was."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import TensorProto, helper

import sparsec
from sparsec.ir.onnx_api import LIGHT_TENSOR_BYTES, call_onnx_api

CHECKED = sorted([*(ROOT / "sparsec").rglob("*.py"), *(ROOT / "passes").glob("*.py")])


def _private_onnx_ir_uses(path: Path) -> list[str]:
    """``onnx_ir`` modules or attributes with a ``_``-prefixed part that ``path`` imports or reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    aliases, found = {"onnx_ir"}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "onnx_ir":
                    aliases.add(alias.asname or "onnx_ir")
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(f"{path.name}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "onnx_ir":
            parts = [*node.module.split("."), *(alias.name for alias in node.names)]
            if any(part.startswith("_") for part in parts):
                found.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_uses_a_private_onnx_ir_module(path):
    assert _private_onnx_ir_uses(path) == []


def test_the_check_catches_a_private_import(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text(
        "import onnx_ir as ir\nfrom onnx_ir.passes.common import _c_api_utils\nir._core.Node\n"
    )
    assert len(_private_onnx_ir_uses(source)) == 2


def _weighted_model():
    big = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)  # 16 KB: lifted out for the call
    small = np.ones(4, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "big"], ["h"]),
            helper.make_node("Add", ["h", "h"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(big, "big"), onnx.numpy_helper.from_array(small, "small")],
    )
    return sparsec.Model.from_proto(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def _state(model):
    graph = model.ir.graph
    return (
        [v.name for v in graph.inputs],
        list(graph.initializers),
        [(v.const_value is not None, v.shape, v.type) for v in graph.initializers.values()],
    )


@pytest.mark.parametrize("fails", [False, True])
def test_call_onnx_api_sees_no_large_tensor_data_and_leaves_the_model_as_it_was(fails):
    model = _weighted_model()
    before, seen = _state(model), {}

    def inspect(proto: onnx.ModelProto):
        seen["inputs"] = [i.name for i in proto.graph.input]
        seen["data"] = {
            t.name: len(t.raw_data) + 4 * len(t.float_data) for t in proto.graph.initializer
        }
        if fails:
            raise RuntimeError("the onnx call failed")
        return "result"

    if fails:
        with pytest.raises(RuntimeError, match="the onnx call failed"):
            call_onnx_api(inspect, model.ir)
    else:
        assert call_onnx_api(inspect, model.ir) == "result"
    assert seen["inputs"] == ["x", "big", "small"]  # every initializer is typed as an input
    assert "big" not in seen["data"] and 0 < seen["data"]["small"] <= LIGHT_TENSOR_BYTES
    assert _state(model) == before
    assert model.check() is None
    assert np.array_equal(
        model.constant(model.value("big")), np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    )
