"""Reference-vs-candidate validation in onnxruntime: error metrics per output, and latency.

Metrics per tensor output (reference r, candidate c, both as float64):
- ``max_abs`` = max |c − r|;
- ``max_rel`` = max |c − r| / max(|r|, 1e-6 · max |r|) (the floor keeps zeros in r from
  dominating);
- ``cosine`` = <c, r> / (‖c‖ ‖r‖) over the flattened tensors (1.0 when both are zero);
- ``top1`` (classifier-shaped outputs: rank 2, more than one class) = share of rows whose
  argmax agrees.

Pass rules. Floating-point values pass when every element has |c − r| ≤ atol + rtol·|r|, or,
for the exactness oracle (a pruned model against its masked original, ``peak_tolerance``),
max |c − r| ≤ max(peak_tolerance · max |r|, min(``ORACLE_FLOOR``, ``FLOOR_SHARE`` · max |r|))
(``ORACLE_TOLERANCE`` = 1e-4, ``oracle_limit``). The absolute floor, 1e-6, is onnxruntime's
float32 accuracy near zero (never more than a quarter of the output's peak, so a real cut
error, which is of the output's own size, still fails): its
Sigmoid kernel (MLAS's approximation) gives 1.13e-6 and 9.83e-7 for -13.747803 and -13.747802
(exactly 1.07e-6 for both), so an output whose max |r| is ~1e-6 (a detector's probabilities on
random inputs) cannot be compared relatively. Integers, booleans and
strings must be equal. Shapes must agree.

Non-finite values never count as agreement. A reference that is NaN or infinite anywhere in
an output cannot be validated on these inputs, whatever the candidate gives (NaN in gives
NaN out for a model with every weight doubled too): the output fails, with a ``problem`` line
saying so and asking for inputs on which the reference is finite. A candidate NaN or Inf
where the reference is finite fails as an unbounded error. Either way ``max_abs`` and
``max_rel`` are infinite and ``cosine`` and ``top1`` are undefined (None): no metric is ever
NaN, so none can pass by accident.

Non-tensor outputs (sequences, maps, optionals, nested) are compared element by element:
sequences by length then each element, maps by their key set then each value, an empty
optional only with an empty one; their leaves follow the rules above (floats with the
tolerance, everything else exactly). The float leaves, taken together, give the metrics;
``top1`` of a sequence of maps (skl2onnx's ZipMap probabilities) is the share of maps whose
highest-valued key agrees. ``type`` is onnxruntime's name of the output's type and
``problem`` names the first mismatch. Latency comes from ``latency.compare_latency``: the
median of ``latency_runs`` timed runs per model after untimed warm-up ones, the two models
interleaved round by round, same inputs, same thread settings for both; ``latency_noise`` is the
relative spread of the per-round candidate/reference ratios (0.02 = ±2 %). A model past
``runtime.LARGE_MODEL_BYTES`` is timed alone (its runs, then the other's), not interleaved.

Memory: one session is alive at a time (its outputs kept, the session freed before the next
is made), except for the interleaved timing of two small models; a reference given as a
builder is built for its session and dropped before it runs. A session that is not timed runs
without onnxruntime's memory arena (``runtime.session_for``'s ``arena``).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sparsec.ir import Model, runtime
from sparsec.latency import compare_latency, summarize, timed_ms

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
ORACLE_TOLERANCE = 1e-4
ORACLE_FLOOR = 1e-6  # absolute: float32 kernels' accuracy near zero (see the module docstring)
LATENCY_WARMUP = 2  # untimed runs before a large model's timed ones, as compare_latency's
FLOOR_SHARE = 0.25  # the floor never admits an error above a quarter of the output's peak


def oracle_limit(scale: float, tolerance: float = ORACLE_TOLERANCE) -> float:
    """The largest max |c − r| the oracle accepts on an output whose max |r| is ``scale``:
    ``tolerance`` · scale, or the float32 floor where that is below it, but never more than
    ``FLOOR_SHARE`` of the scale itself (a real cut error is of the output's own size)."""
    return max(tolerance * scale, min(ORACLE_FLOOR, FLOOR_SHARE * scale))


def oracle_limit_text(scale: float) -> str:
    """How the oracle's limit for an output of max |r| ``scale`` was reached, for reports."""
    relative = ORACLE_TOLERANCE * scale
    limit = oracle_limit(scale)
    if limit <= relative:
        return f"{ORACLE_TOLERANCE:g} x max |output| = {relative:.3g}"
    return (
        f"{limit:.3g}, the float32 floor: {ORACLE_FLOOR:g} up to {FLOOR_SHARE:g} x max |output|, "
        f"as {ORACLE_TOLERANCE:g} x max |output| = {relative:.3g} is below float32 accuracy"
    )


NOT_FINITE_REFERENCE = (
    "the reference is NaN or infinite at {count} of {total} values on these inputs, so it "
    "cannot be validated on them: give inputs (--inputs) on which it is finite"
)


@dataclass
class OutputMetrics:
    name: str
    shape: list[int]  # a tensor's shape; a sequence's or map's length; [] for other values
    max_abs: float
    max_rel: float
    cosine: float | None  # None when undefined: non-finite or non-numeric values
    top1: float | None
    passed: bool
    max_abs_reference: float = 0.0
    type: str | None = None  # onnxruntime's name: 'tensor(float)', 'seq(map(int64,tensor(float)))'
    problem: str | None = (
        None  # why it fails beyond the numbers (first mismatch, non-finite values)
    )

    def is_tensor(self) -> bool:
        return self.type is None or self.type.startswith("tensor(")


@dataclass
class Validation:
    passed: bool
    rtol: float
    atol: float
    inputs: str
    outputs: list[OutputMetrics] = field(default_factory=list)
    latency_ms_reference: float | None = None
    latency_ms_candidate: float | None = None
    latency_noise: float | None = None  # relative spread of the paired ratios (latency.py)

    def to_json(self) -> dict:
        """The figures as strict JSON values: an infinite error (a shape, structure or NaN/Inf
        mismatch, which ``problem`` names) is null, never the non-standard ``Infinity``; so is an
        unbounded latency figure."""
        figures = asdict(self)
        for output in figures["outputs"]:
            for key in ("max_abs", "max_rel", "cosine", "top1", "max_abs_reference"):
                if output[key] is not None and not np.isfinite(output[key]):
                    output[key] = None
        for key in ("latency_ms_reference", "latency_ms_candidate", "latency_noise"):
            if figures[key] is not None and not np.isfinite(figures[key]):
                figures[key] = None
        return figures

    def failure_line(self) -> str | None:
        """Why validation failed, in one line naming an output (None if it passed): the first with a
        ``problem`` (non-finite values, a mismatch), else the one with the largest error."""
        if self.passed:
            return None
        failed = [o for o in self.outputs if not o.passed]
        if not failed:
            return "the candidate's outputs cannot be paired with the reference's (names and counts differ)"
        worst = next((o for o in failed if o.problem), None) or max(failed, key=lambda o: o.max_abs)
        if worst.problem:
            return f"output '{worst.name}': {worst.problem}"
        return (
            f"output '{worst.name}' max abs error {worst.max_abs:.3g} exceeds atol {self.atol:g} + "
            f"rtol {self.rtol:g}·|ref|"
        )


def session(
    source: Model | str | Path,
    threads: int = 0,
    optimization: str = "all",
    mapped: bool | None = None,
    arena: bool = True,
) -> runtime.Session:
    """A session over a ``Model`` or a file path (``mapped``, ``arena``: ``runtime.session_for``'s:
    ``arena=False`` for a session whose runs are not timed)."""
    if isinstance(source, Model):
        return runtime.session_for(
            source, threads=threads, optimization=optimization, mapped=mapped, arena=arena
        )
    return runtime.session_for_file(
        source, threads=threads, optimization=optimization, mapped=mapped, arena=arena
    )


def output_metrics(
    name: str,
    reference,
    candidate,
    rtol: float,
    atol: float,
    peak_tolerance: float | None = None,
    value_type: str | None = None,
) -> OutputMetrics:
    """Compare one output (a tensor or any non-tensor value) by the module's rules."""
    if not isinstance(reference, np.ndarray) or not isinstance(candidate, np.ndarray):
        return _structured_metrics(
            name, reference, candidate, rtol, atol, peak_tolerance, value_type
        )
    if reference.shape != candidate.shape:
        return OutputMetrics(
            name,
            list(candidate.shape),
            float("inf"),
            float("inf"),
            0.0,
            None,
            False,
            type=value_type,
            problem=f"shape {list(candidate.shape)}, the reference's is {list(reference.shape)}",
        )
    if not _numeric(reference) or not _numeric(candidate):
        problem = _exact_problem(reference, candidate, "")
        return _exact_metrics(name, list(reference.shape), problem, value_type)
    problem = (
        _exact_problem(reference, candidate, "") if not _floating(reference, candidate) else None
    )
    metrics = _numeric_metrics(name, reference, candidate, rtol, atol, peak_tolerance, problem)
    metrics.shape, metrics.type = list(reference.shape), value_type
    metrics.top1 = _top1(reference, candidate) if np.isfinite(metrics.max_abs) else None
    return metrics


def _numeric_metrics(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    rtol: float,
    atol: float,
    peak_tolerance: float | None,
    problem: str | None,
) -> OutputMetrics:
    """Metrics and verdict over two equally long numeric vectors (any shape, compared flat);
    ``problem`` is a mismatch found already (integers compared exactly)."""
    r, c = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
    problem = problem or _finiteness_problem(r, c)
    if problem is not None and not (np.isfinite(r).all() and np.isfinite(c).all()):
        return OutputMetrics(
            name, [], float("inf"), float("inf"), None, None, False, _peak(r), problem=problem
        )
    diff = np.abs(c - r)
    scale = _peak(r)
    floor = max(1e-6 * scale, np.finfo(np.float64).tiny)
    max_abs = float(diff.max()) if r.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), floor)).max()) if r.size else 0.0
    if peak_tolerance is None:
        within = bool(np.all(diff <= atol + rtol * np.abs(r)))
    else:
        within = max_abs <= oracle_limit(scale, peak_tolerance)
    return OutputMetrics(
        name,
        [],
        max_abs,
        max_rel,
        _cosine(r, c),
        None,
        within and problem is None,
        scale,
        problem=problem,
    )


