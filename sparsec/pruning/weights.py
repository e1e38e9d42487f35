"""Weight sparsity's decisions (``weight-sparsity``): N:M, unstructured and block masks on compute
weights as functions of ``WeightOptions``; zeros stay in the dense tensors.

Sites come from ``sparsec.analysis.weight_sites`` (the constant operands of Conv,
ConvTranspose, Gemm and MatMul, with their reduction axis; with ``embeddings=True`` also the
tables read by Gather, grouped along each gathered row). Invariants:
- ``nm="N:M"``: along the reduction axis, every run of M consecutive weights keeps its N
  largest scores; a weight whose reduction length M does not divide is skipped and reported;
- ``ratio=R`` (unstructured): ``round(R·size)`` weights of each tensor are zeroed (``local``),
  or ``round(R·total)`` over all sites together (``global``);
- ``ratio=R, block="RxC"``: the weight seen as [rows, K] (K the reduction axis) is cut into
  R×C blocks; whole blocks are zeroed, lowest mean |w| first (local or global); a weight
  whose shape the block does not tile is skipped and reported;
- a weight shared by several nodes is one site, pruned once; ``exclude`` (``|``-separated globs,
  ``sparsec.pruning.exclude``) leaves dense, and reports, every weight whose name or a node
  reading it matches;
- scores: ``magnitude`` (|w|) or ``wanda`` (|w_ij|·‖x_j‖, x_j the input channel w_ij reduces
  over, from ``calibration`` samples captured in batches; unstructured Wanda compares within
  each output row); ``wanda`` without calibration data is refused; ``sparsegpt`` (N:M only, with
  calibration and recovery): Wanda's mask first, then each layer's mask chosen again in the
  refit, in graph order, by SparseGPT's sweep over the pruned model's own inputs.
A quantized weight (an int8/uint8 initializer read through ``DequantizeLinear``) stays quantized:
it is scored by its dequantized values and its dropped entries are set to its zero point, which
dequantizes to exactly 0.0 (the pattern a sparse int8 kernel such as TensorRT's 2:4 reads); the
refit leaves it alone (it fits float weights only).
Sparsifying only multiplies weights by 0/1 masks: the result is its own oracle reference (the
sparse-encoded formats of a later pass must equal it bit for bit). With ``calibration`` (and
``recover``, on by default) the masked layers are then refit by least squares with their zeros
kept (``recovery``: the SparseGPT idea, a mask plus an update of the kept weights from the
calibration Gram matrix, solved exactly per output column); the reference carries the refit
weights. Scores may then be ``magnitude`` or ``wanda`` alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sparsec.analysis.activations import weight_input_norms
from sparsec.analysis.quantized import dequantized, zero_points
from sparsec.analysis.weight_sites import WeightSite, weight_sites
from sparsec.pruning.exclude import excluded_by, unmatched_warnings
from sparsec.pruning.recovery import recover_result
from sparsec.results import Diagnostic, PassError, PassResult, progress


@dataclass
class WeightOptions:
    """How to choose and zero weights (``weight-sparsity``'s options; ``WeightSparsityPass``
    says what each means)."""

    nm: str = ""
    ratio: float = 0.0
    block: str = ""
    scope: str = "local"
    embeddings: bool = False
    score: str = "magnitude"
    calibration: str = ""
    batch_size: int = 16
    recover: bool = True
    exclude: str = ""

    def nm_pair(self) -> tuple[int, int] | None:
        return parse_nm(self.nm)

    def block_shape(self) -> tuple[int, int] | None:
        match = re.fullmatch(r"(\d+)x(\d+)", self.block.strip())
        return (
            (int(match[1]), int(match[2]))
            if match and int(match[1]) > 0 and int(match[2]) > 0
            else None
        )

    def pattern(self) -> str:
        if self.nm:
            return f"{self.nm}"
        return (
            f"block {self.block} {self.ratio:g}" if self.block else f"unstructured {self.ratio:g}"
        )


def check(options: WeightOptions) -> None:
    """Refuse option values that cannot run, with a ``PassError`` naming the option."""
    if bool(options.nm) == bool(options.ratio):
        raise PassError(
            "weight-sparsity: give either nm='N:M' or ratio=R (with an optional block='RxC')"
        )
    if options.nm and (options.nm_pair() is None):
        raise PassError(
            f"weight-sparsity: nm must be N:M with 0 < N < M <= 256, got '{options.nm}'"
        )
    if options.ratio and not 0 < options.ratio < 1:
        raise PassError(f"weight-sparsity: ratio must be in (0, 1), got {options.ratio}")
    if options.block and (options.block_shape() is None or options.nm):
        raise PassError(
            "weight-sparsity: block must be RxC with positive R, C (and only with ratio), "
            f"got '{options.block}'"
        )
    if options.scope not in ("local", "global"):
        raise PassError(f"weight-sparsity: scope must be local or global, got '{options.scope}'")
    if options.score in ("wanda", "sparsegpt") and not options.calibration:
        raise PassError(
            f"weight-sparsity: score '{options.score}' needs calibration data: --calibration DATA"
        )
    if options.score not in ("magnitude", "wanda", "sparsegpt"):
        raise PassError(
            f"weight-sparsity: unknown score '{options.score}'; known: magnitude, wanda, sparsegpt"
        )
    if options.score == "sparsegpt" and (not options.nm or not options.recover):
        raise PassError(
            "weight-sparsity: score 'sparsegpt' chooses N:M masks during the refit: it needs nm='N:M' "
            "and recovery on"
        )


def sparsify(model, options: WeightOptions, samples) -> PassResult:
    """Zero ``model``'s weights by ``options`` (then, with ``samples`` and ``options.recover``,
    refit the masked layers); the result is its own oracle reference."""
    sites, conflicts = weight_sites(model, embeddings=options.embeddings, quantized=True)
    skipped, notes = (
        dict(conflicts),
        unmatched_warnings(options.exclude, model, "sparsity.exclude-unmatched"),
    )
    protected = {s.name: excluded_by(options.exclude, [s.name, *s.nodes]) for s in sites}
    skipped.update({name: reason for name, reason in protected.items() if reason})
    sites = [s for s in sites if not protected[s.name]]
    original = model.copy() if samples is not None and options.recover else None
    norms = _activation_norms(
        model, options, sites, samples, notes
    )  # before any weight is read: a session may
    tensors = _mask(
        model, options, sites, norms, skipped
    )  # need to move mmapped weights (none read after it either)
    if not tensors:
        notes.append(
            Diagnostic(
                "warning",
                "sparsity.nothing-pruned",
                "no weight was sparsified: every weight was left dense (the info lines say why)",
            )
        )
    result = PassResult(model, modified=bool(tensors), diagnostics=_skipped(skipped) + notes)
    result.stats = {
        "tensors": len(tensors),
        "tensors_skipped": len(skipped),
        "weights_zeroed": sum(round(t["sparsity"] * t["elements"]) for t in tensors),
    }
    result.artifacts["sparsity"] = tensors
    snapshot = model.copy()
    result.reference = lambda: snapshot
    if original is not None and result.modified:
        reselect = (
            {t["name"]: options.nm_pair() for t in tensors}
            if options.score == "sparsegpt"
            else None
        )
        recover_result(
            result,
            original,
            samples,
            None,
            batch_size=options.batch_size,
            progress=progress,
            reselect=reselect,
        )
    return result


def parse_nm(text: str) -> tuple[int, int] | None:
    """'N:M' with 0 < N < M <= 256 (ASCII digits), or None."""
    match = re.fullmatch(r"([0-9]{1,3}):([0-9]{1,3})", text.strip())
    n, m = (int(match[1]), int(match[2])) if match else (0, 0)
    return (n, m) if 0 < n < m <= 256 else None


def nm_keep(scores: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep mask with the N largest of every M consecutive scores along ``axis``."""
    moved = np.moveaxis(scores, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    top = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, top, True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def block_scores(scores: np.ndarray, axis: int, rows: int, cols: int) -> np.ndarray:
    """Mean score of every rows×cols block of the weight seen as [other axes, reduction axis]."""
    view = np.moveaxis(scores, axis, -1).reshape(-1, scores.shape[axis])
    return view.reshape(view.shape[0] // rows, rows, view.shape[1] // cols, cols).mean(axis=(1, 3))


def expand_blocks(
    block_keep: np.ndarray, shape: tuple[int, ...], axis: int, rows: int, cols: int
) -> np.ndarray:
    """The element keep mask of a block keep mask (inverse of ``block_scores``' view)."""
    view = np.repeat(np.repeat(block_keep, rows, axis=0), cols, axis=1)
    moved_shape = tuple(d for i, d in enumerate(shape) if i != axis) + (shape[axis],)
    return np.moveaxis(view.reshape(moved_shape), -1, axis)


def lowest_keep(scores: np.ndarray, count: int) -> np.ndarray:
    """Keep mask that drops exactly the ``count`` lowest scores (ties broken by position)."""
    keep = np.ones(scores.size, dtype=bool)
    if count > 0:
        keep[np.argpartition(scores.reshape(-1), count - 1)[:count]] = False
    return keep.reshape(scores.shape)


def _mask(
    model, options: WeightOptions, sites: list[WeightSite], norms: dict, skipped: dict
) -> list[dict]:
    """Zero the weights the pattern drops; the per-tensor report. The arrays read here die
    with this call, so a later session (the refit's) may move memory-mapped weights."""
    initializers = model.initializers()
    keeps = _keep_masks(options, sites, {s.name: _values(model, s) for s in sites}, norms, skipped)
    tensors = []
    for site in sites:
        if site.name not in keeps:
            continue
        array, keep = model.constant(initializers[site.name]), keeps[site.name]
        model.resize_initializer(
            initializers[site.name], np.where(keep, array, _zeros(model, site, array))
        )
        tensors.append(
            {
                "name": site.name,
                "pattern": options.pattern(),
                "axis": site.axis,
                "sparsity": float(1 - keep.mean()),
                "elements": int(keep.size),
            }
        )
    return tensors


def _activation_norms(
    model, options: WeightOptions, sites: list[WeightSite], samples, notes: list
) -> dict[str, np.ndarray]:
    """For Wanda: per weight, ‖x_j‖ of the input channels it reduces over (shaped to
    broadcast against it), from the calibration run; weights Wanda cannot weigh get a note."""
    if options.score not in ("wanda", "sparsegpt"):
        return {}
    inputs = weight_input_norms(model, samples, sites, options.batch_size)
    notes += [
        Diagnostic(
            "info",
            "sparsity.magnitude-fallback",
            f"weight '{s.name}' scored by magnitude (no "
            "activation to weigh it: grouped conv, embedding table or constant input)",
        )
        for s in sites
        if s.name not in inputs
    ]
    weighed = {}
    for site in sites:
        if site.name in inputs:
            shape = [1] * len(site.shape)
            shape[site.axis] = site.shape[site.axis]
            weighed[site.name] = inputs[site.name].reshape(shape)
    return weighed


def _keep_masks(
    options: WeightOptions, sites: list[WeightSite], arrays: dict, norms: dict, skipped: dict
) -> dict[str, np.ndarray]:
    """|w|, or Wanda's |w|·‖x_j‖ (x_j: the input channel that weight reduces over), kept
    per the pattern."""
    scores = {
        s.name: np.abs(arrays[s.name]).astype(np.float32)
        * norms.get(s.name, np.float32(1)).astype(np.float32)
        for s in sites
    }
    if options.nm:
        n, m = options.nm_pair()
        fitting = _fitting(
            sites,
            skipped,
            lambda s: s.shape[s.axis] % m == 0,
            f"its reduction length is not a multiple of {m}",
        )
        return {s.name: nm_keep(scores[s.name], s.axis, n, m) for s in fitting}
    if options.block:
        rows, cols = options.block_shape()
        fitting = _fitting(
            sites,
            skipped,
            lambda s: _tiles(s, rows, cols),
            f"its shape is not tiled by {rows}x{cols} blocks",
        )
        blocks = {s.name: block_scores(scores[s.name], s.axis, rows, cols) for s in fitting}
        keeps = _drop_lowest(options, blocks)
        return {s.name: expand_blocks(keeps[s.name], s.shape, s.axis, rows, cols) for s in fitting}
    if (
        options.score == "wanda" and options.scope == "local"
    ):  # Wanda compares within each output row
        return {s.name: _per_row_keep(scores[s.name], s.axis, options.ratio) for s in sites}
    return _drop_lowest(options, scores)


def _drop_lowest(options: WeightOptions, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop ``ratio`` of the scores of each tensor (local) or of all together (global)."""
    if options.scope == "local":
        return {
            name: lowest_keep(s, int(round(options.ratio * s.size))) for name, s in scores.items()
        }
    names = list(scores)
    flat = np.concatenate([scores[n].reshape(-1) for n in names]) if names else np.zeros(0)
    keep = lowest_keep(flat, int(round(options.ratio * flat.size)))
    bounds = np.cumsum([0] + [scores[n].size for n in names])
    return {
        n: keep[bounds[i] : bounds[i + 1]].reshape(scores[n].shape) for i, n in enumerate(names)
    }


def _values(model, site: WeightSite) -> np.ndarray:
    """The weight as its compute op reads it (a quantized one dequantized), for scoring."""
    return (
        dequantized(model, site.quantized)
        if site.quantized
        else model.constant(model.initializers()[site.name])
    )


def _zeros(model, site: WeightSite, array: np.ndarray) -> np.ndarray:
    """What a dropped entry is stored as: 0, or a quantized weight's zero point."""
    return (
        zero_points(model, site.quantized, array.shape)
        if site.quantized
        else np.zeros((), array.dtype)
    )


def _per_row_keep(scores: np.ndarray, axis: int, ratio: float) -> np.ndarray:
    """Drop ``round(ratio·K)`` lowest scores of every row along the reduction axis (length K)."""
    moved = np.moveaxis(scores, axis, -1)
    count = int(round(ratio * moved.shape[-1]))
    keep = np.ones(moved.shape, dtype=bool)
    if count:
        lowest = np.argpartition(moved, count - 1, axis=-1)[..., :count]
        np.put_along_axis(keep, lowest, False, axis=-1)
    return np.moveaxis(keep, -1, axis)


def _tiles(site: WeightSite, rows: int, cols: int) -> bool:
    others = int(np.prod([d for i, d in enumerate(site.shape) if i != site.axis]))
    return others % rows == 0 and site.shape[site.axis] % cols == 0


def _fitting(sites: list[WeightSite], skipped: dict, fits, reason: str) -> list[WeightSite]:
    kept = [s for s in sites if fits(s)]
    skipped.update({s.name: reason for s in sites if not fits(s)})
    return kept


def _skipped(skipped: dict[str, str]) -> list[Diagnostic]:
    return [
        Diagnostic("info", "sparsity.skipped", f"weight '{name}' left dense: {reason}")
        for name, reason in skipped.items()
    ]
