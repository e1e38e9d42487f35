"""The refit driver: ``recover`` refits, round after round, the layers a cut left (``layers``)
on calibration data, against the original model's outputs of the same nodes.

Invariants: no shape, dtype or graph structure changes, only weight and bias values; zeros stay
where they are (``reselect`` moves an N:M weight's zeros within its runs); a refit that does not
lower its layer's calibration error is not applied; each round captures the pruned model and the
original once, each from its frontier (the values earlier rounds left final). The algebra and
its measurements: docs/recovery.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sparsec.analysis.activations import Frontier, padding_mask
from sparsec.errors import InputError
from sparsec.pruning.plans import source
from sparsec.pruning.recovery.layers import find_layers, stages
from sparsec.pruning.recovery.ridge import DEFAULT_RIDGE, ChannelNormal, Normal
from sparsec.pruning.recovery.sparsegpt import OriginalWeights, reselected
from sparsec.pruning.recovery.views import Layer, input_rows, matrix, store
from sparsec.pruning.suffix import output_errors
from sparsec.results import Diagnostic, stage


def recover(
    pruned,
    original,
    samples: dict[str, np.ndarray],
    plan: dict | None = None,
    *,
    ridge: float | None = None,
    batch_size: int = 16,
    progress=None,
    mask: str | None = None,
    reselect: dict[str, tuple[int, int]] | None = None,
    drifted: set[str] | None = None,
) -> dict:
    """Refit ``pruned`` in place against ``original`` (the model right before pruning, same
    names) on ``samples``; ``plan`` is the channel plan (``surgery.plan_json``), None after
    weight sparsity; ``drifted``: values whose readers read something else than in the original
    (``layers.find_layers``). Returns the per-layer and model-output calibration errors (relative:
    ‖Y − Y*‖² / ‖Y*‖²), the refit layers and the skipped ones with their reason. ``ridge``
    None chooses each layer's ridge by cross-validation (``Normal.chosen_ridge``)."""
    layers, skipped = find_layers(pruned, original, plan, drifted)
    originals = OriginalWeights(original) if reselect else None
    unfitted = pruned.copy() if layers else pruned  # shares the tensors a refit replaces
    frontiers = (
        Frontier(pruned, stages(pruned, layers)),
        Frontier(original, stages(original, layers)),
    )
    rows: list[dict] = []
    count = max((layer.round for layer in layers), default=0)
    for number in stage(range(1, count + 1), desc="recover", unit="round"):
        group = [layer for layer in layers if layer.round == number]
        if progress is not None:
            progress(f"recover: round {number}/{count}, {len(group)} layer(s)")
        normals = _accumulate(frontiers, group, number, samples, batch_size, mask)
        for layer, normal in zip(group, normals):
            old = matrix(pruned, layer)
            chosen = normal.chosen_ridge(old, DEFAULT_RIDGE) if ridge is None else ridge
            rows.append(
                _refit(
                    pruned,
                    layer,
                    old,
                    normal,
                    chosen,
                    reselected(originals, layer, normal, chosen, reselect),
                )
            )
    before, after = (
        output_errors([unfitted, pruned], original, samples, batch_size)
        if layers
        else [output_error(pruned, original, samples, batch_size)] * 2
    )
    return {
        "layers_refit": sum(row["refit"] for row in rows),
        "layers_kept": sum(not row["refit"] for row in rows),
        "layers_skipped": len(skipped),
        "rounds": count,
        "output_error_before": before,
        "output_error_after": after,
        "layers": rows,
        "skipped": skipped,
    }


