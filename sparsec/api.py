"""The Python API behind every CLI command: analyze, compress, validate.

``compress`` is all-or-nothing: every input problem (bad model, bad flag, output path equal to
the input, unknown pass) is found before any work, and the output file is written only after
the candidate passed the ONNX checker's full check and onnxruntime validation against the
original. The pipeline text is recorded in the output's ``metadata_props``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparsec import __version__
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.inputs import bind_shapes, feed_shapes, load_npz, parse_input_shapes, random_inputs
from sparsec.errors import InputError, ValidationError
from sparsec.ir import Model
from sparsec.passes import Diagnostic, PassBase, PassResult, Pipeline, parse_pipeline
from sparsec.passes.builtin import default_pipeline
from sparsec.validate import DEFAULT_ATOL, DEFAULT_RTOL, Validation, validate

PIPELINE_METADATA_KEY = "sparsec.pipeline"


@dataclass
class Figures:
    """The before/after numbers of a model."""

    nodes: int
    params: int
    macs: int
    bytes: int | None


def figures(model: Model, shapes: dict[str, tuple[int, ...]], file_bytes: int | None) -> Figures:
    cost = analyze_cost(model, shapes)
    return Figures(nodes=len(model.nodes()), params=cost.params, macs=cost.macs, bytes=file_bytes)


def prepare_feeds(model: Model, input_shapes: Sequence[str] = (), inputs: str | Path | None = None,
                  seed: int = 0) -> tuple[dict, str]:
    """Feeds for running ``model``: user ``.npz`` data, else seeded random at the bound shapes."""
    overrides = parse_input_shapes(input_shapes, model)
    if inputs is not None:
        return load_npz(inputs, model), str(inputs)
    return random_inputs(model, bind_shapes(model, overrides), seed), f"random (seed {seed})"


def analyze(model: Model, input_shapes: Sequence[str] = (), inputs: str | Path | None = None) -> dict:
    """Params, MACs, op histogram, opsets, inputs and outputs, as a JSON-ready dict.

    MACs are counted at the shapes of ``inputs`` (an .npz) when given, else at the bound shapes.
    """
    overrides = parse_input_shapes(input_shapes, model)
    if inputs is not None:
        overrides = feed_shapes(load_npz(inputs, model))
    bound = bind_shapes(model, overrides)
    cost = analyze_cost(model, overrides)
    return {
        "model": str(model.path) if model.path else None,
        "producer": model.producer_name(),
        "opsets": model.opsets(),
        "params": cost.params,
        "macs": cost.macs,
        "nodes": len(model.nodes()),
        "functions": len(model.functions()),
        "op_histogram": dict(Counter(n.op_type for n in model.all_nodes()).most_common()),
        "cost_by_op": cost.by_op(),
        "inputs": [_value_info(model, v, bound.get(v.name)) for v in model.inputs],
        "outputs": [_value_info(model, v, None) for v in model.outputs],
        "macs_unknown_nodes": cost.unknown,
        "bytes": model.source_bytes,
    }


def _value_info(model: Model, value, bound) -> dict:
    dtype = model.elem_type(value)
    info = {"name": value.name, "dtype": str(dtype) if dtype is not None else None, "shape": model.shape_dims(value)}
    if bound is not None:
        info["bound_shape"] = list(bound)
    return info


@dataclass
class CompressResult:
    before: Figures
    after: Figures
    pipeline: str
    validation: Validation
    stats: dict[str, float] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    output: str = ""

    def to_json(self) -> dict:
        report = {f"{key}_{when}": getattr(fig, key) for when, fig in (("before", self.before), ("after", self.after))
                  for key in ("nodes", "params", "macs", "bytes")}
        report.update(
            output=self.output, pipeline=self.pipeline, validation=self.validation.to_json(),
            latency_ms_before=self.validation.latency_ms_reference,
            latency_ms_after=self.validation.latency_ms_candidate,
            stats=self.stats, diagnostics=[d.to_json() for d in self.diagnostics], sparsec_version=__version__,
        )
        return report


def compress(
    source: str | Path,
    output: str | Path,
    *,
    pipeline: str | None = None,
    input_shapes: Sequence[str] = (),
    inputs: str | Path | None = None,
    force: bool = False,
    report: str | Path | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    latency_runs: int = 10,
    on_pass: Callable[[PassBase, PassResult], None] | None = None,
) -> CompressResult:
    """Load ``source``, run the pipeline, validate against the original, write ``output``
    (and the JSON ``report`` when asked)."""
    model = Model.load(source)
    check_destinations(model, Path(output), Path(report) if report is not None else None, force)
    feeds, label = prepare_feeds(model, input_shapes, inputs)
    shapes = feed_shapes(feeds)
    runner = Pipeline(parse_pipeline(pipeline), fixed_point=True, on_pass=on_pass) if pipeline else default_pipeline(on_pass=on_pass)
    before = figures(model, shapes, model.source_bytes)
    result = runner(model)
    model.set_metadata(PIPELINE_METADATA_KEY, runner.describe())
    problem = model.check()
    if problem is not None:
        raise ValidationError(f"the compressed model fails the ONNX checker (nothing written): {problem}")
    validation = validate(Path(source), model, feeds, inputs_label=label, rtol=rtol, atol=atol,
                          latency_runs=latency_runs)
    if not validation.passed:
        raise ValidationError(_failure_line(validation))
    written = model.save(output, force=force)
    after = figures(model, shapes, written)
    outcome = CompressResult(before, after, runner.describe(), validation, result.stats, result.diagnostics, str(output))
    if report is not None:
        Path(report).write_text(json.dumps(outcome.to_json(), indent=2) + "\n")
    return outcome


def check_destinations(model: Model, output: Path, report: Path | None, force: bool) -> None:
    """Refuse, before any work, outputs that would clobber the input or cannot be written."""
    data_path = model.check_destination(output, force=force)
    if report is None:
        return
    model.refuse_clobbering_sources(report, force=False)
    if report.resolve() in {p.resolve() for p in (output, data_path) if p is not None}:
        raise InputError(f"--report {report} is also the model output path")
    if not report.parent.is_dir():
        raise InputError(f"output folder {report.parent} does not exist")


def _failure_line(report: Validation) -> str:
    worst = max(report.outputs, key=lambda o: o.max_abs, default=None)
    if worst is None:
        return "validation failed: the candidate's outputs do not match the reference's (nothing written)"
    return (f"validation failed (nothing written): output '{worst.name}' max abs error {worst.max_abs:.3g} "
            f"exceeds atol {report.atol:g} + rtol {report.rtol:g}·|ref|")


def validate_files(reference: str | Path, candidate: str | Path, *, input_shapes: Sequence[str] = (),
                   inputs: str | Path | None = None, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                   latency_runs: int = 10) -> Validation:
    """Compare two model files on the same feeds (built from the reference's inputs)."""
    ref_model = Model.load(reference)
    Model.load(candidate)  # same checks (exists, parses, checker) before running anything
    feeds, label = prepare_feeds(ref_model, input_shapes, inputs)
    return validate(Path(reference), Path(candidate), feeds, inputs_label=label, rtol=rtol, atol=atol,
                    latency_runs=latency_runs)

