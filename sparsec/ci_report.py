"""Reports of compression jobs for CI servers and for people: a GitHub-flavoured Markdown page
(for a job summary, ``$GITHUB_STEP_SUMMARY``) and a JUnit XML file, both built from a list of
*job reports*, the JSON dicts the jobs write.

A job report has ``name`` and ``status`` (``passed``; ``failed``: a gate or validation missed;
``error``: bad input or an internal error, nothing measured); every other key may be missing or
None: ``error`` (one line), ``source`` and ``output`` (``path``, ``sha256``, ``written``),
``command``, ``before`` and ``after`` (``nodes``, ``params``, ``macs``, ``bytes``,
``latency_ms``), ``by_op`` (per op type ``op`` and ``{nodes,params,macs}_{before,after}``),
``evaluation`` (``data``, ``samples``, ``labelled``, ``outputs``: per output ``name``,
``accuracy_before``, ``accuracy_after``, ``agreement``, ``cosine``, ``max_abs``, ``max_rel``),
``gates`` (``option``, ``limit``, ``measured``, ``unit``, ``passed``, ``detail``), ``warnings``
and ``duration_s``.

Markdown invariants:
  * every string taken from a job (names, paths, commands, errors, details, warnings) is shown on
    one line with control characters as ``\\xNN``, a newline as ``\\n``, and Markdown's
    ``\\ ` * _ [ ] < > | ~ &`` escaped with a backslash: no value can end a table row, add a
    cell, start HTML or a link;
  * numbers are written as ``sparsec.report`` writes them (``human``, ``_ratio``, ``_ms``);
  * the per-op table lists only the op types whose nodes, params or MACs changed, the most
    params removed first.

JUnit invariants (``tests/data/junit.xsd``: the Jenkins xUnit plugin's JUnit schema):
  * one ``<testsuites>`` holding one ``<testsuite>``; both count ``tests``, ``failures``,
    ``errors`` (testcases with a ``<failure>`` / an ``<error>``) and ``time`` (the sum of the
    testcases' times); times are seconds with three decimals; nothing is skipped;
  * per job a testcase ``"<job> compress"`` (classname ``sparsec.<job>``) with an ``<error>``
    when the job errored and a ``<failure>`` when it failed with no gate missed; per gate a
    testcase ``"<job> <option>"`` with a ``<failure>`` when the gate missed (or was not
    measured), its message and body giving the limit, the figure measured, the unit and detail;
  * built with ElementTree (markup escaped); characters XML 1.0 forbids are written as
    ``\\xNN`` / ``\\uNNNN``, and names and messages are kept on one line.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path

from sparsec.errors import InputError, one_line, printable
from sparsec.report import _ms, _ratio, human

MARKS = {"passed": "✅", "failed": "❌", "error": "⚠️"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")  # what printable() leaves that XML 1.0 forbids
_MEASURES = (
    ("nodes", "nodes", lambda n: "-" if n is None else str(n)),
    ("params", "params", human),
    ("MACs", "macs", human),
    ("file bytes", "bytes", human),
    ("latency ms", "latency_ms", _ms),
)


def _text(value: object, *, newlines: bool = False) -> str:
    """A string from a job, printable and valid in XML 1.0; on one line unless ``newlines``."""
    text = printable(str(value), newlines=newlines)
    return _NOT_XML.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _md(value: object) -> str:
    """A string from a job as Markdown text on one line that cannot break a table or a heading."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _text(value))


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _md_table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """A GitHub table; every cell escaped; columns in ``left`` left-aligned, others right."""

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    align = [":---" if i in left else "---:" for i in range(len(header))]
    return "\n".join([line(map(_md, header)), line(align), *(line(map(_md, row)) for row in rows)])


# --- Markdown ------------------------------------------------------------------------------


def markdown(jobs: list[dict], title: str = "sparsec") -> str:
    """A GitHub job-summary page: a heading, a count of the verdicts, then one section per job."""
    counts = {status: sum(1 for j in jobs if j.get("status") == status) for status in MARKS}
    summary = f"{len(jobs)} job{'' if len(jobs) == 1 else 's'}: " + ", ".join(
        f"{MARKS[status]} {n} {status}" for status, n in counts.items()
    )
    sections = [f"# {_md(title)}", summary, *(_job_md(job) for job in jobs)]
    return "\n\n".join(sections) + "\n"


