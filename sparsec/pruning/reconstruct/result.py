"""Block reconstruction inside a pruning pass: ``reconstructed(recover, model, samples, run)``
runs the pass's cut (``run(samples)``, which does the layer refit as before) and then, with
``recover == "block"`` and calibration samples, ``reconstruct_result`` against the model as it
was before the pass (the dense values). Every ``HELD_OUT``-th sample is then held out of the
cut (``reconstruct.held_out``): the layer refit fits the samples it sees (on MiniLM at
``--heads 0.5 --ffn 0.5`` with 256 sentences, output error 0.12 on them, 0.27 on others), so
the block fit's early stopping and the choice between the two fits are measured on samples
neither fit saw (with a single sample or batch there are none to spare: both use the same
ones). The result's oracle reference gets the fitted values the way it gets refit ones
(``recovery.refit_reference``): reconstruction changes values, never structure, so the pruned
model still equals its reference exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from sparsec.analysis.activations import fixed_batch, padding_mask
from sparsec.pruning.plans import source
from sparsec.pruning.reconstruct.reconstruct import held_out, reconstruct, require_torch
from sparsec.pruning.recovery.refit import carry_values, output_error
from sparsec.results import Diagnostic, PassResult


def reconstructed(
    recover,
    model,
    samples,
    run: Callable[[dict | None], PassResult],
    *,
    batch_size: int = 16,
    seed: int = 0,
) -> PassResult:
    """``run(samples)`` (the cut and its layer refit), then block reconstruction when
    ``recover`` is ``"block"`` and ``samples`` are given (the cut then runs on the samples
    but the held-out ones)."""
    if recover != "block" or samples is None:
        return run(samples)
    require_torch()  # before the cut: one line when the extra is missing
    original = model.copy()
    seen, held = held_out(samples, fixed_batch(model) or 1)  # whole batches of a fixed one
    result = run(seen)
    if result.modified:
        reconstruct_result(result, original, seen, held, batch_size=batch_size, seed=seed)
    return result


def reconstruct_result(
    result: PassResult, original, samples, held, *, batch_size: int = 16, seed: int = 0
) -> dict:
    """Reconstruct ``result.model`` against ``original`` on ``samples`` (early stopping on
    ``held``) and fold the report into the result: numbers in ``stats``, one info line, the
    oracle ``reference`` and ``replay`` with the fitted values, the ``refit`` artifact extended,
    the report as the ``reconstruction`` artifact."""
    before = result.stats.get("calibration_error_after")
    if before is None:
        before = output_error(result.model, original, samples, batch_size)
    layer_held = output_error(result.model, original, held, batch_size)
    unfitted = result.model.copy()  # shares the tensors the fit replaces: no weight bytes
    report = reconstruct(
        result.model,
        original,
        samples,
        held=held,
        batch_size=batch_size,
        seed=seed,
        mask=padding_mask(original),
        plan=result.artifacts.get("plan"),
    )
    after = output_error(result.model, original, samples, batch_size)
    block_held = output_error(result.model, original, held, batch_size)
    report.update(held_error_layer=layer_held, held_error_block=block_held)
    report["held_is_fitted"] = held is samples  # held_out had none to spare
    if report["arrays"] and block_held >= layer_held:  # worse held out: keep the layer refit
        _restore(result.model, unfitted, report["arrays"])
        report.update(arrays={}, reverted=block_held)  # the rejected fit's error, for the line
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
        f"(block; relative, squared), on {_held_text(report)} {report['held_error_layer']:.4g} "
        f"(layer refit) -> {report['held_error_block']:.4g} (block)"
        + (
            f"; the block fit raised the held-out error to {report['reverted']:.4g}, so the "
            "layer refit is kept"
            if report.get("reverted") is not None
            else ""
        ),
    )


def _held_text(report: dict) -> str:
    """What the held-out errors were measured on."""
    if report.get("held_is_fitted"):
        return "the fitted samples (too few calibration samples to hold any out: give more)"
    return "held-out samples"


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
