"""Depth pruning: score the blocks ``analysis.blocks`` finds, choose the least important, cut them.

The algebra (the contract of ``analysis.blocks.Block``): *removing* a block makes every use of
its ``exit`` read its ``skip`` instead; its nodes are then dead code. For a residual block
(y = x + f(x)) or a projection block (y = s(x) + f(x)) that is y = skip + 0·f(x); for a span
(a plain layer, a post-LN transformer layer) the rewire is the whole change.

Invariants:

- the exactness oracle (``reference``) is the *original* with each dropped branch multiplied by
  zero: ``skip`` is renamed ``skip__kept`` and a new value under the name of ``skip`` computes
  ``skip__kept + 0·branch``; every former use of ``exit`` reads it. So every value the pruned
  model reads has, in the reference, the same name and the same number (which a later pass's
  masks, applied by name, rely on: ``PassResult.replay``). A span's reference is its rewire.
  The pruned model equals it to float rounding, by construction.
- blocks are cut in graph order and each ``skip`` is resolved through the blocks cut before it,
  so dropping two consecutive blocks rewires the second's uses to the first's skip.
- the choice never takes two units sharing a node (a transformer layer counts as its parts, so
  as that many units) nor a unit marked not removable.
- recovery (with calibration and ``recover``) refits the layers after each dropped block and
  recalibrates the norms reading drifted values (``recovery.recover`` seeded with the skips as
  drifted values), and the reference carries the refit weights (``refit_reference``).

Scores (lower = dropped first): ``influence`` (ShortGPT's block influence, 1 − cos(skip, exit)
per position, averaged over the calibration samples), ``output`` (the end-output error of
removing the block alone, measured), ``norm`` (no data: the branch's output gain, see
``norm_scores``), ``random`` (seeded). A coarse unit (a transformer layer) competes by its score
per finest unit it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsec.analysis.activations import capture, padding_mask
from sparsec.analysis.blocks import Block, find_blocks
from sparsec.ir.cleanup import remove_unused
from sparsec.pruning.recovery import output_error, recover_result
from sparsec.pruning.recovery.views import NORMS, contraction_axes, refit_layout
from sparsec.results import Diagnostic, PassError, PassResult, progress, stage

BLOCK_IMPORTANCE = ("influence", "output", "norm", "random")
CALIBRATED = ("influence", "output")  # the scores measured on calibration data
SPAN = ("layer", "transformer-layer")  # kinds whose reference is the rewire itself


@dataclass
class DropOptions:
    """What ``drop_blocks`` reads (``DropBlocksPass``'s options)."""

    count: float = 1  # an integer ≥ 1 (units) or a fraction in (0, 1) of the finest units
    importance: str = "influence"
    seed: int = 0
    recover: bool = True
    batch_size: int = 16


def check(options: DropOptions, calibrated: bool) -> None:
    """Refuse, in one line, options that cannot run."""
    count = options.count
    if not (0 < count < 1 or (count >= 1 and float(count).is_integer())):
        raise PassError(
            f"drop-blocks: the count must be an integer >= 1 or a fraction in (0, 1), got {count}"
        )
    if options.importance not in BLOCK_IMPORTANCE:
        raise PassError(
            f"drop-blocks: importance must be one of {', '.join(BLOCK_IMPORTANCE)}, "
            f"got '{options.importance}'"
        )
    if options.importance in CALIBRATED and not calibrated:
        raise PassError(
            "drop-blocks: block importance needs data (how much each block changes its input); "
            "pass --calibration DATA, or --importance norm / random"
        )


def units(blocks: Sequence[Block]) -> int:
    """How many finest units ``blocks`` hold (a transformer layer counts as its parts)."""
    return sum(max(1, len(block.parts)) for block in blocks)


def finest(blocks: Sequence[Block]) -> list[Block]:
    """The finest units: the blocks that are nobody's parts' container (not a transformer layer)."""
    return [block for block in blocks if not block.parts]


def unit_count(count: float, blocks: Sequence[Block]) -> int:
    """How many finest units ``count`` asks for: itself, or a fraction of the finest units
    (rounded, at least one)."""
    if count >= 1:
        return int(count)
    return max(1, int(count * len(finest(blocks)) + 0.5))


def choose(blocks: Sequence[Block], scores: dict[int, float], wanted: int) -> list[Block]:
    """``wanted`` finest units' worth of removable blocks, lowest score per unit first, no two
    sharing a node; raises when fewer units are removable."""
    by_id = {block.id: block for block in blocks}
    size = {block.id: max(1, len(block.parts)) for block in blocks}
    available = sum(size[b.id] for b in finest(blocks) if _removable(b, by_id))
    if wanted > available:
        raise PassError(
            f"drop-blocks: {wanted} block(s) asked, but the model has {available} removable "
            f"(of {len(finest(blocks))} blocks; see sparsec analyze --blocks)"
        )
    chosen: list[Block] = []
    taken: set[str] = set()
    left = wanted
    ranked = sorted(
        (b for b in blocks if _removable(b, by_id)), key=lambda b: (scores[b.id] / size[b.id], b.id)
    )
    for block in ranked:
        if size[block.id] <= left and taken.isdisjoint(block.nodes):
            chosen.append(block)
            taken.update(block.nodes)
            left -= size[block.id]
        if not left:
            break
    if left and len(finest(blocks)) < len(blocks):  # coarse units crowded out finer ones
        return choose(finest(blocks), scores, wanted)
    if left:
        raise PassError(
            f"drop-blocks: only {wanted - left} of the {wanted} block(s) asked can be removed "
            "together (the others overlap them)"
        )
    return sorted(chosen, key=lambda b: b.id)


def _removable(block: Block, by_id: dict[int, Block]) -> bool:
    return block.removable and all(by_id[part].removable for part in block.parts if part in by_id)


# ---------------------------------------------------------------- scores
def scores(
    model, blocks: Sequence[Block], options: DropOptions, samples: dict | None
) -> dict[int, float]:
    """{block id: importance} by ``options.importance`` (lower: dropped first)."""
    if options.importance == "random":
        rng = np.random.default_rng(options.seed)
        return {block.id: float(rng.random()) for block in blocks}
    if options.importance == "norm":
        return norm_scores(model, blocks)
    assert samples is not None  # check() refused influence/output without data
    if options.importance == "output":
        return output_scores(model, blocks, samples, options.batch_size)
    return influence_scores(model, blocks, samples, options.batch_size)


def influence_scores(
    model, blocks: Sequence[Block], samples: dict, batch_size: int = 16
) -> dict[int, float]:
    """ShortGPT's block influence: 1 − cos(skip, exit), per token (the last axis) for rank-3
    [B, T, D] activations, per sample (flattened) otherwise, averaged over every calibration
    sample (one batch of activations held at a time); with a padding mask input
    (``activations.padding_mask``), over the real tokens only."""
    mask = padding_mask(model)
    names = [name for block in blocks for name in (block.skip, block.exit)]
    sums = {block.id: 0.0 for block in blocks}
    counts = dict.fromkeys(sums, 0.0)
    wanted = names + ([mask] if mask else [])
    for batch in capture(model, samples, wanted, batch_size, desc="block influence"):
        for block in blocks:
            distances = 1.0 - _cosines(batch[block.skip], batch[block.exit])
            weights = _real_tokens(batch.get(mask or ""), distances.shape)
            sums[block.id] += float((distances * weights).sum())
            counts[block.id] += float(weights.sum())
    return {key: sums[key] / max(counts[key], 1) for key in sums}


def output_scores(
    model, blocks: Sequence[Block], samples: dict, batch_size: int = 16
) -> dict[int, float]:
    """The end-output error of removing each block alone (no refit):
    ‖y_dropped − y‖² / ‖y‖² over every graph output and calibration sample
    (``recovery.output_error``): one copy and one onnxruntime session per block. It sees what
    influence cannot, e.g. that a ViT classifying from one token needs some attention."""
    scores = {}
    for block in stage(blocks, desc="block output error", unit="block"):
        dropped = model.copy()
        remove_blocks(dropped, [block])
        scores[block.id] = output_error(dropped, model, samples, batch_size)
    return scores


def _real_tokens(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """1 where a per-token distance counts: the mask's nonzero positions when it is laid out
    like the distances ([B, T]), else everywhere."""
    if mask is None or np.shape(mask) != shape:
        return np.ones(shape)
    return (np.asarray(mask) != 0).astype(np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a, b) per token ([B, T, D]: along D) or per sample (else: everything but axis 0)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    if a.ndim != 3:
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    dot = (a * b).sum(-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 1.0)


def norm_scores(model, blocks: Sequence[Block]) -> dict[int, float]:
    """Without data: the gain of each block's branch for unit-variance inputs. It is the RMS,
    over output units, of the L2 norm of the last compute weight's slice for that unit
    (a unit's output std for i.i.d. unit inputs), times the RMS of the effective scale of a
    normalization after it in the block (BatchNorm γ/√(var+ε), LayerNorm γ), which rescales
    that output. A branch adding little to the stream (small gain) is the cheapest to drop;
    blocks with no compute weight score 0. A crude proxy: it ignores what the branch's
    input looks like, which only calibration (``influence``) measures."""
    nodes = {node.name: node for node in model.nodes()}
    return {
        block.id: _gain(model, [nodes[n] for n in block.nodes if n in nodes]) for block in blocks
    }


def _gain(model, nodes: list) -> float:
    order = {id(node): index for index, node in enumerate(model.nodes())}
    gain, seen_weight = 0.0, False
    for node in sorted(nodes, key=lambda n: order.get(id(n), 0)):
        axes = contraction_axes(model, node)
        if axes is not None:
            weight = np.asarray(model.constant(node.inputs[refit_layout(model, node).weight.index]))
            weight = weight.reshape(-1, 1) if weight.ndim == 1 else weight
            out = np.moveaxis(weight, axes[1], 0).reshape(weight.shape[axes[1]], -1)
            gain, seen_weight = float(np.sqrt(np.mean(np.square(out).sum(1)))), True
        elif seen_weight and node.op_type in NORMS:
            gain *= _norm_scale_rms(model, node)
    return gain


def _norm_scale_rms(model, node) -> float:
    scale = model.constant(node.inputs[1])
    if scale is None:
        return 1.0
    scale = np.asarray(scale, np.float64)
    if node.op_type == "BatchNormalization" and model.constant(node.inputs[4]) is not None:
        variance = np.asarray(model.constant(node.inputs[4]), np.float64)
        scale = scale / np.sqrt(variance + float(model.attr(node, "epsilon", 1e-5)))
    return float(np.sqrt(np.mean(np.square(scale))))


# ---------------------------------------------------------------- surgery and reference
def remove_blocks(model, blocks: Sequence[Block]) -> list[str]:
    """Rewire every use of each block's ``exit`` to its (resolved) ``skip``, in graph order,
    then remove the dead code; returns the resolved skips (the values whose readers drifted)."""
    values, alias = model.values_by_name(), {}
    for block in sorted(blocks, key=lambda b: b.id):
        skip = alias.get(block.skip, block.skip)
        model.replace_all_uses(values[block.exit], values[skip])
        alias[block.exit] = skip
    remove_unused(model)
    return sorted(set(alias.values()))


def reference_builder(model, blocks: Sequence[Block]) -> Callable[..., Any]:
    """A callable building the exactness oracle of removing ``blocks`` from ``model`` (as it is
    now): the original with each dropped branch times zero (``plain`` changes nothing: it is
    forwarded by composed references)."""
    snapshot, chosen = model.copy(), sorted(blocks, key=lambda b: b.id)
    return lambda plain=False: zeroed(snapshot.copy(), chosen)


def zeroed(model, blocks: Sequence[Block]):
    """``model`` with each block's branch times zero under the names the pruned model reads
    (spans: rewired), in graph order, each skip resolved through the blocks before it."""
    values = model.values_by_name()
    resolved = [(b, values[b.skip], values[b.exit], values.get(b.branch or "")) for b in blocks]
    alias: dict[int, Any] = {}  # id(exit value) → the value standing for it now
    for block, named_skip, exit_, branch in resolved:
        skip = alias.get(id(named_skip), named_skip)
        if block.kind in SPAN or branch is None:
            model.replace_all_uses(exit_, skip)
            alias[id(exit_)] = skip
        else:
            alias[id(exit_)] = _zero_branch(model, skip, exit_, branch)
    remove_unused(model)
    return model


def _zero_branch(model, skip, exit_, branch):
    """A value ``skip + 0·branch`` taking every use of ``exit_`` and, when ``skip`` is a node
    output of this graph that is not an interface value, the name of ``skip`` (which becomes
    ``<name>__kept``)."""
    before = model.producer(exit_)
    dtype = model.elem_type(branch) or np.float32
    zero = model.add_initializer(model.unique_name("drop_blocks_zero"), np.zeros((), dtype))
    product = model.add_node("Mul", [branch, zero], before=before, name="drop_blocks")
    renamable = model.producer(skip) is not None and not skip.is_graph_output()
    name = skip.name
    if renamable:
        skip.name = model.unique_name(f"{name}__kept")
    total = model.add_node("Add", [skip, product], before=before, name="drop_blocks")
    model.replace_all_uses(exit_, total)
    if renamable:
        total.name = name
        model.touch()
    return total


# ---------------------------------------------------------------- the whole cut
def drop_blocks(model, options: DropOptions, samples: dict | None) -> PassResult:
    """Score, choose and remove blocks of ``model`` in place; with ``samples`` and
    ``options.recover``, refit what follows. The ``PassResult`` carries the oracle reference,
    the dropped blocks (``blocks`` artifact: their JSON with their score) and the stats."""
    check(options, samples is not None)
    blocks = find_blocks(model)
    wanted = unit_count(options.count, blocks)
    if not finest(blocks):
        raise PassError(
            "drop-blocks: the model has no removable block (residual, projection or layer)"
        )
    found = scores(model, [b for b in blocks if b.removable], options, samples)
    chosen = choose(blocks, _padded(found, blocks), wanted)
    original = model.copy() if samples is not None and options.recover else None
    result = PassResult(model, modified=bool(chosen), reference=reference_builder(model, chosen))
    drifted = remove_blocks(model, chosen)
    result.stats = _stats(blocks, chosen)
    result.artifacts["blocks"] = [dict(b.to_json(), score=found[b.id]) for b in chosen]
    result.diagnostics = [_dropped_line(chosen, found, options.importance)]
    if original is not None:
        recover_result(
            result,
            original,
            samples,
            None,
            batch_size=options.batch_size,
            progress=progress,
            drifted=set(drifted),
        )
    return result


def _padded(found: dict[int, float], blocks: Sequence[Block]) -> dict[int, float]:
    """Scores for every block (a non-removable one: +inf, never chosen anyway)."""
    return {b.id: found.get(b.id, float("inf")) for b in blocks}


def _stats(blocks: Sequence[Block], chosen: Sequence[Block]) -> dict[str, float]:
    return {
        "blocks": len(finest(blocks)),
        "blocks_removable": sum(1 for b in finest(blocks) if b.removable),
        "blocks_dropped": units(chosen),
        "macs_dropped": sum(b.macs for b in chosen),
        "params_dropped": sum(b.params for b in chosen),
    }


def _dropped_line(chosen: Sequence[Block], found: dict[int, float], importance: str) -> Diagnostic:
    named = "; ".join(
        f"{b.scope or b.exit} ({b.kind}, {importance} {found[b.id]:.4g})" for b in chosen
    )
    return Diagnostic("info", "drop-blocks.dropped", f"dropped {units(chosen)} block(s): {named}")
