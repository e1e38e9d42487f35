"""The reports of compression jobs: the JSON of a job (``job_json``) and of a recipe run
(``run_json``), written with the Markdown and JUnit renderings (``sparsec.ci_report``).

The JSON has a ``schema_version`` (``SCHEMA_VERSION``; it changes only when a key changes
meaning or goes), the sparsec version, the source path and sha256, the output path, sha256 and
whether it was written, the command or recipe keys, each gate with its limit, figure and
verdict, the evaluation, the warnings (the passes' and the job's) and the verdict (``status``:
passed, failed, error). A
job report also carries the compression figures of ``api.CompressResult.to_json`` at its top
level (``params_before``, ``oracle``, ``validation``, ``lossy_couplings``: the nodes a cut went
through although they mix channels and its difference from the plain masked original, or null,
...), and ``before``/``after`` objects.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sparsec import __version__
from sparsec.ir import write_text

SCHEMA_VERSION = 2  # changes only when a key changes meaning or goes


def job_json(outcome) -> dict:
    """One job's report (``outcome``: a ``jobs.JobOutcome``)."""
    spec, result = outcome.spec, outcome.result
    report = dict(result.to_json()) if result is not None else {}
    report.update(
        schema_version=SCHEMA_VERSION,
        sparsec_version=__version__,
        name=outcome.name,
        status=outcome.status,
        error=None if outcome.error is None else str(outcome.error),
        exit_code=outcome.exit_code,
        command=outcome.command,
        recipe_keys=spec.recipe_keys(),
        source={"path": _str(spec.path("source")), "sha256": outcome.source_sha256},
        output={
            "path": _str(spec.path("output")),
            "sha256": outcome.output_sha256 if outcome.status == "passed" else None,
            "written": outcome.status == "passed",
        },
        before=_figures(result, "before"),
        after=_figures(result, "after"),
        by_op=by_op(result),
        evaluation=None if outcome.evaluation is None else outcome.evaluation.to_json(),
        latency=None if outcome.latency is None else outcome.latency.to_json(),
        gates=[g.to_json() for g in outcome.gates],
        warnings=[*pass_warnings(result), *outcome.warnings],
        duration_s=outcome.duration_s,
    )
    return report


def pass_warnings(result) -> list[str]:
    """The passes' warnings (a cut that removed nothing, random calibration, ...), as the CLI
    prints them: the report's ``warnings`` (and the Markdown and JUnit renderings made from
    it) hold them with the job's own (a quality collapse), so a CI reading one list sees all."""
    if result is None:
        return []
    return [str(finding) for finding in result.diagnostics if finding.severity == "warning"]


def _str(path) -> str | None:
    return None if path is None else str(path)


def _figures(result, when: str) -> dict | None:
    if result is None:
        return None
    figures = getattr(result, when).to_json()
    validation = result.validation
    latency = (
        validation.latency_ms_reference if when == "before" else validation.latency_ms_candidate
    )
    return {**figures, "latency_ms": latency}


def by_op(result) -> list[dict]:
    """Per op type, nodes, params and MACs before and after (every op of either model)."""
    if result is None:
        return []
    before, after = result.before.ops, result.after.ops
    rows = []
    for op in sorted(set(before) | set(after)):
        row: dict = {"op": op}
        for key in ("nodes", "params", "macs"):
            row[f"{key}_before"] = before.get(op, {}).get(key, 0)
            row[f"{key}_after"] = after.get(op, {}).get(key, 0)
        rows.append(row)
    return rows


def strict(value):
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def run_json(jobs: Sequence[dict], recipe: str | None) -> dict:
    """A recipe run's report: every job's report and the run's verdict."""
    statuses = [job["status"] for job in jobs]
    status = "error" if "error" in statuses else "failed" if "failed" in statuses else "passed"
    return {
        "schema_version": SCHEMA_VERSION,
        "sparsec_version": __version__,
        "recipe": recipe,
        "status": status,
        "jobs": list(jobs),
    }


def job_files(outcome) -> dict[str, str]:
    """A single job's report, Markdown and JUnit texts by the path ``spec`` gives them ('-':
    stdout)."""
    job = outcome.to_json()
    spec = outcome.spec
    paths = {name: spec.path(name) for name in ("report", "markdown", "junit")}
    return render([job], job, **paths)


def render(
    jobs: Sequence[dict],
    payload: dict,
    *,
    report: Path | None,
    markdown: Path | None,
    junit: Path | None,
) -> dict[str, str]:
    """The texts to write, by path: the JSON ``payload`` at ``report`` ('-' for stdout), the
    Markdown of ``jobs`` at ``markdown``, their JUnit XML at ``junit``."""
    from sparsec import ci_report

    files = {}
    if report is not None:
        files[str(report)] = json.dumps(strict(payload), indent=2, allow_nan=False) + "\n"
    if markdown is not None:
        files[str(markdown)] = ci_report.markdown(list(jobs))
    if junit is not None:
        files[str(junit)] = ci_report.junit(list(jobs))
    return files


def write_files(files: Mapping[str, str]) -> None:
    """Each text to its path, atomically; '-' to stdout."""
    for path, text in files.items():
        if path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            write_text(Path(path), text)


def append_summary(jobs: Sequence[dict], environ: Mapping[str, str] | None = None) -> None:
    """The Markdown of ``jobs`` appended to $GITHUB_STEP_SUMMARY when it is set."""
    from sparsec import ci_report

    environ = os.environ if environ is None else environ
    if environ.get("GITHUB_STEP_SUMMARY"):
        ci_report.append_step_summary(ci_report.markdown(list(jobs)), environ)