def _peak(r: np.ndarray) -> float:
    finite = r[np.isfinite(r)]
    return float(np.max(np.abs(finite))) if finite.size else 0.0


def _finiteness_problem(r: np.ndarray, c: np.ndarray) -> str | None:
    """The non-finite rule: a reference NaN/Inf anywhere, or a candidate one where the reference is finite."""
    bad_reference = int(np.count_nonzero(~np.isfinite(r)))
    if bad_reference:
        return NOT_FINITE_REFERENCE.format(count=bad_reference, total=r.size)
    bad_candidate = int(np.count_nonzero(~np.isfinite(c)))
    if bad_candidate:
        return f"the candidate is NaN or infinite at {bad_candidate} of {c.size} values where the reference is finite"
    return None


def _numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuf"


def _floating(*arrays: np.ndarray) -> bool:
    return all(array.dtype.kind == "f" for array in arrays)


def _exact_metrics(
    name: str, shape: list[int], problem: str | None, value_type: str | None
) -> OutputMetrics:
    """Metrics of values compared only for equality (strings): no error figures, cosine undefined."""
    error = 0.0 if problem is None else float("inf")
    return OutputMetrics(
        name, shape, error, error, None, None, problem is None, type=value_type, problem=problem
    )


def _exact_problem(reference: np.ndarray, candidate: np.ndarray, where: str) -> str | None:
    """The first position where two same-shaped arrays differ, compared exactly, or None."""
    if {reference.dtype.kind, candidate.dtype.kind} & {"f"} and {
        reference.dtype.kind,
        candidate.dtype.kind,
    } & set("biu"):
        return f"{where or 'the output'} is {candidate.dtype} in the candidate, {reference.dtype} in the reference"
    equal = np.asarray(reference == candidate, dtype=bool)
    if equal.shape != reference.shape:  # numpy could not compare element-wise (mixed types)
        return f"{where or 'the output'} holds values of another type than the reference's"
    if equal.all():
        return None
    index = tuple(int(i) for i in np.argwhere(~equal)[0])
    return (
        f"{where}{list(index) if index else ''} is {_plain(candidate[index])!r}, the reference's is "
        f"{_plain(reference[index])!r} "
        f"({int(np.count_nonzero(~equal))} of {reference.size} values differ)"
    ).lstrip()


