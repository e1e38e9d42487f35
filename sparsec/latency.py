"""Latency of a candidate model against its reference, measured interleaved.

Both sessions first run ``warmup`` untimed times each; then ``runs`` rounds each run both once,
alternating which goes first (the reference in even rounds, the candidate in odd ones), so that
drift, thermal throttling and noisy neighbours on a shared machine hit both alike. Each run is
timed alone with ``time.perf_counter``.

Definitions (times in milliseconds, round i giving r_i and c_i):
- ``reference_ms`` = median(r), ``candidate_ms`` = median(c);
- ``ratio`` = candidate_ms / reference_ms (the ratio of the medians);
- ``noise`` = (Q3 − Q1) / 2 / median(q) over the per-round ratios q_i = c_i / r_i, quartiles by
  linear interpolation (numpy's default): the half interquartile range of the paired ratios
  relative to their median, so 0.02 reads "±2 %". A ratio whose denominator is 0 is 1.0 when the
  numerator is 0 too, else infinite (strict JSON writes infinity as null).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from time import perf_counter

import numpy as np


@dataclass
class LatencyComparison:
    reference_ms: float  # median of the reference's timed runs
    candidate_ms: float  # median of the candidate's
    ratio: float  # candidate_ms / reference_ms
    noise: float  # half the IQR of the per-round ratios over their median
    runs: int  # timed runs per model

    def to_json(self) -> dict:
        """The figures as strict JSON values (a non-finite one is null)."""
        return {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in asdict(self).items()
        }


def compare_latency(
    reference_session, candidate_session, feeds: dict, runs: int = 10, warmup: int = 2
) -> LatencyComparison | None:
    """Time both sessions on ``feeds`` interleaved (see the module docstring); None when
    ``runs`` <= 0."""
    if runs <= 0:
        return None
    for _ in range(warmup):
        reference_session.run(feeds)
        candidate_session.run(feeds)
    reference, candidate = [], []
    for round_index in range(runs):
        order = [(reference_session, reference), (candidate_session, candidate)]
        for session, times in order if round_index % 2 == 0 else order[::-1]:
            times.append(timed_ms(session, feeds))
    return summarize(reference, candidate)


def summarize(reference: list[float], candidate: list[float]) -> LatencyComparison:
    """The comparison of paired timings (milliseconds, one pair per round)."""
    ratios = np.array([_ratio(c, r) for r, c in zip(reference, candidate)])
    reference_ms, candidate_ms = float(np.median(reference)), float(np.median(candidate))
    return LatencyComparison(
        reference_ms=reference_ms,
        candidate_ms=candidate_ms,
        ratio=_ratio(candidate_ms, reference_ms),
        noise=_noise(ratios),
        runs=len(reference),
    )


def timed_ms(session, feeds: dict) -> float:
    """Milliseconds of one ``session.run(feeds)``."""
    start = perf_counter()
    session.run(feeds)
    return (perf_counter() - start) * 1000.0


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 1.0 if numerator == 0 else math.inf
    return float(numerator / denominator)


def _noise(ratios: np.ndarray) -> float:
    """Half the interquartile range of ``ratios`` over their median (infinite when undefined)."""
    if not np.isfinite(ratios).all():
        return math.inf
    first, third = np.percentile(ratios, [25, 75])
    spread = float(third - first) / 2.0
    return 0.0 if spread == 0 else _ratio(spread, float(np.median(ratios)))
