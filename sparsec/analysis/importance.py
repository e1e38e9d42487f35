"""Channel importance: one score per unit of a channel group (higher = keep).

Group-summed: a unit's score adds up the slices of *every* compute weight in the group
(producers' output slices and consumers' input slices alike), so a channel is judged by all
the compute it takes part in (a quantized weight by its dequantized values). Methods are a
registry (``register_importance``): ``l1`` (sum of |w|), ``l2`` (root of the summed squares),
``bn-scale`` (|γ| of the group's BatchNorm scales; groups without BatchNorm fall back to
``l1``), ``activation`` (‖X_c‖·‖W_c‖ over the group's
consumers, from calibration data) and ``random`` (seeded per group). A method gets
an ``ImportanceContext``; activation-based methods plug in here with calibration data in it.
With calibration data, a unit that every weight reading it sees as exactly zero on every sample
(``calibration_dead``: a dead channel) scores just below the group's lowest live unit whatever
the method, so a cut takes dead units first (``activation`` scores them 0 already).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsec.analysis.activation_zeros import dead_channels
from sparsec.analysis.activations import weight_input_norms
from sparsec.analysis.groups import ChannelGroup
from sparsec.analysis.quantized import weight_array
from sparsec.analysis.shapes import value_shapes
from sparsec.analysis.weight_sites import WeightSite, weight_sites
from sparsec.errors import InputError


@dataclass
class ImportanceContext:
    """What an importance score may read besides the group: the ``model``, a ``seed`` (random
    scores), the ``calibration`` samples (input name -> array, for activation scores) and
    their ``batch_size``, and ``extra`` (anything a plugin needs); per-weight sums and input
    norms are computed once and shared by every group scored with the same context
    (``input_norms``, ``axis_sums``)."""

    model: Any
    seed: int = 0
    calibration: dict[str, np.ndarray] | None = (
        None  # input name → samples (for activation methods)
    )
    extra: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    # caches, not options: out of the constructor's signature
    _sums: dict[tuple[str, str], dict | None] = field(default_factory=dict, repr=False, init=False)
    _input_norms: dict[str, np.ndarray] | None = field(default=None, repr=False, init=False)
    _input_axes: dict[str, int] = field(default_factory=dict, repr=False, init=False)
    _dead: dict[str, tuple[int, np.ndarray]] | None = field(default=None, repr=False, init=False)
    _sites: dict[str, WeightSite] | None = field(default=None, repr=False, init=False)

    def sites(self) -> dict[str, WeightSite]:
        """The model's weight sites by weight name (``weight_sites``), walked once."""
        if self._sites is None:
            self._sites = {site.name: site for site in weight_sites(self.model)[0]}
        return self._sites

    def dead_channels(self) -> dict[str, tuple[int, np.ndarray]]:
        """{activation: (channel axis, channels zero on every calibration sample)} for every
        value a weight reads, from one calibration run (``activation_zeros.dead_channels``)."""
        if self.calibration is None:
            return {}
        if self._dead is None:
            shapes = value_shapes(self.model)
            read = {  # every activation a weight reads, with the channel axis it reads
                name: axis % len(shapes[name])
                for site in self.sites().values()
                for name, axis in filter(None, site.activations)
                if shapes.get(name)
            }
            self._dead = dead_channels(
                self.model, self.calibration, read, batch_size=self.batch_size
            )
        return self._dead

    def input_norms(self) -> dict[str, np.ndarray]:
        """{weight: ‖x_j‖ per input channel j it reduces over}, for every weight of the model,
        from one calibration run (the first activation method that asks pays for it)."""
        if self.calibration is None:
            raise InputError("importance 'activation' needs calibration data (--calibration)")
        if self._input_norms is None:
            sites = list(self.sites().values())
            self._input_norms = weight_input_norms(
                self.model, self.calibration, sites, self.batch_size
            )
            self._input_axes = {site.name: site.axis for site in sites}
        return self._input_norms

    def axis_sums(self, name: str, axis: int, transform) -> np.ndarray | None:
        """Σ transform(weight) over every axis but ``axis``. A weight is read once however many
        groups it belongs to (a conv weight is in two): small weights get every axis's sums
        from one pass, large ones are summed per axis in chunks."""
        key = (name, transform.__name__)
        if key not in self._sums:
            self._sums[key] = self._read_sums(name, transform)
        sums = self._sums[key]
        if sums is not None and axis not in sums:  # a large weight, or an axis beyond the first two
            sums[axis] = _sum_but_axis(
                weight_array(self.model, self.model.value(name)), axis, transform
            )
        return None if sums is None else sums[axis]

    def _read_sums(self, name: str, transform) -> dict | None:
        array = weight_array(self.model, self.model.value(name))
        if array is None or array.dtype.kind != "f":
            return None
        if array.size > CHUNK_ELEMENTS or array.ndim < 2:
            return {}
        # one contiguous reduction to (axis 0, axis 1) pairs, then both channel axes from it
        pairs = (
            transform(array)
            .reshape(array.shape[0], array.shape[1], -1)
            .sum(axis=2)
            .astype(np.float64)
        )
        return {0: pairs.sum(axis=1), 1: pairs.sum(axis=0)}


Scorer = Callable[[ChannelGroup, ImportanceContext], np.ndarray]
IMPORTANCE: dict[str, Scorer] = {}


def register_importance(name: str) -> Callable[[Scorer], Scorer]:
    """Decorator: register ``fn(group, ctx) -> scores`` (one score per unit of the group, the
    lowest pruned first) as importance ``name``, usable as ``--importance NAME`` and in
    ``group_scores``."""

    def register(fn: Scorer) -> Scorer:
        IMPORTANCE[name] = fn
        return fn

    return register


