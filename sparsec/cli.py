"""The ``sparsec`` command line: parse flags, call the Python API, print, choose the exit code.

Exit codes: 0 done; 1 validation or a gate failed; 2 bad input or usage; 3 an internal error
(a sparsec bug). Every failure is one line on stderr (``sparsec: error: ...``), never a
traceback. Progress lines go to stderr, results to stdout. Commands import the API when they
run, so ``sparsec --help`` and ``sparsec passes`` do not load onnx, onnxruntime or numpy.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

import click

from sparsec import __version__
from sparsec.cli_options import (
    GroupedCommand,
    error_line,
    spec_options,
    usage_hint,
    verbosity_options,
)
from sparsec.cli_options import echo as _echo
from sparsec.errors import SparsecError, UsageError, ValidationError, printable
from sparsec.executor import WHERE_TEXT


class _FilePath(click.Path):
    """A file path; one written with a trailing separator names a folder and is refused (it
    would otherwise lose the separator and become a file of the folder's name)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.endswith(("/", os.sep)) and value.strip("/" + os.sep):
            self.fail(
                f"{value!r} names a folder (it ends with '/'); give a file path, e.g. {value}model.onnx",
                param,
                ctx,
            )
        return super().convert(value, param, ctx)


MODEL_PATH = _FilePath(path_type=Path)

input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:DxD...",
    help="Fix an input's dims, e.g. input:1x3x224x224 (repeatable). Symbolic dims otherwise "
    "default to 1 for the batch axis and 128 elsewhere.",
)
inputs_option = click.option(
    "--inputs",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE.npz",
    help="Run on these arrays (keyed by input name) instead of seeded random inputs.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sparsec")
@verbosity_options
def cli() -> None:
    """sparsec: compress ONNX models, validated in onnxruntime before anything is written.

    \b
    Examples:
      sparsec analyze model.onnx --groups
      sparsec compress model.onnx -o small.onnx --channels 0.5 --calibration data.npz
      sparsec compress model.onnx -o small.onnx --channels 0.5 --eval test.npz --max-top1-drop 1
      sparsec run recipe.toml --junit results.xml
      sparsec verify small.onnx
    """


def _executor_text(_context, _parameter, value: str | None) -> str | None:
    from sparsec.executor import parse

    if value is None:
        return None
    try:
        parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


