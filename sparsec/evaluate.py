"""Quality of a candidate model against its original on the user's (labelled) data.

Both models run on the same samples in batches (``activations.calibration_batches``: the
model's fixed batch size when it has one, whose remainder is left out, and padded sequences
cut to their longest real row); ``Evaluation.samples`` counts the samples actually run. Only
running sums and maxima are kept, so memory is one batch of outputs whatever the data size,
but for the reference's outputs on every batch when they are small (``EVAL_RECORD_BYTES``) or
the model is large: then one session is alive at a time. Random samples are drawn batch by
batch (``random_eval_data``), and sessions run without onnxruntime's memory arena (untimed).
Outputs are paired by name (by position when the names differ but the counts agree);
non-tensor outputs (sequences, maps) and string tensors are left out.

Per tensor output, reference r and candidate c (as float64):
- ``max_abs`` = max |c − r|; ``max_rel`` = max |c − r| / max(|r|, 1e-6 · max |r|), the floor
  taken from the peak over all samples (``validate.py``'s definition);
- ``cosine`` = the mean over samples of <c_i, r_i> / (‖c_i‖ ‖r_i‖), each sample's output
  flattened (1.0 when both are zero, 0.0 when one is);
- ``agreement`` (rank ≥ 2, more than one class on the last axis) = the share of positions
  (every index but the last axis) where argmax over the last axis agrees; for a model with a
  padding mask, positions of an output laid out like the mask ([N, T, C] with a [N, T] mask)
  count only where the mask is nonzero;
- ``accuracy_before`` / ``accuracy_after`` = the share of labelled positions where the
  reference's / candidate's argmax over the last axis equals the label, for outputs whose shape
  without the last axis is the labels' ([N, C] with labels [N]; [N, T, C] with [N, T]), or the
  share equal to the label for an integer output shaped like the labels (a predicted class).
  Negative labels mark positions to leave out (the -100 of padded token labels).

Non-finite values (validate.py's rules, no metric is ever NaN): a NaN or infinite value in
either model makes ``max_abs`` and ``max_rel`` infinite and ``cosine`` None, and a position
whose scores hold one never agrees and is never correct (a NaN is no prediction). Shapes that
differ between the models make every comparison metric unbounded or None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sparsec.analysis.activations import (
    calibration_batches,
    fixed_batch,
    padding_mask,
    random_samples,
)
from sparsec.analysis.inputs import conform, read_arrays
from sparsec.errors import InputError
from sparsec.ir import Model, runtime
from sparsec.validate import session

LABEL_KEYS = ("labels", "label")  # the arrays taken as labels when no key is given
_LABELS_FEED = "\0labels"  # the labels' key among the batched arrays (no input is named so)


@dataclass
class EvalData:
    samples: dict[str, np.ndarray]  # by input name, axis 0 = samples, conformed (or DrawnRows)
    labels: np.ndarray | None  # int labels, axis 0 = samples
    label: str  # what the data is, for reports

    @property
    def count(self) -> int:
        return next(iter(self.samples.values())).shape[0] if self.samples else 0


def load_eval_data(path: str | Path, model, labels: str | None = None) -> EvalData:
    """The samples of an ``.npz`` (arrays keyed by input name) and its labels: the array
    ``labels`` names, else one named like ``LABEL_KEYS``, else none."""
    path, model = Path(path), _as_model(model)
    arrays = read_arrays(path, "evaluation data")
    key = _labels_key(path, arrays, labels)
    names = [v.name for v in model.inputs]
    _refuse_unmatched(path, arrays, names, key)
    where = f"evaluation data {path}"
    samples = {v.name: conform(arrays[v.name], v, model, where, batched=True) for v in model.inputs}
    counts = {array.shape[0] for array in samples.values()}
    if len(counts) > 1:
        raise InputError(f"{where}: every input needs the same number of samples on axis 0")
    count = counts.pop() if counts else 0
    label_array = _checked_labels(where, arrays[key], key, count) if key else None
    described = f"labels '{key}'" if key else "no labels"
    return EvalData(samples, label_array, f"{path} ({_samples_text(count)}, {described})")


def random_eval_data(model, count: int = 64, seed: int = 0, overrides=None) -> EvalData:
    """Seeded random samples (no labels) at the bound input shapes (``overrides``: those
    ``--input-shape`` gives): agreement and errors only, not accuracy. The samples are
    ``activations.random_samples``'s, each float input drawn as its batches are read
    (``inputs.DrawnRows``), so only one batch of them is held."""
    samples = random_samples(_as_model(model), count, seed, overrides, lazy=True)
    return EvalData(samples, None, f"random inputs ({_samples_text(count)}, seed {seed})")


def _samples_text(count: int) -> str:
    return f"{count} sample{'' if count == 1 else 's'}"


def data_from_calibration(samples: dict[str, np.ndarray], label: str, limit: int = 256) -> EvalData:
    """The first ``limit`` calibration samples, without labels."""
    first = {name: array[:limit] for name, array in samples.items()}
    data = EvalData(first, None, label)
    data.label = f"{label} ({_samples_text(data.count)})"
    return data


def _as_model(model) -> Model:
    return model if isinstance(model, Model) else Model.load(model)


def _labels_key(path: Path, arrays: dict, labels: str | None) -> str | None:
    if labels is None:
        return next((key for key in LABEL_KEYS if key in arrays), None)
    if labels not in arrays:
        raise InputError(
            f"evaluation data {path} has no labels array '{labels}' "
            f"(has {', '.join(arrays) or 'none'})"
        )
    return labels


def _refuse_unmatched(path: Path, arrays: dict, names: list[str], key: str | None) -> None:
    """Every model input needs an array, and every array must be an input or the labels."""
    missing = [name for name in names if name not in arrays]
    if missing:
        raise InputError(
            f"evaluation data {path} has no array for input(s) {', '.join(missing)} "
            f"(has {', '.join(arrays) or 'none'})"
        )
    extra = [name for name in arrays if name not in names and name != key]
    if extra:
        raise InputError(
            f"evaluation data {path} holds array(s) {', '.join(extra)} that are neither a model "
            f"input ({', '.join(names) or 'none'}) nor the labels (name them with --labels)"
        )


def _checked_labels(where: str, labels: np.ndarray, key: str, count: int) -> np.ndarray:
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"{where}: labels '{key}' have dtype {labels.dtype}; class labels must be integers"
        )
    if labels.ndim == 0 or labels.shape[0] != count:
        raise InputError(
            f"{where}: labels '{key}' have shape {list(labels.shape)}; they need one label per "
            f"sample on axis 0 ({count} samples)"
        )
    return labels.astype(np.int64)


@dataclass
class OutputQuality:
    name: str
    accuracy_before: float | None
    accuracy_after: float | None
    agreement: float | None
    cosine: float | None
    max_abs: float
    max_rel: float

    def top1_drop_points(self) -> float | None:
        """Percentage points lost: of accuracy with labels, else of argmax agreement."""
        if self.accuracy_before is not None and self.accuracy_after is not None:
            return 100.0 * (self.accuracy_before - self.accuracy_after)
        if self.agreement is not None:
            return 100.0 * (1.0 - self.agreement)
        return None

    def to_json(self) -> dict:
        """Strict JSON values: an unbounded error is null."""
        return _strict(asdict(self) | {"top1_drop_points": self.top1_drop_points()})


@dataclass
class Evaluation:
    data: str
    samples: int
    labelled: bool
    outputs: list[OutputQuality] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "data": self.data,
            "samples": self.samples,
            "labelled": self.labelled,
            "outputs": [output.to_json() for output in self.outputs],
        }


def _strict(figures: dict) -> dict:
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in figures.items()
    }


EVAL_BATCH = 64  # samples per batch at most
EVAL_BATCH_BYTES = 1 << 20  # input bytes per batch at most: activations grow with the batch
EVAL_RECORD_BYTES = 1 << 24  # the reference's outputs on all samples kept, at most (above: both
# sessions alive together, the outputs compared batch by batch)


def evaluate(reference, candidate, data: EvalData, *, batch_size: int | None = None) -> Evaluation:
    """Run both models (``Model`` objects or paths) on ``data`` batch by batch and measure
    how the candidate's outputs differ from the reference's (see the module docstring).
    ``batch_size`` by default: ``EVAL_BATCH`` samples, fewer when their inputs pass
    ``EVAL_BATCH_BYTES`` (onnxruntime's activation memory grows with the batch). A large model
    (``runtime.is_large``), or one whose outputs are small (``_reference_runs``), runs alone:
    the reference's outputs first, then the candidate's."""
    batch_size = batch_size or _bounded_batch(data.samples)
    model = _inputs_model(reference, candidate)
    fixed = fixed_batch(model)
    if fixed and data.count < fixed:
        raise InputError(
            f"{data.label}: the model runs in batches of {fixed} samples, the data has {data.count}"
        )
    arrays = dict(data.samples)
    if data.labels is not None:
        arrays[_LABELS_FEED] = data.labels
    large = runtime.is_large(reference) or runtime.is_large(candidate)
    ref_session = _reference_runs(session(reference, arena=False), model, arrays, batch_size, large)
    cand_session = session(candidate, arena=False)
    pairs = _pair_outputs(ref_session, cand_session)
    totals = {name: _Running() for name, _ in pairs}
    used, mask = 0, padding_mask(model)
    for batch in calibration_batches(model, arrays, batch_size):
        labels = _batch_labels(batch, mask, data)
        real = batch[mask] != 0 if mask in batch else None
        ref_out, cand_out = ref_session.run(batch), cand_session.run(batch)
        used += next(iter(batch.values())).shape[0]
        for name, other in pairs:
            totals[name].add(ref_out[name], cand_out[other], labels, real)
    outputs = [totals[name].result(name) for name, _ in pairs]
    return Evaluation(data.label, used, data.labels is not None, outputs)


def _reference_runs(ref_session, model, arrays: dict, batch_size: int, large: bool):
    """The reference's session, or, so that it is freed before the candidate's is made, its
    outputs on every batch (``runtime.Recorded``): always for a large model, else while they take
    at most ``EVAL_RECORD_BYTES`` (counted as they are recorded: padded batches grow with their
    length, so the first batch's size says little about the last's); past that, or with an
    output that is not a tensor, the session itself (the batches run so far are run again)."""
    recorded, size = [], 0
    for batch in calibration_batches(model, arrays, batch_size):
        outputs = ref_session.run(batch)
        recorded.append(outputs)
        if not large:
            sizes = [getattr(value, "nbytes", None) for value in outputs.values()]
            size += sum(sizes) if None not in sizes else EVAL_RECORD_BYTES + 1
            if size > EVAL_RECORD_BYTES:
                return ref_session
    return runtime.Recorded(ref_session, (), done=recorded)


def _inputs_model(reference, candidate) -> Model:
    """The model whose inputs batch the samples: one given as a ``Model`` (the candidate keeps
    the reference's inputs, and its samples were conformed to them), else the reference loaded
    (not a second copy of weights already in memory: 15 MB for shufflenet's 5 MB)."""
    given = [source for source in (reference, candidate) if isinstance(source, Model)]
    return given[0] if given else Model.load(reference)


def _bounded_batch(samples: dict) -> int:
    """``EVAL_BATCH``, or fewer samples so that one batch's inputs stay under ``EVAL_BATCH_BYTES``."""
    per_sample = sum(array[:1].nbytes for array in samples.values())
    return max(1, min(EVAL_BATCH, EVAL_BATCH_BYTES // max(per_sample, 1)))


def _batch_labels(batch: dict, mask: str | None, data: EvalData) -> np.ndarray | None:
    """The batch's labels (taken out of ``batch``), cut along axis 1 like the padded inputs
    when they are laid out along the padding mask's positions."""
    labels = batch.pop(_LABELS_FEED, None)
    if labels is None or mask is None or labels.ndim < 2 or mask not in batch:
        return labels
    if labels.shape[1] == data.samples[mask].shape[1]:
        return labels[:, : batch[mask].shape[1]]
    return labels


def _pair_outputs(ref_session, cand_session) -> list[tuple[str, str]]:
    """(reference name, candidate name) of the numeric tensor outputs to compare."""
    reference, candidate = ref_session.output_names, cand_session.output_names
    if set(reference) <= set(candidate):
        pairs = [(name, name) for name in reference]
    elif len(reference) == len(candidate):
        pairs = list(zip(reference, candidate))
    else:
        raise InputError(
            f"the candidate's outputs ({', '.join(candidate)}) cannot be paired with the "
            f"reference's ({', '.join(reference)})"
        )
    types = ref_session.output_types
    return [
        (name, other)
        for name, other in pairs
        if types.get(name, "").startswith("tensor(") and types[name] != "tensor(string)"
    ]


class _Running:
    """Running sums and maxima of one output's metrics over batches."""

    def __init__(self) -> None:
        self.finite = True  # no NaN or infinity seen in either model
        self.same_shapes = True
        self.max_abs = 0.0
        self.peak = 0.0  # max |r| so far
        self.front = (np.zeros(0), np.zeros(0))  # (|c − r|, |r|) that can still be max_rel's
        self.cosines, self.samples = 0.0, 0
        self.agreeing, self.positions = 0, 0
        self.classes = True  # rank >= 2 with more than one class, in every batch
        self.correct = [0, 0]  # reference, candidate
        self.misfit = [False, False]  # the labels did not fit its output in some batch
        self.labelled = 0

    def add(self, r: np.ndarray, c: np.ndarray, labels: np.ndarray | None, real=None) -> None:
        """One batch's outputs; ``real`` marks the positions a padding mask keeps."""
        if labels is not None:
            self._add_accuracy(r, c, labels)
        if r.shape != c.shape:
            self.same_shapes = False
        if not self.same_shapes:
            return
        r64, c64 = r.astype(np.float64), c.astype(np.float64)
        self._add_agreement(r64, c64, real)
        if not (np.isfinite(r64).all() and np.isfinite(c64).all()):
            self.finite = False
        if self.finite:
            self._add_errors(r64, c64)
            self._add_cosines(r64, c64)

    def _add_errors(self, r: np.ndarray, c: np.ndarray) -> None:
        diff, size = np.abs(c - r).ravel(), np.abs(r).ravel()
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.peak = max(self.peak, float(size.max()))
        merged = (np.concatenate([self.front[0], diff]), np.concatenate([self.front[1], size]))
        self.front = _undominated(*merged, _floor(self.peak))

    def _add_cosines(self, r: np.ndarray, c: np.ndarray) -> None:
        if not r.size:
            return
        rows = r.shape[0] if r.ndim else 1  # a scalar output is one sample
        rows_r, rows_c = r.reshape(rows, -1), c.reshape(rows, -1)
        norms = np.linalg.norm(rows_r, axis=1) * np.linalg.norm(rows_c, axis=1)
        dots = np.sum(rows_r * rows_c, axis=1)
        both_zero = ~rows_r.any(axis=1) & ~rows_c.any(axis=1)
        safe = np.where(norms == 0, 1.0, norms)
        cosines = np.where(norms == 0, np.where(both_zero, 1.0, 0.0), dots / safe)
        self.cosines += float(cosines.sum())
        self.samples += rows

    def _add_agreement(self, r: np.ndarray, c: np.ndarray, real: np.ndarray | None) -> None:
        if r.ndim < 2 or r.shape[-1] < 2:
            self.classes = False
            return
        same = (np.argmax(r, axis=-1) == np.argmax(c, axis=-1)) & _finite_rows(r) & _finite_rows(c)
        if real is not None and same.shape == real.shape:
            same = same[real]  # padding positions are no predictions
        self.agreeing += int(np.count_nonzero(same))
        self.positions += same.size

    def _add_accuracy(self, r: np.ndarray, c: np.ndarray, labels: np.ndarray) -> None:
        counted = labels >= 0
        self.labelled += int(np.count_nonzero(counted))
        for side, output in enumerate((r, c)):
            if _fits(output, labels):
                hits = _predictions_hit(output, labels) & counted
                self.correct[side] += int(np.count_nonzero(hits))
            else:
                self.misfit[side] = True

    def result(self, name: str) -> OutputQuality:
        accuracy = [
            hits / self.labelled if self.labelled and not misfit else None
            for hits, misfit in zip(self.correct, self.misfit)
        ]
        compared = self.same_shapes and self.finite
        return OutputQuality(
            name=name,
            accuracy_before=accuracy[0],
            accuracy_after=accuracy[1],
            agreement=(
                self.agreeing / self.positions
                if self.same_shapes and self.classes and self.positions
                else None
            ),
            cosine=self.cosines / self.samples if compared and self.samples else None,
            max_abs=self.max_abs if compared else math.inf,
            max_rel=self._max_rel() if compared else math.inf,
        )

    def _max_rel(self) -> float:
        diff, size = self.front
        if not diff.size:
            return 0.0
        return float((diff / np.maximum(size, _floor(self.peak))).max())


def _floor(peak: float) -> float:
    """validate.py's floor under |r| in max_rel."""
    return max(1e-6 * peak, np.finfo(np.float64).tiny)


def _undominated(diff: np.ndarray, size: np.ndarray, floor: float) -> tuple:
    """The (|c − r|, |r|) pairs that can still give max_rel once the floor (which only grows
    from ``floor``) is final: a pair with no larger error and no larger ratio
    |c − r| / max(|r|, floor) than another never can, for any floor at least ``floor``."""
    ratio = diff / np.maximum(size, floor)
    order = np.lexsort((-ratio, -diff))  # error descending, then ratio descending
    diff, size, ratio = diff[order], size[order], ratio[order]
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], ratio[:-1]]))
    keep = ratio > best_before
    return diff[keep], size[keep]


def _finite_rows(scores: np.ndarray) -> np.ndarray:
    return np.isfinite(scores).all(axis=-1)


def _fits(output: np.ndarray, labels: np.ndarray) -> bool:
    """Whether labels can score this output: class scores on the last axis (more than one
    class) over the labels' shape, or integer predictions of the labels' shape."""
    if output.dtype.kind in "iu" and output.shape == labels.shape:
        return True
    return output.ndim >= 2 and output.shape[-1] > 1 and output.shape[:-1] == labels.shape


def _predictions_hit(output: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per labelled position, whether the output predicts the label."""
    if output.shape == labels.shape:
        return output == labels
    return (np.argmax(output, axis=-1) == labels) & _finite_rows(output)