def group_scores(group: ChannelGroup, method: str, ctx: ImportanceContext) -> np.ndarray:
    """One score per unit of ``group`` by the importance ``method`` (``l1``, ``l2``, a
    registered one); raises ``InputError`` for an unknown method."""
    scorer = IMPORTANCE.get(method)
    if scorer is None:
        raise InputError(f"unknown importance '{method}'; known: {', '.join(IMPORTANCE)}")
    scores = scorer(group, ctx)
    if ctx.calibration is None or method == "activation":  # activation: a dead unit scores 0
        return scores
    return dead_first(scores, calibration_dead(group, ctx))


def dead_first(scores: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """``scores`` with every ``dead`` unit just below the lowest live one (so a cut takes the
    dead units first, and the scores' mean, which global ranking divides by, barely moves)."""
    if not dead.any() or dead.all():
        return scores
    scores = np.asarray(scores, dtype=np.float64).copy()
    low = scores[~dead].min()
    scores[dead] = low - abs(low) * 1e-6 - 1e-12
    return scores


def calibration_dead(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Per unit of ``group``: whether every weight reading it (a compute member along its
    weight's contraction axis) reads, at each of its uses, an activation exactly zero at the
    unit on every calibration sample (all False without calibration, or when some reader's
    activation was not measured or is not in the group)."""
    nothing = np.zeros(group.units, dtype=bool)
    dead_values = ctx.dead_channels()
    if not dead_values:
        return nothing
    sites = ctx.sites()
    readers = [m for m in group.compute if m[0] in sites and sites[m[0]].axis == m[1]]
    if not readers:
        return nothing
    shapes, dead = value_shapes(ctx.model), np.ones(group.units, dtype=bool)
    for name, _ in readers:
        for use in sites[name].activations:
            member = _read_member(use, shapes)
            found = dead_values.get(member[0]) if member in group.atoms else None
            if member is None or found is None or found[0] != member[1]:
                return nothing
            alive = np.ones(group.sizes[member])
            alive[np.asarray(found[1], dtype=np.int64)] = 0
            dead &= np.bincount(group.atoms[member], weights=alive, minlength=group.units) == 0
    return dead


def _read_member(use: tuple[str, int] | None, shapes: dict) -> tuple[str, int] | None:
    """The (activation, non-negative axis) a weight's use reads, None when unknown."""
    rank = len(shapes.get(use[0], ())) if use is not None else 0
    return (use[0], use[1] % rank) if use is not None and rank else None


CHUNK_ELEMENTS = 8 * 1024 * 1024  # bounded temporaries on large weights


def _slice_sums(group: ChannelGroup, ctx: ImportanceContext, members, transform) -> np.ndarray:
    """Σ over members of ``transform(weight)`` summed over every axis but the member's,
    accumulated into the member's units (in chunks, so a 400 MB weight needs no 400 MB copy)."""
    scores = np.zeros(group.units)
    for name, axis in members:
        sums = ctx.axis_sums(name, axis, transform)
        if sums is not None:
            scores += np.bincount(group.atoms[(name, axis)], weights=sums, minlength=group.units)
    return scores


def _sum_but_axis(array: np.ndarray, axis: int, transform) -> np.ndarray:
    """Σ transform(array) over every axis but ``axis`` (chunked along ``axis`` when large)."""
    other = tuple(a for a in range(array.ndim) if a != axis)
    if array.size <= CHUNK_ELEMENTS:
        return (
            transform(array).sum(axis=other, dtype=np.float64)
            if other
            else transform(array).astype(np.float64)
        )
    step = max(1, CHUNK_ELEMENTS * array.shape[axis] // array.size)
    index = [slice(None)] * array.ndim
    parts = []
    for start in range(0, array.shape[axis], step):
        index[axis] = slice(start, start + step)
        parts.append(transform(array[tuple(index)]).sum(axis=other, dtype=np.float64))
    return np.concatenate(parts)


@register_importance("l1")
def l1(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    return _slice_sums(group, ctx, group.compute, np.abs)


@register_importance("l2")
def l2(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    return np.sqrt(_slice_sums(group, ctx, group.compute, np.square))


@register_importance("bn-scale")
def bn_scale(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    scales = [m for m in group.constants if _is_batchnorm_scale(ctx.model, m[0])]
    return _slice_sums(group, ctx, scales, np.abs) if scales else l1(group, ctx)


def _is_batchnorm_scale(model, name: str) -> bool:
    value = model.value(name)
    return value is not None and any(
        use.node.op_type == "BatchNormalization" and use.idx == 1 for use in value.uses()
    )


@register_importance("activation")
def activation(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """‖X_c‖·‖W_c‖ summed over the group's consumers: for every weight that reduces over a
    member of the group, the calibration norm of the input channel times the L2 norm of the
    weight slice that multiplies it (the channel's contribution to that layer's output, the
    channel-level form of Wanda's |w|·‖x‖). Groups no weight reduces over fall back to ``l2``."""
    norms = ctx.input_norms()
    consumers = [m for m in group.compute if m[0] in norms and ctx._input_axes.get(m[0]) == m[1]]
    if not consumers:
        return l2(group, ctx)
    scores = np.zeros(group.units)
    for name, axis in consumers:
        weight_norms = np.sqrt(ctx.axis_sums(name, axis, np.square))
        scores += np.bincount(
            group.atoms[(name, axis)], weights=norms[name] * weight_norms, minlength=group.units
        )
    return scores


@register_importance("random")
def random(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    return np.random.default_rng([ctx.seed, group.id]).random(group.units)
