"""``drop-blocks``: depth pruning, remove the least important blocks (residual, projection,
plain layers, transformer layers) of a model.

The pass is its options and one call: ``pruning.blocks.drop_blocks`` scores, chooses and cuts
(its docstring states the algebra and invariants). The result is exact against its reference:
the original with each dropped branch multiplied by zero (spans: rewired), with the refit
weights when ``recover`` ran. Composed with a later ``channel-prune`` in one pipeline, the
channel cut is replayed on that reference (``Pipeline``), so the whole run is checked against
the original.
"""

from __future__ import annotations

from typing import ClassVar

from sparsec.analysis.activations import RANDOM
from sparsec.passes.base import Diagnostic, InPlacePass, PassResult
from sparsec.passes.calibrated import CalibratedPass
from sparsec.pruning.blocks import DropOptions, check, drop_blocks
from sparsec.pruning.reconstruct.result import reconstructed


class DropBlocksPass(CalibratedPass, InPlacePass):
    """Remove the ``count`` least important blocks (exact vs the original with their branches
    zeroed)."""

    name: ClassVar[str] = "drop-blocks"
    summary: ClassVar[str] = (
        "Remove the least important residual blocks and layers (depth pruning)."
    )
    lossy: ClassVar[bool] = True

    def __init__(
        self,
        count: float = 1,
        importance: str = "influence",
        seed: int = 0,
        calibration: str = "",
        calibration_samples: int = 0,
        recover: bool | str = True,
        batch_size: int = 16,
    ) -> None:
        """Options of ``drop-blocks``.

        Args:
            count: How many blocks to remove: an integer >= 1 (finest units: residual blocks,
                attention / MLP sub-blocks, plain layers; a whole transformer layer counts as
                its two sub-blocks) or a fraction in (0, 1) of the finest units.
            importance: How blocks are ranked (lowest removed first): ``influence`` (1 − cos
                between a block's input and output per token, averaged over ``calibration``:
                ShortGPT's block influence), ``output`` (the output error of removing the block
                alone, on ``calibration``), ``norm`` (no data: the gain of the branch's last
                weight and its normalization) or ``random`` (seeded).
            seed: Seed of ``importance=random`` and ``calibration=random``.
            calibration: Calibration samples: a .npz (arrays keyed by input name, axis 0 =
                samples), a folder of .npz / NAME.npy files, or ``random``.
            calibration_samples: Use the first N calibration samples (0: all; 64 with
                ``random``).
            recover: With ``calibration``: refit the layers after each removed block and
                recalibrate the normalizations reading drifted values (least squares against
                the original's outputs); ``"block"``: then block reconstruction (torch).
            batch_size: Calibration samples per onnxruntime run.
        """
        whole = isinstance(count, (int, float)) and count >= 1 and float(count).is_integer()
        self.count = int(count) if whole else count  # "count=2" reads back as 2, not 2.0
        self.importance, self.seed = importance, seed
        self.calibration, self.calibration_samples = calibration, calibration_samples
        self.recover, self.batch_size = recover, batch_size

    def describe(self, always: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
        """Always names the count and importance (the record of how a model was made)."""
        return super().describe(always=(*always, "count", "importance"), skip=skip)

    def settings(self) -> DropOptions:
        """The options as ``pruning.blocks`` reads them."""
        return DropOptions(
            count=self.count,
            importance=self.importance,
            seed=self.seed,
            recover=bool(self.recover),
            batch_size=self.batch_size,
        )

    def check_options(self) -> None:
        check(self.settings(), bool(self.calibration))

    def call(self, model) -> PassResult:
        samples = self.calibration_data(model)
        result = reconstructed(
            self.recover,
            model,
            samples,
            lambda seen: drop_blocks(model, self.settings(), seen),
            batch_size=self.batch_size,
            seed=self.seed,
        )
        if self.calibration == RANDOM:
            result.diagnostics.append(_random_calibration())
        return result


def _random_calibration() -> Diagnostic:
    return Diagnostic(
        "warning",
        "calibration.random",
        "calibration from random inputs (--calibration random): block influence and the "
        "refit see no real activations",
    )
