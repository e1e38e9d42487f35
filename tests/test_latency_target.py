"""--target-latency (``pruning.latency_target``): the bisection, and the pass reaching its
target. The timer is injected (latency modelled as the MACs ratio, noise-free), so nothing
here depends on the machine's speed; the pruned model passes the oracle."""

from __future__ import annotations

import pytest
from conftest import MODELS, oracle_error, prune

from sparsec.analysis.cost import analyze_cost
from sparsec.ir import Model
from sparsec.latency import LatencyComparison
from sparsec.pruning import latency_target
from sparsec.pruning.latency_target import chosen, search

DIGITS = MODELS / "digits_cnn.onnx"


def comparison(ratio: float, noise: float = 0.0) -> LatencyComparison:
    return LatencyComparison(1.0, ratio, ratio, noise, 20)


def macs_timer(calls: list):
    """A runtime whose latency is exactly proportional to MACs (a ``timer_for`` stand-in);
    ``calls`` gets every candidate timed."""

    def timer_for(reference):
        def timer(candidate, runs=20):
            calls.append(candidate)
            return comparison(analyze_cost(candidate).macs / analyze_cost(reference).macs)

        return timer

    return timer_for


def test_bisection_finds_the_crossing_within_its_resolution():
    crossing = 0.37  # latency 1 - ratio... reaches 0.63 exactly at 0.37
    probes = search(lambda r: comparison(1.0 - r), 1 - crossing, high=0.9, steps=8)
    best = chosen(probes, 1 - crossing)
    assert best.latency.ratio <= 1 - crossing
    assert crossing <= best.ratio <= crossing + 0.9 / 2**8


def test_a_target_beyond_reach_takes_the_cap_and_says_so():
    probes = search(lambda r: comparison(0.8 + 0.1 * (1 - r)), 0.5, high=0.9)
    assert [p.ratio for p in probes] == [0.9]
    assert "NOT reached" in latency_target.note_text(probes, 0.5)


def test_noise_ends_the_search_early_only_under_the_target():
    seen = []

    def noisy(r):
        seen.append(r)
        return comparison(1.0 - r, noise=0.05)

    probes = search(noisy, 0.5, high=0.9, steps=8)
    assert len(probes) < 9  # stopped once a probe reached 0.5 within its noise
    assert chosen(probes, 0.5).latency.ratio <= 0.5


def test_the_pass_reaches_its_target_and_passes_the_oracle(monkeypatch):
    calls: list = []
    monkeypatch.setattr(latency_target, "timer_for", macs_timer(calls))
    before = analyze_cost(Model.load(DIGITS)).macs
    model, result = prune(DIGITS, ratio=0.0, target_latency=0.4)
    assert len(calls) >= 3, "bisection probes were timed"
    reached = analyze_cost(model).macs / before
    assert reached <= 0.4 + 1e-9
    assert oracle_error(model, result.reference()) <= 1e-4
    notes = [d.message for d in result.diagnostics if d.code == "channel.target-latency"]
    assert notes and "reached" in notes[0]
    lighter, _ = prune(
        DIGITS, ratio=max(0.0, float(notes[0].split("ratio ")[1].split(",")[0]) - 0.03)
    )
    assert analyze_cost(lighter).macs / before > 0.4  # the smallest probed ratio reaching it


@pytest.mark.parametrize(
    "args, words",
    [
        (("--target-latency", "0"), "target-latency"),
        (("--target-latency", "1.5"), "target-latency"),
        (("--target-latency", "0.5", "--channels", "0.3"), "drop --channels"),
        (("--target-latency", "0.5", "--target-macs", "0.5"), "--target"),
    ],
)
def test_bad_target_latency_is_one_error_line(cli, tmp_path, args, words):
    code, _out, err = cli("compress", str(DIGITS), "-o", str(tmp_path / "o.onnx"), *args)
    assert code != 0 and words in err and "Traceback" not in err


def test_one_reference_session_serves_every_probe(monkeypatch):
    from sparsec.ir import runtime

    sessions = []
    made = runtime.session_for

    def counted(model, **options):
        sessions.append(model)
        return made(model, **options)

    monkeypatch.setattr(runtime, "session_for", counted)
    model = Model.load(DIGITS)
    _ratio, _note, _reached = latency_target.find_ratio(
        model, lambda m, r: None, 2.0, high=0.9
    )  # every probe reaches 2.0: the high probe, then the bisection's
    assert sessions.count(model) == 1 and len(sessions) >= 2


def test_cli_target_latency_writes_the_note_in_the_report(cli, tmp_path, monkeypatch):
    import json

    from conftest import compress_report

    monkeypatch.setattr(latency_target, "timer_for", macs_timer([]))
    code, err, data = compress_report(cli, tmp_path, DIGITS, "--target-latency", "0.5")
    assert code in (0, 1), err  # 1: the collapse warning of a lossy run on random weights
    assert data["after"]["macs"] / data["before"]["macs"] <= 0.5
    assert data["oracle"]["passed"] is True
    assert "channel.target-latency" in json.dumps(data["diagnostics"])


def test_a_noisy_probe_is_timed_again_with_more_runs(monkeypatch):
    runs_asked = []

    def timer(candidate, runs=latency_target.RUNS):
        runs_asked.append(runs)
        noisy = len(runs_asked) % 2 == 1
        return comparison(0.3, noise=0.5 if noisy else 0.01)

    monkeypatch.setattr(latency_target, "timer_for", lambda reference: timer)
    model = Model.load(DIGITS)
    _ratio, note, reached = latency_target.find_ratio(model, lambda m, r: None, 0.5, high=0.9)
    assert reached and runs_asked[:2] == [latency_target.RUNS, 2 * latency_target.RUNS]
    assert "±0.010" in note  # the second, longer timing is the one reported


def test_a_target_no_ratio_reaches_prunes_nothing_and_says_why(cli, tmp_path, monkeypatch):
    """Latency that does not follow the channels (here: never below 0.95): one error line,
    no model written, rather than a model pruned to the cap for nothing."""

    def flat(reference):
        return lambda candidate, runs=20: comparison(0.95)

    monkeypatch.setattr(latency_target, "timer_for", flat)
    out = tmp_path / "o.onnx"
    code, _out, err = cli("compress", str(DIGITS), "--target-latency", "0.6", "-o", str(out))
    assert code != 0 and "NOT reached" in err and "nothing pruned" in err
    assert "Traceback" not in err and not out.exists()
