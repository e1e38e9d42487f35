"""Block-wise reconstruction: after a cut (and the layer refit), fit the kept weights of each
region (``regions``) by gradient descent so that its output matches the dense model's.

For region k with entry x_k and exit y_k, in graph order: the inputs are the pruned model's own
values (x_0 and the external inputs from one onnxruntime run of the pruned model; x_{k+1} is
region k's output after its fit, computed in torch, so each region sees what the reconstructed
model feeds it), the target Y*_k the dense original's value of y_k. The objective per batch is
the relative squared error ‖f_k(x_k; θ) − Y*_k‖² / ‖Y*_k‖², over the positions the padding
mask keeps when the exit is laid out [batch, positions, ...]. θ: the region's trainable
constants (weights, biases, norm parameters: ``regions.TRAINABLE_INPUTS``); zeros of masked
weights stay zero (``translate``). Adam, at most ``steps`` steps (one calibration batch each),
every ``HELD_OUT``-th batch held out: the held-out error is measured every ``check`` steps,
the best θ kept, the fit stopped after ``PATIENCE`` checks without improvement, and a region
whose held-out error does not fall keeps its weights. Deterministic for a ``seed``.

Only constant values change (same names, dtypes, shapes): the structure the oracle checks is
the cut's. Memory: the calibration batches of every region's external inputs and target are
held (about two hidden states per region on a transformer). The algebra and figures:
docs/reconstruction.md.
"""

from __future__ import annotations

import time

import numpy as np

from sparsec.analysis.activations import capture
from sparsec.errors import UsageError
from sparsec.pruning.reconstruct.regions import Region, cut_chain, find_regions
from sparsec.pruning.reconstruct.torch_ops import unsupported
from sparsec.pruning.reconstruct.translate import TorchRegion
from sparsec.results import progress, stage

STEPS = 600  # Adam steps per region, at most
LEARNING_RATE = 1e-3
THREADS = 1  # small regions: torch's thread pool costs more than it gains (100x on 2 busy cores)
HELD_OUT = 8  # every 8th calibration batch is held out for early stopping
PATIENCE = 4
INSTALL = (
    "--recover block needs torch (the reconstruct extra): pip install 'sparsec[reconstruct]' "
    "(or use --recover layer)"
)


def require_torch():
    """torch, or a ``UsageError`` telling how to install it."""
    try:
        import torch
    except ImportError:
        raise UsageError(INSTALL) from None
    return torch


def reconstruct(
    pruned,
    original,
    samples,
    *,
    batch_size: int = 16,
    steps: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    mask: str | None = None,
) -> dict:
    """Fit ``pruned``'s regions in place against ``original`` (same names) on ``samples``;
    ``mask``: a padding-mask input (positions where it is 0 are not fitted). Returns the
    per-region errors (relative, squared, all calibration batches), the skipped regions with
    their reason and the changed constants (``arrays``)."""
    torch = require_torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        steps, learning_rate = steps or STEPS, learning_rate or LEARNING_RATE
        return _reconstruct(
            torch, pruned, original, samples, batch_size, steps, learning_rate, seed, mask
        )
    finally:
        torch.set_num_threads(threads)


def _reconstruct(torch, pruned, original, samples, batch_size, steps, learning_rate, seed, mask):
    torch.manual_seed(seed)
    chain = cut_chain(pruned)
    regions = find_regions(pruned, chain, _agreement(pruned, original, chain, samples, batch_size))
    skipped = [{"exit": r.exit, "reason": "; ".join(unsupported(r.nodes))} for r in regions]
    usable = [r for r, row in zip(regions, skipped) if not row["reason"]]
    skipped = [row for row in skipped if row["reason"]]
    inputs, targets = _captures(pruned, original, samples, regions, usable, batch_size, mask)
    weights = [_loss_weights(torch, batch.get(mask) if mask else None) for batch in inputs]
    rows, arrays, current = [], {}, None
    for region in stage(usable, desc="reconstruct", unit="region"):
        started = time.perf_counter()
        block = TorchRegion(pruned, region, torch)
        feeds = [_feeds(batch, region, current, i) for i, batch in enumerate(inputs)]
        wanted = [batch[region.exit] for batch in targets]
        row = _fit(torch, block, feeds, wanted, weights, steps, learning_rate, seed)
        with torch.no_grad():
            outputs = [block.forward(feed) for feed in feeds]
        row["error_after"] = _error(outputs, wanted, weights)
        if row["fitted"]:
            arrays.update(_store(pruned, block))
        current = {"after": region.exit, "values": outputs}
        row.update(
            entry=region.entry, exit=region.exit, roles=region.roles, nodes=len(region.nodes)
        )
        row["seconds"] = round(time.perf_counter() - started, 2)
        rows.append(row)
        progress(
            f"reconstruct: {region.exit} ({', '.join(region.roles) or 'layers'}): error "
            f"{row['error_before']:.4g} -> {row['error_after']:.4g} in {row['steps']} step(s), "
            f"{row['seconds']} s"
        )
    return {"regions": rows, "skipped": skipped, "arrays": arrays, "steps": steps, "seed": seed}