def _plain(element):
    """A numpy scalar as the Python value it holds (for messages: 3, not np.int64(3))."""
    return element.item() if isinstance(element, np.generic) else element


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    norms = np.linalg.norm(r) * np.linalg.norm(c)
    if norms == 0:
        return 1.0 if not r.any() and not c.any() else 0.0
    return float(np.dot(r.ravel(), c.ravel()) / norms)


def _top1(r: np.ndarray, c: np.ndarray) -> float | None:
    if r.ndim != 2 or r.shape[1] < 2 or r.shape[0] == 0:
        return None
    return float(np.mean(np.argmax(r, axis=1) == np.argmax(c, axis=1)))


def relative_error(metrics: OutputMetrics) -> float:
    """max |c − r| / max |r| of one output (an all-zero reference: relative to 1e-30)."""
    return metrics.max_abs / max(metrics.max_abs_reference, 1e-30)


def worst_output(outputs) -> OutputMetrics | None:
    """The output with the largest ``relative_error``, or None when there is none."""
    return max(outputs, key=relative_error, default=None)


def peak_gap(reference: dict, candidate: dict) -> float:
    """The oracle's measure over every output of a run, comparable with ``ORACLE_TOLERANCE``:
    max |c − r| / max |r| where that relative limit applies, scaled to the float32 floor where
    it applies instead (``oracle_limit``), so that gap ≤ ORACLE_TOLERANCE exactly when the
    oracle passes (an output whose reference is all zeros: max |c − r|); infinite when an
    output is missing, its structure or exact values differ, or any value is NaN or infinite
    (so a NaN never looks like 0)."""
    gap = 0.0
    for name, expected in reference.items():
        if name not in candidate:
            return float("inf")
        metrics = output_metrics(name, expected, candidate[name], 0.0, 0.0, peak_tolerance=0.0)
        if metrics.problem is not None:
            return float("inf")
        scale = metrics.max_abs_reference
        limit = oracle_limit(scale) if scale else ORACLE_TOLERANCE
        gap = max(gap, ORACLE_TOLERANCE * metrics.max_abs / limit)
    return gap


