"""Block-wise reconstruction: after a cut (and the layer refit), fit the kept weights of each
region (``regions``) by gradient descent so that its output matches the dense model's.

For region k with entry x_k and exit y_k, in graph order: the inputs are the pruned model's own
values (x_0 and the external inputs from one onnxruntime run of the pruned model; x_{k+1} is
region k's output after its fit, computed in torch, so each region sees what the reconstructed
model feeds it), the target Y*_k the dense original's value of y_k, restricted to the kept
positions when the cut shrank y_k (``kept_positions``: the plan's kept list the pruned values
match, so a region may end at every cut value, not only where shapes agree). The objective
per batch is the relative squared error ‖f_k(x_k; θ) − Y*_k‖² / ‖Y*_k‖², over the positions
the padding mask keeps when the exit is laid out [batch, positions, ...]. θ: the region's
trainable constants (weights, biases, norm parameters: ``regions.TRAINABLE_INPUTS``); zeros of
masked weights stay zero (``translate``). Adam (``LEARNING_RATE``, at most ``STEPS`` steps of
one batch each, the rate falling to 0 along a cosine over each stage's step budget; for inputs
that are not all float, token ids, ``PLAIN_LEARNING_RATE`` and ``PLAIN_STEPS`` at a constant
rate); the
held-out samples (every ``HELD_OUT``-th calibration sample, ``held_out``, kept out of the cut and
its layer refit by ``result.reconstructed``: on samples the refit fitted, any change of its
values looks worse) give the held-out error, measured every ``CHECK`` steps, the best θ kept,
the fit stopped after ``PATIENCE`` checks without improvement, and a region whose held-out error
does not fall keeps its weights. When some regions ended at
shrunk values, a second stage fits the regions between values of the original's shape (at
``--channels`` on a CNN: the whole network, to its output) from the first stage's result, for
at most ``WHOLE_STEPS``. Last, a final stage fits one region from the data input to the
last value of the original's shape (the model's output), all kept weights at once, for at most
``FINAL_STEPS`` at ``FINAL_RATE``, stopped and kept or not as above: the per-region fits each
match their own exit, so errors compound (N:M and heads/FFN cuts, where no second stage runs);
skipped when that region was fitted already (a CNN's second stage). The fit's data are the
calibration samples and altered copies of them labelled by the dense original (``augmented``;
held-out batches are real samples only): with float inputs ``AUGMENT`` noisy copies, with token
ids ``TOKEN_AUGMENT`` copies with a ``SWAP`` fraction of the kept ids replaced by others of the
same input (``swapped``). Deterministic for a ``seed``.

Only constant values change (same names, dtypes, shapes): the structure the oracle checks is
the cut's. Memory: the batches of every region's external inputs and target are held (about
two hidden states per region on a transformer), for the samples and their copies: fewer
copies when that estimate would pass ``HELD_BYTES`` (float inputs) or ``TOKEN_HELD_BYTES``
(token ids). The algebra and figures: docs/reconstruction.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from sparsec.analysis.activations import batch_count, capture, fixed_batch
from sparsec.errors import UsageError
from sparsec.pruning.reconstruct.regions import Region, cut_chain, find_regions
from sparsec.pruning.reconstruct.torch_ops import unsupported
from sparsec.pruning.reconstruct.translate import TorchRegion
from sparsec.results import progress, stage

STEPS = 600  # Adam steps per region, at most
WHOLE_STEPS = 8000  # the same for the second stage (regions between full-shape values)
LEARNING_RATE = 1e-3
PLAIN_LEARNING_RATE = 1e-4  # token inputs: they overfit sooner (with copies 1e-3 did no better)
FINAL_STEPS = 400  # the final stage: one region from the data input to the last full value
FINAL_RATE = 3e-5  # its rate (MiniLM 2:4: 1e-4 raised the held-out error, 3e-5 lowered it)
PLAIN_STEPS = 1500  # the steps at that rate (MiniLM heads/FFN 0.5: 600 steps +0.015, 1500 +0.020)
THREADS = 1  # small regions: torch's thread pool costs more than it gains (100x on 2 busy cores)
HELD_OUT = 8  # every 8th calibration sample is held out for early stopping
CHECK = 50  # steps between two measures of the held-out error
PATIENCE = 20  # checks without a new best before a fit stops
AUGMENT = 32  # noisy copies of the calibration samples added to the fit's data (float inputs)
HELD_BYTES = 1 << 30  # fewer copies when the fit's held values would exceed this
TOKEN_AUGMENT = 4  # copies of token inputs with swapped ids (``swapped``)
TOKEN_HELD_BYTES = 4 << 30  # the bound for them
SWAP = 0.2  # the fraction of kept positions whose ids a token copy replaces
NOISE = 0.2  # their noise, in standard deviations of each input position over the samples
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


@dataclass(frozen=True)
class Fit:
    """How one stage fits its regions: Adam ``steps`` at most per region at ``learning_rate``
    (with ``decay``, falling to 0 along a cosine over the ``steps``: with ``AUGMENT`` 32,
    digits ViT top-1 over seeds 0-3 0.956 -> 0.965 on average, the CNN's worst seed 0.983 ->
    0.989), ``seed`` for the batch order, ``batch_size``, ``mask`` the padding-mask input's
    name."""

    steps: int
    learning_rate: float
    seed: int
    batch_size: int
    mask: str | None
    decay: bool = False


def held_out(samples: dict, block: int = 1) -> tuple[dict, dict]:
    """(the samples to fit, the held-out ones): every ``HELD_OUT``-th run of ``block`` samples
    is held out (``block``: a model's fixed batch size, so both parts hold whole batches), the
    last whole run when there are fewer; with fewer than two whole runs, all the samples for
    both (the held-out error is then measured on samples the fits saw)."""
    count = len(next(iter(samples.values())))
    runs = count // block
    if runs < 2:
        return samples, samples
    index = np.arange(count) // block
    held = index % HELD_OUT == HELD_OUT - 1
    if not held.any():
        held = index == runs - 1
    return (
        {name: array[~held] for name, array in samples.items()},
        {name: array[held] for name, array in samples.items()},
    )


def float_inputs(samples: dict) -> bool:
    """Whether every input is float (images, audio): not token ids or masks."""
    return all(np.issubdtype(array.dtype, np.floating) for array in samples.values())


def reconstruct(
    pruned,
    original,
    samples,
    *,
    held: dict | None = None,
    batch_size: int = 16,
    steps: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    mask: str | None = None,
    plan: dict | None = None,
) -> dict:
    """Fit ``pruned``'s regions in place against ``original`` (same names) on ``samples``,
    stopped early on ``held`` (None: ``held_out(samples)``, samples the cut has seen); ``mask``:
    a padding-mask input (positions where it is 0 are not fitted); ``plan``: the cut's
    channel plan (``surgery.plan_json``), whose kept positions let regions end at values
    the cut shrank (their target the original's kept positions), followed then by a second
    stage over the regions between values of the original's shape (``WHOLE_STEPS``). Returns
    the per-region errors (relative, squared, on the calibration samples), the skipped regions
    with their reason and the changed constants (``arrays``)."""
    torch = require_torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        torch.manual_seed(seed)
        if held is None:
            samples, held = held_out(samples, fixed_batch(pruned) or 1)
        plain = not float_inputs(samples)  # token inputs: a lower rate, more steps
        every = augmented(samples, _copies(pruned, samples, batch_size, plain), seed, mask)
        rate = learning_rate or (PLAIN_LEARNING_RATE if plain else LEARNING_RATE)
        budget = steps or (PLAIN_STEPS if plain else STEPS)
        fit = Fit(budget, rate, seed, batch_size, mask, decay=not plain)  # tokens: not measured
        exits = _exits(pruned, original, cut_chain(pruned), samples, batch_size, plan)
        data = (samples, every, held)
        report = _stage(torch, pruned, original, data, exits, fit)
        for later, later_fit in _later_stages(pruned, exits, fit):
            done = {(row["entry"], row["exit"]) for row in report["regions"]}
            _merge(report, _stage(torch, pruned, original, data, later, later_fit, done))
        return {**report, "steps": fit.steps, "seed": seed}
    finally:
        torch.set_num_threads(threads)


def _later_stages(pruned, exits: dict, fit: Fit) -> list[tuple[dict, Fit]]:
    """(exits, fit) of the stages after the first: when regions ended at shrunk values, the
    regions between values of the original's shape (``WHOLE_STEPS``); then the final stage,
    one region from the data input to the last of them (``FINAL_STEPS``)."""
    same = {name: None for name, where in exits.items() if where is None}
    stages = []
    if len(same) < len(exits):
        stages.append((same, replace(fit, steps=WHOLE_STEPS)))
    last = [name for name in cut_chain(pruned) if name in same][-1:]
    if FINAL_STEPS and last:
        final = replace(fit, steps=FINAL_STEPS, learning_rate=FINAL_RATE)
        stages.append((dict.fromkeys(last), final))
    return stages


def _merge(report: dict, second: dict) -> None:
    """``second``'s regions and values into ``report``."""
    report["regions"] += second["regions"]
    report["arrays"].update(second["arrays"])
    report["skipped"] += [r for r in second["skipped"] if r not in report["skipped"]]


def _stage(torch, pruned, original, data: tuple, exits: dict, fit: Fit, done=frozenset()):
    """Fit the regions ending at ``exits`` in graph order, but those whose (entry, exit) is in
    ``done``; ``data``: (the calibration samples, them followed by their augmented copies, the
    held-out samples)."""
    samples, every, held = data
    regions = find_regions(pruned, cut_chain(pruned), exits.__contains__)
    skipped = [{"exit": r.exit, "reason": "; ".join(unsupported(r.nodes))} for r in regions]
    usable = [r for r, row in zip(regions, skipped) if not row["reason"]]
    usable = [r for r in usable if (r.entry, r.exit) not in done]
    skipped = [row for row in skipped if row["reason"]]
    inputs, targets = _captures(pruned, original, every, regions, usable, fit)
    more_inputs, more_targets = _captures(pruned, original, held, regions, usable, fit)
    real = batch_count(pruned, samples, fit.batch_size)
    fitted, held_batches = len(inputs), range(len(inputs), len(inputs) + len(more_inputs))
    batches = (range(real), range(fitted), held_batches)  # indices: real, fitted, held out
    inputs, targets = inputs + more_inputs, targets + more_targets
    targets = [_restricted(batch, exits) for batch in targets]
    weights = [_loss_weights(batch.get(fit.mask) if fit.mask else None) for batch in inputs]
    rows, arrays, current = [], {}, None
    for region in stage(usable, desc="reconstruct", unit="region"):
        started = time.perf_counter()
        block = TorchRegion(pruned, region, torch)
        feeds = [_feeds(batch, region, current, i) for i, batch in enumerate(inputs)]
        wanted = [batch[region.exit] for batch in targets]
        row = _fit(torch, block, (feeds, wanted, weights), fit, batches)
        with torch.no_grad():
            outputs = [block.forward(feed) for feed in feeds]
        row["error_after"] = _error(outputs, wanted, weights, batches[0])
        if row["fitted"]:
            arrays.update(_store(pruned, block))
        current = {"after": region.exit, "values": outputs}
        row.update(entry=region.entry, exit=region.exit, roles=region.roles)
        row.update(nodes=len(region.nodes), seconds=round(time.perf_counter() - started, 2))
        rows.append(row)
        _report(row)
    return {"regions": rows, "skipped": skipped, "arrays": arrays}


def _report(row: dict) -> None:
    progress(
        f"reconstruct: {row['exit']} ({', '.join(row['roles']) or 'layers'}): error "
        f"{row['error_before']:.4g} -> {row['error_after']:.4g} in {row['steps']} step(s), "
        f"{row['seconds']} s"
    )


def _copies(pruned, samples: dict, batch_size: int, tokens: bool) -> int:
    """``AUGMENT`` (``TOKEN_AUGMENT`` for ``tokens``), or fewer so that the fit's held values
    (about twice the cut values per sample: each is one region's entry and another's exit)
    stay within ``HELD_BYTES`` (``TOKEN_HELD_BYTES``)."""
    most, held_bytes = (TOKEN_AUGMENT, TOKEN_HELD_BYTES) if tokens else (AUGMENT, HELD_BYTES)
    chain = cut_chain(pruned)
    batch = next(capture(pruned, samples, chain, batch_size)) if chain else {}
    rows = max((len(a) for a in batch.values() if a.ndim), default=1)
    per_sample = 2 * sum(a.nbytes for a in batch.values()) / rows
    total = per_sample * len(next(iter(samples.values())))
    return int(min(most, max(0, held_bytes // max(total, 1) - 1)))


def _exits(pruned, original, chain: list[str], samples, batch_size: int, plan: dict | None):
    """The cut values a region may end at, each with how its target is read from the
    original's value: None when the original computes it with the pruned model's shape, else
    ``(axis, kept)``, the original's positions the pruned value holds on the one axis a cut
    shrank (``kept_positions``). One batch of each run."""
    known = set(original.values_by_name())
    names = [name for name in chain if name in known]
    if not names:
        return {}
    mine = next(capture(pruned, samples, names, batch_size))
    dense = next(capture(original, samples, names, batch_size))
    found: dict = {}
    for name in names:
        if name in mine and dense[name].shape == mine[name].shape:
            found[name] = None
        elif name in mine and (kept := kept_positions(mine[name], dense[name], plan)):
            found[name] = kept
    return found


def kept_positions(mine: np.ndarray, dense: np.ndarray, plan: dict | None):
    """``(axis, kept)`` such that ``mine`` ≈ ``dense`` taken at ``kept`` on ``axis``, the one
    axis their shapes differ on: of the plan's kept lists of that length over that size, the
    one closest on the data, when its relative squared error is below 1 (a wrong list gives
    about 2); else None."""
    axes = [a for a, (m, d) in enumerate(zip(mine.shape, dense.shape)) if m != d]
    if mine.ndim != dense.ndim or len(axes) != 1:
        return None
    axis = axes[0]
    lists = {
        tuple(entry["kept"])
        for entries in (plan or {}).get("initializers", {}).values()
        for entry in entries
        if entry["size"] == dense.shape[axis] and len(entry["kept"]) == mine.shape[axis]
    }
    scored = [(_relative(mine, np.take(dense, kept, axis)), kept) for kept in lists]
    error, kept = min(scored, default=(np.inf, ()))
    return (axis, np.asarray(kept)) if error < 1.0 else None


def _captures(pruned, original, samples, regions, usable, fit: Fit):
    """Per calibration batch, the pruned model's external inputs of ``usable`` regions (the
    entry only where the region before is not translated) and the original's exits."""
    names: list[str] = [fit.mask] if fit.mask else []
    previous = None
    for region in regions:
        if region in usable:
            names += region.externals[1:] + ([] if previous in usable else [region.entry])
        previous = region
    names = list(dict.fromkeys(names))
    exits = [r.exit for r in usable]
    size = fit.batch_size
    return (
        [_tensors(b) for b in capture(pruned, samples, names, size, desc="reconstruct inputs")],
        [_tensors(b) for b in capture(original, samples, exits, size, desc="reconstruct targets")],
    )


def augmented(samples: dict, copies: int, seed: int, mask: str | None = None) -> dict:
    """``samples`` followed by ``copies`` altered copies of them: the original model's values
    on them are more targets near the data, so a fit of few calibration samples overfits
    less. When every input is float, x + ``NOISE`` · σ · ε, σ each input position's standard
    deviation over the samples, ε standard normal; else ``swapped`` (token ids: ``mask`` the
    padding-mask input)."""
    if not copies:
        return samples
    if not float_inputs(samples):
        return swapped(samples, copies, seed, mask)
    generator = np.random.default_rng(seed)
    noisy = {}
    for name, array in samples.items():
        spread = NOISE * array.std(axis=0, keepdims=True)
        noise = generator.standard_normal((copies, *array.shape)).astype(array.dtype)
        noisy[name] = np.concatenate([array, *(array + spread * n for n in noise)])
    return noisy


def swapped(samples: dict, copies: int, seed: int, mask: str | None = None) -> dict:
    """``samples`` followed by ``copies`` copies in which each integer input (token ids) has a
    ``SWAP`` fraction of its kept positions (where input ``mask`` is not 0; all of them without
    it) replaced by ids drawn from that input's own ids at kept positions over the samples
    (an input of one id, as token types, stays as it is). ``mask`` and float inputs are
    repeated unchanged. Deterministic for ``seed``."""
    generator = np.random.default_rng(seed)
    keep = samples[mask] != 0 if mask in samples else None
    copied = {}
    for name, array in samples.items():
        rows = [array] * (copies + 1)
        if name != mask and np.issubdtype(array.dtype, np.integer):
            kept = keep if keep is not None and keep.shape == array.shape else None
            kept = np.ones(array.shape, bool) if kept is None else kept
            ids = array[kept]
            for index in range(1, copies + 1):
                where = kept & (generator.random(array.shape) < SWAP)
                rows[index] = array.copy()
                rows[index][where] = generator.choice(ids, int(where.sum()))
        copied[name] = np.concatenate(rows)
    return copied


def _relative(y: np.ndarray, target: np.ndarray) -> float:
    """‖y − target‖² / ‖target‖²."""
    scale = float(np.square(target, dtype=np.float64).sum()) or 1.0
    return float(np.square(y - target, dtype=np.float64).sum()) / scale


def _restricted(batch: dict, exits: dict) -> dict:
    """The original's exits at the positions the pruned values hold (``_exits``)."""
    import torch

    for name, where in exits.items():
        if where is not None and name in batch:
            axis, kept = where
            batch[name] = torch.index_select(batch[name], axis, torch.from_numpy(kept))
    return batch


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


def _loss_weights(mask):
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


def _fit(torch, block: TorchRegion, data: tuple, fit: Fit, batches: tuple) -> dict:
    """Adam on the region's parameters with early stopping on held-out batches; ``data``:
    (feeds, targets, loss weights) per batch; ``batches``: the indices of (the calibration
    samples, them and their augmented copies: the ones fitted, the held-out samples)."""
    feeds, targets, weights = data
    real, train, held = (list(indices) for indices in batches)

    def measure(indices) -> float:
        with torch.no_grad():
            return _error({i: block.forward(feeds[i]) for i in indices}, targets, weights, indices)

    before, held_before = measure(real), measure(held)
    row = {"error_before": before, "held_before": held_before, "fitted": False, "steps": 0}
    if not block.parameters or before <= 1e-12:
        return {**row, "held_after": held_before}
    initial = block.state()
    best, best_error, row["steps"] = _descend(torch, block, data, train, fit, measure, held)
    fitted = best_error < held_before * (1 - 1e-6)
    block.load(best if fitted else initial)
    return {**row, "held_after": best_error if fitted else held_before, "fitted": fitted}


def _descend(torch, block: TorchRegion, data: tuple, train: list[int], fit: Fit, measure, held):
    """The Adam steps over shuffled ``train`` batches: (best state, its held-out error, steps
    taken), stopped after ``PATIENCE`` checks of the held-out error without a new best."""
    feeds, targets, weights = data
    best, best_error, stale = block.state(), measure(held), 0
    optimiser = torch.optim.Adam(list(block.parameters.values()), lr=fit.learning_rate)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, fit.steps) if fit.decay else None
    )
    order = torch.Generator().manual_seed(fit.seed)
    check = max(1, min(CHECK, fit.steps // 10))
    for step in range(fit.steps):
        if step % len(train) == 0:
            shuffled = [train[i] for i in torch.randperm(len(train), generator=order).tolist()]
        i = shuffled[step % len(train)]
        diff, total = _sums(block.forward(feeds[i]), targets[i], weights[i])
        optimiser.zero_grad()
        (diff / total.clamp_min(1e-30)).backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
        if (step + 1) % check == 0:
            error = measure(held)
            best, best_error, stale = (
                (block.state(), error, 0) if error < best_error else (best, best_error, stale + 1)
            )
            if stale >= PATIENCE:
                break
    return best, best_error, step + 1


def _store(model, block: TorchRegion) -> dict[str, np.ndarray]:
    """Write the region's fitted constants into ``model`` (same names, dtypes, shapes)."""
    values = model.values_by_name()
    arrays = block.arrays()
    for name, array in arrays.items():
        model.set_constant(values[name], array)
    return arrays