def recover_result(
    result,
    original,
    samples: dict[str, np.ndarray],
    plan: dict | None,
    *,
    batch_size: int = 16,
    progress=None,
    reselect: dict[str, tuple[int, int]] | None = None,
    drifted: set[str] | None = None,
) -> dict:
    """Refit ``result.model`` (a pruning pass's output) against ``original`` and fold the report
    into the ``PassResult``: numbers in ``stats``, one info line, the refit-aware oracle
    ``reference`` and the full report as the ``recovery`` artifact (also returned)."""
    mask = padding_mask(original)
    report = recover(
        result.model,
        original,
        samples,
        plan,
        batch_size=batch_size,
        progress=progress,
        mask=mask,
        reselect=reselect,
        drifted=drifted,
    )
    result.stats.update(
        {
            "layers_refit": report["layers_refit"],
            "calibration_error_before": report["output_error_before"],
            "calibration_error_after": report["output_error_after"],
        }
    )
    result.diagnostics.append(
        Diagnostic(
            "info",
            "recover.refit",
            f"refit {report['layers_refit']} layer(s) ({report['layers_skipped']} skipped): "
            f"calibration output error {report['output_error_before']:.4g} -> {report['output_error_after']:.4g} "
            "(relative, squared)" + (f"; positions where '{mask}' is 0 not fitted" if mask else ""),
        )
    )
    arrays = refit_arrays(result.model, report)
    carry_values(result, arrays, plan)
    result.artifacts["recovery"] = report
    result.artifacts["refit"] = {
        "arrays": arrays,
        "sources": {name: source(result.model, name) for name in arrays},
    }
    return report


def refit_arrays(pruned, report: dict) -> dict[str, np.ndarray]:
    """The values of every weight and bias the refit changed in ``pruned``, by name."""
    values = pruned.values_by_name()
    return {
        name: pruned.constant(values[name])
        for row in report["layers"]
        if row["refit"]
        for name in (row["weight"], row["bias"])
        if name
    }


def carry_values(result, arrays: dict[str, np.ndarray], plan: dict | None) -> None:
    """Put values a recovery changed (``arrays``) into the result's oracle ``reference`` and
    ``replay``, at the positions ``plan`` kept: both then build what the pruned model holds."""
    if result.reference is not None:
        result.reference = refit_reference(result.reference, arrays, plan)
    if result.replay is not None:
        result.replay = refit_replay(result.replay, arrays, plan)


def refit_reference(
    build: Callable[..., Any], arrays: dict[str, np.ndarray], plan: dict | None
) -> Callable[..., Any]:
    """The exactness oracle after a refit: the masked original (``build()``) with every refit
    weight and bias (``arrays``, from ``refit_arrays``) put back at the positions it kept
    (``plan``), zeros at the removed ones (which the masked original zeroes anyway). A refit
    changes values, never structure, so the pruned model still equals this reference exactly."""

    def build_refit(**options):  # options: the builder's own (``plain``)
        reference = build(**options)
        targets = reference.values_by_name()
        for name, array in arrays.items():
            full = np.zeros(reference.constant_shape(targets[name]), dtype=array.dtype)
            index = [np.arange(size) for size in full.shape]
            for entry in (plan or {}).get("initializers", {}).get(name, []):
                index[entry["axis"]] = np.asarray(entry["kept"], dtype=np.int64)
            full[np.ix_(*index)] = array
            reference.set_constant(targets[name], full)
        return reference

    return build_refit


def refit_replay(
    replay: Callable[..., Any], arrays: dict[str, np.ndarray], plan: dict | None
) -> Callable[..., Any]:
    """``replay`` (a cut applied by name to another model) followed by the refit weights, as
    ``refit_reference`` puts them into the reference."""
    return lambda model, **options: refit_reference(
        lambda **inner: replay(model, **inner), arrays, plan
    )(**options)


def output_error(model, original, samples, batch_size: int = 16) -> float:
    """‖model − original‖² / ‖original‖² over every graph output and calibration sample
    (``suffix.output_errors``: an edited copy of ``original`` runs from its cut)."""
    return output_errors([model], original, samples, batch_size)[0]


def _accumulate(
    frontiers: tuple[Frontier, Frontier],
    group: list[Layer],
    number: int,
    samples,
    batch_size: int,
    mask: str | None = None,
) -> list[Normal]:
    """One capture of the pruned model (the layers' inputs) and the original (their targets),
    each from its frontier of the earlier rounds (round ``number``).
    With ``mask`` (an input [batch, positions] such as an attention mask), rows of activations
    laid out [batch, positions, ...] count only where it is nonzero (padding is not fitted)."""
    normals = [ChannelNormal() if layer.norm else Normal(layer.bias is not None) for layer in group]
    residuals = [layer.residual for layer in group if layer.residual]
    pruned, original = frontiers
    inputs = pruned.capture(
        samples,
        [layer.x for layer in group] + residuals + ([mask] if mask else []),
        batch_size,
        number,
        desc=f"recover round {number}",
    )
    targets = original.capture(samples, [layer.target for layer in group], batch_size, number)
    for batch, (xs, ys) in enumerate(zip(inputs, targets)):
        for layer, normal in zip(group, normals):
            y = _target(layer, np.asarray(ys[layer.target]), xs.get(layer.residual))
            x, y = _masked_rows(np.asarray(xs[layer.x]), y, xs.get(mask), layer)
            step = _samples_at_once(pruned.model, layer, x, y)
            for start in range(0, len(x), step):
                end = start + step
                rows, wanted = (
                    input_rows(pruned.model, layer, x[start:end]),
                    y[start:end].reshape(-1, y.shape[-1]),
                )
                if len(rows) != len(wanted):
                    raise InputError(
                        f"recover: '{layer.name}' reads {len(rows)} rows of '{layer.x}' but its target "
                        f"'{layer.target}' has {len(wanted)}"
                    )
                normal.add(rows, wanted, batch)
    return normals