def _structured_metrics(
    name: str,
    reference,
    candidate,
    rtol: float,
    atol: float,
    peak_tolerance: float | None,
    value_type: str | None,
) -> OutputMetrics:
    """Metrics of a non-tensor output: a structural or exact mismatch fails it outright (infinite
    error); otherwise its float leaves, taken together, are judged like one tensor."""
    leaves: list[tuple[np.ndarray, np.ndarray]] = []
    problem = _walk(reference, candidate, "", leaves)
    length = [len(reference)] if isinstance(reference, (list, tuple, dict)) else []
    if problem is not None:
        return OutputMetrics(
            name,
            length,
            float("inf"),
            float("inf"),
            None,
            None,
            False,
            type=value_type,
            problem=problem,
        )
    r = np.concatenate([pair[0] for pair in leaves]) if leaves else np.zeros(0)
    c = np.concatenate([pair[1] for pair in leaves]) if leaves else np.zeros(0)
    metrics = _numeric_metrics(name, r, c, rtol, atol, peak_tolerance, None)
    metrics.shape, metrics.type = length, value_type
    if not r.size:
        metrics.cosine = None  # nothing numeric to correlate: equal strings, integers, empty values
    elif metrics.problem is None:
        metrics.top1 = _maps_top1(reference, candidate)
    return metrics


