"""Dead units: channels whose removal changes no output (statically dead), or that are zero on
every calibration sample (dead on the data).

Invariant of static removal (exact). The oracle's masked original of a removal zeroes every
compute-weight slice of the removed units and nothing else (``oracle``); the pruned model equals
it to float rounding. So a removal is exact when the masked original equals the original:

- every weight slice that *reads* the unit (a compute member along its weight's contraction
  axis; a grouped conv's weight reads the channel it writes) is already zero: the unit reaches
  no compute, and zeroing the slices that *write* it changes nothing anyone reads; or
- every slice that writes the unit is zero and every other constant the unit meets on its way
  is zero there too, unless it only scales (``SCALING_INPUTS``: a BatchNorm's scale and
  variance, a Mul's factor, a divisor): the unit is 0 wherever it is read, so zeroing the
  readers' slices changes nothing; or
- every slice that writes the unit is zero and, though a constant shifts it (a BatchNorm's shift
  folded into the bias), it is exactly 0 wherever a weight reads it (a Relu of a negative
  shift): written as zero, the unit is a constant whatever the input, so one run measures it.

These rules are the candidates, not the proof: what lies between (a Sigmoid of 0 is 0.5, a
LayerNorm over the channels is masked by the oracle) is checked by running the candidates'
masked original against the original in onnxruntime on the run's (seeded random) feeds, with
the lossless validation's tolerance; a group whose candidates fail keeps them all.

Dead on the data (lossy in principle): a unit whose every reading weight reads an activation
that is exactly zero on every calibration sample (``analysis.importance.calibration_dead``). The
removal is checked by the oracle gate like any cut.

Whatever is removed, a group keeps at least one unit, no member loses all its positions, and a
grouped conv's groups lose alike (``selection.feasible``). A model that cannot be analysed (no groups, a quantized
weight, a custom op, a rule that raises) has no dead units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsec.analysis.groups import ChannelGroup, GroupAnalysis, kept_positions
from sparsec.analysis.importance import ImportanceContext, calibration_dead
from sparsec.analysis.inputs import bind_shapes, random_inputs
from sparsec.analysis.weight_sites import weight_sites
from sparsec.errors import InputError
from sparsec.ir import runtime
from sparsec.pruning.oracle import apply_masks, channel_masks
from sparsec.pruning.selection import feasible
from sparsec.validate import DEFAULT_ATOL, DEFAULT_RTOL, output_metrics

# Constant inputs that only scale what flows through (op type → input indices): a zero channel
# stays zero whatever they hold. Any other constant (a bias, an Add's term, a BatchNorm's shift or
# mean) must be zero at the unit for a zero producer to make a dead unit.
SCALING_INPUTS: dict[str, set[int]] = {
    "BatchNormalization": {1, 4},
    "InstanceNormalization": {1},
    "Mul": {0, 1},
    "Div": {1},
    "PRelu": {1},
}
GROUPED_CONVS = ("Conv", "ConvTranspose")


@dataclass
class DeadUnits:
    """Per group id, the units found dead: ``static`` (all-zero weights, verified exact) and
    ``calibrated`` (zero on every calibration sample, not statically dead); ``refused``: groups
    whose static candidates failed the check in onnxruntime."""

    static: dict[int, np.ndarray] = field(default_factory=dict)
    calibrated: dict[int, np.ndarray] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)

    def removed(self) -> dict[int, np.ndarray]:
        """group id → every dead unit (static and calibrated), sorted."""
        ids = set(self.static) | set(self.calibrated)
        empty = np.zeros(0, dtype=np.int64)
        return {
            gid: np.union1d(self.static.get(gid, empty), self.calibrated.get(gid, empty))
            for gid in ids
        }


def has_zero_slices(model) -> bool:
    """Whether some float compute weight has an all-zero slice along any axis: without one no
    unit is statically dead, and no group analysis is needed (one pass over each weight that
    holds a zero at all)."""
    for site in weight_sites(model)[0]:
        array = model.constant(model.value(site.name))
        if array is None or array.dtype.kind != "f" or np.count_nonzero(array) == array.size:
            continue
        nonzero = array != 0
        for axis in range(array.ndim):
            other = tuple(a for a in range(array.ndim) if a != axis)
            if not nonzero.any(axis=other).all():
                return True
    return False


def static_candidates(model, analysis: GroupAnalysis) -> dict[int, np.ndarray]:
    """group id → the units the static rules name (module docstring), prunable groups only."""
    axes = {site.name: site.axis for site in weight_sites(model)[0]}
    found, shifted = {}, {}
    for group in analysis.groups:
        if not group.prunable or group.lossy:
            continue
        readers, writers = _readers_and_writers(model, group, axes)
        dead = _zero_units(model, group, readers) if readers else np.zeros(group.units, bool)
        if writers:
            written_zero = _zero_units(model, group, writers)
            dead |= written_zero & _unshifted_units(model, group)
            shifted[group.id] = written_zero & ~dead
        found[group.id] = dead
    for gid, dead in _zero_where_read(model, analysis, shifted).items():
        found[gid] |= dead
    return {gid: np.flatnonzero(dead) for gid, dead in found.items() if dead.any()}


def _zero_where_read(model, analysis: GroupAnalysis, shifted: dict) -> dict[int, np.ndarray]:
    """Of the units written as zero but met by a non-zero constant (a folded BatchNorm's shift),
    those zero wherever a weight reads them (a Relu of a negative shift). Written as zero, such a
    unit is a constant whatever the input, so one run on seeded random inputs (seed 1: the check
    after uses seed 0) measures it (``importance.calibration_dead``)."""
    if not any(units.any() for units in shifted.values()):
        return {}
    try:
        ctx = ImportanceContext(model, calibration=random_inputs(model, bind_shapes(model), 1))
        groups = {group.id: group for group in analysis.groups}
        return {
            gid: units & calibration_dead(groups[gid], ctx)
            for gid, units in shifted.items()
            if units.any()
        }
    except InputError:  # a model that does not run here: nothing measured
        return {}


def _readers_and_writers(model, group: ChannelGroup, axes: dict[str, int]) -> tuple[list, list]:
    """The group's compute members that read its units (along the weight's contraction axis)
    and those that write them; a grouped conv's weight does both."""
    readers, writers = [], []
    for member in group.compute:
        name, axis = member
        grouped = _grouped_conv_weight(model, name)
        if axes.get(name) == axis or grouped:
            readers.append(member)
        if axes.get(name) != axis or grouped:
            writers.append(member)
    return readers, writers


