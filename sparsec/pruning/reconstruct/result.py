"""Block reconstruction inside a pruning pass: ``reconstructed(recover, model, samples, run)``
runs the pass's cut (``run()``, which does the layer refit as before) and then, with
``recover == "block"`` and calibration samples, ``reconstruct_result`` against the model as it
was before the pass (the dense values). The result's oracle reference gets the fitted values
the way it gets refit ones (``recovery.refit_reference``): reconstruction changes values,
never structure, so the pruned model still equals its reference exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from sparsec.analysis.activations import padding_mask
from sparsec.pruning.plans import source
from sparsec.pruning.reconstruct.reconstruct import reconstruct, require_torch
from sparsec.pruning.recovery.refit import carry_values, output_error
from sparsec.results import Diagnostic, PassResult


def reconstructed(
    recover, model, samples, run: Callable[[], PassResult], *, batch_size: int = 16, seed: int = 0
) -> PassResult:
    """``run()`` (the cut and its layer refit), then block reconstruction when ``recover`` is
    ``"block"`` and ``samples`` are given."""
    if recover != "block" or samples is None:
        return run()
    require_torch()  # before the cut: one line when the extra is missing
    original = model.copy()
    result = run()
    if result.modified:
        reconstruct_result(result, original, samples, batch_size=batch_size, seed=seed)
    return result


def reconstruct_result(
    result: PassResult, original, samples, *, batch_size: int = 16, seed: int = 0
) -> dict:
    """Reconstruct ``result.model`` against ``original`` and fold the report into the result:
    numbers in ``stats``, one info line, the oracle ``reference`` and ``replay`` with the fitted
    values, the ``refit`` artifact extended, the report as the ``reconstruction`` artifact."""
    before = result.stats.get("calibration_error_after")
    if before is None:
        before = output_error(result.model, original, samples, batch_size)
    unfitted = result.model.copy()  # shares the tensors the fit replaces: no weight bytes
    report = reconstruct(
        result.model,
        original,
        samples,
        batch_size=batch_size,
        seed=seed,
        mask=padding_mask(original),
        plan=result.artifacts.get("plan"),
    )
    after = output_error(result.model, original, samples, batch_size)
    if report["arrays"] and after >= before:  # worse for the whole model: keep the layer refit
        _restore(result.model, unfitted, report["arrays"])
        report.update(arrays={}, reverted=after)  # the rejected fit's error, for the line
        for row in report["regions"]:
            row["fitted"] = False
        after = before
    fitted = sum(row["fitted"] for row in report["regions"])
    result.stats.update({"regions_reconstructed": fitted, "calibration_error_after": after})
    result.stats.setdefault("calibration_error_before", before)
    result.diagnostics.append(
        _line(report, fitted, result.stats["calibration_error_before"], before, after)
    )
    _carry(result, report["arrays"])
    result.artifacts["reconstruction"] = {k: v for k, v in report.items() if k != "arrays"}
    return report


def _restore(model, unfitted, arrays: dict) -> None:
    """Put back, in ``model``, the values ``unfitted`` (its copy from before the fit) holds."""
    values, old = model.values_by_name(), unfitted.values_by_name()
    for name in arrays:
        model.set_constant(values[name], unfitted.constant(old[name]))


def _line(report: dict, fitted: int, first: float, layer: float, after: float) -> Diagnostic:
    skipped = report["skipped"]
    reasons = sorted({row["reason"] for row in skipped})
    return Diagnostic(
        "info",
        "recover.block",
        f"recovery: block reconstruction of {fitted}/{len(report['regions'])} region(s)"
        + (f" ({len(skipped)} not translatable: {'; '.join(reasons)})" if skipped else "")
        + f": calibration output error {first:.4g} -> {layer:.4g} (layer refit) -> {after:.4g} "
        "(block; relative, squared)"
        + (
            f"; the block fit raised it to {report['reverted']:.4g}, so the layer refit is kept"
            if report.get("reverted") is not None
            else ""
        ),
    )


def _carry(result: PassResult, arrays: dict) -> None:
    """Put the fitted values into the reference, the replay and the ``refit`` artifact."""
    if not arrays:
        return
    plan = result.artifacts.get("reference_plan", result.artifacts.get("plan"))  # see schedule
    carry_values(result, arrays, plan)
    refit = result.artifacts.setdefault("refit", {"arrays": {}, "sources": {}})
    refit["arrays"] = {**refit["arrays"], **arrays}
    refit["sources"] = {
        **refit["sources"],
        **{name: source(result.model, name) for name in arrays},
    }