def _walk(reference, candidate, where: str, leaves: list) -> str | None:
    """The first structural or exact mismatch between two values, or None; float leaves are
    appended to ``leaves`` as (reference, candidate) vectors for the tolerance check."""
    if reference is None or candidate is None:
        if reference is candidate:
            return None
        state = ("empty", "present") if candidate is None else ("present", "empty")
        return f"{where or 'the optional value'} is {state[0]} in the candidate, {state[1]} in the reference"
    if isinstance(reference, dict) or isinstance(candidate, dict):
        return _walk_map(reference, candidate, where, leaves)
    if isinstance(reference, (list, tuple)) or isinstance(candidate, (list, tuple)):
        return _walk_sequence(reference, candidate, where, leaves)
    return _walk_leaf(np.asarray(reference), np.asarray(candidate), where, leaves)


def _walk_sequence(reference, candidate, where: str, leaves: list) -> str | None:
    if not isinstance(reference, (list, tuple)) or not isinstance(candidate, (list, tuple)):
        return _kind_problem(reference, candidate, where)
    if len(reference) != len(candidate):
        return (
            f"{where or 'the sequence'} has {len(candidate)} elements in the candidate, "
            f"{len(reference)} in the reference"
        )
    pairs = list(zip(reference, candidate))
    if (
        _float_maps(reference)
        and _float_maps(candidate)
        and all(r.keys() == c.keys() for r, c in pairs)
    ):
        leaves.append(
            (
                np.array(
                    [v for m in reference for v in m.values()], np.float64
                ),  # ZipMap's rows, at once
                np.array([c[k] for r, c in pairs for k in r], np.float64),
            )
        )
        return None
    for index, (r, c) in enumerate(pairs):
        problem = _walk(r, c, f"{where}[{index}]", leaves)
        if problem is not None:
            return problem
    return None


def _kind_problem(reference, candidate, where: str) -> str:
    return (
        f"{where or 'the output'} is a {type(candidate).__name__} in the candidate, "
        f"a {type(reference).__name__} in the reference"
    )


def _float_maps(values) -> bool:
    """Whether ``values`` is a list of maps of Python floats (ZipMap's output)."""
    return all(type(m) is dict and all(type(v) is float for v in m.values()) for m in values)


def _walk_map(reference, candidate, where: str, leaves: list) -> str | None:
    if not isinstance(reference, dict) or not isinstance(candidate, dict):
        return _kind_problem(reference, candidate, where)
    if set(reference) != set(candidate):
        missing = sorted(map(repr, set(reference) - set(candidate)))
        extra = sorted(map(repr, set(candidate) - set(reference)))
        return (
            f"{where or 'the map'} has other keys in the candidate (missing {', '.join(missing) or 'none'}; "
            f"extra {', '.join(extra) or 'none'})"
        )
    for key, r in reference.items():
        problem = _walk(r, candidate[key], f"{where}[{key!r}]", leaves)
        if problem is not None:
            return problem
    return None


def _walk_leaf(
    reference: np.ndarray, candidate: np.ndarray, where: str, leaves: list
) -> str | None:
    if reference.shape != candidate.shape:
        return (
            f"{where or 'the value'} has shape {list(candidate.shape)} in the candidate, "
            f"{list(reference.shape)} in the reference"
        )
    if _floating(reference, candidate):
        leaves.append((reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()))
        return None
    return _exact_problem(reference, candidate, where)


def _maps_top1(reference, candidate) -> float | None:
    """Share of maps whose highest-valued key agrees, for a sequence of maps of numbers with at
    least two keys each (a classifier's per-class probabilities), else None."""
    numeric = (int, float, np.integer, np.floating)
    if (
        not isinstance(reference, (list, tuple))
        or not reference
        or not all(
            isinstance(m, dict) and len(m) > 1 and all(isinstance(v, numeric) for v in m.values())
            for m in reference
        )
    ):
        return None
    return float(
        np.mean([max(r, key=r.get) == max(c, key=c.get) for r, c in zip(reference, candidate)])
    )


