"""onnx-ir's pass contract, as sparsec's passes meet it: both sides' passes run in both sides'
pass managers.

- A sparsec pass *is* an ``onnx_ir.passes.PassBase`` (``sparsec.passes.base`` subclasses
  ``IRPassBase``). Called with an ``onnx_ir.Model`` (or an onnx-ir ``PassResult``), as onnx-ir's
  ``PassManager`` calls it, it runs on ``Model.of`` that model and answers with a
  ``SparsecIRPassResult``: an ``onnx_ir.passes.PassResult`` whose ``model`` is the onnx-ir model (the
  same object for an in-place pass) and which carries the sparsec result's extras (``stats``,
  ``diagnostics``, ``artifacts``, ``reference``) as ``sparsec``.
- An onnx-ir pass that is not a sparsec pass runs on a ``Model`` through ``run_ir_pass``: it
  gets ``model.ir``; an in-place result is the same ``Model`` (its caches see the edits by
  themselves), a functional one is wrapped as a new ``Model`` that keeps the source's path and
  files (so saving it beside its external data still works); a wrapped sparsec pass
  (``functionalize``) hands its sparsec result back with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from sparsec.ir.model import Model

# Typed as Any for sparsec's subclasses: their ``call`` returns sparsec's ``PassResult`` (the
# same ``model`` and ``modified``, plus the extras), which onnx-ir's signature does not name;
# ``PassBase.__call__`` hands onnx-ir callers a real onnx-ir ``PassResult``.
IRPassBase: Any = ir.passes.PassBase
IRPassResult = ir.passes.PassResult
IRPreconditionError = ir.passes.PreconditionError  # an onnx-ir pass refusing the model


@dataclass
class SparsecIRPassResult(ir.passes.PassResult):
    """An onnx-ir ``PassResult`` of a sparsec pass: ``model`` is the onnx-ir model, ``sparsec``
    the sparsec ``PassResult`` (stats, diagnostics, artifacts, reference) it came from."""

    sparsec: Any = None


def as_model(model_or_result: Any) -> tuple[Model, bool]:
    """The ``Model`` a pass runs on, and whether the caller speaks onnx-ir (gave an
    ``onnx_ir.Model`` or an onnx-ir ``PassResult``) and so expects one back."""
    given = model_or_result
    if isinstance(given, IRPassResult):
        given = given.model
    elif hasattr(given, "model") and hasattr(given, "modified"):  # a sparsec PassResult
        given = given.model
    if isinstance(given, ir.Model):
        return Model.of(given), True
    if isinstance(given, Model):
        return given, False
    raise TypeError(
        f"a pass runs on a sparsec.Model or an onnx_ir.Model, not {type(given).__name__}"
    )


def ir_result(result: Any) -> SparsecIRPassResult:
    """A sparsec ``PassResult`` as onnx-ir's pass manager expects it."""
    return SparsecIRPassResult(result.model.ir, result.modified, sparsec=result)


def run_ir_pass(pass_: Any, model: Model) -> tuple[Model, bool, Any]:
    """Run the onnx-ir pass ``pass_`` on ``model``: the model it gives back (the same ``Model``
    when it edited in place), whether it changed anything, and the sparsec result when the
    pass wraps a sparsec one (``functionalize(sparsec pass)``: its stats, oracle reference)."""
    result = pass_(model.ir)
    inner = getattr(result, "sparsec", None)
    if result.model is model.ir:
        return model, bool(result.modified), inner
    produced = Model.of(result.model)
    if produced.path is None:  # a new model: it keeps the source's path and files
        produced.path = model.path
        produced.source_files, produced.source_bytes = set(model.source_files), model.source_bytes
    return produced, bool(result.modified), inner
