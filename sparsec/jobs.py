"""A compression job, run from its ``JobSpec``: build the pipeline, compress and validate, measure
quality on the user's data, check the gates, then write the model (only when every gate passed)
and the reports (always, failures included).

Order of a job, and what each failure leaves:
1. the spec's combination rules, the paths (``UsageError`` / ``InputError``: exit 2, nothing run);
2. the passes and validation (``ValidationError``: exit 1);
3. quality (on ``--eval`` data; without it, on the calibration samples, else 64 seeded random
   samples) and the gates (a missed gate: ``GateError``, exit 1);
4. the model, its data file and the plan go in place together; then the JSON report, the
   Markdown and the JUnit files, which are written in every case once the paths were checked.

A lossy run without a quality gate still measures agreement with the original; when an output
keeps less than ``COLLAPSE`` of its top-1 predictions or of its cosine, the job carries one
``warning:`` line saying what was lost and what would help.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sparsec import __version__, api, gates
from sparsec import executor as executors
from sparsec.analysis.inputs import parse_input_shapes
from sparsec.errors import InputError, InternalError, SparsecError, ValidationError
from sparsec.ir import Model, file_sha256
from sparsec.jobs_report import append_summary, job_files, job_json, write_files
from sparsec.passes import parse_pipeline
from sparsec.spec.job import JobSpec
from sparsec.spec.options import RANDOM

COLLAPSE = 0.9  # agreement or cosine below this is a collapse (the default-safety warning)
LATENCY_GATE_RUNS = 20  # the fewest interleaved timed rounds behind --max-latency-ratio
RECIPE_KEY, SOURCE_KEY, VERSION_KEY = "sparsec.recipe", "sparsec.source_sha256", "sparsec.version"


class GateError(ValidationError):
    """A quality gate was missed: nothing written but the reports (exit 1)."""


@dataclass
class JobOutcome:
    """What a job did: its verdict, figures, gates and warnings (``to_json``: the job report)."""

    name: str
    spec: JobSpec
    command: str | None = None
    status: str = "error"  # passed, failed (validation or a gate), error (input or internal)
    error: SparsecError | None = None
    result: api.CompressResult | None = None
    evaluation: object | None = None  # evaluate.Evaluation
    latency: object | None = None  # latency.LatencyComparison
    gates: list[gates.GateResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    staged: tuple[str, ...] = ()  # report files written with the model (in its commit)
    source_sha256: str | None = None
    output_sha256: str | None = None
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else self.error.exit_code

    def to_json(self) -> dict:
        return job_json(self)


def check_spec(spec: JobSpec):
    """The spec's combination rules, then its pipeline built (each pass checks its own option
    values): every usage error before anything runs or is written. Returns the pipeline."""
    spec.check()
    return pipeline_of(spec)


def _recover_mode(spec: JobSpec, calibration) -> bool | str:
    """False (--no-recover), "block" (--recover block), else True (the layer refit, which the
    pass description leaves out as its default). Block reconstruction is asked for, not the
    default: it does not yet beat the layer refit everywhere (docs/reconstruction.md) and it
    costs minutes where the refit costs seconds."""
    if spec.get("no_recover"):
        return False
    mode = spec.get("recover")
    return "block" if mode == "block" else True  # True: the passes' default, the layer refit


def pipeline_of(spec: JobSpec):
    """The passes of a checked spec: weight sparsity, channel pruning, the --passes text
    parsed, the default cleanup with calibration-dead channels (``--calibration`` alone), or
    None (the default cleanup)."""
    calibration = spec.path("calibration")
    data = {
        "calibration": None if calibration is None else str(calibration),
        "calibration_samples": spec.get("calibration_samples") or 0,
        "recover": _recover_mode(spec, calibration),
    }
    common = {"exclude": spec.get("exclude"), "seed": spec.get("seed"), **data}
    if spec.weights:
        return api.sparsity_passes(
            nm=spec.get("nm") or "",
            ratio=spec.get("sparsity") or 0.0,
            block=spec.get("block") or "",
            scope=spec.get("importance_scope"),
            embeddings=spec.get("embeddings"),
            score=spec.importance(),
            sparse_format=spec.get("sparse_format"),
            **common,
        )
    blocks = {"importance": spec.block_importance(), "seed": spec.get("seed"), **data}
    if spec.given("drop_blocks") and not spec.channel_cut:
        return api.block_passes(spec.get("drop_blocks"), **blocks)
    if spec.structured or spec.given("plan_in"):
        return api.channel_passes(
            spec.get("channels") or 0.0,
            heads=-1.0 if spec.get("heads") is None else spec.get("heads"),
            ffn=-1.0 if spec.get("ffn") is None else spec.get("ffn"),
            importance=spec.importance(),
            scope=spec.get("importance_scope"),
            max_layer_ratio=spec.get("max_layer_ratio"),
            round_to=0 if spec.get("round_to") == "auto" else spec.get("round_to"),
            plan=spec.path("plan_in"),
            steps=spec.get("steps"),
            target_macs=spec.get("target_macs") or 0.0,
            target_params=spec.get("target_params") or 0.0,
            target_latency=spec.get("target_latency") or 0.0,
            lossy_couplings=spec.values.get("lossy_couplings"),  # None: as the calibration says
            drop_blocks=spec.get("drop_blocks") or 0.0,
            block_importance=blocks["importance"],
            jobs=spec.get("jobs") or 1,
            executor=spec.get("executor"),
            depth=spec.get("depth") if spec.given("depth") else not spec.given("plan_out"),
            **common,
        )
    text = spec.get("passes")
    if text is None and calibration is not None:  # the default cleanup, dead on the data too
        return api.cleanup_with_calibration(data["calibration"], data["calibration_samples"])
    return None if text is None else parse_pipeline(text)  # a bad pass or option: now


def run_job(
    spec: JobSpec,
    *,
    name: str = "compress",
    command: str | None = None,
    recipe: dict | None = None,
    on_pass: Callable | None = None,
) -> JobOutcome:
    """Run one job; failures are caught into the outcome (``error``, ``status``), and the
    job's own reports (``report``, ``markdown``, ``junit``) are written in every case once the
    spec was checked. ``recipe``: what the output's metadata records to re-run it (``verify``)."""
    outcome = JobOutcome(name, spec, command)
    checked: list[bool] = []  # set once every output path was checked: reports may be written
    try:
        pipeline = check_spec(spec)
        outcome.source_sha256 = _sha256_or_none(spec.path("source"))
        recorded = recipe or {"job": name}
        _compress(spec, pipeline, outcome, recorded, on_pass, lambda: checked.append(True))
        outcome.status = "passed"
    except SparsecError as error:
        outcome.error, outcome.status = error, "failed" if error.exit_code == 1 else "error"
    except Exception as error:  # a bug: still a report and one line
        outcome.error = InternalError(
            f"internal error ({type(error).__name__}: {error}); please report it"
        )
    outcome.duration_s = round(time.perf_counter() - outcome.started, 3)
    if checked:
        files = job_files(outcome)
        write_files({path: text for path, text in files.items() if path not in outcome.staged})
        if outcome.name != "verify":
            append_summary([outcome.to_json()])
    return outcome