def validate(
    reference,
    candidate,
    feeds: dict[str, np.ndarray],
    *,
    inputs_label: str = "random (seed 0)",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    latency_runs: int = 10,
    peak_tolerance: float | None = None,
    optimization: str = "all",
) -> Validation:
    """Run both models on ``feeds``; compare outputs by name (positionally when names differ).
    With ``peak_tolerance`` an output passes on max |c − r| ≤ ``oracle_limit(max |r|, peak_tolerance)``.
    ``optimization``: onnxruntime's graph optimization level for both sessions (the oracle uses
    "basic": the extended level rewrites quantized graphs with dynamic quantization of
    activations, whose scale sees the masked channels of the reference, so the two would differ
    by onnxruntime's rounding, not by the cut).

    ``reference`` and ``candidate``: a ``Model``, a file path, or a callable building a ``Model``
    (called once, the model dropped as soon as its session exists). One session is alive at a
    time (run, outputs kept, freed), except for the interleaved latency timing of two models
    under ``runtime.LARGE_MODEL_BYTES``; a large one's latency is timed one session at a time."""
    large = any(map(_large, (reference, candidate)))  # then both unpacked: the same kernels
    if latency_runs > 0 and not large:
        ref_session = session(reference, optimization=optimization)
        cand_session = session(candidate, optimization=optimization)
        ref, cand = _Run.of(ref_session, feeds), _Run.of(cand_session, feeds)
        latency = compare_latency(ref_session, cand_session, feeds, latency_runs)
        del ref_session, cand_session
    else:
        ref = _Run.alone(reference, feeds, optimization, latency_runs, large)
        cand = _Run.alone(candidate, feeds, optimization, latency_runs, large)
        latency = summarize(ref.times_ms, cand.times_ms) if latency_runs > 0 else None
    return _verdict(ref, cand, inputs_label, (rtol, atol, peak_tolerance), latency)


def validate_each(
    reference,
    candidate,
    runs: Sequence[tuple[dict[str, np.ndarray], str]],
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    peak_tolerance: float | None = None,
    optimization: str = "all",
) -> list[Validation]:
    """``validate`` (no latency) on each (feeds, inputs label) of ``runs``, with one session
    per model for all of them (each alive alone, as ``validate``'s): the oracle's two batches
    cost two sessions, not four."""
    large = any(map(_large, (reference, candidate)))
    feeds = [run_feeds for run_feeds, _ in runs]
    refs = _Run.each(reference, feeds, optimization, large)
    cands = _Run.each(candidate, feeds, optimization, large)
    limits = (rtol, atol, peak_tolerance)
    return [_verdict(r, c, label, limits, None) for r, c, (_, label) in zip(refs, cands, runs)]


def _verdict(ref: _Run, cand: _Run, label: str, limits: tuple, latency) -> Validation:
    """The comparison of two runs' outputs; ``limits``: (rtol, atol, peak tolerance)."""
    rtol, atol = limits[:2]
    pairs = _pair_outputs(ref.names, cand.names)
    metrics = [
        output_metrics(name, ref.outputs[name], cand.outputs[other], *limits, ref.types.get(name))
        for name, other in pairs
    ]
    return Validation(
        passed=len(pairs) == len(ref.names) and all(m.passed for m in metrics),
        rtol=rtol,
        atol=atol,
        inputs=label,
        outputs=metrics,
        latency_ms_reference=latency.reference_ms if latency else None,
        latency_ms_candidate=latency.candidate_ms if latency else None,
        latency_noise=latency.noise if latency else None,
    )


def latency(reference, candidate, feeds: dict, runs: int, optimization: str = "all"):
    """``compare_latency`` of two models (``Model`` or path): interleaved when both are under
    ``runtime.LARGE_MODEL_BYTES``, else each timed alone with only its session alive."""
    if not any(map(_large, (reference, candidate))):
        return compare_latency(
            session(reference, optimization=optimization),
            session(candidate, optimization=optimization),
            feeds,
            runs,
        )
    if runs <= 0:
        return None
    ref = _Run.alone(reference, feeds, optimization, runs, mapped=True)
    cand = _Run.alone(candidate, feeds, optimization, runs, mapped=True)
    return summarize(ref.times_ms, cand.times_ms)


