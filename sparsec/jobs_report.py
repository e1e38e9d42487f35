"""The reports of compression jobs: the JSON of a job (``job_json``) and of a recipe run
(``run_json``), written with the Markdown and JUnit renderings (``sparsec.ci_report``).

The JSON has a ``schema_version`` (``jobs.SCHEMA_VERSION``; it changes only when a key changes
meaning or goes), the sparsec version, the source path and sha256, the output path, sha256 and
whether it was written, the command or recipe keys, each gate with its limit, figure and
verdict, the evaluation, the warnings and the verdict (``status``: passed, failed, error). A
job report also carries the compression figures of ``api.CompressResult.to_json`` at its top
level (``params_before``, ``oracle``, ``validation``, ...), and ``before``/``after`` objects.
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


def job_json(outcome) -> dict:
    """One job's report (``outcome``: a ``jobs.JobOutcome``)."""
    from sparsec.jobs import SCHEMA_VERSION

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
        warnings=list(outcome.warnings),
        duration_s=outcome.duration_s,
    )
    return report


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
    from sparsec.jobs import SCHEMA_VERSION

    statuses = [job["status"] for job in jobs]
    status = "error" if "error" in statuses else "failed" if "failed" in statuses else "passed"
    return {
        "schema_version": SCHEMA_VERSION,
        "sparsec_version": __version__,
        "recipe": recipe,
        "status": status,
        "jobs": list(jobs),
    }


def write_job_reports(outcomes, spec) -> None:
    """A single job's report, Markdown and JUnit, where ``spec`` asks for them."""
    jobs = [outcome.to_json() for outcome in outcomes]
    payload = jobs[0] if len(jobs) == 1 else run_json(jobs, None)
    write_reports(
        jobs,
        payload,
        report=spec.path("report"),
        markdown=spec.path("markdown"),
        junit=spec.path("junit"),
    )


def write_reports(
    jobs: Sequence[dict],
    payload: dict,
    *,
    report: Path | None,
    markdown: Path | None,
    junit: Path | None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """The JSON ``payload`` to ``report`` ('-': stdout), the Markdown of ``jobs`` to
    ``markdown`` (and appended to $GITHUB_STEP_SUMMARY when set), the JUnit XML to ``junit``."""
    from sparsec import ci_report

    if report is not None:
        text = json.dumps(strict(payload), indent=2, allow_nan=False) + "\n"
        if str(report) == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            write_text(report, text)
    environ = os.environ if environ is None else environ
    if markdown is not None or environ.get("GITHUB_STEP_SUMMARY"):
        text = ci_report.markdown(list(jobs))
        if markdown is not None:
            write_text(markdown, text)
        ci_report.append_step_summary(text, environ)
    if junit is not None:
        write_text(junit, ci_report.junit(list(jobs)))