def _job_md(job: dict) -> str:
    status = job.get("status")
    heading = f"### {MARKS.get(status, '❔')} {_md(job.get('name') or 'job')}: {_md(status)}"
    blocks = [heading]
    if job.get("error"):
        blocks.append(f"**{_md(status)}:** {_md(job['error'])}")
    blocks.append(_origin_md(job))
    if job.get("before") or job.get("after"):
        blocks.append(_size_md(job.get("before") or {}, job.get("after") or {}))
    if job.get("evaluation"):
        blocks.append(_evaluation_md(job["evaluation"]))
    if job.get("gates"):
        blocks.append(_gates_md(job["gates"]))
    if job.get("warnings"):
        blocks.append("\n".join(f"- {_md(w)}" for w in job["warnings"]))
    changed = _changed_ops(job.get("by_op") or [])
    if changed:
        blocks.append(_ops_md(changed))
    return "\n\n".join(block for block in blocks if block)


def _origin_md(job: dict) -> str:
    """Source → output, the command and the duration, one line each (Markdown hard breaks)."""
    source, output = job.get("source") or {}, job.get("output") or {}
    lines = []
    if source.get("path") or output.get("path"):
        written = "" if output.get("written", True) else " (not written)"
        lines.append(
            f"{_md(source.get('path') or '?')} → {_md(output.get('path') or '-')}{written}"
        )
    if job.get("command"):
        lines.append(f"command: {_md(job['command'])}")
    if job.get("duration_s") is not None:
        lines.append(f"took {_num(job['duration_s'], '.3g')} s")
    return "  \n".join(lines)


def _size_md(before: dict, after: dict) -> str:
    rows = [
        [label, fmt(before.get(key)), fmt(after.get(key)), _ratio(before.get(key), after.get(key))]
        for label, key, fmt in _MEASURES
    ]
    return _md_table(["", "before", "after", "ratio"], rows)


def _evaluation_md(evaluation: dict) -> str:
    caption = f"**Evaluation** on {_md(evaluation.get('data') or '?')}"
    if evaluation.get("labelled") is False:
        caption += " (no labels: accuracy not measured)"
    rows = [
        [
            str(o.get("name", "?")),
            _num(o.get("accuracy_before"), ".3f"),
            _num(o.get("accuracy_after"), ".3f"),
            _num(o.get("agreement"), ".3f"),
            _num(o.get("cosine"), ".6f"),
            _num(o.get("max_abs"), ".3g"),
        ]
        for o in evaluation.get("outputs") or []
    ]
    header = ["output", "accuracy before", "accuracy after", "agreement", "cosine", "max abs"]
    return caption + "\n\n" + _md_table(header, rows)


def _gates_md(gates: list[dict]) -> str:
    verdicts = {True: "✅ passed", False: "❌ missed", None: "⚠️ not measured"}
    rows = [
        [
            str(g.get("option", "?")),
            _figure(g.get("limit"), g.get("unit")),
            _figure(g.get("measured"), g.get("unit")),
            verdicts.get(g.get("passed"), "❌ missed"),
            str(g.get("detail") or ""),
        ]
        for g in gates
    ]
    table = _md_table(["gate", "limit", "measured", "verdict", "detail"], rows, left=(0, 3, 4))
    return "**Gates**\n\n" + table


def _figure(value: float | None, unit: str | None) -> str:
    return f"{_num(value, 'g')} {unit or ''}".rstrip()


def _changed_ops(by_op: list[dict]) -> list[dict]:
    """Op types whose nodes, params or MACs changed, the most params removed first."""
    changed = [
        row
        for row in by_op
        if any(row.get(f"{k}_before") != row.get(f"{k}_after") for k in ("nodes", "params", "macs"))
    ]
    return sorted(changed, key=lambda row: (-_removed(row, "params"), str(row.get("op"))))


def _removed(row: dict, key: str) -> float:
    return (row.get(f"{key}_before") or 0) - (row.get(f"{key}_after") or 0)


def _ops_md(rows: list[dict]) -> str:
    def change(row: dict, key: str, fmt) -> str:
        return f"{fmt(row.get(f'{key}_before'))} → {fmt(row.get(f'{key}_after'))}"

    count = _MEASURES[0][2]
    table = [
        [
            str(r.get("op", "?")),
            change(r, "nodes", count),
            change(r, "params", human),
            change(r, "macs", human),
        ]
        for r in rows
    ]
    return "**Changed op types**\n\n" + _md_table(["op", "nodes", "params", "MACs"], table)


# --- JUnit ---------------------------------------------------------------------------------


