"""Quality gates (sparsec.gates): limits against measured figures, failures as one line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsec import gates
from sparsec.errors import UsageError
from sparsec.spec import OPTION_BY_NAME, JobSpec
from sparsec.spec.job import GATE_NAMES

MAX_GATES = [n for n in GATE_NAMES if n.startswith("max_")]
MIN_GATES = [n for n in GATE_NAMES if n.startswith("min_")]
LIMITS = {
    "max_top1_drop": 1.5,
    "min_cosine": 0.95,
    "max_params_ratio": 0.5,
    "max_macs_ratio": 0.75,
    "max_bytes": 20_000,
    "max_latency_ratio": 1.1,
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_gate_option_is_known_to_gates():
    # the option table's gates and the gate module agree (a unit per gate, both kinds present)
    assert set(GATE_NAMES) == set(gates.UNITS)
    assert MAX_GATES and MIN_GATES
    for name in GATE_NAMES:
        assert OPTION_BY_NAME[name].flag == flag(name)


@pytest.mark.parametrize("name", MAX_GATES)
def test_max_gate_passes_at_equality_and_fails_above(name):
    limit = LIMITS[name]
    above = limit + 1 if isinstance(limit, int) else math.nextafter(limit, math.inf)
    [at] = gates.check({name: limit}, {name: (limit, "d")})
    [below] = gates.check({name: limit}, {name: (limit * 0.5, "d")})
    [over] = gates.check({name: limit}, {name: (above, "d")})
    assert at.passed and below.passed
    assert not over.passed
    assert over.option == flag(name)
    assert (over.limit, over.measured) == (limit, above)


@pytest.mark.parametrize("name", MIN_GATES)
def test_min_gate_passes_at_equality_and_fails_below(name):
    limit = LIMITS[name]
    [at] = gates.check({name: limit}, {name: (limit, "d")})
    [above] = gates.check({name: limit}, {name: (1.0, "d")})
    [under] = gates.check({name: limit}, {name: (math.nextafter(limit, -math.inf), "d")})
    assert at.passed and above.passed
    assert not under.passed
    assert under.option == flag(name)


@pytest.mark.parametrize("name", GATE_NAMES)
def test_nan_figure_fails_the_gate(name):
    [result] = gates.check({name: LIMITS[name]}, {name: (math.nan, "d")})
    assert not result.passed


def test_random_figures_against_limits():
    rng = np.random.default_rng(7)
    for _ in range(200):
        limits = {n: float(rng.uniform(0, 2)) for n in GATE_NAMES}
        figures = {n: float(rng.uniform(0, 2)) for n in GATE_NAMES}
        results = gates.check(limits, {n: (v, "on x") for n, v in figures.items()})
        assert [r.option for r in results] == [flag(n) for n in limits]  # in the limits' order
        for name, result in zip(limits, results):
            expected = (
                figures[name] >= limits[name]
                if name.startswith("min_")
                else figures[name] <= limits[name]
            )
            assert result.passed == expected
            assert result.unit == gates.UNITS[name]
            assert result.detail == "on x"


@pytest.mark.parametrize("name", GATE_NAMES)
def test_gate_without_a_figure_is_a_usage_error(name):
    with pytest.raises(UsageError) as missing:
        gates.check({name: LIMITS[name]}, {})
    assert flag(name) in str(missing.value)
    with pytest.raises(UsageError) as none:
        gates.check({name: LIMITS[name]}, {name: (None, "no classifier-shaped output")})
    assert flag(name) in str(none.value)
    assert "no classifier-shaped output" in str(none.value)


def test_missing_figure_fails_even_after_passing_gates():
    limits = {"max_macs_ratio": 0.9, "max_top1_drop": 1.0}
    with pytest.raises(UsageError) as info:
        gates.check(limits, {"max_macs_ratio": (0.5, "d")})
    assert "--max-top1-drop" in str(info.value)
    assert "--max-macs-ratio" not in str(info.value)


def test_no_limits_no_results():
    assert gates.check({}, {"max_bytes": (1.0, "d")}) == []
    assert gates.failure_line([]) is None


def test_failure_line_names_the_first_failed_and_counts_the_others():
    limits = {
        "max_params_ratio": 0.5,  # passes
        "max_macs_ratio": 0.5,  # fails (first)
        "min_cosine": 0.9,  # fails
        "max_bytes": 100,  # fails
        "max_latency_ratio": 2.0,  # passes
    }
    measured = {
        "max_params_ratio": (0.4, "d"),
        "max_macs_ratio": (0.6, "d"),
        "min_cosine": (0.8, "d"),
        "max_bytes": (101, "d"),
        "max_latency_ratio": (1.0, "d"),
    }
    results = gates.check(limits, measured)
    assert [r.passed for r in results] == [True, False, False, False, True]
    line = gates.failure_line(results)
    assert line is not None
    assert "\n" not in line
    assert line.startswith(results[1].line())
    assert "--max-macs-ratio" in line
    assert "--min-cosine" not in line and "--max-bytes" not in line
    assert "2 more" in line


def test_failure_line_of_one_failure_has_no_count():
    results = gates.check(
        {"max_bytes": 100, "min_cosine": 0.5}, {"max_bytes": (200, "d"), "min_cosine": (0.9, "d")}
    )
    line = gates.failure_line(results)
    assert line == results[0].line()
    assert "more" not in line


def test_failure_line_none_when_all_pass():
    results = gates.check(LIMITS, {n: (LIMITS[n], "d") for n in LIMITS})
    assert all(r.passed for r in results)
    assert gates.failure_line(results) is None


@pytest.mark.parametrize(
    ("name", "limit", "measured", "figures"),
    [
        ("max_top1_drop", 1.0, 2.5, ("2.50", "1.00")),
        ("max_macs_ratio", 0.5, 0.61234, ("0.6123", "0.5")),
        ("max_latency_ratio", 1.1, 1.25, ("1.25", "1.1")),
        ("max_bytes", 10_000, 12_345, ("12,345", "10,000")),
        ("min_cosine", 0.99, 0.875, ("0.875", "0.99")),
    ],
)
def test_gate_line_has_figure_and_limit(name, limit, measured, figures):
    [result] = gates.check({name: limit}, {name: (measured, "on eval.npz (360 samples)")})
    assert not result.passed
    line = result.line()
    assert "\n" not in line
    assert flag(name) in line
    shown_figure, shown_limit = figures
    assert shown_figure in line and shown_limit in line
    assert line.index(shown_figure) < line.index(shown_limit)  # the figure, then the limit
    assert "on eval.npz (360 samples)" in line
    assert ("below" if name.startswith("min_") else "above") in line


def test_result_to_json():
    [result] = gates.check({"max_bytes": 5}, {"max_bytes": (7, "file")})
    assert result.to_json() == {
        "option": "--max-bytes",
        "limit": 5,
        "measured": 7,
        "unit": gates.UNITS["max_bytes"],
        "passed": False,
        "detail": "file",
    }


def test_spec_gates_feed_check():
    spec = JobSpec.from_mapping(
        {"max_top1_drop": 2, "max_bytes": 1000, "min_cosine": 0.5, "channels": 0.5}
    )
    limits = spec.gates()
    assert limits == {"max_top1_drop": 2.0, "min_cosine": 0.5, "max_bytes": 1000}
    results = gates.check(
        limits,
        {"max_top1_drop": (2.0, "d"), "min_cosine": (0.49, "d"), "max_bytes": (999, "d")},
    )
    assert [(r.option, r.passed) for r in results] == [
        ("--max-top1-drop", True),
        ("--min-cosine", False),
        ("--max-bytes", True),
    ]
    assert gates.failure_line(results).startswith(results[1].line())