OUTPUT_KEYS = ("output", "force", "report", "markdown", "junit", "plan_out")


def recorded_keys(spec: JobSpec) -> dict:
    """What the output's metadata records to re-make it: the given options but the outputs,
    paths relative to the output's folder (the pair can move together)."""
    from sparsec.spec.options import OPTION_BY_NAME
    from sparsec.spec.recipe import relative_path

    folder = (spec.path("output") or Path(".")).parent
    return {
        key: relative_path(spec.path(key), folder) if OPTION_BY_NAME[key].path else value
        for key, value in spec.recipe_keys().items()
        if key not in OUTPUT_KEYS
    }


def _sha256_or_none(path: Path | None) -> str | None:
    return file_sha256(path) if path is not None and path.is_file() else None


def _compress(
    spec: JobSpec, pipeline, outcome: JobOutcome, recipe: dict, on_pass, on_checked
) -> None:
    source, output = spec.path("source"), spec.path("output")
    metadata = {
        RECIPE_KEY: json.dumps({**recipe, "keys": recorded_keys(spec)}, sort_keys=True),
        SOURCE_KEY: outcome.source_sha256 or "",
        VERSION_KEY: __version__,
    }

    def finish(model: Model, result: api.CompressResult, stage, feeds: dict) -> None:
        outcome.result = result
        outcome.output_sha256 = stage.sha256()
        _measure(spec, outcome, Path(source), model, result, feeds)
        outcome.status = "passed"  # what the staged reports say: the commit follows
        outcome.duration_s = round(time.perf_counter() - outcome.started, 3)
        files = job_files(outcome)
        for path, text in files.items():
            if path != "-":
                stage.add_side_file(Path(path), text)
        outcome.staged = tuple(path for path in files if path != "-")

    outcome.result = api.compress(
        source,
        output,
        pipeline=pipeline,
        input_shapes=spec.get("input_shape"),
        inputs=spec.path("inputs"),
        force=spec.get("force"),
        plan_out=spec.path("plan_out"),
        rtol=spec.get("rtol"),
        atol=spec.get("atol"),
        latency_runs=spec.get("latency_runs"),
        on_pass=on_pass,
        metadata=metadata,
        side_outputs=[
            p for n in ("report", "markdown", "junit") if (p := spec.path(n)) is not None
        ],
        finish=finish,
        on_checked=on_checked,
    )