def _grouped_conv_weight(model, name: str) -> bool:
    value = model.value(name)
    return value is not None and any(
        node.op_type in GROUPED_CONVS and int(model.attr(node, "group", 1)) > 1
        for node in model.consumers(value)
    )


def _zero_units(model, group: ChannelGroup, members: list) -> np.ndarray:
    """Per unit: whether its slices in every one of ``members`` are all zero (a weight that is
    not a float constant, e.g. a quantized one, counts as non-zero)."""
    total = np.zeros(group.units)
    for member in members:
        count = _nonzero_positions(model, group, member)
        if count is None:
            return np.zeros(group.units, dtype=bool)
        total += count
    return total == 0


def _unshifted_units(model, group: ChannelGroup) -> np.ndarray:
    """Per unit: whether every constant member that is no compute weight is zero at the unit or
    only scales it (``SCALING_INPUTS``), so that a zero channel stays zero."""
    compute = set(group.compute)
    return _zero_units(
        model,
        group,
        [m for m in group.constants if m not in compute and not _only_scales(model, m[0])],
    )


def _nonzero_positions(model, group: ChannelGroup, member) -> np.ndarray | None:
    """Per unit: how many of its positions in ``member`` hold a non-zero slice (None when the
    member is no float constant)."""
    name, axis = member
    array = model.constant(model.value(name))
    if array is None or array.dtype.kind != "f":
        return None
    other = tuple(a for a in range(array.ndim) if a != axis)
    per_position = (array != 0).any(axis=other) if other else array != 0
    return np.bincount(group.atoms[member], weights=per_position, minlength=group.units)


def _only_scales(model, name: str) -> bool:
    value = model.value(name)
    return value is not None and all(
        use.idx in SCALING_INPUTS.get(use.node.op_type, ()) for use in value.uses()
    )


def verified(
    model, analysis: GroupAnalysis, candidates: dict[int, np.ndarray]
) -> tuple[dict[int, np.ndarray], list[int]]:
    """The candidates whose masked original equals ``model`` in onnxruntime on the run's feeds
    (seeded random at ``Model.input_shapes``, as ``compress`` validates), and the ids of the
    groups refused. All groups are checked in one run; when that fails, halves of them in turn
    (a few runs find the failing groups), and the groups that passed once more together."""
    if not candidates:
        return {}, []
    try:
        feeds = random_inputs(model, bind_shapes(model), 0)
        want = runtime.session_for(model, optimization="disable").run(feeds)
    except InputError:  # a model that does not run here (or huge feeds): no verified dead units
        return {}, sorted(candidates)

    def equal(ids: list[int]) -> bool:
        return _masked_equal(model, analysis, {gid: candidates[gid] for gid in ids}, feeds, want)

    passed = _passing(sorted(candidates), equal)
    if len(passed) < len(candidates) and passed and not equal(passed):
        passed = []
    return {gid: candidates[gid] for gid in passed}, sorted(set(candidates) - set(passed))


def _passing(ids: list[int], equal) -> list[int]:
    """The ids that pass ``equal``, by halving the sets that fail."""
    if not ids or equal(ids):
        return ids
    if len(ids) == 1:
        return []
    half = len(ids) // 2
    return _passing(ids[:half], equal) + _passing(ids[half:], equal)


def _masked_equal(model, analysis, removed: dict[int, np.ndarray], feeds, want) -> bool:
    masked = model.copy()
    apply_masks(masked, channel_masks(model, analysis, kept_positions(analysis, removed)))
    try:
        got = runtime.session_for(masked, optimization="disable").run(feeds)
    except InputError:  # a masked copy that does not run is not equal
        return False
    return all(
        name in got and output_metrics(name, ref, got[name], DEFAULT_RTOL, DEFAULT_ATOL).passed
        for name, ref in want.items()
    )


def calibrated_dead(
    model, analysis: GroupAnalysis, samples, exclude: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """group id → units zero on every calibration sample where every weight reads them, less
    the ``exclude``d (statically dead) ones; prunable groups only."""
    ctx = ImportanceContext(model, calibration=samples)
    found = {}
    for group in analysis.groups:
        if not group.prunable:
            continue
        dead = calibration_dead(group, ctx)
        units = np.setdiff1d(np.flatnonzero(dead), exclude.get(group.id, []))
        if len(units):
            found[group.id] = units
    return found


def within_limits(analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """``removed`` less what would empty a member or a whole group (one unit given back)."""
    groups = {group.id: group for group in analysis.groups}
    limited = {}
    for gid, units in removed.items():
        group = groups[gid]
        kept = feasible(group, units, np.zeros(group.units))
        if len(kept) >= group.units:  # one unit back, and balanced again around it
            kept = feasible(group, kept[1:], np.zeros(group.units))
        if len(kept):
            limited[gid] = kept
    return limited
