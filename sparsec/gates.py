"""Quality gates: a limit per figure, checked after validation and before anything is written.

Each gate is an option of ``sparsec compress`` (``max_top1_drop`` is ``--max-top1-drop``) whose
figure is measured on the run's results:

- ``max_top1_drop``: the largest top-1 drop of any output, in percentage points: accuracy
  against the evaluation labels when there are labels, else 100 × (1 − agreement with the
  original's top-1);
- ``min_cosine``: the smallest mean cosine of any output with the original's;
- ``max_params_ratio`` / ``max_macs_ratio``: after / before;
- ``max_bytes``: the output's bytes (model file + external data);
- ``max_latency_ratio``: the ratio of the two median latencies of interleaved timed runs.

A ``max_`` gate passes when the figure is ≤ its limit, a ``min_`` gate when it is ≥. A gate
whose figure cannot be measured (no classifier-shaped output for top-1) is a usage error, not a
pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from sparsec.errors import UsageError

UNITS = {
    "max_top1_drop": "points",
    "min_cosine": "cosine",
    "max_params_ratio": "ratio",
    "max_macs_ratio": "ratio",
    "max_bytes": "bytes",
    "max_latency_ratio": "ratio",
}
QUALITY_GATES = ("max_top1_drop", "min_cosine")


@dataclass
class GateResult:
    option: str  # the flag, e.g. "--max-top1-drop"
    limit: float
    measured: float
    unit: str
    passed: bool
    detail: str

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line for a failure: the flag, the figure and the limit, and what was measured."""
        relation = "below" if self.option.startswith("--min") else "above"
        return (
            f"gate {self.option} failed: {_figure(self.measured, self.unit)} is {relation} the "
            f"limit {_figure(self.limit, self.unit)} ({self.detail})"
        )


def _figure(value: float, unit: str) -> str:
    if unit == "points":
        return f"{value:.2f} points"
    if unit == "bytes":
        return f"{int(value):,} bytes"
    return f"{value:.4g}"


def check(
    limits: Mapping[str, float], measured: Mapping[str, tuple[float | None, str]]
) -> list[GateResult]:
    """A result per gate in ``limits`` (option name → limit), from ``measured`` (option name →
    (figure, what it was measured on)); a gate without a figure is a ``UsageError``."""
    results = []
    for name, limit in limits.items():
        value, detail = measured.get(name, (None, ""))
        if value is None:
            raise UsageError(
                f"--{name.replace('_', '-')} cannot be measured: {detail or 'no figure'}"
            )
        passed = value >= limit if name.startswith("min_") else value <= limit
        results.append(
            GateResult("--" + name.replace("_", "-"), limit, value, UNITS[name], passed, detail)
        )
    return results


def failure_line(results: list[GateResult]) -> str | None:
    """The first missed gate's line, with a count of the others; None when all passed."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return None
    more = f" (and {len(failed) - 1} more gate(s) failed)" if len(failed) > 1 else ""
    return failed[0].line() + more
