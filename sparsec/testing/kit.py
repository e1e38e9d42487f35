"""Assertions for testing a pass or a model edit: seeded feeds, onnxruntime runs, equivalence and
the exactness oracle. Re-exported by :mod:`sparsec.testing`, whose docstring states what they
guarantee.

One implementation each: feeds are ``analysis.inputs.random_inputs`` (what ``sparsec compress``
validates on), runs are ``ir.runtime`` sessions, the verdict is ``validate.validate`` (its pass
rules: ``atol + rtol·|ref|`` per element, or the oracle's ``max |c − r| ≤ tol · max |r|``);
this module adds only the failure message (which output, how far off, where).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.ir import Model, runtime
from sparsec.pruning.oracle import oracle_gap
from sparsec.results import PassResult
from sparsec.validate import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    ORACLE_TOLERANCE,
    OutputMetrics,
    Validation,
    session,
    validate,
)

ModelLike = Model | onnx.ModelProto | str | os.PathLike
"""A model as the kit takes it: a ``sparsec.Model``, an ``onnx.ModelProto`` or a path."""
Feeds = Mapping[str, Any]


def as_model(model: ModelLike) -> Model:
    """A ``Model`` for a ``Model`` (itself), an ``onnx.ModelProto`` or a path (loaded)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return Model.from_proto(model)
    return Model.load(model)


def random_feeds(
    model: ModelLike, seed: int = 0, batch: int | None = None, shapes: Mapping | None = None
) -> dict[str, np.ndarray]:
    """Seeded inputs for every model input, as ``sparsec compress`` makes them: floats standard
    normal, integer indices within their table, symbolic batch dims 1 (``batch`` when given),
    other symbolic dims ``DEFAULT_SYMBOLIC_DIM``; ``shapes`` ({name: dims}) overrides."""
    m = as_model(model)
    overrides = dict(shapes or {})
    if batch is not None:
        bound = bind_shapes(m)
        for value in m.inputs:
            dims, name = m.shape_dims(value) or [], str(value.name)
            if name not in overrides and dims and not isinstance(dims[0], int):
                overrides[name] = (batch, *bound[name][1:])
    return random_inputs(m, bind_shapes(m, overrides), seed)


def run(model: ModelLike, feeds: Feeds, *, optimization: str = "disable") -> dict[str, Any]:
    """``{output name: value}`` of one onnxruntime CPU run, graph optimizations off by default
    (``optimization``: disable, basic, extended or all)."""
    if isinstance(model, onnx.ModelProto):
        one = runtime.Session(model.SerializeToString(), optimization=optimization)
    else:
        one = session(model if isinstance(model, Model) else Path(model), optimization=optimization)
    return one.run(dict(feeds))


def make_model(
    nodes, inputs, outputs, initializers=(), opset: int = 17, domains=(), **kwargs
) -> onnx.ModelProto:
    """A checked model from ``onnx.helper`` pieces (``inputs``/``outputs``: (name, elem type,
    shape) triples; ``domains``: extra opset domains at version 1)."""
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


# ---------------------------------------------------------------- equivalence
def assert_equivalent(
    reference: ModelLike,
    candidate: ModelLike,
    feeds: Feeds | None = None,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    peak: float | None = None,
    seed: int = 0,
    batch: int | None = None,
    optimization: str = "disable",
    context: str = "",
) -> list[OutputMetrics]:
    """Run both models on the same feeds (``random_feeds(reference, seed, batch)`` unless
    given) and assert every output matches: per element ``|c − r| ≤ atol + rtol·|r|``, or with
    ``peak`` the oracle's rule ``max |c − r| ≤ peak · max |r|``. Outputs pair by name (by
    position when the names differ). Non-finite values never match. Returns the per-output
    metrics; the ``AssertionError`` names the output, the max abs error, where, and both values."""
    ref, cand = as_model(reference), as_model(candidate)
    if feeds is None:
        feeds = random_feeds(ref, seed, batch)
    verdict = validate(
        ref,
        cand,
        dict(feeds),
        inputs_label="given feeds",
        rtol=rtol,
        atol=atol,
        latency_runs=0,
        peak_tolerance=peak,
        optimization=optimization,
    )
    if not verdict.passed:
        line = _failure(verdict, ref, cand, feeds, peak, optimization)
        raise AssertionError(f"{context}: {line}" if context else line)
    return verdict.outputs