def _measure(spec: JobSpec, outcome: JobOutcome, source: Path, model: Model, result, feeds) -> None:
    """Quality, latency and the gates; ``GateError`` when one is missed."""
    limits = spec.gates()
    lossy = result.oracle is not None
    asked = spec.given("eval") or bool(set(limits) & set(gates.QUALITY_GATES))
    if asked or lossy:
        outcome.evaluation = _default_safe_evaluation(spec, outcome, source, model, asked)
    if "max_latency_ratio" in limits:
        outcome.latency = _latency(source, model, feeds, spec.get("latency_runs"))
    outcome.gates = gates.check(limits, measured_figures(outcome, result))
    line = gates.failure_line(outcome.gates)
    if line is not None:
        raise GateError(f"{line}; nothing written but the reports")
    if lossy and not set(limits) & set(gates.QUALITY_GATES):
        warning = collapse_warning(outcome.evaluation, spec)
        if warning:
            outcome.warnings.append(warning)


def _default_safe_evaluation(spec: JobSpec, outcome, source: Path, model: Model, asked: bool):
    """The quality evaluation; when it was not asked for (the default-safety check) and the
    *original* cannot run its samples either, a warning instead of an error: that check never
    blocks a valid model. A compressed model failing where the original runs fails the run."""
    from sparsec.evaluate import evaluate

    data = quality_data(spec, model)
    try:
        return evaluate(source, model, data)
    except SparsecError as error:
        if asked:
            raise
        if _runs_on(source, data):
            raise ValidationError(
                f"the compressed model fails on samples the original runs (nothing written): "
                f"{error}"
            ) from None
        outcome.warnings.append(
            f"warning: quality not measured ({error}); measure it with --eval DATA.npz (and "
            "gate it with --max-top1-drop or --min-cosine)"
        )
        return None


def _runs_on(source: Path, data) -> bool:
    """Whether the original model runs the evaluation samples."""
    from sparsec.evaluate import evaluate

    try:
        evaluate(source, source, data)
    except SparsecError:
        return False
    return True


def quality_data(spec: JobSpec, model: Model):
    """The samples quality is measured on: --eval, else real calibration data, else random
    samples at the run's input shapes (--input-shape)."""
    from sparsec import evaluate

    if spec.given("eval"):
        return evaluate.load_eval_data(spec.path("eval"), model, spec.get("labels"))
    calibration = spec.path("calibration")
    if calibration is not None and str(calibration) != RANDOM:
        from sparsec.analysis.activations import load_calibration

        samples = load_calibration(calibration, model, spec.get("calibration_samples") or 0)
        return evaluate.data_from_calibration(samples, f"calibration data {calibration}")
    overrides = parse_input_shapes(spec.get("input_shape") or (), model)
    return evaluate.random_eval_data(model, seed=spec.get("seed"), overrides=overrides)


def _latency(source: Path, model: Model, feeds: dict, runs: int):
    from sparsec.validate import latency  # a large model's session alone, not interleaved

    return latency(source, model, feeds, max(runs, LATENCY_GATE_RUNS))


def measured_figures(outcome: JobOutcome, result) -> dict[str, tuple[float | None, str]]:
    """Each gate's figure and what it was measured on."""
    before, after = result.before, result.after
    figures: dict[str, tuple[float | None, str]] = {
        "max_params_ratio": (
            _ratio(before.params, after.params),
            f"params {before.params:,} -> {after.params:,}",
        ),
        "max_macs_ratio": (
            _ratio(before.macs, after.macs),
            f"MACs {before.macs:,} -> {after.macs:,}",
        ),
        "max_bytes": (after.bytes, "model file and external data"),
    }
    if outcome.latency is not None:
        lat = outcome.latency
        figures["max_latency_ratio"] = (
            lat.ratio,
            (
                f"median ms {lat.reference_ms:.3f} -> {lat.candidate_ms:.3f} over {lat.runs} "
                f"interleaved runs each, noise ±{100 * lat.noise:.1f} %"
            ),
        )
    if outcome.evaluation is not None:
        figures.update(_quality_figures(outcome.evaluation))
    return figures