@cli.command()
@click.argument("model", type=MODEL_PATH)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the analysis as JSON (top-level params and macs).",
)
@click.option(
    "--groups",
    is_flag=True,
    help="Also list the channel groups: members, channels, prunable or why not (naming the blocking op).",
)
@click.option(
    "--lossy-couplings",
    is_flag=True,
    help="With --groups: as compress --lossy-couplings would see them (groups whose channels a "
    "node such as LRN mixes are prunable, and say which nodes).",
)
@click.option(
    "--layers",
    is_flag=True,
    help="Also list the layers (Conv/Gemm/MatMul with a weight): the groups holding their output "
    "and input channels, their sizes, prunable or why not.",
)
@click.option(
    "--heads",
    is_flag=True,
    help="Also list the attention blocks: Q/K/V/O weights, heads, KV heads, head_dim, how each was found.",
)
@click.option(
    "--blocks",
    is_flag=True,
    help="Also list the removable units (residual and projection blocks, plain layers, transformer "
    "layers): entry and exit, params, MACs and their share, removable or why not.",
)
@click.option(
    "--sensitivity",
    is_flag=True,
    help="Also measure, per channel group / head set / MLP, the output error when it alone is pruned at "
    "0.25, 0.5 and 0.75 (needs --calibration; each point on a seeded subset of 16 of the samples, "
    "with its standard error); --target-macs measures the same at 0.1 ... 0.8.",
)
@click.option(
    "--activations",
    is_flag=True,
    help="Also measure activation sparsity on --calibration: per activation and per value a "
    "Conv/Gemm/MatMul reads, its exact zeros and near-zeros, its dead channels (zero on every "
    "sample) and the MACs a zero-skipping runtime would save.",
)
@click.option(
    "--zero-threshold",
    type=float,
    default=None,
    metavar="T",
    help="With --activations: a value counts as near zero when |x| <= T (absolute; default 1e-6).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="With --activations: draw the zeros per layer to FILE.png or FILE.svg (needs the "
    "optional extra: pip install 'sparsec[plot]').",
)
@click.option(
    "--calibration",
    default=None,
    metavar="DATA",
    help="With --sensitivity, --activations or --blocks: calibration samples (.npz, a folder of "
    ".npz/.npy, or 'random').",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --calibration: use the first N calibration samples (default: all; 64 with 'random').",
)
@click.option(
    "--importance",
    type=click.Choice(["l1", "l2", "bn-scale", "random", "activation"]),
    default=None,
    help="With --sensitivity: which units each ratio removes (default: activation with real calibration "
    "data, else l1).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --sensitivity: measure the groups in N worker processes (each holds one copy of "
    "the model; the table is the same).  [default: 1]",
)
@click.option(
    "--executor",
    "executor_name",
    default=None,
    metavar="WHERE",
    callback=_executor_text,
    help=f"With --sensitivity: where the groups are measured: {WHERE_TEXT}.",
)
@input_shape_option
@inputs_option
def analyze(
    model: Path,
    as_json: bool,
    groups: bool,
    lossy_couplings: bool,
    layers: bool,
    heads: bool,
    blocks: bool,
    sensitivity: bool,
    activations: bool,
    zero_threshold: float | None,
    plot_path: Path | None,
    calibration,
    calibration_samples,
    importance,
    jobs: int | None,
    executor_name: str | None,
    input_shapes: tuple[str, ...],
    inputs: Path | None,
) -> None:
    """Report params, MACs, op histogram, opsets, inputs and outputs of MODEL."""
    from sparsec import api, inspection, report

    _check_analyze_flags(
        {"--groups": groups, "--sensitivity": sensitivity, "--activations": activations},
        {"--lossy-couplings": lossy_couplings, "--blocks": blocks},
        {"--calibration": calibration, "--calibration-samples": calibration_samples},
        {"--importance": importance, "--jobs": jobs, "--executor": executor_name},
        {"--zero-threshold": zero_threshold, "--plot": plot_path},
    )
    loaded = api.Model.load(model)
    summary = api.analyze(loaded, input_shapes, inputs)
    if groups:
        summary["channel_groups"], summary["channel_barriers"] = api.channel_groups(
            loaded, input_shapes, lossy_couplings
        )
    if layers:
        summary["layers"] = api.layers(loaded, input_shapes)
    if heads:
        summary["attention_blocks"] = api.attention_heads(loaded, input_shapes)
    if blocks:
        summary["blocks"] = inspection.blocks(
            loaded, input_shapes, calibration, calibration_samples or 0
        )
    sections = []  # the text after the summary
    if activations:
        summary["activations"] = _activations(
            loaded, calibration, calibration_samples, zero_threshold, plot_path
        )
        sections.append(report.activations_text(summary["activations"]))
    if sensitivity:
        table = _sensitivity(
            loaded, calibration, calibration_samples, importance, jobs or 1, executor_name
        )
        summary["sensitivity"] = table.to_json()
        sections.append(table.text())
    text = "\n\n".join([report.analyze_text(summary), *sections])
    _echo(json.dumps(summary, indent=2) if as_json else text)


def _check_analyze_flags(modes: dict, extras: dict, data: dict, sweep: dict, plot: dict) -> None:
    """``analyze``'s flag combinations, before any work: each flag given (not None/False)
    needs the mode it serves (``modes``: --groups, --sensitivity, --activations)."""
    if extras["--lossy-couplings"] and not modes["--groups"]:
        raise click.UsageError("--lossy-couplings goes with --groups")
    calibrated = ["--sensitivity", "--activations", "--blocks"]
    uses = {**modes, "--blocks": extras["--blocks"]}
    if any(v is not None for v in data.values()) and not any(uses[f] for f in calibrated):
        raise click.UsageError(
            "--calibration and --calibration-samples go with " + _either(calibrated)
        )
    for flag, given in sweep.items():
        if given is not None and not modes["--sensitivity"]:
            raise click.UsageError(f"{flag} goes with --sensitivity")
    if any(v is not None for v in plot.values()) and not modes["--activations"]:
        raise click.UsageError("--zero-threshold and --plot go with --activations")
    if modes["--sensitivity"] and data["--calibration"] is None:
        raise click.UsageError(
            "--sensitivity measures output errors on calibration data: give --calibration"
        )


def _sensitivity(model, calibration, samples, importance, jobs: int, executor_name):
    """``analyze --sensitivity``: the table, measured where ``--jobs``/``--executor`` say."""
    from sparsec import api, executor
    from sparsec.spec.options import default_importance

    where = executor.parse(executor_name or executor.LOCAL)  # checked by its option
    if where.remote:
        executor.require_ray()
    return api.sensitivity(
        model,
        calibration,
        samples=samples or 0,
        importance=importance or default_importance(calibration),
        progress=lambda text: _echo(f"  {text}", err=True),
        jobs=jobs,
        executor=where,
    )


def _either(flags: list[str]) -> str:
    """'--a', '--a or --b', '--a, --b or --c'."""
    return ", ".join(flags[:-1]) + " or " + flags[-1] if len(flags) > 1 else flags[0]


def _activations(model, calibration, samples, threshold, plot_path) -> dict:
    """``analyze --activations``: the report as JSON, its plot drawn when asked (matplotlib and
    the path checked before the calibration runs)."""
    from sparsec import inspection, plot
    from sparsec.analysis.activation_zeros import NEAR_ZERO

    if calibration is None:
        raise click.UsageError(
            "--activations measures zeros on calibration data: give --calibration"
        )
    threshold = NEAR_ZERO if threshold is None else threshold
    if not threshold >= 0:
        raise click.UsageError(f"--zero-threshold must be a number >= 0 (got {threshold})")
    if plot_path is not None:
        plot.check_plot_path(plot_path)
        plot.require_matplotlib()
    result = inspection.activations(model, calibration, samples or 0, threshold)
    if plot_path is not None:
        plot.activation_zeros_plot(result, plot_path)
    return result.to_json()


COMPRESS_EXAMPLES = """\b
Examples:
  sparsec compress model.onnx -o clean.onnx                      (exact cleanup only)
  sparsec compress model.onnx -o half.onnx --channels 0.5 --calibration calib.npz
  sparsec compress model.onnx -o small.onnx --target-macs 0.66 --calibration calib.npz \\
      --eval test.npz --max-top1-drop 1 --report r.json --junit r.xml
  sparsec compress vit.onnx -o vit24.onnx --nm 2:4 --sparse-format nm
  sparsec compress model.onnx -o half.onnx --channels 0.5 --save-recipe recipe.toml
"""


@cli.command(cls=GroupedCommand, epilog=COMPRESS_EXAMPLES)
@click.argument("model", type=MODEL_PATH)
@spec_options("output", "force", "plan_out", "save_recipe")
@verbosity_options
@spec_options(
    "channels",
    "heads",
    "ffn",
    "drop_blocks",
    "target_macs",
    "target_params",
    "target_latency",
    "depth",
    "lossy_couplings",
    "plan_in",
    "passes",
)
@spec_options("nm", "sparsity", "block", "embeddings", "sparse_format")
@spec_options(
    "importance", "importance_scope", "max_layer_ratio", "round_to", "exclude", "steps", "seed"
)
@spec_options("calibration", "calibration_samples", "no_recover", "recover", "jobs", "executor")
@spec_options(
    "eval",
    "labels",
    "max_top1_drop",
    "min_cosine",
    "max_params_ratio",
    "max_macs_ratio",
    "max_bytes",
    "max_latency_ratio",
)
@spec_options("report", "markdown", "junit")
@spec_options("input_shape", "inputs", "rtol", "atol", "latency_runs")
def compress(model: Path, save_recipe: str | None, **options) -> None:
    """Compress MODEL into OUTPUT, validated in onnxruntime before anything is written.

    Without a transform flag: the exact cleanup pipeline (identity elimination, BatchNorm
    folding, shape constant folding, dead channels (all-zero weights), dead-code elimination)
    to a fixed point, validated against MODEL; with --calibration alone, it also removes the
    channels that are zero on every calibration sample (lossy in principle: validated against
    MODEL with them masked, the difference reported). With --channels, --heads, --ffn, a
    target or --plan-in: channel, attention-head and MLP-neuron pruning, then cleanup; with
    --drop-blocks: depth pruning (before the channels when combined), validated against MODEL
    with the dropped branches zeroed; with --nm or --sparsity: weight sparsity, then cleanup
    and the --sparse-format encoding. A lossy run is validated against the masked original (MODEL
    with what was removed zeroed) within 1e-4 x max |output|, its quality against MODEL itself
    is measured (on --eval, else the calibration or random samples) and checked by the gates;
    without a quality gate a collapse is warned about.
    """
    from sparsec import jobs
    from sparsec.spec import JobSpec
    from sparsec.spec.options import OPTION_BY_NAME, is_given

    values = {k: v for k, v in options.items() if is_given(v, OPTION_BY_NAME.get(k))}
    spec = JobSpec({"source": str(model), **values})
    if save_recipe is not None:
        _save_recipe(spec, Path(save_recipe), model)
    outcome = jobs.run_job(spec, command=_command_line(), on_pass=_progress)
    _print_outcome(outcome)
    if outcome.error is not None:
        raise outcome.error


def _save_recipe(spec, path: Path, model: Path) -> None:
    from sparsec.ir import write_text
    from sparsec.jobs import check_spec
    from sparsec.spec import recipe_text

    check_spec(spec)
    write_text(path, recipe_text(Path(model).stem, spec, path.parent))
    _echo(f"wrote recipe {path}", err=True)


def _command_line() -> str:
    return "sparsec " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def _print_outcome(outcome) -> None:
    """The job's tables on stdout (stderr when the JSON report goes to stdout), its warnings on
    stderr, each once; with -q only the warnings (the passes' too)."""
    from sparsec import report, results

    to_stderr = str(outcome.spec.values.get("report")) == "-"
    if outcome.result is not None and results.verbosity() >= 0:
        _echo(report.job_text(outcome), err=to_stderr)
    elif outcome.result is not None:  # -q: the tables go, the passes' warnings stay
        for finding in outcome.result.diagnostics:
            if finding.severity != "info":
                _echo(str(finding), err=True)
    if outcome.error is None:  # a failed run writes no model to warn about
        for warning in outcome.warnings:
            _echo(warning, err=True)


@cli.command(name="run")
@click.argument("recipe", type=MODEL_PATH)
@click.option("--only", metavar="NAME", default=None, help="Run only the job named NAME.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first job that fails.")
@click.option(
    "--report",
    type=MODEL_PATH,
    default=None,
    metavar="FILE.json",
    help="Write every job's report in one JSON file ('-': stdout).",
)
@click.option(
    "--markdown",
    type=MODEL_PATH,
    default=None,
    metavar="FILE.md",
    help="Write the Markdown summary of every job.",
)
@click.option(
    "--junit",
    type=MODEL_PATH,
    default=None,
    metavar="FILE.xml",
    help="Write JUnit XML: a test case per job and gate.",
)
@click.option(
    "--executor",
    metavar="WHERE",
    default="local",
    callback=_executor_text,
    help="ray (RAY_ADDRESS's cluster, else a new local Ray instance), ray://HOST:PORT or "
    "HOST:PORT: run the jobs as Ray tasks, a job after those writing a file it reads, on "
    "workers sharing this folder (pip install 'sparsec[ray]'; no per-pass progress). "
    "Default: local, one after another.",
)
@verbosity_options
def run_recipe(recipe: Path, only, fail_fast: bool, report, markdown, junit, executor: str) -> None:
    """Run the jobs of RECIPE (a TOML file of [[job]] tables whose keys are compress's long
    option names with underscores, and an optional [defaults] table; paths relative to it).

    Every job runs (unless --fail-fast) and writes its own outputs and reports; exits 1 when a
    job missed a gate or failed validation, 2 when a job had bad input.
    """
    from sparsec import jobs

    outcomes = jobs.run_recipe(
        recipe,
        only=only,
        fail_fast=fail_fast,
        report=report,
        markdown=markdown,
        junit=junit,
        on_pass=_progress,
        on_job=_job_started,
        on_done=_print_job,
        executor=executor,
    )
    worst = max(outcomes, key=lambda o: o.exit_code)
    if worst.error is not None:
        failed = [o.name for o in outcomes if o.error is not None]
        raise type(worst.error)(
            f"{len(failed)} of {len(outcomes)} job(s) failed: {', '.join(failed)} (see each job's "
            "line above and its report)"
        )


def _job_started(name: str, number: int, count: int) -> None:
    from sparsec import results

    if results.verbosity() >= 0:
        _echo(f"job {name} ({number}/{count})", err=True)


def _print_job(outcome) -> None:
    _print_outcome(outcome)
    if outcome.error is not None:
        _echo(
            f"job {outcome.name}: {outcome.status}: {printable(str(outcome.error), newlines=False)}",
            err=True,
        )


@cli.command()
@click.argument("models", nargs=-1, required=True, type=MODEL_PATH)
@click.option(
    "--source",
    type=MODEL_PATH,
    default=None,
    help="The source model (default: the one recorded in each model, relative to it).",
)
@verbosity_options
def verify(models: tuple[Path, ...], source) -> None:
    """Check that each of MODELS is what its recorded recipe gives today: the recipe (and its
    file, when it came from 'sparsec run') unchanged, the source's sha256 as recorded, and the
    model re-made from them equal. Models sparsec did not write are skipped. Exits 1 on the
    first stale model."""
    from sparsec.verify import verify_model

    stale = []
    for path in models:
        verdict = verify_model(path, source=source)
        _echo(f"{path}: {verdict.line}")
        if not verdict.current:
            stale.append((path, verdict.line))
    if stale:
        raise ValidationError(
            f"{stale[0][0]} is stale: {stale[0][1]}"
            + (f" (and {len(stale) - 1} more)" if len(stale) > 1 else "")
        )


def _progress(pass_, result) -> None:
    """One stderr line per pass that changed something (every pass with -v; none with -q)."""
    from sparsec import results

    level = results.verbosity()
    if level < 0 or (not result.modified and level < 1):
        return
    stats = ", ".join(f"{k}={v:g}" for k, v in result.stats.items() if v)
    _echo(
        f"  {pass_.describe()}: {stats or ('changed' if result.modified else 'no change')}",
        err=True,
    )


@cli.command(cls=GroupedCommand)
@click.argument("reference", type=MODEL_PATH)
@click.argument("candidate", type=MODEL_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@spec_options("input_shape", "inputs", "rtol", "atol", "latency_runs")
@spec_options(
    "eval",
    "labels",
    "max_top1_drop",
    "min_cosine",
    "max_params_ratio",
    "max_macs_ratio",
    "max_bytes",
    "max_latency_ratio",
)
@spec_options("report")
@verbosity_options
def validate(
    reference: Path,
    candidate: Path,
    as_json: bool,
    **options,
) -> None:
    """Compare CANDIDATE with REFERENCE in onnxruntime: per-output errors, top-1, latency.

    Exits 1 when an output differs beyond atol + rtol*|ref|; with a gate, the gates decide
    instead (a lossy candidate is compared by quality, not element by element).
    """
    from sparsec import api, report
    from sparsec.spec import JobSpec

    spec = JobSpec({k: v for k, v in options.items() if v is not None})  # none is a switch
    if spec.given("labels") and not spec.given("eval"):
        raise UsageError("--labels names the labels array of --eval DATA.npz: give --eval")
    result = api.validate_files(
        reference,
        candidate,
        input_shapes=spec.get("input_shape"),
        inputs=spec.path("inputs"),
        rtol=spec.get("rtol"),
        atol=spec.get("atol"),
        latency_runs=spec.get("latency_runs"),
    )
    checked = None
    if spec.gates() or spec.given("eval"):
        from sparsec.jobs import check_pair

        checked = check_pair(reference, candidate, result, spec)
    payload = result.to_json() if checked is None else {**result.to_json(), **checked.to_json()}
    if spec.given("report"):
        from sparsec.jobs_report import strict, write_files

        write_files({str(spec.path("report")): json.dumps(strict(payload), indent=2) + "\n"})
    _echo(
        json.dumps(payload, indent=2)
        if as_json
        else report.validation_text(result) + ("" if checked is None else "\n\n" + checked.text())
    )
    if checked is not None and spec.gates():
        if checked.failure is not None:
            raise ValidationError(checked.failure)
        return
    if not result.passed:
        raise ValidationError(api.failure_line(result, written=""))


@cli.command()
@click.argument("model", type=MODEL_PATH)
@click.option(
    "-o", "--output", type=MODEL_PATH, required=True, help="Where to write the dense model."
)
@click.option("--force", is_flag=True, help="Allow -o to overwrite the input model.")
def densify(model: Path, output: Path, force: bool) -> None:
    """Turn the sparse-encoded weights of MODEL back into plain initializers (checked bit-identical)."""
    from sparsec import api

    count = api.densify(model, output, force=force)
    _echo(f"decoded {count} weight{'' if count == 1 else 's'}; wrote {output}")


@cli.command(name="passes")
@click.argument("names", nargs=-1, metavar="[NAME|FILE.py:CLASS]...")
@click.option(
    "--describe",
    is_flag=True,
    help="Describe the passes: summary and each option's type, default and meaning (every "
    "pass, or the NAMEs given).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def list_passes(names: tuple[str, ...], describe: bool, as_json: bool) -> None:
    """List the available passes with a one-line description each; with --describe (or NAMEs),
    their options, written in --passes as NAME(option=value,...) with TOML values."""
    from sparsec.passes import registry

    if not (describe or names):
        catalogue = registry.summaries()
        if as_json:
            _echo(json.dumps([{"name": n, "summary": s} for n, s in catalogue.items()], indent=2))
            return
        width = max(len(name) for name in catalogue)
        for name, summary in catalogue.items():
            _echo(f"{name.ljust(width)}  {summary}")
        return
    infos = [registry.describe(name) for name in names] if names else registry.describe_all()
    if as_json:
        _echo(json.dumps([info.to_json() for info in infos], indent=2))
    else:
        _echo("\n\n".join(_pass_text(info) for info in infos))


def _pass_text(info) -> str:
    """A described pass (``registry.describe``) as text: summary, class, then per option
    ``name: type = default`` and its meaning, wrapped."""
    import textwrap

    lines = [f"{info.name}: {info.summary or '(no summary)'}", f"  class {info.origin}"]
    if not info.options:
        lines.append("  no options")
    for option in info.options:
        shown = "(required)" if option.required else f"= {option.default_text}"
        lines.append(f"  {option.name}: {option.type} {shown}")
        meaning = (option.help or "(undocumented)").replace("``", "`")
        lines += textwrap.wrap(
            meaning, 92, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False
        )
    return "\n".join(lines)


class _PrintableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _show_progress() -> None:
    """Long passes' detail lines (the ``sparsec.progress`` logger) go to stderr, indented, with
    -v (the progress bars of ``results.stage`` are drawn by default on a terminal)."""
    logger = logging.getLogger("sparsec.progress")
    if not logger.handlers:
        handler = logging.StreamHandler()  # stderr, looked up per line (so tests capture it)
        handler.setFormatter(_PrintableFormatter("    %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one stderr line and an exit code."""
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # library chatter is not for users
    _show_progress()
    from sparsec import results

    results.set_verbosity(0)
    warnings.simplefilter("ignore")
    argv = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=argv or ["--help"], prog_name="sparsec", standalone_mode=False)
    except UsageError as error:
        command = next((a for a in argv if not a.startswith("-")), None)
        error_line(usage_hint(error, command if command in cli.commands else None))
        return error.exit_code
    except SparsecError as error:
        signum = _signal_behind(error)
        if signum is not None:  # a pass failing while a signal unwound it
            return _aborted(signum)
        error_line(str(error))
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("sparsec: aborted", err=True)
        return 130
    except click.ClickException as error:
        where = getattr(getattr(error, "ctx", None), "command_path", None) or "sparsec"
        error_line(f"{error.format_message()} (see '{where} --help')")
        return 2
    except SystemExit as exit_:  # sparsec never calls sys.exit below main: a plugin or pass did
        error_line(
            f"internal error (sys.exit({exit_.code!r}) was called by a pass or plugin, not by sparsec)"
        )
        return 3
    except Exception as error:  # a bug, not the user's fault: still one line, never a traceback
        signum = _signal_behind(error)
        if signum is not None:  # raised by a library's cleanup while a signal unwound the stack
            return _aborted(signum)
        error_line(f"internal error ({type(error).__name__}: {error}); please report it")
        return 3
    return 0


def _aborted(signum: int) -> int:
    """``sparsec: aborted`` and the signal's exit code (128 + its number), as ``entry`` says it."""
    click.echo("sparsec: aborted", err=True)
    return 128 + int(signum)


def _signal_behind(error: BaseException) -> int | None:
    """The signal whose unwinding ``error`` was raised during (``entry.Interrupted``, known by
    its ``signum``, or ``KeyboardInterrupt`` among its causes and contexts), else None. (cli
    does not import ``entry``: ``entry`` imports cli.)"""
    seen: set[int] = set()
    cause: BaseException | None = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if type(cause).__name__ == "Interrupted" and isinstance(
            getattr(cause, "signum", None), int
        ):
            return cause.signum
        if isinstance(cause, KeyboardInterrupt):
            return int(signal.SIGINT)
        cause = cause.__cause__ or cause.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
