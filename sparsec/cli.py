"""The ``sparsec`` command line: parse flags, call ``sparsec.api``, print, choose the exit code.

Exit codes: 0 done; 1 validation or a gate failed; 2 bad input or usage. Every failure is
one line on stderr (``sparsec: error: ...``), never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import click

from sparsec import __version__, api, report
from sparsec.errors import SparsecError
from sparsec.passes import available
from sparsec.validate import DEFAULT_ATOL, DEFAULT_RTOL

MODEL_PATH = click.Path(path_type=Path)

input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:DxD...",
    help="Fix an input's dims, e.g. input:1x3x224x224 (repeatable). Symbolic dims otherwise "
         "default to 1 for the batch axis and 128 elsewhere.")
inputs_option = click.option(
    "--inputs", type=click.Path(path_type=Path), default=None, metavar="FILE.npz",
    help="Run on these arrays (keyed by input name) instead of seeded random inputs.")
rtol_option = click.option("--rtol", type=click.FloatRange(min=0),  default=DEFAULT_RTOL, show_default=True,
                           help="Relative tolerance: |cand - ref| <= atol + rtol*|ref| per element.")
atol_option = click.option("--atol", type=click.FloatRange(min=0), default=DEFAULT_ATOL, show_default=True,
                           help="Absolute tolerance of the same check.")
latency_option = click.option("--latency-runs", type=click.IntRange(min=0), default=10, show_default=True,
                              help="Timed runs per model for the median latency (0 skips timing).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sparsec")
def cli() -> None:
    """sparsec: compress ONNX models, validated in onnxruntime before anything is written."""


@cli.command()
@click.argument("model", type=MODEL_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON (top-level params and macs).")
@input_shape_option
@inputs_option
def analyze(model: Path, as_json: bool, input_shapes: tuple[str, ...], inputs: Path | None) -> None:
    """Report params, MACs, op histogram, opsets, inputs and outputs of MODEL."""
    summary = api.analyze(api.Model.load(model), input_shapes, inputs)
    click.echo(json.dumps(summary, indent=2) if as_json else report.analyze_text(summary))


@cli.command()
@click.argument("model", type=MODEL_PATH)
@click.option("-o", "--output", type=MODEL_PATH, required=True, help="Where to write the compressed model.")
@click.option("--report", "report_path", type=MODEL_PATH, default=None, metavar="FILE.json",
              help="Also write the before/after figures and validation as JSON.")
@click.option("--passes", "pipeline", default=None, metavar="PIPELINE",
              help="Passes to run instead of the default cleanup, e.g. 'identity-elimination,dead-code' "
                   "or 'my_passes.py:MyPass(threshold=0.1)'. See `sparsec passes`.")
@click.option("--force", is_flag=True, help="Allow -o to overwrite the input model.")
@input_shape_option
@inputs_option
@rtol_option
@atol_option
@latency_option
def compress(model: Path, output: Path, report_path: Path | None, pipeline: str | None, force: bool,
             input_shapes, inputs, rtol, atol, latency_runs) -> None:
    """Compress MODEL into OUTPUT, validated against MODEL in onnxruntime.

    Runs the cleanup pipeline (identity elimination, BatchNorm folding, shape constant folding,
    dead-code elimination) to a fixed point unless --passes says otherwise.
    """
    result = api.compress(model, output, pipeline=pipeline, input_shapes=input_shapes, inputs=inputs, force=force,
                          report=report_path, rtol=rtol, atol=atol, latency_runs=latency_runs, on_pass=_progress)
    click.echo(report.compress_text(result))


def _progress(pass_, result) -> None:
    stats = ", ".join(f"{k}={v:g}" for k, v in result.stats.items() if v)
    click.echo(f"  {pass_.describe()}: {stats or 'no change'}")


@cli.command()
@click.argument("reference", type=MODEL_PATH)
@click.argument("candidate", type=MODEL_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@input_shape_option
@inputs_option
@rtol_option
@atol_option
@latency_option
def validate(reference: Path, candidate: Path, as_json: bool, input_shapes, inputs, rtol, atol, latency_runs) -> None:
    """Compare CANDIDATE with REFERENCE in onnxruntime: per-output errors, top-1, latency.

    Exits 1 when an output differs beyond atol + rtol*|ref|.
    """
    result = api.validate_files(reference, candidate, input_shapes=input_shapes, inputs=inputs, rtol=rtol,
                                atol=atol, latency_runs=latency_runs)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else report.validation_text(result))
    if not result.passed:
        sys.exit(1)


@cli.command(name="passes")
def list_passes() -> None:
    """List the available passes with a one-line description each."""
    registry = available()
    width = max(len(name) for name in registry)
    for name, cls in registry.items():
        click.echo(f"{name.ljust(width)}  {cls.summary}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one stderr line and an exit code."""
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # library chatter is not for users
    warnings.simplefilter("ignore")
    try:
        cli.main(args=argv, prog_name="sparsec", standalone_mode=False)
    except SparsecError as error:
        click.echo(f"sparsec: error: {error}", err=True)
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("sparsec: aborted", err=True)
        return 130
    except click.ClickException as error:
        click.echo(f"sparsec: error: {error.format_message()} (see 'sparsec --help')", err=True)
        return 2
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as error:  # a bug, not the user's fault: still one line, never a traceback
        click.echo(f"sparsec: error: internal error ({type(error).__name__}: {error}); please report it", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
