"""Interleaved latency comparison, on fake sessions that advance a fake clock (no assertion on
this shared machine's real speed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_model
from onnx import TensorProto, helper

from sparsec import latency, validate
from sparsec.ir import Model
from sparsec.latency import LatencyComparison, compare_latency


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0  # seconds

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """Each run logs its name and advances the clock by its next duration (milliseconds)."""

    def __init__(self, name: str, durations_ms: list[float], clock: FakeClock, log: list) -> None:
        self.name, self.durations, self.clock, self.log = name, list(durations_ms), clock, log

    def run(self, feeds: dict) -> dict:
        self.log.append(self.name)
        self.clock.now += self.durations.pop(0) / 1000.0
        return {}


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(latency, "perf_counter", fake)
    return fake


def _sessions(clock, reference_ms, candidate_ms):
    log: list[str] = []
    return (
        FakeSession("ref", reference_ms, clock, log),
        FakeSession("cand", candidate_ms, clock, log),
        log,
    )


def test_rounds_alternate_which_model_runs_first_after_the_warmup(clock):
    reference, candidate, log = _sessions(clock, [1.0] * 6, [1.0] * 6)
    compare_latency(reference, candidate, {}, runs=4, warmup=2)
    warmup = ["ref", "cand", "ref", "cand"]
    rounds = ["ref", "cand", "cand", "ref", "ref", "cand", "cand", "ref"]
    assert log == warmup + rounds


def test_ratio_of_medians_and_noise_of_the_paired_ratios(clock):
    warmup = [500.0, 500.0]  # slow warm-up runs must not count
    reference_ms = [10.0, 12.0, 11.0, 30.0, 10.0]
    candidate_ms = [5.0, 7.0, 6.0, 9.0, 4.0]
    reference, candidate, _ = _sessions(clock, warmup + reference_ms, warmup + candidate_ms)
    result = compare_latency(reference, candidate, {}, runs=5, warmup=2)
    # by hand: medians 11 and 6; paired ratios sorted 0.3, 0.4, 0.5, 6/11, 7/12, so with five
    # values Q1 and Q3 fall exactly on the 2nd and 4th: 0.4 and 6/11; median 0.5
    assert result.reference_ms == pytest.approx(11.0)
    assert result.candidate_ms == pytest.approx(6.0)
    assert result.ratio == pytest.approx(6.0 / 11.0)
    assert result.noise == pytest.approx((6.0 / 11.0 - 0.4) / 2.0 / 0.5)
    assert result.runs == 5


def test_equal_timings_have_no_noise(clock):
    reference, candidate, _ = _sessions(clock, [2.0] * 3, [3.0] * 3)
    result = compare_latency(reference, candidate, {}, runs=3, warmup=0)
    assert result.ratio == pytest.approx(1.5) and result.noise == 0.0


@pytest.mark.parametrize("runs", [0, -1])
def test_no_runs_means_no_comparison_and_no_session_runs(clock, runs):
    reference, candidate, log = _sessions(clock, [1.0], [1.0])
    assert compare_latency(reference, candidate, {}, runs=runs) is None
    assert log == []


def test_json_is_strict_when_the_reference_takes_no_time(clock):
    reference, candidate, _ = _sessions(clock, [0.0, 0.0], [1.0, 1.0])
    result = compare_latency(reference, candidate, {}, runs=2, warmup=0)
    figures = result.to_json()
    assert figures["ratio"] is None and figures["noise"] is None and figures["runs"] == 2
    json.dumps(figures, allow_nan=False)


def _doubler() -> Model:
    return Model.from_proto(
        make_model(
            [helper.make_node("Add", ["x", "x"], ["y"])],
            [("x", TensorProto.FLOAT, [2, 3])],
            [("y", TensorProto.FLOAT, [2, 3])],
        )
    )


def test_validate_reports_the_interleaved_comparison(monkeypatch):
    calls = []

    def fake_compare(reference_session, candidate_session, feeds, runs=10, warmup=2):
        calls.append(runs)
        return LatencyComparison(4.0, 3.0, 0.75, 0.05, runs)

    monkeypatch.setattr(validate, "compare_latency", fake_compare)
    feeds = {"x": np.ones((2, 3), np.float32)}
    result = validate.validate(_doubler(), _doubler(), feeds, latency_runs=7)
    assert calls == [7]
    assert (result.latency_ms_reference, result.latency_ms_candidate) == (4.0, 3.0)
    assert result.latency_noise == 0.05


def test_validate_measures_real_latency_and_leaves_it_out_without_runs():
    feeds = {"x": np.ones((2, 3), np.float32)}
    measured = validate.validate(_doubler(), _doubler(), feeds, latency_runs=3)
    assert measured.latency_ms_reference > 0 and measured.latency_ms_candidate > 0
    assert measured.latency_noise >= 0
    skipped = validate.validate(_doubler(), _doubler(), feeds, latency_runs=0)
    assert skipped.latency_ms_reference is None and skipped.latency_noise is None
