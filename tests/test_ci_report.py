"""sparsec.ci_report: the JUnit file validates against the JUnit schema CI servers use and its
counts and messages carry the job figures; the Markdown summary keeps every table row intact
whatever the job's strings hold; the step summary is appended to, never overwritten."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from sparsec.ci_report import append_step_summary, junit, markdown
from sparsec.errors import InputError
from sparsec.report import human

SCHEMA = xmlschema.XMLSchema(Path(__file__).parent / "data" / "junit.xsd")


def _gate(option: str, limit: float, measured: float, passed: bool) -> dict:
    return {
        "option": option,
        "limit": limit,
        "measured": measured,
        "unit": "points",
        "passed": passed,
        "detail": f"top-1 accuracy drop {measured} points on digits_test.npz (360 samples)",
    }


def _job(name: str, status: str = "passed", **extra) -> dict:
    job = {
        "name": name,
        "status": status,
        "error": None,
        "source": {"path": f"models/{name}.onnx", "sha256": "ab" * 32},
        "output": {"path": f"out/{name}.onnx", "sha256": "cd" * 32, "written": True},
        "command": f"sparsec compress models/{name}.onnx -o out/{name}.onnx --channels 0.5",
        "before": {"nodes": 24, "params": 5310, "macs": 258000, "bytes": 25300, "latency_ms": 0.07},
        "after": {"nodes": 20, "params": 1600, "macs": 98000, "bytes": 9100, "latency_ms": 0.05},
        "by_op": [],
        "evaluation": None,
        "gates": [],
        "warnings": [],
        "duration_s": 1.5,
    }
    job.update(extra)
    return job


def _failed_gate_job() -> dict:
    return _job(
        "digits-half",
        "failed",
        error="--max-top1-drop: 80.8 points > 1 points",
        gates=[
            _gate("--max-top1-drop", 1.0, 80.8, False),
            _gate("--max-mac-ratio", 0.5, 0.38, True),
        ],
        duration_s=2.25,
    )


def _error_job() -> dict:
    return _job(
        "broken",
        "error",
        error="cannot read models/broken.onnx: not an ONNX model",
        before=None,
        after=None,
        output={"path": "out/broken.onnx", "sha256": None, "written": False},
        duration_s=None,
    )


def _validation_job() -> dict:
    return _job(
        "drifted",
        "failed",
        error="validation failed: max abs error 3.5 on 'logits'",
        gates=[_gate("--max-top1-drop", 5.0, 0.5, True)],
        duration_s=0.125,
    )


def _passed_job() -> dict:
    gates = [_gate("--max-top1-drop", 1.0, 0.2, True), _gate("--max-mac-ratio", 0.5, 0.38, True)]
    return _job("digits-quarter", gates=gates)


def _cases(xml_text: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml_text.encode("utf-8"))
    return {case.get("name"): case for case in root.iter("testcase")}


# --- JUnit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "jobs",
    [
        [_passed_job()],
        [_failed_gate_job()],
        [_error_job()],
        [_passed_job(), _failed_gate_job(), _error_job(), _validation_job()],
        [{"name": "bare", "status": "passed"}],  # every optional key missing
        [],
    ],
    ids=["passed", "failed-gate", "error", "several", "bare", "none"],
)
def test_junit_validates_against_the_schema(jobs):
    text = junit(jobs)
    assert re.match(r"<\?xml [^>]*encoding=[\"']utf-8[\"']", text)
    SCHEMA.validate(text)
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "testsuites"
    assert [child.tag for child in root] == ["testsuite"]


def test_junit_counts_tests_failures_errors_and_time():
    jobs = [_passed_job(), _failed_gate_job(), _error_job(), _validation_job()]
    root = ET.fromstring(junit(jobs, suite="nightly").encode("utf-8"))
    suite = root.find("testsuite")
    # cases: 1+2 (passed), 1+2 (failed gate), 1 (error), 1+1 (validation) = 9
    # failures: the missed gate and the validation job's compress case; errors: the error job
    for element in (root, suite):
        assert element.get("tests") == "9"
        assert element.get("failures") == "2"
        assert element.get("errors") == "1"
        assert float(element.get("time")) == pytest.approx(1.5 + 2.25 + 0 + 0.125)
    assert suite.get("name") == "nightly"
    assert len(suite.findall("testcase")) == 9
    assert not list(root.iter("skipped"))


def test_junit_gate_failure_message_and_body_carry_the_figures():
    cases = _cases(junit([_failed_gate_job()]))
    assert set(cases) == {
        "digits-half compress",
        "digits-half --max-top1-drop",
        "digits-half --max-mac-ratio",
    }
    assert {case.get("classname") for case in cases.values()} == {"sparsec.digits-half"}
    failure = cases["digits-half --max-top1-drop"].find("failure")
    message = failure.get("message")
    for figure in ("80.8", "1", "points", "--max-top1-drop", "digits_test.npz"):
        assert figure in message
    assert "\n" not in message
    assert "80.8" in failure.text and "points" in failure.text
    assert len(failure.text.splitlines()) > 1  # the body lists the figures one per line
    # the failure belongs to the gate: the compress case and the met gate pass
    assert not _outcomes(cases["digits-half compress"])
    assert not _outcomes(cases["digits-half --max-mac-ratio"])
    assert float(cases["digits-half compress"].get("time")) == pytest.approx(2.25)


def _outcomes(case: ET.Element) -> list[str]:
    return [child.tag for child in case if child.tag in ("failure", "error", "skipped")]


def test_junit_error_and_validation_failure_on_the_compress_case():
    job_error, job_validation = _error_job(), _validation_job()
    cases = _cases(junit([job_error, job_validation]))
    assert _outcomes(cases["broken compress"]) == ["error"]
    assert cases["broken compress"].find("error").get("message") == job_error["error"]
    assert _outcomes(cases["drifted compress"]) == ["failure"]
    assert cases["drifted compress"].find("failure").get("message") == job_validation["error"]
    assert not _outcomes(cases["drifted --max-top1-drop"])


def test_junit_unknown_status_is_an_error_not_a_pass():
    cases = _cases(junit([{"name": "odd", "status": "interrupted"}]))
    assert _outcomes(cases["odd compress"]) == ["error"]


def test_junit_removes_characters_xml_forbids_and_escapes_markup():
    name = 'evil\x00\x1b[31m\x0c<b>&"\ud800\uffff\nname'
    job = _job(name, "error", error="bad \x07 byte <here> & \x1f", before=None, after=None)
    text = junit([job])
    SCHEMA.validate(text)
    (case,) = ET.fromstring(text.encode("utf-8")).iter("testcase")
    for value in (case.get("name"), case.get("classname"), case.find("error").get("message")):
        assert not re.search(r"[\x00-\x1f\ud800-\udfff\ufffe\uffff]", value)
    assert case.get("name").startswith("evil")
    assert '<b>&"' in case.get("name")  # markup is escaped by the XML, not dropped
    assert "<here> &" in case.find("error").get("message")


# --- Markdown ------------------------------------------------------------------------------


def _cells(row: str) -> list[str]:
    """A Markdown table row's cells, split at unescaped pipes, with backslash escapes undone."""
    cells, cell, chars = [], "", iter(row.strip())
    for char in chars:
        if char == "\\":
            cell += next(chars, "")
        elif char == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    cells.append(cell.strip())
    return cells[1:-1]  # outside the leading and trailing pipes