def _ratio(before: float, after: float) -> float | None:
    return after / before if before else None


def _quality_figures(evaluation) -> dict[str, tuple[float | None, str]]:
    on = f"on {evaluation.data}"
    drops = [(o.top1_drop_points(), o) for o in evaluation.outputs]
    drops = [(d, o) for d, o in drops if d is not None]
    cosines = [(o.cosine, o) for o in evaluation.outputs if o.cosine is not None]
    figures: dict[str, tuple[float | None, str]] = {
        "max_top1_drop": (None, f"no output has top-1 classes {on} (a classifier's [N, classes])"),
        "min_cosine": (None, f"no numeric output {on}"),
    }
    if drops:
        drop, worst = max(drops, key=lambda pair: pair[0])
        figures["max_top1_drop"] = (drop, f"'{worst.name}' {_top1_words(worst)} {on}")
    if cosines:
        cosine, worst = min(cosines, key=lambda pair: pair[0])
        figures["min_cosine"] = (cosine, f"'{worst.name}' mean cosine {cosine:.4f} {on}")
    return figures


def _top1_words(output) -> str:
    if output.accuracy_before is not None and output.accuracy_after is not None:
        return f"top-1 accuracy {output.accuracy_before:.3f} -> {output.accuracy_after:.3f}"
    return f"top-1 agreement with the original {output.agreement:.3f}"


def collapse_warning(evaluation, spec: JobSpec | None = None) -> str | None:
    """The default-safety line when an output's agreement or cosine collapsed, else None; its
    advice names only what the run did not already do (``spec``: the run's options)."""
    if evaluation is None:
        return None
    worst = [
        o
        for o in evaluation.outputs
        if (o.agreement is not None and o.agreement < COLLAPSE)
        or (o.cosine is not None and o.cosine < COLLAPSE)
    ]
    if not worst:
        return None
    output = worst[0]
    lost = []
    if output.agreement is not None:
        lost.append(
            f"agrees with the original on {100 * output.agreement:.0f} % of top-1 predictions"
        )
    if output.cosine is not None and math.isfinite(output.cosine):
        lost.append(f"mean cosine {output.cosine:.3f}")
    return (
        f"warning: the compressed model's output '{output.name}' {', '.join(lost)} on "
        f"{evaluation.data}: it may no longer do its job; try {_advice(spec)}"
    )


def _advice(spec: JobSpec | None) -> str:
    """What to try after a collapse, leaving out what the run already did."""
    asked = set() if spec is None else {name for name in spec.values if spec.given(name)}
    tries = []
    if "calibration" not in asked:
        tries.append("--calibration DATA (activation importance and the refit)")
    elif spec is not None and str(spec.values.get("calibration")) != "random":
        tries.append("more calibration samples")  # a refit on few samples fits them, not the task
    if "drop_blocks" in asked:
        tries.append("fewer blocks, or --importance output (each block's measured effect)")
    else:
        tries.append("a lower ratio")
    gate = (
        "--min-cosine C"
        if "eval" in asked
        else "--eval DATA.npz --max-top1-drop PTS, --min-cosine C"
    )
    return f"{', '.join(tries)}, or gate the run ({gate})"


def run_recipe(
    recipe: str | Path,
    *,
    only: str | None = None,
    fail_fast: bool = False,
    report: Path | None = None,
    markdown: Path | None = None,
    junit: Path | None = None,
    on_pass: Callable | None = None,
    on_job: Callable[[str, int, int], None] | None = None,
    on_done: Callable[[JobOutcome], None] | None = None,
    executor: str = "local",
) -> list[JobOutcome]:
    """Run a recipe's jobs in order (each writes its own outputs and reports), then the run's
    reports; ``fail_fast`` stops after the first job that fails. ``executor`` ``ray`` (or a Ray
    address, ``sparsec.executor``): the jobs run as Ray tasks, each once the earlier jobs
    writing a file it reads or writes are done, on workers that see the same files; their
    outcomes come back in recipe order (no per-pass progress)."""
    from sparsec.ir import refuse_unwritable
    from sparsec.jobs_report import render, run_json
    from sparsec.spec import load_recipe

    jobs = load_recipe(recipe, only)
    for path in (report, markdown, junit):
        if path is not None and str(path) != "-":
            refuse_unwritable(Path(path), streams=True)
    tasks = [
        (os.getcwd(), (number, len(jobs)), name, spec, _recorded(recipe, name, spec))
        for number, (name, spec) in enumerate(jobs, 1)
    ]
    remote = executors.parse(executor).remote
    run = _job_task if remote else functools.partial(_job_task, on_pass=on_pass, on_job=on_job)
    outcomes = []
    results = executors.run_tasks(executor, run, tasks, after=_writers_before(jobs))
    for number, outcome in enumerate(results, 1):
        if remote and on_job is not None:  # a Ray job's line when its outcome arrives
            on_job(outcome.name, number, len(jobs))
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
        if fail_fast and outcome.error is not None:
            results.close()
            break
    reports = [outcome.to_json() for outcome in outcomes]
    write_files(
        render(
            reports, run_json(reports, str(recipe)), report=report, markdown=markdown, junit=junit
        )
    )
    return outcomes


