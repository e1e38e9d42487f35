"""Passes that read calibration data (``calibration``, ``calibration_samples``, ``seed``).

The data is read, and refused when it does not fit the model, in ``prepare``: a ``Pipeline``
prepares every member before its first pass runs, so bad data stops a run before any work,
and the samples read there are the ones ``call`` uses (read once). A pass run on its own reads
them in ``call``.
"""

from __future__ import annotations

from typing import Any

from sparsec.analysis.activations import load_calibration


class CalibratedPass:
    """Mixin: ``prepare`` reads the calibration samples, ``calibration_data`` hands them over."""

    calibration: str
    calibration_samples: int
    seed: int
    _prepared: dict[str, Any] | None = None

    def prepare(self, model) -> None:
        if self.calibration and self._prepared is None:
            self._prepared = self._read_calibration(model)

    def calibration_data(self, model) -> dict[str, Any] | None:
        """The samples ``prepare`` read (handed over once, then not held), else read now; None
        without calibration."""
        samples, self._prepared = self._prepared, None
        return (
            samples
            if samples is not None or not self.calibration
            else self._read_calibration(model)
        )

    def _read_calibration(self, model) -> dict[str, Any]:
        return load_calibration(self.calibration, model, self.calibration_samples, self.seed)