def _agreement(pruned, original, chain: list[str], samples, batch_size: int):
    """``agrees(name)``: the original computes ``name`` with the pruned model's shape (one
    batch of each run)."""
    known = set(original.values_by_name())
    names = [name for name in chain if name in known]
    if not names:
        return lambda name: False
    first = {
        name: array.shape
        for name, array in next(capture(pruned, samples, names, batch_size)).items()
    }
    dense = next(capture(original, samples, names, batch_size))
    return lambda name: name in first and dense[name].shape == first[name]


def _captures(pruned, original, samples, regions, usable, batch_size, mask):
    """Per calibration batch, the pruned model's external inputs of ``usable`` regions (the
    entry only where the region before is not translated) and the original's exits."""
    names: list[str] = [mask] if mask else []
    previous = None
    for region in regions:
        if region in usable:
            names += region.externals[1:] + ([] if previous in usable else [region.entry])
        previous = region
    names = list(dict.fromkeys(names))
    exits = [r.exit for r in usable]
    return (
        [
            _tensors(b)
            for b in capture(pruned, samples, names, batch_size, desc="reconstruct inputs")
        ],
        [
            _tensors(b)
            for b in capture(original, samples, exits, batch_size, desc="reconstruct targets")
        ],
    )


def _tensors(batch: dict) -> dict:
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in batch.items()}


def _feeds(batch: dict, region: Region, current: dict | None, index: int) -> dict:
    """The region's external inputs for batch ``index`` (its entry the fitted output of the
    region before, when that one was translated and ended where this one starts)."""
    feed = {name: batch[name] for name in region.externals if name in batch}
    if current is not None and current["after"] == region.entry:
        feed[region.entry] = current["values"][index]
    return feed


def _loss_weights(torch, mask):
    return None if mask is None else (mask != 0).float()


def _weighted(weight, y):
    """The mask broadcast over y when y is laid out like it ([batch, positions, ...])."""
    if weight is None or tuple(y.shape[: weight.dim()]) != tuple(weight.shape):
        return None
    return weight.reshape(tuple(weight.shape) + (1,) * (y.dim() - weight.dim()))


def _sums(y, target, weight):
    """(Σ w (y − t)², Σ w t²) for one batch."""
    w = _weighted(weight, target)
    diff, norm = (y - target) ** 2, target**2
    if w is not None:
        diff, norm = diff * w, norm * w
    return diff.sum(), norm.sum()


def _error(outputs, targets, weights, batches=None) -> float:
    diff = total = 0.0
    for i in range(len(targets)) if batches is None else batches:
        d, t = _sums(outputs[i].double(), targets[i].double(), weights[i])
        diff, total = diff + float(d), total + float(t)
    return diff / total if total else diff


def _fit(torch, block: TorchRegion, feeds, targets, weights, steps, learning_rate, seed) -> dict:
    """Adam on the region's parameters with early stopping on the held-out batches."""
    held = [i for i in range(len(feeds)) if i % HELD_OUT == HELD_OUT - 1] or [len(feeds) - 1]
    train = [i for i in range(len(feeds)) if i not in held] or held

    def measure(batches) -> float:
        with torch.no_grad():
            return _error({i: block.forward(feeds[i]) for i in batches}, targets, weights, batches)

    before, held_before = measure(range(len(feeds))), measure(held)
    row = {"error_before": before, "held_before": held_before, "fitted": False, "steps": 0}
    if not block.parameters or before <= 1e-12:
        return {**row, "held_after": held_before}
    initial, best, best_error, stale = block.state(), block.state(), held_before, 0
    optimiser = torch.optim.Adam(list(block.parameters.values()), lr=learning_rate)
    order = torch.Generator().manual_seed(seed)
    check = max(1, min(50, steps // 10))
    for step in range(steps):
        if step % len(train) == 0:
            shuffled = [train[i] for i in torch.randperm(len(train), generator=order).tolist()]
        i = shuffled[step % len(train)]
        diff, total = _sums(block.forward(feeds[i]), targets[i], weights[i])
        optimiser.zero_grad()
        (diff / total.clamp_min(1e-30)).backward()
        optimiser.step()
        row["steps"] = step + 1
        if (step + 1) % check == 0:
            error = measure(held)
            best, best_error, stale = (
                (block.state(), error, 0) if error < best_error else (best, best_error, stale + 1)
            )
            if stale >= PATIENCE:
                break
    fitted = best_error < held_before * (1 - 1e-6)
    block.load(best if fitted else initial)
    return {**row, "held_after": best_error if fitted else held_before, "fitted": fitted}


def _store(model, block: TorchRegion) -> dict[str, np.ndarray]:
    """Write the region's fitted constants into ``model`` (same names, dtypes, shapes)."""
    values = model.values_by_name()
    arrays = block.arrays()
    for name, array in arrays.items():
        model.set_constant(values[name], array)
    return arrays
