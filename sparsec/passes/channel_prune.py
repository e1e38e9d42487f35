"""``channel-prune``: remove a fraction of the channels of every prunable channel group.

The pass is its options and one call: ``pruning.channels`` decides and cuts one round (its
docstring states the invariants), ``pruning.schedule`` spreads the cut over ``steps`` rounds.
With ``calibration`` (a ``.npz``, a folder, or ``random``), ``importance=activation`` can rank
by ‖X_c‖·‖W_c‖, and ``recover`` (on by default) refits the layers the cut reached; the oracle
reference then carries the refit weights, so the gate stays exact. ``lossy_couplings`` (on by
default with ``calibration``) also prunes groups whose channels a node mixes (LRN): the oracle
runs those nodes on the kept channels, and the report gives the loss against the plain masked
original.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import ClassVar

from sparsec.passes.base import InPlacePass, PassResult
from sparsec.passes.calibrated import CalibratedPass
from sparsec.pruning import channels, layer_ratios, schedule
from sparsec.pruning import exclude as exclude_patterns
from sparsec.pruning.channels import ChannelOptions
from sparsec.pruning.reconstruct.result import reconstructed
from sparsec.spec.options import default_importance


class ChannelPrunePass(CalibratedPass, InPlacePass):
    """Remove ``ratio`` of the channels of every prunable group (exact vs the masked original)."""

    name: ClassVar[str] = "channel-prune"
    summary: ClassVar[str] = "Remove a fraction of the channels of every prunable channel group."
    lossy: ClassVar[bool] = True
    writes_plan: ClassVar[bool] = True

    def __init__(
        self,
        ratio: float = 0.5,
        importance: str | None = None,
        scope: str = "local",
        max_layer_ratio: float = 0.9,
        round_to: int = 1,
        exclude: str | tuple[str, ...] = "",
        seed: int = 0,
        plan: str = "",
        heads: float = -1.0,
        ffn: float = -1.0,
        calibration: str = "",
        calibration_samples: int = 0,
        recover: bool | str = True,
        steps: int = 1,
        batch_size: int = 16,
        target_macs: float = 0.0,
        target_params: float = 0.0,
        ratios: str | Mapping[str, float] | list[str] = "",
        lossy_couplings: bool | None = None,
        jobs: int = 1,
        depth: bool = True,
        executor: str = "local",
        target_latency: float = 0.0,
    ) -> None:
        """Options of ``channel-prune``.

        Args:
            ratio: Fraction of the channels of every prunable group to remove, in [0, 1).
            importance: How channels are ranked: ``l1`` / ``l2`` (norm of all their weight
                slices), ``bn-scale`` (BatchNorm |gamma|), ``random`` (seeded) or
                ``activation`` (‖x‖·‖w‖ at the layers reading them; needs ``calibration``);
                unset: ``activation`` with real calibration data, else ``l1`` (as the CLI).
            scope: ``local``: every group loses the same fraction; ``global``: rank the
                channels of all groups together.
            max_layer_ratio: The most any one group may lose, in (0, 1], in both scopes.
            round_to: Keep channel counts at multiples of this (e.g. 8 or 16 for fast kernels)
                where the group allows; 0: per segment, the width near the ratio's that
                onnxruntime runs fastest per channel (``pruning.fast_widths``).
            exclude: Glob patterns (a list, or ``|``-separated); a group touching a node or
                initializer whose name matches one is not pruned.
            seed: Seed of ``importance=random`` and ``calibration=random``.
            plan: A plan file (JSON, written by ``--plan-out``) to apply instead of choosing
                channels.
            heads: Fraction of the attention heads of every block to remove, overriding
                ``ratio`` for head groups; -1: as ``ratio``.
            ffn: Fraction of the hidden units of every MLP to remove, overriding ``ratio`` for
                those groups; -1: as ``ratio``.
            calibration: Calibration samples: a .npz (arrays keyed by input name, axis 0 =
                samples), a folder of .npz / NAME.npy files, or ``random``; read by
                ``importance=activation``, the targets and the refit.
            calibration_samples: Use the first N calibration samples (0: all; 64 with
                ``random``).
            recover: With ``calibration``: refit the layers the cut reached (least squares
                against the original's outputs, bias compensation included);
                ``"block"``: then block reconstruction (``pruning.reconstruct``, needs torch).
            steps: Reach the ratios in this many prune → refit rounds (1 with a plan).
            batch_size: Calibration samples per onnxruntime run when activations are
                measured.
            target_macs: Instead of one ratio: prune each group by the ratio (from measured
                sensitivity on ``calibration``) that reaches this fraction of the original
                MACs with the least estimated error; 0: off.
            target_params: As ``target_macs``, for the parameter count; 0: off.
            ratios: Per-layer ratios replacing ``ratio`` (not given with it): ``GLOB=R`` pairs
                separated by ``|``, a list of ``GLOB=R`` texts (``["se.*=0.5", "*=0.25"]``) or
                a mapping in Python; a group takes the ratio of the most specific
                pattern matching a layer whose output channels it holds; groups no pattern
                matches are kept.
            lossy_couplings: Also prune groups whose channels a node mixes (LRN's window across
                channels): not exact (the kept channels' values change); the oracle runs those
                nodes on the kept channels and the report gives the difference from the plain
                masked original. Unset: on with ``calibration`` (the refit then compensates),
                else off (such groups stay whole, saying so).
            jobs: Worker processes measuring sensitivity for a target (the result does not
                depend on it; each holds one copy of the model).
            executor: Where those workers run: ``local`` processes, or Ray actors (``ray``,
                ``ray://HOST:PORT``, a cluster's ``HOST:PORT``; ``sparsec.executor``).
            depth: With a target: the model's removable blocks (``analyze --blocks``) compete
                with the channel groups, each measured removed alone; a block is dropped where
                that costs less output error than width (``pruning.depth_width``). Off:
                channels only.
            target_latency: Instead of ``ratio``: the ratio whose pruned model's measured
                1-thread latency is at most this fraction of the original's, found by bisection
                (``pruning.latency_target``); 0: off.
        """
        self.ratio, self.scope = ratio, scope
        self.importance = importance or default_importance(calibration)
        self.ratios = _ratios_text(ratios)
        self.heads, self.ffn = heads, ffn
        self.max_layer_ratio, self.round_to = max_layer_ratio, round_to
        self.exclude = exclude_patterns.joined(exclude)
        self.seed, self.plan = seed, plan
        self.calibration, self.calibration_samples, self.recover = (
            calibration,
            calibration_samples,
            recover,
        )
        self.steps, self.batch_size = steps, batch_size
        self.target_macs, self.target_params = target_macs, target_params
        self.lossy_couplings = (
            bool(calibration) if lossy_couplings is None else bool(lossy_couplings)
        )
        self.jobs, self.depth, self.executor = jobs, depth, executor
        self.target_latency = target_latency

    def describe(self, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
        """Always names the ratio and importance (the record of how a model was made); with a
        plan, only the plan and the exclusions matter; lossy_couplings when not its default;
        never jobs or executor (how fast and where, not what)."""
        skip = (*skip, "jobs", "executor")
        if self.lossy_couplings == bool(self.calibration):
            skip = (*skip, "lossy_couplings")
        if self.plan:
            return super().describe(
                skip=(
                    *skip,
                    "ratio",
                    "importance",
                    "scope",
                    "max_layer_ratio",
                    "round_to",
                    "seed",
                    "heads",
                    "ffn",
                    "ratios",
                )
            )
        if self.ratios:
            return super().describe(always=("ratios", "importance"), skip=(*skip, "ratio"))
        return super().describe(always=("ratio", "importance"), skip=skip)

    def settings(self) -> ChannelOptions:
        """The options as ``pruning.channels`` reads them."""
        names = [
            f.name for f in fields(ChannelOptions) if hasattr(self, f.name)
        ]  # unit_targets: a schedule's own
        return ChannelOptions(**{name: getattr(self, name) for name in names})

    def check_options(self) -> None:
        channels.check(self.settings())

    def call(self, model) -> PassResult:
        samples, options = self.calibration_data(model), self.settings()
        return reconstructed(
            self.recover,
            model,
            samples,
            lambda seen: (
                channels.prune_round(model, options, seen)
                if options.steps == 1
                else schedule.run_steps(options, model, seen)
            ),
            batch_size=self.batch_size,
            seed=self.seed,
        )


def _ratios_text(ratios: str | Mapping[str, float]) -> str:
    """Per-layer ratios as the option's text (``|``-separated, so that ``describe()`` reads back
    in ``--passes``); text that does not parse is kept for ``check_options`` to refuse."""
    try:
        return layer_ratios.text(layer_ratios.parse(ratios), "|") if ratios else ""
    except ValueError:
        if isinstance(ratios, Mapping):
            return "|".join(f"{k}={v}" for k, v in ratios.items())
        return str(ratios)