def _failure(verdict: Validation, ref, cand, feeds, peak, optimization: str) -> str:
    """The failure line: the worst output, its error, the index of the error and both values."""
    failed = [o for o in verdict.outputs if not o.passed]
    if not failed or any(o.problem for o in failed):
        return f"models differ: {verdict.failure_line()}"
    worst = max(failed, key=lambda o: o.max_abs)
    rule = (
        f"allowed {peak:g} · max |ref| = {peak * worst.max_abs_reference:.3g}"
        if peak is not None
        else f"allowed atol {verdict.atol:g} + rtol {verdict.rtol:g}·|ref|"
    )
    where = _where(worst.name, ref, cand, feeds, optimization)
    return (
        f"models differ on output '{worst.name}' ({len(failed)} of {len(verdict.outputs)} "
        f"outputs fail): max abs error {worst.max_abs:.4g}{where}; {rule}"
    )


def _where(name: str, ref, cand, feeds, optimization: str) -> str:
    """`` at index (i, j, ...): reference r, candidate c`` for a tensor output (else '')."""
    wanted, gotten = (run(m, feeds, optimization=optimization) for m in (ref, cand))
    want = wanted[name]
    position = list(wanted).index(name)  # paired by position when the names differ
    got = gotten.get(name, list(gotten.values())[position] if position < len(gotten) else None)
    if not isinstance(want, np.ndarray) or not isinstance(got, np.ndarray):
        return ""
    error = np.abs(want.astype(np.float64) - got.astype(np.float64))
    index = np.unravel_index(int(np.argmax(error)), error.shape)
    where = tuple(int(i) for i in index)
    return f" at index {where}: reference {want[index]:.6g}, candidate {got[index]:.6g}"


# ---------------------------------------------------------------- passes
def assert_pass_exact(
    pass_,
    model: ModelLike,
    *,
    feeds: Feeds | None = None,
    seed: int = 0,
    batch: int | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    oracle_tolerance: float = ORACLE_TOLERANCE,
) -> PassResult:
    """Run ``pass_`` (a sparsec or onnx-ir pass object, or a registered name for
    ``sparsec.create``) on a copy of ``model`` and assert its output is valid and exact: it
    passes the ONNX checker's full check, and it matches its oracle ``reference`` (a pruning
    pass: the masked original, within ``oracle_tolerance`` · max |output|) or, when the pass
    gives none, the original model itself (``rtol``/``atol``). ``model`` is never modified.
    Returns the ``PassResult`` (stats, diagnostics, the output model) for the test's asserts."""
    if isinstance(pass_, str):
        from sparsec.passes import create

        pass_ = create(pass_)
    original = as_model(model)
    if feeds is None:
        feeds = random_feeds(original, seed, batch)
    result = _run_pass(pass_, _private_copy(original))
    label = f"pass '{getattr(pass_, 'name', type(pass_).__name__)}'"
    problem = result.model.check()
    if problem is not None:
        raise AssertionError(f"{label}: its output fails the ONNX checker: {problem}")
    if result.reference is not None:
        reference = result.reference()
        context = f"{label}: its output differs from its oracle reference (the masked original)"
        assert_equivalent(reference, result.model, feeds, peak=oracle_tolerance, context=context)
    else:
        context = f"{label} gives no oracle reference, so it must keep the outputs, but"
        assert_equivalent(original, result.model, feeds, rtol=rtol, atol=atol, context=context)
    return result


def _private_copy(model: Model) -> Model:
    """A copy of ``model`` whose weights are its own (``Model.copy`` shares them), so that a
    pass writing into a weight array in place cannot change the original it is checked against."""
    copy = model.copy()
    for value in copy.initializers().values():
        array = copy.constant(value)
        if array is not None:
            copy.resize_initializer(value, np.array(array, copy=True))
    return copy


def _run_pass(pass_, model: Model) -> PassResult:
    """``prepare`` (when the pass has one) then the pass itself, as a ``Pipeline`` runs it (an
    onnx-ir pass wrapped in ``IRPass``, as a ``Pipeline`` adopts it)."""
    from sparsec.passes import IRPass, PassBase

    if not isinstance(pass_, PassBase):
        pass_ = IRPass(pass_)
    prepare = getattr(pass_, "prepare", None)
    if prepare is not None:
        prepare(model)
    result = pass_(model)
    if not isinstance(result, PassResult) or not isinstance(result.model, Model):
        raise TypeError(
            f"{type(pass_).__name__} returned {type(result).__name__}, not a sparsec PassResult"
        )
    return result


def oracle_error(model: ModelLike, reference: ModelLike, seed: int = 0) -> float:
    """The oracle's measure: max |model − reference| / max |reference| over every output on
    ``random_feeds(reference, seed)``; inf when a value is not finite or a shape differs."""
    ref = as_model(reference)
    return oracle_gap(as_model(model), ref, random_feeds(ref, seed))