def junit(jobs: list[dict], suite: str = "sparsec") -> str:
    """JUnit XML (text with a utf-8 declaration): one suite, a testcase per job and per gate."""
    cases = [case for job in jobs for case in _job_cases(job)]
    root = ET.Element("testsuites", _counts(cases, suite))
    testsuite = ET.SubElement(root, "testsuite", {**_counts(cases, suite), "skipped": "0"})
    testsuite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _counts(cases: list[ET.Element], suite: str) -> dict[str, str]:
    seconds = sum(float(case.get("time", "0")) for case in cases)
    return {
        "name": _text(suite),
        "tests": str(len(cases)),
        "failures": str(sum(1 for case in cases if case.find("failure") is not None)),
        "errors": str(sum(1 for case in cases if case.find("error") is not None)),
        "time": _seconds(seconds),
    }


def _seconds(value: object) -> str:
    """Seconds with three decimals; anything but a finite non-negative number is 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return f"{value if ok and value > 0 else 0:.3f}"


def _job_cases(job: dict) -> list[ET.Element]:
    name = _text(job.get("name") or "job")
    status, gates = job.get("status"), job.get("gates") or []
    case = _case(f"{name} compress", name, job.get("duration_s"))
    error = _text(job.get("error") or "")
    if status == "error" or status not in ("passed", "failed"):
        message = error or f"the job ended with status {_text(status)!r}"
        _outcome(case, "error", "sparsec.error", message, _job_body(job, message))
    elif status == "failed" and all(g.get("passed") is True for g in gates):
        message = error or "validation failed"
        _outcome(case, "failure", "sparsec.validation", message, _job_body(job, message))
    _system_out(case, job)
    return [case] + [_gate_case(name, gate) for gate in gates]


def _case(name: str, job: str, seconds: object) -> ET.Element:
    attributes = {"name": name, "classname": f"sparsec.{job}", "time": _seconds(seconds)}
    return ET.Element("testcase", attributes)


def _outcome(case: ET.Element, tag: str, kind: str, message: str, body: str) -> None:
    ET.SubElement(case, tag, {"message": message, "type": kind}).text = body


def _job_body(job: dict, message: str) -> str:
    source, output = job.get("source") or {}, job.get("output") or {}
    lines = [message]
    if job.get("command"):
        lines.append(f"command: {_text(job['command'])}")
    for label, part in (("source", source), ("output", output)):
        if part.get("path"):
            lines.append(f"{label}: {_text(part['path'])} (sha256 {_text(part.get('sha256'))})")
    return "\n".join(lines)


def _system_out(case: ET.Element, job: dict) -> None:
    """The command and the warnings, when there are any, as the compress testcase's output."""
    lines = [f"command: {_text(job['command'])}"] if job.get("command") else []
    lines += [_text(w) for w in job.get("warnings") or []]
    if lines:
        ET.SubElement(case, "system-out").text = "\n".join(lines)


def _gate_case(job: str, gate: dict) -> ET.Element:
    option = _text(gate.get("option") or "gate")
    case = _case(f"{job} {option}", job, 0)
    if gate.get("passed") is not True:
        unit = _text(gate.get("unit") or "")
        limit = _text(_figure(gate.get("limit"), unit))
        measured = _text(_figure(gate.get("measured"), unit))
        detail = _text(gate.get("detail") or "")
        verdict = "not measured" if gate.get("passed") is None else "missed"
        message = f"{option} {verdict}: measured {measured}, limit {limit}" + (
            f": {detail}" if detail else ""
        )
        body = "\n".join(
            [
                message,
                f"limit: {limit}",
                f"measured: {measured}",
                f"unit: {unit}",
                f"detail: {detail}",
            ]
        )
        _outcome(case, "failure", "sparsec.gate", message, body)
    return case


# --- GitHub step summary -------------------------------------------------------------------


def append_step_summary(
    markdown_text: str, environ: Mapping[str, str] | None = None
) -> Path | None:
    """Append ``markdown_text`` and a blank line to the file ``$GITHUB_STEP_SUMMARY`` names and
    return its path; None when the variable is unset or empty. Raises InputError (one line) when
    the file cannot be written."""
    target = (os.environ if environ is None else environ).get("GITHUB_STEP_SUMMARY", "")
    if not target:
        return None
    path = Path(target)
    try:
        with path.open("a", encoding="utf-8", errors="backslashreplace") as stream:
            stream.write(markdown_text.rstrip("\n") + "\n\n")
    except OSError as error:
        raise InputError(
            f"cannot append the job summary to $GITHUB_STEP_SUMMARY "
            f"({printable(target, newlines=False)}): {one_line(error.strerror or error)}; "
            "point it at a writable file or unset it"
        ) from None
    return path