def _recorded(recipe: str | Path, name: str, spec: JobSpec) -> dict:
    """What a recipe job's output records: the job and the recipe file relative to it."""
    from sparsec.spec.recipe import relative_path

    output_dir = (spec.path("output") or Path(".")).parent
    return {"job": name, "recipe_file": relative_path(Path(recipe), output_dir)}


def _job_task(task: tuple, on_pass=None, on_job=None) -> JobOutcome:
    """One recipe job (``task``: the driver's folder, (number, count), name, spec, what the
    output records), here or in a Ray worker working in the driver's folder (the paths read the
    same there: a shared filesystem)."""
    folder, (number, count), name, spec, recorded = task
    if not os.path.isdir(folder):
        raise InputError(
            f"job {name!r}: folder {folder} is not on this Ray worker: run the recipe from a "
            "folder the cluster's workers share (or without --executor)"
        )
    os.chdir(folder)
    if on_job is not None:
        on_job(name, number, count)
    return run_job(spec, name=name, recipe=recorded, on_pass=on_pass)


READS = ("source", "calibration", "plan_in", "inputs", "eval")  # the files a job reads
WRITES = ("output", "plan_out", "report", "markdown", "junit")  # and writes


def _writers_before(jobs: list[tuple[str, JobSpec]]) -> list[list[int]]:
    """Per job, the earlier jobs writing a file it reads or writes (it runs after them)."""
    writes = [_files(spec, WRITES) for _, spec in jobs]
    return [
        [i for i in range(number) if writes[i] & (_files(spec, READS) | writes[number])]
        for number, (_, spec) in enumerate(jobs)
    ]


def _files(spec: JobSpec, names: tuple[str, ...]) -> set[Path]:
    paths = (spec.path(name) for name in names)
    return {p.resolve() for p in paths if p is not None and str(p) not in ("-", RANDOM)}


@dataclass
class PairCheck:
    """``validate``'s quality figures and gates for a reference/candidate pair."""

    evaluation: object | None
    gates: list[gates.GateResult]
    failure: str | None

    def to_json(self) -> dict:
        return {
            "evaluation": None if self.evaluation is None else self.evaluation.to_json(),
            "gates": [g.to_json() for g in self.gates],
        }

    def text(self) -> str:
        from sparsec import report

        return report.quality_text(self.evaluation, self.gates, [])


def check_pair(reference: Path, candidate: Path, validation, spec: JobSpec) -> PairCheck:
    """Quality of ``candidate`` against ``reference`` (on --eval, else random samples) and the
    gates of ``spec``, with the size and latency figures of the two files."""
    from sparsec import evaluate
    from sparsec.analysis.inputs import bind_shapes

    ref_model, cand_model = Model.load(reference), Model.load(candidate)
    data = (
        evaluate.load_eval_data(spec.path("eval"), ref_model, spec.get("labels"))
        if spec.given("eval")
        else evaluate.random_eval_data(ref_model)
    )
    shapes = bind_shapes(ref_model, {})
    before = api.figures(ref_model, shapes, ref_model.source_bytes)
    after = api.figures(cand_model, shapes, cand_model.source_bytes)
    result = api.CompressResult(before, after, "", validation)
    outcome = JobOutcome("validate", spec, evaluation=evaluate.evaluate(reference, candidate, data))
    if validation.latency_ms_reference and validation.latency_ms_candidate is not None:
        from sparsec.latency import LatencyComparison

        reference_ms, candidate_ms = (
            validation.latency_ms_reference,
            validation.latency_ms_candidate,
        )
        outcome.latency = LatencyComparison(
            reference_ms,
            candidate_ms,
            candidate_ms / reference_ms,
            validation.latency_noise or 0.0,
            spec.get("latency_runs"),
        )
    checked = gates.check(spec.gates(), measured_figures(outcome, result))
    return PairCheck(outcome.evaluation, checked, gates.failure_line(checked))
