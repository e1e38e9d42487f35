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
from sparsec.pruning import weights
from sparsec.pruning.weights import WeightOptions


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
        score: str = "magnitude",
        calibration: str = "",
        batch_size: int = 16,
        calibration_samples: int = 0,
        recover: bool = True,
        seed: int = 0,
        exclude: str = "",
    ) -> None:
        self.nm, self.ratio, self.block, self.scope, self.score = nm, ratio, block, scope, score
        self.embeddings, self.exclude = embeddings, exclude
        self.calibration, self.batch_size = calibration, batch_size
        self.calibration_samples, self.recover, self.seed = calibration_samples, recover, seed

    def settings(self) -> WeightOptions:
        """The options as ``pruning.weights`` reads them."""
        return WeightOptions(**{f.name: getattr(self, f.name) for f in fields(WeightOptions)})

    def check_options(self) -> None:
        weights.check(self.settings())

    def call(self, model) -> PassResult:
        return weights.sparsify(model, self.settings(), self.calibration_data(model))