def _large(source) -> bool:
    """Whether a model (a ``Model`` or a path; a builder counts as large: its model is not
    built twice) passes ``runtime.LARGE_MODEL_BYTES``."""
    return callable(source) or runtime.is_large(source)


@dataclass
class _Run:
    """What validation keeps of one model's session: its outputs, names, types and timings."""

    names: list[str]
    types: dict[str, str]
    outputs: dict
    times_ms: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, model_session: runtime.Session, feeds: dict) -> _Run:
        return cls(model_session.output_names, model_session.output_types, model_session.run(feeds))

    @classmethod
    def alone(cls, source, feeds: dict, optimization: str, latency_runs: int, mapped: bool) -> _Run:
        """The run of one model with only its own session alive, freed on return (a builder's
        model is dropped once its session exists); ``latency_runs`` timed runs after
        ``LATENCY_WARMUP`` untimed ones when positive (else no memory arena: one untimed run)."""
        model_session = _alone_session(source, optimization, mapped, arena=latency_runs > 0)
        run = cls.of(model_session, feeds)
        if latency_runs > 0:
            for _ in range(LATENCY_WARMUP):
                model_session.run(feeds)
            run.times_ms = [timed_ms(model_session, feeds) for _ in range(latency_runs)]
        return run

    @classmethod
    def each(cls, source, feeds: Sequence[dict], optimization: str, mapped: bool) -> list[_Run]:
        """One untimed run per feeds in ``feeds``, of one session alive alone (``alone``)."""
        model_session = _alone_session(source, optimization, mapped, arena=False)
        return [cls.of(model_session, run_feeds) for run_feeds in feeds]


def _alone_session(source, optimization: str, mapped: bool, arena: bool) -> runtime.Session:
    """The session of a ``Model``, a path or a builder (``_session_of_built``)."""
    if callable(source):
        return _session_of_built(source, optimization, mapped, arena)
    return session(source, optimization=optimization, mapped=mapped, arena=arena)


def _session_of_built(build, optimization: str, mapped: bool, arena: bool) -> runtime.Session:
    """The session of the model ``build`` returns, that model freed before the session runs
    (an onnx-ir graph is a web of reference cycles: only a collection frees its weights; under
    ``gc_pause.holding`` no automatic full collection would, and the model is not frozen, so
    the collection walks the objects made since the compression started, not the original)."""
    model_session = session(build(), optimization=optimization, mapped=mapped, arena=arena)
    gc.collect()
    return model_session


def _pair_outputs(reference: list[str], candidate: list[str]) -> list[tuple[str, str]]:
    if set(reference) <= set(candidate):
        return [(name, name) for name in reference]
    return list(zip(reference, candidate)) if len(reference) == len(candidate) else []


def check_encoded(
    candidate: Model, reference, feeds: dict[str, np.ndarray], decoder_prefix: str
) -> str | None:
    """Why a sparse-encoded ``candidate`` is not acceptable, or None: after onnxruntime's basic
    optimization no decoder node may remain (decoding happens once, at session creation), and
    its outputs must be bit-identical to the dense ``reference``'s."""
    left = [
        name
        for name in runtime.optimized_op_names(candidate, "basic")
        if name.startswith(decoder_prefix)
    ]
    if left:
        return f"{len(left)} decoder nodes survive onnxruntime's constant folding (e.g. {left[0]})"
    expected, actual = session(reference).run(feeds), session(candidate).run(feeds)
    for name in expected:
        metrics = (
            output_metrics(name, expected[name], actual[name], 0.0, 0.0) if name in actual else None
        )
        if metrics is not None and not metrics.passed:
            detail = f": {metrics.problem}" if metrics.problem else ""
            return f"output '{name}' is not bit-identical to the dense model's{detail}"
    return None
