"""``dead-channels``: remove the channels whose removal changes nothing (``pruning.dead``).

Without calibration the pass is exact: it removes only statically dead units (all-zero weights,
as a model pruned before by masking leaves them), each group's removal checked against the model
in onnxruntime before it is made, and sets no oracle reference, so a pipeline holding it stays
lossless (``compress`` checks the output against the original itself). It runs in the default
pipeline (plain ``sparsec compress``). A model with no all-zero weight slice costs one look at
its weights, no group analysis. With ``calibration`` it also removes the units that are zero on
every calibration sample wherever a weight reads them: lossy in principle (another input may
light them up), so it then returns the masked original, which the oracle gate checks.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.analysis.groups import GroupAnalysis, find_channel_groups
from sparsec.passes.base import InPlacePass, PassResult
from sparsec.passes.calibrated import CalibratedPass
from sparsec.pruning import dead
from sparsec.pruning.surgery import prune_channels
from sparsec.results import Diagnostic


class DeadChannelsPass(CalibratedPass, InPlacePass):
    """Remove dead channels: all-zero weights (exact), and with calibration zero activations."""

    name: ClassVar[str] = "dead-channels"
    summary: ClassVar[str] = (
        "Remove channels whose weights are all zero (exact), or that are zero on calibration data."
    )

    def __init__(self, calibration: str = "", calibration_samples: int = 0, seed: int = 0) -> None:
        """Options of ``dead-channels``.

        Args:
            calibration: Calibration samples (a .npz, a folder of .npz / NAME.npy files, or
                ``random``): also remove the channels that are exactly zero on every sample
                wherever a weight reads them (checked by the oracle gate, not against the
                original); empty: statically dead channels only (exact).
            calibration_samples: Use the first N calibration samples (0: all; 64 with
                ``random``).
            seed: Seed of ``calibration=random``.
        """
        self.calibration, self.calibration_samples, self.seed = (
            calibration,
            calibration_samples,
            seed,
        )

    @property
    def lossy(self) -> bool:  # type: ignore[override]  # with calibration: lossy, runs once
        return bool(self.calibration)

    def call(self, model) -> PassResult:
        samples = self.calibration_data(model)
        if samples is None and not dead.has_zero_slices(model):
            return PassResult(model, modified=False)
        analysis = _analysis(model)
        if analysis is None:
            return PassResult(model, modified=False)
        found = _dead_units(model, analysis, samples)
        removed = dead.within_limits(analysis, found.removed())
        if not removed:
            return PassResult(model, modified=False, diagnostics=_refusals(analysis, found))
        units = sum(len(u) for u in removed.values())
        static = sum(int(np.isin(u, found.static.get(g, [])).sum()) for g, u in removed.items())
        result = prune_channels(model, analysis, removed)
        if static == units:  # exact: the original itself is the reference
            result.reference = None
            result.artifacts.pop("plan", None)
        result.stats = {"dead_channels_removed": units, "dead_groups": len(removed)}
        result.diagnostics = [
            Diagnostic(
                "info",
                "dead-channels.removed",
                f"removed {units} dead channels in {len(removed)} groups "
                f"(all-zero weights: {static}, zero on calibration: {units - static})",
            ),
            *_refusals(analysis, found),
        ]
        return result


def _analysis(model) -> GroupAnalysis | None:
    """The model's channel groups, or None when it cannot be analysed (no dead units then)."""
    try:
        return find_channel_groups(model)  # at the run's input shapes (Model.input_shapes)
    except Exception:  # a model the analysis cannot read has no dead units
        return None


def _dead_units(model, analysis: GroupAnalysis, samples) -> dead.DeadUnits:
    """Static candidates verified in onnxruntime (kept for the model's version, so a fixed-point
    pipeline checks them once), then with ``samples`` the units dead on them."""
    static, refused = model.cached(
        "dead_channels:static",
        lambda: dead.verified(model, analysis, dead.static_candidates(model, analysis)),
    )
    found = dead.DeadUnits(static=static, refused=refused)
    if samples is not None:
        found.calibrated = dead.calibrated_dead(model, analysis, samples, static)
    return found


def _refusals(analysis: GroupAnalysis, found: dead.DeadUnits) -> list[Diagnostic]:
    """An info line per group whose all-zero channels stay (a pipeline says it once however many
    fixed-point rounds see it)."""
    groups = {group.id: group for group in analysis.groups}
    return [
        Diagnostic(
            "info",
            "dead-channels.kept",
            f"kept the all-zero channels of {groups[gid].describe()}: something after them makes "
            "them non-zero (removing them changes the outputs in onnxruntime)",
        )
        for gid in found.refused
    ]
