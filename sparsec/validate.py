"""Reference-vs-candidate validation in onnxruntime: error metrics per output, and latency.

Metrics per output (reference r, candidate c, both as float64):
- ``max_abs`` = max |c − r|;
- ``max_rel`` = max |c − r| / max(|r|, 1e-6 · max |r|) (the floor keeps zeros in r from
  dominating);
- ``cosine`` = <c, r> / (‖c‖ ‖r‖) over the flattened tensors (1.0 when both are zero);
- ``top1`` (classifier-shaped outputs: rank 2, more than one class) = share of rows whose
  argmax agrees.
An output passes when every element satisfies |c − r| ≤ atol + rtol·|r| (``numpy.allclose``;
NaN equals NaN, where the reference itself produces NaN) and the shapes agree. The exactness
oracle (a pruned model against its masked original) instead passes when
max |c − r| ≤ ``peak_tolerance`` · max |r| (``ORACLE_TOLERANCE`` = 1e-4). Latency is the median of ``runs`` timed runs after ``warmup`` untimed
ones, same inputs, same thread settings for both models.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sparsec.ir import Model, runtime

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
ORACLE_TOLERANCE = 1e-4


@dataclass
class OutputMetrics:
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    top1: float | None
    passed: bool
    max_abs_reference: float = 0.0


@dataclass
class Validation:
    passed: bool
    rtol: float
    atol: float
    inputs: str
    outputs: list[OutputMetrics] = field(default_factory=list)
    latency_ms_reference: float | None = None
    latency_ms_candidate: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def failures(self) -> list[str]:
        return [o.name for o in self.outputs if not o.passed]


def session(source: Model | str | Path, threads: int = 0) -> runtime.Session:
    """A session over a ``Model`` or a file path."""
    if isinstance(source, Model):
        return runtime.session_for(source, threads=threads)
    return runtime.session_for_file(source, threads=threads)


def output_metrics(name: str, reference: np.ndarray, candidate: np.ndarray, rtol: float, atol: float,
                   peak_tolerance: float | None = None) -> OutputMetrics:
    if reference.shape != candidate.shape:
        return OutputMetrics(name, list(candidate.shape), float("inf"), float("inf"), 0.0, None, False)
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    diff = np.abs(c - r)
    scale = np.max(np.abs(r)) if r.size else 0.0
    floor = max(1e-6 * scale, np.finfo(np.float64).tiny)
    max_abs = float(diff.max()) if r.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), floor)).max()) if r.size else 0.0
    if peak_tolerance is None:
        passed = bool(np.allclose(c, r, rtol=rtol, atol=atol, equal_nan=True))
    else:
        passed = bool(max_abs <= peak_tolerance * scale)
    return OutputMetrics(name, list(r.shape), max_abs, max_rel, _cosine(r, c), _top1(r, c), passed, float(scale))


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    norms = np.linalg.norm(r) * np.linalg.norm(c)
    if norms == 0:
        return 1.0 if not r.any() and not c.any() else 0.0
    return float(np.dot(r.ravel(), c.ravel()) / norms)


def _top1(r: np.ndarray, c: np.ndarray) -> float | None:
    if r.ndim != 2 or r.shape[1] < 2 or r.shape[0] == 0:
        return None
    return float(np.mean(np.argmax(r, axis=1) == np.argmax(c, axis=1)))


def median_latency_ms(sess: runtime.Session, feeds: dict, runs: int, warmup: int = 2) -> float | None:
    if runs <= 0:
        return None
    for _ in range(warmup):
        sess.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def validate(reference, candidate, feeds: dict[str, np.ndarray], *, inputs_label: str = "random (seed 0)",
             rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, latency_runs: int = 10,
             peak_tolerance: float | None = None) -> Validation:
    """Run both models on ``feeds``; compare outputs by name (positionally when names differ).
    With ``peak_tolerance`` an output passes on max |c − r| ≤ peak_tolerance · max |r|."""
    ref_session, cand_session = session(reference), session(candidate)
    ref_out, cand_out = ref_session.run(feeds), cand_session.run(feeds)
    pairs = _pair_outputs(ref_session.output_names, cand_session.output_names)
    metrics = [output_metrics(name, ref_out[name], cand_out[other], rtol, atol, peak_tolerance) for name, other in pairs]
    return Validation(
        passed=len(pairs) == len(ref_session.output_names) and all(m.passed for m in metrics),
        rtol=rtol, atol=atol, inputs=inputs_label, outputs=metrics,
        latency_ms_reference=median_latency_ms(ref_session, feeds, latency_runs),
        latency_ms_candidate=median_latency_ms(cand_session, feeds, latency_runs),
    )


def _pair_outputs(reference: list[str], candidate: list[str]) -> list[tuple[str, str]]:
    if set(reference) <= set(candidate):
        return [(name, name) for name in reference]
    return list(zip(reference, candidate)) if len(reference) == len(candidate) else []


def check_encoded(candidate: Model, reference, feeds: dict[str, np.ndarray], decoder_prefix: str) -> str | None:
    """Why a sparse-encoded ``candidate`` is not acceptable, or None: after onnxruntime's basic
    optimization no decoder node may remain (decoding happens once, at session creation), and
    its outputs must be bit-identical to the dense ``reference``'s."""
    left = [name for name in runtime.optimized_op_names(candidate, "basic") if name.startswith(decoder_prefix)]
    if left:
        return f"{len(left)} decoder nodes survive onnxruntime's constant folding (e.g. {left[0]})"
    expected, actual = session(reference).run(feeds), session(candidate).run(feeds)
    different = [name for name in expected if name in actual and not np.array_equal(expected[name], actual[name])]
    return f"output '{different[0]}' is not bit-identical to the dense model's" if different else None