IM2COL_BYTES = 32 << 20  # a Conv's im2col rows built at once (as float64, what the normal reads)


def _samples_at_once(model, layer: Layer, x: np.ndarray, y: np.ndarray) -> int:
    """Samples whose rows go to one ``Normal.add``: the whole batch, a Conv's im2col only up to
    ``IM2COL_BYTES`` (one sample at least). Each add also sums a [K, K] Gram matrix into the
    normal: per sample, on a conv reading few positions with many taps (K = 2880 at 40 rows),
    that sum, not the product, was the cost."""
    if not layer.conv or len(x) < 2:
        return max(len(x), 1)
    taps = x.shape[1] * int(np.prod(model.constant_shape(layer.weight)[2:]))
    rows = int(np.prod(y.shape[1:-1]))  # output positions per sample
    return int(np.clip(IM2COL_BYTES // max(8 * rows * (taps + 1), 1), 1, len(x)))


def _target(layer: Layer, y: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
    """Y* with its channels last, the ones the pruned layer computes, less the pruned model's
    residual when the layer is aimed at a residual sum."""
    channels = y.shape[layer.channel_axis]
    if channels != layer.full:
        raise InputError(
            f"recover: the original's '{layer.target}' has {channels} channels, "
            f"the plan says {layer.full} for '{layer.weight.name}'"
        )
    y = np.moveaxis(y, layer.channel_axis, -1)
    y = y if layer.kept is None else y[..., layer.kept]
    if residual is None:
        return y
    residual = np.asarray(residual)
    residual = residual.reshape(
        (1,) * (y.ndim - residual.ndim) + residual.shape
    )  # broadcasting aligns right
    try:
        return y - np.broadcast_to(np.moveaxis(residual, layer.channel_axis, -1), y.shape)
    except ValueError:
        raise InputError(
            f"recover: residual '{layer.residual}' {residual.shape} does not broadcast to the "
            f"output of '{layer.name}'"
        ) from None


def _masked_rows(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None, layer: Layer):
    """x and y restricted to the positions ``mask`` keeps, when both are laid out like it."""
    if (
        mask is None
        or layer.channel_axis != -1
        or x.shape[: mask.ndim] != mask.shape
        or y.shape[: mask.ndim] != mask.shape
    ):
        return x, y
    keep = np.asarray(mask) != 0
    return x[keep][None], y[keep][None]


def _refit(
    model,
    layer: Layer,
    old: np.ndarray,
    normal: Normal,
    ridge: float,
    candidate: np.ndarray | None = None,
) -> dict:
    """Solve the layer's ridge problem for ``old`` (its weights as ``matrix``) or take
    ``candidate``, a refit over a new mask, when it is better; apply it when it lowers the
    calibration error."""
    new = normal.solve(old, ridge)
    if candidate is not None and normal.error(candidate) < normal.error(new):
        new = candidate
    scale = normal.yy or 1.0
    before, after = normal.error(old) / scale, normal.error(new) / scale
    refit = before > 1e-12 and after < before * (1 - 1e-6)  # float noise is not an improvement
    if refit:
        store(model, layer, new)
    bias = layer.bias.name if layer.bias is not None else None
    return {
        "node": layer.name,
        "weight": layer.weight.name,
        "bias": bias,
        "round": layer.round,
        "refit": refit,
        "ridge": ridge,
        "error_before": before,
        "error_after": after if refit else before,
        "error_refit": after,
    }
