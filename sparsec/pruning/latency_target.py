"""channel-prune's ``target_latency`` (``--target-latency R``): the channel ratio found by
bisection so that the pruned model's measured latency is at most ``R`` times the original's.

Each probe prunes a copy of the model at a ratio (channel-prune's own round, without the refit:
it changes weights, not widths) and times it against the model, both on one onnxruntime thread,
interleaved (``sparsec.latency.compare_latency``: median ratio and its noise, the half IQR of the
paired per-round ratios), on seeded random inputs at the bound input shapes; a probe noisier
than ``NOISY`` is timed once more with twice the rounds, and that second timing counts.

The search: the ratio ``high`` first (if even that misses ``R``, the search ends there and
channel-prune refuses the target, pruning nothing); then bisection of [0, high] for ``steps``
probes, a probe at or under ``R`` moving the upper end down, one above it the lower end up; it
stops early once a probe at or under ``R`` lies within its own noise of ``R`` (at most
``TOLERANCE``). The answer is the smallest probed ratio whose measured latency ratio is at most
``R`` (latency falls as the ratio grows, up to noise), and the
note lists every probe with its figures, so a noisy run shows as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sparsec.latency import LatencyComparison, compare_latency

STEPS = 6  # probes after the first: the ratio is found within high / 2**6 (about 0.014)
RUNS = 20  # timed rounds per probe
NOISY = 0.1  # a probe noisier than this (±10 %) is timed again with twice the runs
TOLERANCE = 0.02  # a probe this close under the target (or within its noise, if less) ends it


@dataclass
class Probe:
    ratio: float  # the channel ratio probed
    latency: LatencyComparison  # the pruned copy against the model


def search(
    latency_at: Callable[[float], LatencyComparison],
    target: float,
    high: float,
    steps: int = STEPS,
) -> list[Probe]:
    """The probes of the bisection (see the module docstring), in the order made."""
    probes = [Probe(high, latency_at(high))]
    if probes[0].latency.ratio > target:
        return probes
    low, top = 0.0, high
    for _ in range(steps):
        middle = (low + top) / 2
        probe = Probe(middle, latency_at(middle))
        probes.append(probe)
        if probe.latency.ratio <= target:
            top = middle
            if target - probe.latency.ratio <= min(probe.latency.noise * target, TOLERANCE):
                break
        else:
            low = middle
    return probes


def chosen(probes: list[Probe], target: float) -> Probe:
    """The smallest probed ratio reaching ``target``, else the largest probed."""
    reached = [p for p in probes if p.latency.ratio <= target]
    return min(reached, key=lambda p: p.ratio) if reached else max(probes, key=lambda p: p.ratio)


def note_text(probes: list[Probe], target: float) -> str:
    """One line: the ratio taken, its measured latency ratio and noise, and every probe."""
    best = chosen(probes, target)
    trail = ", ".join(f"{p.ratio:.3f}->{p.latency.ratio:.3f}" for p in probes)
    verdict = "reached" if best.latency.ratio <= target else "NOT reached (even at the cap)"
    return (
        f"target latency {target:g} {verdict}: channel ratio {best.ratio:.3f}, measured 1-thread "
        f"latency ratio {best.latency.ratio:.3f} ±{best.latency.noise:.3f} "
        f"({len(probes)} probe{'s' if len(probes) > 1 else ''}, ratio->latency: {trail})"
    )


def timer_for(reference) -> Callable[..., LatencyComparison]:
    """A timer of candidates (``Model``s) against ``reference``, on one thread, interleaved, on
    seeded random inputs at ``reference``'s bound input shapes: the reference's session and
    inputs are made once, for every probe of a search."""
    from sparsec.analysis.inputs import bind_shapes, random_inputs
    from sparsec.ir.runtime import session_for

    feeds = random_inputs(reference, bind_shapes(reference), 0)
    session = session_for(reference, threads=1)

    def time_candidate(candidate, runs: int = RUNS) -> LatencyComparison:
        return compare_latency(session, session_for(candidate, threads=1), feeds, runs)

    return time_candidate


def find_ratio(
    model, prune: Callable[[object, float], object], target: float, high: float
) -> tuple[float, str, bool]:
    """(ratio, note, reached): ``prune(copy, ratio)`` cuts a copy of ``model`` in place."""
    timer = timer_for(model)

    def latency_at(ratio: float) -> LatencyComparison:
        candidate = model.copy()
        prune(candidate, ratio)
        first = timer(candidate)
        if first.noise <= NOISY:
            return first
        return timer(candidate, runs=2 * RUNS)  # a noisy probe is timed again, longer

    probes = search(latency_at, target, high)
    best = chosen(probes, target)
    return best.ratio, note_text(probes, target), best.latency.ratio <= target
