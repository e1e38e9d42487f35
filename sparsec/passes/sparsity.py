"""``weight-sparsity``: N:M, unstructured and block sparsity on compute weights (zeros kept dense).

The pass is its options and one call: ``pruning.weights`` chooses the masks, zeros the weights
and, with ``calibration`` (and ``recover``, on by default), refits the masked layers; its
docstring states the invariants. The result is its own oracle reference.
"""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

from sparsec.passes.base import InPlacePass, PassResult
from sparsec.passes.calibrated import CalibratedPass
from sparsec.pruning import exclude as exclude_patterns
from sparsec.pruning import weights
from sparsec.pruning.reconstruct.result import reconstructed
from sparsec.pruning.weights import WeightOptions
from sparsec.spec.options import default_importance


class WeightSparsityPass(CalibratedPass, InPlacePass):
    """Zero weights in N:M, unstructured or block patterns along each weight's reduction axis."""

    name: ClassVar[str] = "weight-sparsity"
    summary: ClassVar[str] = (
        "Zero weights in N:M, unstructured or block patterns (zeros kept dense)."
    )
    lossy: ClassVar[bool] = True

    def __init__(
        self,
        nm: str = "",
        ratio: float = 0.0,
        block: str = "",
        scope: str = "local",
        embeddings: bool = False,
        score: str | None = None,
        calibration: str = "",
        batch_size: int = 16,
        calibration_samples: int = 0,
        recover: bool | str = True,
        seed: int = 0,
        exclude: str | tuple[str, ...] = "",
    ) -> None:
        """Options of ``weight-sparsity`` (give ``nm`` or ``ratio``, not both).

        Args:
            nm: Keep the N largest of every M consecutive weights along each weight's
                reduction axis, e.g. ``2:4`` (0 < N < M <= 256).
            ratio: Instead of ``nm``: zero this fraction of the weights, in (0, 1)
                (unstructured, or whole blocks with ``block``).
            block: With ``ratio``: zero whole RxC blocks (e.g. ``1x8``, ``4x4``) of each weight
                seen as [rows, reduction axis], lowest mean magnitude first.
            scope: ``local``: every weight loses ``ratio`` of its entries; ``global``: rank
                the weights of all layers together.
            embeddings: Also sparsify embedding tables (float initializers read by Gather),
                along each gathered row.
            score: How weights are ranked: ``magnitude`` (|w|), ``wanda`` (|w|·‖x‖, needs
                ``calibration``) or ``sparsegpt`` (with ``nm``, ``calibration`` and
                ``recover``: each layer's mask chosen again in the refit); unset: ``wanda`` with
                real calibration data, else ``magnitude`` (as the CLI).
            calibration: Calibration samples: a .npz (arrays keyed by input name, axis 0 =
                samples), a folder of .npz / NAME.npy files, or ``random``; read by ``wanda``
                and ``sparsegpt`` and by the refit.
            batch_size: Calibration samples per onnxruntime run when activations are
                measured.
            calibration_samples: Use the first N calibration samples (0: all; 64 with
                ``random``).
            recover: With ``calibration``: refit the masked layers by least squares, zeros
                kept; ``"block"``: then block reconstruction (``pruning.reconstruct``, torch).
            seed: Seed of ``calibration=random``.
            exclude: Glob patterns (a list, or ``|``-separated); a weight whose name, or the name
                of a node reading it, matches one stays dense.
        """
        self.nm, self.ratio, self.block, self.scope = nm, ratio, block, scope
        self.score = score or default_importance(calibration, weights=True)
        self.embeddings, self.exclude = embeddings, exclude_patterns.joined(exclude)
        self.calibration, self.batch_size = calibration, batch_size
        self.calibration_samples, self.recover, self.seed = calibration_samples, recover, seed

    def settings(self) -> WeightOptions:
        """The options as ``pruning.weights`` reads them."""
        return WeightOptions(**{f.name: getattr(self, f.name) for f in fields(WeightOptions)})

    def check_options(self) -> None:
        weights.check(self.settings())

    def call(self, model) -> PassResult:
        samples = self.calibration_data(model)
        return reconstructed(
            self.recover,
            model,
            samples,
            lambda seen: weights.sparsify(model, self.settings(), seen),
            batch_size=self.batch_size,
            seed=self.seed or 0,
        )
