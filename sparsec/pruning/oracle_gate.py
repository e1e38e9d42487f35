"""The oracle gate of a lossy run: the compressed model must equal its masked original.

Invariant: a model is written only when, on the run's inputs, every output of the compressed
model is within ``ORACLE_TOLERANCE``·max |output| of the reference (the original with what was
removed masked out, ``pruning.oracle``). Two refinements keep the gate honest:

- **Quantized activations.** An activation quantizer turns a float-rounding difference into a
  whole step of its scale; when both models quantize the same activations alike, the models are
  also compared with those quantizers bypassed (``oracle.bypass_quantizers``), and that float
  comparison is the gate.
- **Another batch.** The analysis sees a symbolic batch bound to the run's (often 1), and a size-1
  axis is free to every rule; a reshape whose ``-1`` absorbs the batch elsewhere would regroup
  batch and channels at another batch. So when the run fed batch 1 to an input declared with a
  symbolic leading dim, the oracle is checked at batch 2 as well (the second sample drawn with
  the first's mean and spread), provided the reference runs there.
"""

from __future__ import annotations

import math

import numpy as np

from sparsec.errors import InputError, ValidationError
from sparsec.ir import runtime
from sparsec.pruning.oracle import bypass_quantizers, same_quantizers
from sparsec.validate import (
    ORACLE_TOLERANCE,
    Validation,
    oracle_limit_text,
    validate_each,
    worst_output,
)


def run_oracle(reference, model, feeds: dict, label: str) -> Validation:
    """The oracle on ``feeds`` (then at batch 2 when the batch is symbolic and was 1, with the
    same two sessions); raises ``ValidationError`` naming the worst output when the compressed
    model differs.

    ``reference``: the masked original, or a callable building it; a builder is called for each
    comparison and its model dropped once its session exists, so the masked weights are not
    held while onnxruntime runs (``validate``; the inputs are the compressed model's, which
    keeps the original's)."""
    runs = [(feeds, label)]
    wider = second_batch_feeds(model, feeds)
    if wider is not None:
        runs.append((wider, f"{label}, and at batch 2"))
    try:
        results = _compare(reference, model, runs)
    except InputError:  # a model does not run at batch 2 (or at all: then batch 1 says so)
        if wider is None:
            raise
        results = _compare(reference, model, runs[:1])
        if results[0].passed and runtime.runs(_built(reference), wider):
            raise  # the reference runs there: the compressed model fails where it runs
    oracle = results[0]
    if not oracle.passed:
        raise ValidationError(failure_line(oracle))
    if len(results) > 1 and not results[1].passed:
        raise ValidationError(
            failure_line(results[1], where=" at batch 2")
            + "; the analysis saw the symbolic batch as 1: give --input-shape with batch 2 "
            "to analyse the model there"
        )
    return oracle


def _compare(reference, model, runs: list[tuple[dict, str]]) -> list[Validation]:
    """The plain comparisons on each (feeds, label) of ``runs``; those that fail, when both
    models quantize the same activations alike, compared again with those quantizers bypassed,
    their labels keeping the plain gap (reported, since a rounding step flipped by float
    rounding may grow through later layers)."""
    results = _validate(reference, model, runs)
    failed = [index for index, result in enumerate(results) if not result.passed]
    if not failed or not same_quantizers(masked := _built(reference), model):
        return results
    again = [(runs[index][0], _bypass_label(results[index])) for index in failed]
    bypassed = _validate(bypass_quantizers(masked), bypass_quantizers(model), again)
    for index, result in zip(failed, bypassed):
        results[index] = result
    return results


def _bypass_label(plain: Validation) -> str:
    worst = max(plain.outputs, key=lambda o: o.max_abs, default=None)
    gap = "" if worst is None else f" (with them: max abs {worst.max_abs:.3g} on '{worst.name}')"
    return f"{plain.inputs}; activation quantizers bypassed in both models{gap}"


def _built(reference):
    """The masked original itself (``reference`` or what its builder builds)."""
    return reference() if callable(reference) else reference


def _validate(reference, model, runs: list[tuple[dict, str]]) -> list[Validation]:
    return validate_each(
        reference, model, runs, peak_tolerance=ORACLE_TOLERANCE, optimization="basic"
    )


def second_batch_feeds(model, feeds: dict) -> dict | None:
    """``feeds`` grown to batch 2 on every input ``model`` declares with a symbolic leading dim
    and that was fed at batch 1 (float inputs get a second seeded sample with the first's mean
    and spread, others repeat theirs); None when no input qualifies."""
    rng, wider = np.random.default_rng(1), {}
    for value in model.inputs:
        dims, feed = model.shape_dims(value) or [], feeds.get(value.name)
        if not dims or isinstance(dims[0], int) or not isinstance(feed, np.ndarray):
            continue
        if feed.ndim == 0 or feed.shape[0] != 1:
            continue
        other = feed
        if np.issubdtype(feed.dtype, np.floating):
            spread = float(feed.std()) or 1.0
            other = (rng.standard_normal(feed.shape) * spread + float(feed.mean())).astype(
                feed.dtype
            )
        wider[value.name] = np.concatenate([feed, other])
    return {**feeds, **wider} if wider else None


def failure_line(oracle: Validation, where: str = "") -> str:
    """One line naming the output that differs most from the masked original, relative to its
    peak (``where``: the inputs it differs on, when not the run's)."""
    worst = worst_output(oracle.outputs)
    if worst is None:
        return "oracle check failed: the pruned model's outputs do not match its masked original (nothing written)"
    if worst.problem:
        return f"oracle check failed (nothing written): output '{worst.name}': {worst.problem}"
    if not math.isfinite(worst.max_abs):
        return (
            f"oracle check failed (nothing written): output '{worst.name}' is not finite on these inputs, so it "
            "cannot be compared (do the --inputs hold NaN or Inf?)"
        )
    return (
        f"oracle check failed (nothing written): output '{worst.name}' differs from the masked original{where} "
        f"by {worst.max_abs:.3g}, above {oracle_limit_text(worst.max_abs_reference)}"
        + (
            ""
            if where
            else "; a bug in the lossy pass (please report it if the pass is one of sparsec's)"
        )
    )
