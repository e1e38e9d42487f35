"""The ``sparsec`` command line: parse flags, call ``sparsec.api``, print, choose the exit code.

Exit codes: 0 done; 1 validation or a gate failed; 2 bad input or usage; 3 an internal error
(a sparsec bug). Every failure is one line on stderr (``sparsec: error: ...``), never a
traceback. Progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from sparsec import __version__, api, report
from sparsec.errors import SparsecError, ValidationError, printable
from sparsec.passes import available
from sparsec.validate import DEFAULT_ATOL, DEFAULT_RTOL


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
rtol_option = click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=DEFAULT_RTOL,
    show_default=True,
    help="Relative tolerance of the check |cand - ref| <= atol + rtol*|ref| per element "
    "(compress: of a lossless run; a pruned one is checked against its masked original).",
)
atol_option = click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=DEFAULT_ATOL,
    show_default=True,
    help="Absolute tolerance of the same check.",
)
latency_option = click.option(
    "--latency-runs",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Timed runs per model for the median latency (0 skips timing).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sparsec")
def cli() -> None:
    """sparsec: compress ONNX models, validated in onnxruntime before anything is written."""


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
    "--heads",
    is_flag=True,
    help="Also list the attention blocks: Q/K/V/O weights, heads, KV heads, head_dim, how each was found.",
)
@click.option(
    "--sensitivity",
    is_flag=True,
    help="Also measure, per channel group / head set / MLP, the output error when it alone is pruned at "
    "0.25, 0.5 and 0.75 (needs --calibration); --target-macs measures the same at 0.1 ... 0.8.",
)
@click.option(
    "--calibration",
    default=None,
    metavar="DATA",
    help="With --sensitivity: calibration samples (.npz, a folder of .npz/.npy, or 'random').",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --sensitivity: use the first N calibration samples (default: all; 64 with 'random').",
)
@click.option(
    "--importance",
    type=click.Choice(["l1", "l2", "bn-scale", "random", "activation"]),
    default=None,
    help="With --sensitivity: which units each ratio removes (default: activation with real calibration "
    "data, else l1).",
)
@input_shape_option
@inputs_option
def analyze(
    model: Path,
    as_json: bool,
    groups: bool,
    heads: bool,
    sensitivity: bool,
    calibration,
    calibration_samples,
    importance,
    input_shapes: tuple[str, ...],
    inputs: Path | None,
) -> None:
    """Report params, MACs, op histogram, opsets, inputs and outputs of MODEL."""
    loaded = api.Model.load(model)
    summary = api.analyze(loaded, input_shapes, inputs)
    if groups:
        summary["channel_groups"], summary["channel_barriers"] = api.channel_groups(
            loaded, input_shapes
        )
    if heads:
        summary["attention_blocks"] = api.attention_heads(loaded, input_shapes)
    if (
        calibration is not None or calibration_samples is not None or importance is not None
    ) and not sensitivity:
        raise click.UsageError(
            "--calibration, --calibration-samples and --importance go with --sensitivity"
        )
    if sensitivity:
        if calibration is None:
            raise click.UsageError(
                "--sensitivity measures output errors on calibration data: give --calibration"
            )
        table = api.sensitivity(
            loaded,
            calibration,
            samples=calibration_samples or 0,
            importance=importance or _default_importance(calibration),
            progress=_line,
        )
        summary["sensitivity"] = table.to_json()
        if not as_json:
            _echo(report.analyze_text(summary) + "\n\n" + table.text())
            return
    _echo(json.dumps(summary, indent=2) if as_json else report.analyze_text(summary))


@cli.command()
@click.argument("model", type=MODEL_PATH)
@click.option(
    "-o", "--output", type=MODEL_PATH, required=True, help="Where to write the compressed model."
)
@click.option(
    "--report",
    "report_path",
    type=MODEL_PATH,
    default=None,
    metavar="FILE.json",
    help="Also write the before/after figures and validation as JSON.",
)
@click.option(
    "--passes",
    "pipeline",
    default=None,
    metavar="PIPELINE",
    help="Passes to run instead of the default cleanup, e.g. 'identity-elimination,dead-code' "
    "or 'my_passes.py:MyPass(threshold=0.1)'. See `sparsec passes`.",
)
@click.option("--force", is_flag=True, help="Allow -o to overwrite the input model.")
@click.option(
    "--channels",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    metavar="R",
    help="Remove fraction R of the channels of every prunable channel group (then clean up).",
)
@click.option(
    "--heads",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    metavar="R",
    help="Remove fraction R of the attention heads of every block (a KV head goes with all the query "
    "heads sharing it); overrides --channels for head groups.",
)
@click.option(
    "--ffn",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    metavar="R",
    help="Remove fraction R of the hidden units of every MLP (between two Gemm/MatMul layers); overrides "
    "--channels for those groups.",
)
@click.option(
    "--nm",
    default=None,
    metavar="N:M",
    help="Zero all but the N largest of every M consecutive weights along each weight's reduction "
    "axis (e.g. 2:4); zeros stay in the dense file.",
)
@click.option(
    "--sparsity",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    metavar="R",
    help="Zero fraction R of the weights of Conv/Gemm/MatMul (unstructured, or whole blocks with --block).",
)
@click.option(
    "--block",
    default=None,
    metavar="RxC",
    help="With --sparsity: zero whole RxC blocks of each weight seen as [rows, reduction axis], e.g. 1x8, 4x4.",
)
@click.option(
    "--embeddings",
    is_flag=True,
    help="With --nm/--sparsity: also sparsify embedding tables (float initializers read by Gather), "
    "N:M along each gathered row; left dense by default.",
)
@click.option(
    "--sparse-format",
    type=click.Choice(["dense", "bitmask", "nm", "coo"]),
    default="dense",
    show_default=True,
    help="With --nm/--sparsity: dense keeps the zeros (runs everywhere); bitmask stores kept values + one "
    "bit per weight, nm (with --nm) kept values + their positions in each run of M; both decode in a "
    "subgraph onnxruntime folds at session creation (checked bit-identical); coo writes ONNX "
    "sparse_initializer (onnxruntime only; smaller only above ~67 percent sparsity).",
)
@click.option(
    "--importance",
    type=click.Choice(
        ["l1", "l2", "bn-scale", "random", "activation", "magnitude", "wanda", "sparsegpt"]
    ),
    default=None,
    help="Channels (--channels/--heads/--ffn): l1 / l2 norm of all their weight slices, BatchNorm "
    "|gamma|, seeded random, or activation (‖x‖·‖w‖ at the layers reading them, needs --calibration). "
    "Weights (--nm/--sparsity): magnitude, wanda (|w|·‖x‖, needs --calibration), or sparsegpt (--nm with "
    "--calibration: each layer's mask chosen again in the refit from its inputs' Gram matrix, "
    "SparseGPT's sweep). Default: activation "
    "/ wanda with real --calibration data, else l1 / magnitude.",
)
@click.option(
    "--calibration",
    default=None,
    metavar="DATA",
    help="Calibration samples: a .npz (arrays keyed by input name, first axis = samples), a folder of .npz "
    "and NAME.npy files, or 'random' (seeded random inputs, warned). Read by --importance activation/"
    "wanda, and turns on the least-squares refit of the pruned layers (see --no-recover).",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Use the first N calibration samples (default: all; 64 with 'random').",
)
@click.option(
    "--no-recover",
    is_flag=True,
    help="With --calibration: skip the refit (ridge least squares of each pruned layer against the original's "
    "outputs, bias compensation included, zeros kept).",
)
@click.option(
    "--target-macs",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    metavar="R",
    help="Instead of one ratio: measure each group's sensitivity on --calibration and prune each group by "
    "the ratio (0.1..0.8) that reaches R x the original MACs with the least estimated error.",
)
@click.option(
    "--target-params",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    metavar="R",
    help="As --target-macs, for the parameter count.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="K",
    help="With --channels/--heads/--ffn: reach the ratios in K prune -> refit rounds, each on the model the last "
    "one left (report lists the error after each round).",
)
@click.option(
    "--importance-scope",
    "scope",
    type=click.Choice(["local", "global"]),
    default="local",
    show_default=True,
    help="local: every group loses the same fraction; global: rank channels of all groups together.",
)
@click.option(
    "--max-layer-ratio",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.9,
    show_default=True,
    help="The most any one group may lose, in both scopes (so --channels above it is capped).",
)
@click.option(
    "--round-to",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="K",
    help="Keep channel counts at multiples of K (e.g. 8 or 16 for fast kernels) where the group allows.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Never prune a channel group, or (with --nm/--sparsity) a weight, touching a node or initializer "
    "whose name matches GLOB (repeatable).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of --importance random and --calibration random.",
)
@click.option(
    "--plan-out",
    type=MODEL_PATH,
    default=None,
    metavar="FILE.json",
    help="Write the kept indices per initializer and axis (to prune the source model the same way).",
)
@click.option(
    "--plan-in",
    type=MODEL_PATH,
    default=None,
    metavar="FILE.json",
    help="Apply a plan written by --plan-out instead of choosing channels.",
)
@input_shape_option
@inputs_option
@rtol_option
@atol_option
@latency_option
def compress(
    model: Path,
    output: Path,
    report_path: Path | None,
    pipeline: str | None,
    force: bool,
    channels,
    heads,
    ffn,
    nm,
    sparsity,
    block,
    embeddings,
    sparse_format,
    importance,
    calibration,
    calibration_samples,
    no_recover,
    target_macs,
    target_params,
    steps,
    scope,
    max_layer_ratio,
    round_to,
    exclude,
    seed,
    plan_out,
    plan_in,
    input_shapes,
    inputs,
    rtol,
    atol,
    latency_runs,
) -> None:
    """Compress MODEL into OUTPUT, validated in onnxruntime before anything is written.

    Without a transform flag: the exact cleanup pipeline (identity elimination, BatchNorm
    folding, shape constant folding, dead-code elimination) to a fixed point, validated against
    MODEL. With --channels, --heads, --ffn or --plan-in: channel, attention-head and MLP-neuron
    pruning, then cleanup; with --nm or --sparsity: weight sparsity, then cleanup and the
    --sparse-format encoding. A lossy run is validated against the masked original (MODEL with
    what was removed zeroed) within 1e-4 x max |output| (an encoded one bit-identically, with
    every decoder folded away by onnxruntime), and its difference from MODEL itself is reported.
    """
    targeted = target_macs is not None or target_params is not None
    structured = channels is not None or heads is not None or ffn is not None or targeted
    _check_importance(
        importance,
        calibration,
        weights=nm is not None or sparsity is not None,
        pruning=structured or plan_in is not None or nm is not None or sparsity is not None,
    )
    _check_calibration_options(calibration, calibration_samples, no_recover, steps, structured)
    selection = _given(
        "channels",
        "heads",
        "ffn",
        "importance",
        "scope",
        "max_layer_ratio",
        "round_to",
        "seed",
        "exclude",
    )
    if plan_in is None:  # with a plan, _check_exclusive_flags names every selection flag to drop
        _check_ignored_flags(
            structured, nm is not None or sparsity is not None, selection, importance, calibration
        )
    data = {
        "calibration": calibration,
        "calibration_samples": calibration_samples or 0,
        "recover": not no_recover,
    }
    pipeline = _sparsity_pipeline(
        nm,
        sparsity,
        block,
        embeddings,
        scope,
        sparse_format,
        importance,
        data,
        pipeline,
        structured,
        plan_in,
        exclude,
        seed,
    )
    importance = importance or _default_importance(calibration)
    _check_exclusive_flags(bool(pipeline), (target_macs, target_params), plan_in, selection)
    if structured or plan_in is not None:
        pipeline = api.channel_passes(
            channels or 0.0,
            heads=-1.0 if heads is None else heads,
            ffn=-1.0 if ffn is None else ffn,
            importance=importance,
            scope=scope,
            max_layer_ratio=max_layer_ratio,
            round_to=round_to,
            exclude=exclude,
            seed=seed,
            plan=plan_in,
            steps=steps,
            target_macs=target_macs or 0.0,
            target_params=target_params or 0.0,
            **data,
        )
    result = api.compress(
        model,
        output,
        pipeline=pipeline,
        input_shapes=input_shapes,
        inputs=inputs,
        force=force,
        report=report_path,
        plan_out=plan_out,
        rtol=rtol,
        atol=atol,
        latency_runs=latency_runs,
        on_pass=_progress,
    )
    _echo(report.compress_text(result))


def _given(*names: str) -> list[str]:
    """The flags, among the running command's parameters ``names`` (in that order), that the
    user gave (not left at their defaults)."""
    ctx = click.get_current_context()
    options = {p.name: p for p in ctx.command.params}
    return [
        max(options[name].opts, key=len)
        for name in names
        if ctx.get_parameter_source(name)
        not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    ]


def _check_exclusive_flags(passes: bool, targets: tuple, plan_in, selection: list[str]) -> None:
    """A target replaces the per-kind ratios, --passes (``passes``: a pass list is already set)
    replaces the channel flags, and a saved plan (--plan-in) replaces every flag that chooses
    what to prune (``selection``: those the user gave)."""
    ratios = [flag for flag in ("--channels", "--heads", "--ffn") if flag in selection]
    if None not in targets:
        raise click.UsageError("give --target-macs or --target-params, not both")
    targeted = targets != (None, None)
    if targeted and ratios:
        raise click.UsageError(
            "--target-macs/--target-params choose every group's ratio: drop --channels, --heads "
            "and --ffn"
        )
    if (targeted or ratios or plan_in is not None) and passes:
        raise click.UsageError(
            "--passes cannot be combined with --channels, --heads, --ffn or --plan-in"
        )
    if plan_in is not None and selection:
        raise click.UsageError(f"--plan-in applies a saved plan; drop {', '.join(selection)}")


def _check_importance(importance: str | None, calibration, *, weights: bool, pruning: bool) -> None:
    """Channel rankings go with --channels, weight scores with --nm/--sparsity; calibration
    data goes with a pruning flag, and activation/wanda need it."""
    if importance in ("magnitude", "wanda", "sparsegpt") and not weights:
        raise click.UsageError(f"--importance {importance} scores weights for --nm/--sparsity")
    if importance in ("l1", "l2", "bn-scale", "random", "activation") and weights:
        raise click.UsageError(
            f"--importance {importance} ranks channels; weights use magnitude, wanda or sparsegpt"
        )
    if calibration is not None and not pruning:
        raise click.UsageError(
            "--calibration goes with a pruning flag (--channels, --heads, --ffn, --plan-in, --nm, --sparsity)"
        )


def _default_importance(calibration) -> str:
    """Channels are ranked by what the next layer sees when there is real calibration data."""
    return "activation" if calibration is not None and calibration != "random" else "l1"


def _line(text: str) -> None:
    _echo(f"  {text}", err=True)


def _check_calibration_options(
    calibration, samples, no_recover: bool, steps: int, structured: bool
) -> None:
    if calibration is None and (samples is not None or no_recover):
        raise click.UsageError(
            f"{'--calibration-samples' if samples is not None else '--no-recover'} needs --calibration"
        )
    if steps > 1 and not structured:
        raise click.UsageError("--steps needs --channels, --heads or --ffn")


def _check_ignored_flags(
    channels: bool, weights: bool, selection: list[str], importance, calibration
) -> None:
    """Refuse flags that would be ignored (``selection``: the selection flags the user gave):
    channel-count flags without channel pruning, the selection flags without any pruning,
    --seed with nothing random."""
    if not channels and {"--round-to", "--max-layer-ratio"} & set(selection):
        raise click.UsageError(
            "--round-to and --max-layer-ratio shape channel pruning: they need --channels, --heads, "
            "--ffn or --target-macs/--target-params"
        )
    given = [
        flag for flag in ("--exclude", "--importance", "--importance-scope") if flag in selection
    ]
    if given and not (channels or weights):
        raise click.UsageError(
            f"{given[0]} chooses what a pruning flag removes: it needs --channels, --heads, --ffn, "
            "a target, --nm or --sparsity"
        )
    if "--seed" in selection and not (
        calibration == "random" or (channels and importance == "random")
    ):
        raise click.UsageError(
            "--seed seeds --calibration random and --importance random of channel pruning"
        )


def _sparsity_pipeline(
    nm,
    sparsity,
    block,
    embeddings,
    scope,
    sparse_format,
    importance,
    data: dict,
    pipeline,
    structured,
    plan_in,
    exclude,
    seed: int,
):
    """The passes of --nm / --sparsity (one run prunes one way), or ``pipeline`` unchanged."""
    if pipeline is not None and not pipeline.strip():
        raise click.UsageError(
            "--passes '' names no pass: leave --passes out for the cleanup, or list passes from 'sparsec passes'"
        )
    if nm is None and sparsity is None:
        if block is not None:
            raise click.UsageError("--block needs --sparsity R")
        if sparse_format != "dense" or embeddings:
            raise click.UsageError(
                f"{'--embeddings' if embeddings else '--sparse-format'} needs --nm or --sparsity"
            )
        return pipeline
    if pipeline or structured or plan_in is not None:
        raise click.UsageError(
            "--nm / --sparsity prune on their own: drop --passes, --channels, --heads, --ffn, "
            "--target-macs/--target-params and --plan-in (run sparsec twice to combine)"
        )
    if nm is not None and (sparsity is not None or block is not None):
        raise click.UsageError("--nm and --sparsity/--block are different patterns: give one")
    return api.sparsity_passes(
        nm=nm or "",
        ratio=sparsity or 0.0,
        block=block or "",
        scope=scope,
        embeddings=embeddings,
        exclude=exclude,
        seed=seed,
        score=importance
        or ("wanda" if _default_importance(data["calibration"]) == "activation" else "magnitude"),
        sparse_format=sparse_format,
        **data,
    )


def _progress(pass_, result) -> None:
    stats = ", ".join(f"{k}={v:g}" for k, v in result.stats.items() if v)
    _echo(
        f"  {pass_.describe()}: {stats or ('changed' if result.modified else 'no change')}",
        err=True,
    )


@cli.command()
@click.argument("reference", type=MODEL_PATH)
@click.argument("candidate", type=MODEL_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@input_shape_option
@inputs_option
@rtol_option
@atol_option
@latency_option
def validate(
    reference: Path, candidate: Path, as_json: bool, input_shapes, inputs, rtol, atol, latency_runs
) -> None:
    """Compare CANDIDATE with REFERENCE in onnxruntime: per-output errors, top-1, latency.

    Exits 1 when an output differs beyond atol + rtol*|ref|.
    """
    result = api.validate_files(
        reference,
        candidate,
        input_shapes=input_shapes,
        inputs=inputs,
        rtol=rtol,
        atol=atol,
        latency_runs=latency_runs,
    )
    _echo(json.dumps(result.to_json(), indent=2) if as_json else report.validation_text(result))
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
    count = api.densify(model, output, force=force)
    _echo(f"decoded {count} weight{'' if count == 1 else 's'}; wrote {output}")


@cli.command(name="passes")
def list_passes() -> None:
    """List the available passes with a one-line description each."""
    registry = available()
    width = max(len(name) for name in registry)
    for name, cls in registry.items():
        _echo(f"{name.ljust(width)}  {cls.summary}")


class _PrintableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _show_progress() -> None:
    """Long passes' progress lines (the ``sparsec.progress`` logger) go to stderr, indented."""
    logger = logging.getLogger("sparsec.progress")
    if not logger.handlers:
        handler = logging.StreamHandler()  # stderr, looked up per line (so tests capture it)
        handler.setFormatter(_PrintableFormatter("    %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _echo(text: str, err: bool = False) -> None:
    """Print a result (stdout) or progress line (stderr) with its control characters escaped."""
    click.echo(printable(text), err=err)


def _error(message: str) -> None:
    """The one stderr line of a failure, on one line whatever the message holds."""
    click.echo(f"sparsec: error: {printable(message, newlines=False)}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one stderr line and an exit code."""
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # library chatter is not for users
    _show_progress()
    warnings.simplefilter("ignore")
    argv = sys.argv[1:] if argv is None else argv
    try:
        cli.main(
            args=argv or ["--help"], prog_name="sparsec", standalone_mode=False
        )  # bare 'sparsec': the help
    except SparsecError as error:
        _error(str(error))
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("sparsec: aborted", err=True)
        return 130
    except click.ClickException as error:
        where = (
            getattr(getattr(error, "ctx", None), "command_path", None) or "sparsec"
        )  # the subcommand's help
        _error(f"{error.format_message()} (see '{where} --help')")
        return 2
    except SystemExit as exit_:  # sparsec never calls sys.exit below main: a plugin or pass did
        _error(
            f"internal error (sys.exit({exit_.code!r}) was called by a pass or plugin, not by sparsec)"
        )
        return 3
    except Exception as error:  # a bug, not the user's fault: still one line, never a traceback
        _error(f"internal error ({type(error).__name__}: {error}); please report it")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