def _tables(text: str) -> list[list[list[str]]]:
    """Every table as rows of cells (header first, the alignment row dropped)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(_cells(line))
        elif current:
            tables.append([current[0], *current[2:]])
            current = []
    return tables


def _table(text: str, first_header: str) -> list[list[str]]:
    (table,) = [t for t in _tables(text) if t[0][0] == first_header]
    return table


def test_markdown_rows_stay_whole_with_pipes_newlines_and_control_characters():
    name = "a|b\nc\x1b[31md"
    evaluation = {
        "data": "x|y.npz\n(3 samples)",
        "samples": 3,
        "labelled": True,
        "outputs": [{"name": "out|put\nx", "accuracy_before": 1.0, "accuracy_after": 0.5}],
    }
    gate = _gate("--max-top1-drop", 1.0, 50.0, False) | {"detail": "a | b\n| c"}
    job = _job(name, "failed", error="x\n| y", evaluation=evaluation, gates=[gate])
    text = markdown([job], title="CI|run\n#2")
    assert "\x1b" not in text
    for table in _tables(text):
        assert len({len(row) for row in table}) == 1, table
    (heading,) = [line for line in text.splitlines() if line.startswith("###")]
    assert "a" in heading and "d" in heading  # the whole name on the heading's one line
    assert text.splitlines()[0].startswith("# ") and "#2" in text.splitlines()[0]
    assert _table(text, "output")[1][0] == "out|put\\nx"
    assert _table(text, "gate")[1][4] == "a | b\\n| c"


def test_markdown_verdicts_and_sections_per_job():
    jobs = [_passed_job(), _failed_gate_job(), _error_job()]
    text = markdown(jobs)
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert len(headings) == 3
    for heading, job, mark in zip(headings, jobs, ("✅", "❌", "⚠️")):
        assert mark in heading and job["name"] in heading
    assert jobs[2]["error"].split(":")[0] in text  # the error line is shown
    # before/after tables for the two measured jobs only (the error job measured nothing)
    assert sum(1 for t in _tables(text) if t[0][1:] == ["before", "after", "ratio"]) == 2
    assert not any(t[0][0] == "output" for t in _tables(text))  # no evaluation given


def test_markdown_before_after_figures():
    text = markdown([_passed_job()])
    rows = {row[0]: row[1:] for row in _table(text, "")[1:]}
    assert rows["params"][:2] == [human(5310), human(1600)]
    assert float(rows["params"][2]) == pytest.approx(1600 / 5310, abs=1e-3)
    assert rows["nodes"][:2] == ["24", "20"]
    assert float(rows["latency ms"][0]) == pytest.approx(0.07)
    assert len(rows) == 5


def test_markdown_evaluation_and_gates_tables():
    evaluation = {
        "data": "digits_test.npz (360 samples)",
        "samples": 360,
        "labelled": True,
        "outputs": [
            {
                "name": "logits",
                "accuracy_before": 0.997,
                "accuracy_after": 0.189,
                "agreement": 0.19,
                "cosine": 0.5,
                "max_abs": 63.0,
                "max_rel": 4.2,
            }
        ],
    }
    job = _failed_gate_job() | {"evaluation": evaluation}
    text = markdown([job])
    (logits,) = _table(text, "output")[1:]
    assert [float(cell) for cell in logits[1:]] == pytest.approx([0.997, 0.189, 0.19, 0.5, 63.0])
    gates = _table(text, "gate")[1:]
    assert [row[0] for row in gates] == ["--max-top1-drop", "--max-mac-ratio"]
    assert "80.8" in gates[0][2] and "1" in gates[0][1]
    assert "❌" in gates[0][3] and "✅" in gates[1][3]


def test_markdown_lists_only_changed_ops_most_params_removed_first():
    def op(name, nodes, params, macs):
        keys = ("nodes_before", "nodes_after", "params_before", "params_after")
        return {"op": name, **dict(zip(keys, nodes + params))} | {
            "macs_before": macs[0],
            "macs_after": macs[1],
        }

    by_op = [
        op("Relu", (3, 3), (0, 0), (0, 0)),
        op("Add", (2, 1), (0, 0), (10, 5)),
        op("Gemm", (1, 1), (1000, 200), (1000, 200)),
        op("Conv", (3, 3), (4000, 1200), (250000, 90000)),
        op("Shape", (1, 1), (0, 0), (0, 0)),
    ]
    text = markdown([_job("m", by_op=by_op)])
    rows = _table(text, "op")[1:]
    assert [row[0] for row in rows] == ["Conv", "Gemm", "Add"]
    assert human(4000) in rows[0][2] and human(1200) in rows[0][2]
    assert "2" in rows[2][1] and "1" in rows[2][1]


def test_markdown_without_changed_ops_has_no_op_table():
    by_op = [{"op": "Relu", "nodes_before": 3, "nodes_after": 3}]
    text = markdown([_job("m", by_op=by_op)])
    assert not any(t[0][0] == "op" for t in _tables(text))


def test_markdown_warnings_listed():
    warnings = ["warning: first", "warning: second | with\nnewline"]
    text = markdown([_job("m", warnings=warnings)])
    items = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(items) == 2
    assert "first" in items[0] and "newline" in items[1]


# --- step summary --------------------------------------------------------------------------


def test_step_summary_appended_not_overwritten(tmp_path):
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n", encoding="utf-8")
    environ = {"GITHUB_STEP_SUMMARY": str(target)}
    first, second = markdown([_passed_job()]), markdown([_error_job()], title="second")
    assert append_step_summary(first, environ) == target
    assert append_step_summary(second, environ) == target
    content = target.read_text(encoding="utf-8")
    assert content.startswith("earlier step\n")
    assert content.index(first) < content.index(second)
    assert content.endswith("\n\n")
    assert content.count("earlier step") == 1


@pytest.mark.parametrize("environ", [{}, {"GITHUB_STEP_SUMMARY": ""}])
def test_step_summary_none_when_unset(environ, tmp_path):
    assert append_step_summary("# x\n", environ) is None
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["directory", "missing/dir/summary.md"])
def test_step_summary_unwritable_is_one_line_input_error(tmp_path, where):
    target = tmp_path if where == "directory" else tmp_path / where
    with pytest.raises(InputError) as caught:
        append_step_summary("# x\n", {"GITHUB_STEP_SUMMARY": str(target)})
    message = str(caught.value)
    assert "\n" not in message
    assert str(target) in message
    assert "GITHUB_STEP_SUMMARY" in message
