"""``results.stage``: a tqdm bar with an ETA on stderr only when stderr is a terminal and the
verbosity is not quiet; the items pass through unchanged either way, and the long stages
(sensitivity, calibration batches, recovery rounds, ``steps`` rounds) give the same results with
a bar as without."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import MODELS, prune

from sparsec import results
from sparsec.analysis.activations import channel_norms
from sparsec.ir import Model
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.pruning.recovery import recover
from sparsec.pruning.sensitivity import measure
from sparsec.results import set_verbosity, stage, verbosity

DIGITS = MODELS / "digits_cnn.onnx"


class _Stream(io.StringIO):
    """stderr as a test sees it: a terminal or not."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.fixture(autouse=True)
def default_verbosity():
    set_verbosity(0)
    yield
    set_verbosity(0)


def _stderr(monkeypatch, terminal: bool) -> _Stream:
    """Replace stderr in the test's body (pytest's capture resets it between setup and call)."""
    stream = _Stream(terminal)
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_not_a_terminal_passes_the_items_through_and_draws_nothing(monkeypatch):
    pipe = _stderr(monkeypatch, terminal=False)
    items = [object(), object(), object()]
    got = list(stage(iter(items), total=3, desc="sensitivity", unit="group"))
    assert len(got) == 3 and all(a is b for a, b in zip(got, items))
    assert pipe.getvalue() == ""


def test_a_terminal_draws_a_bar_named_by_desc_with_an_eta(monkeypatch):
    terminal = _stderr(monkeypatch, terminal=True)

    def slow():
        for item in range(3):
            time.sleep(0.12)  # past tqdm's 0.1 s redraw interval: a frame with a rate
            yield item

    assert list(stage(slow(), total=3, desc="sensitivity", unit="group")) == [0, 1, 2]
    drawn = terminal.getvalue()
    assert "sensitivity:" in drawn and "/3 [" in drawn and "group/s" in drawn
    assert "<00:00" in drawn  # elapsed<remaining: the ETA once a rate is known
    assert drawn.endswith("\r")  # leave=False: the bar is wiped when the stage ends


def test_total_defaults_to_the_length(monkeypatch):
    terminal = _stderr(monkeypatch, terminal=True)
    assert list(stage(["a", "b"], desc="recover", unit="round")) == ["a", "b"]
    assert "recover:" in terminal.getvalue() and "/2 [" in terminal.getvalue()


def test_quiet_draws_nothing_even_on_a_terminal(monkeypatch):
    terminal = _stderr(monkeypatch, terminal=True)
    set_verbosity(-1)
    assert list(stage(range(4), desc="sensitivity")) == [0, 1, 2, 3]
    assert terminal.getvalue() == ""


def test_a_stage_left_early_closes_its_bar(monkeypatch):
    from tqdm import tqdm

    terminal = _stderr(monkeypatch, terminal=True)
    items = stage(range(10), desc="recover round 1", unit="batch")
    assert next(items) == 0
    items.close()
    assert not tqdm._instances  # no bar is left for the next stage to draw under
    assert "recover round 1:" in terminal.getvalue() and terminal.getvalue().endswith("\r")


@pytest.mark.parametrize("level, kept", [(-1, -1), (0, 0), (1, 1), (2, 1), (-5, -1)])
def test_verbosity_is_set_and_clamped(level, kept):
    set_verbosity(level)
    assert verbosity() == kept


@pytest.mark.parametrize("level", [True, 1.0, "1", None])
def test_verbosity_must_be_an_int(level):
    with pytest.raises(TypeError, match="verbosity must be an int"):
        set_verbosity(level)
    assert verbosity() == 0


def test_importing_results_does_not_import_tqdm():
    code = "import sys, sparsec.results; print('tqdm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ----------------------------------------------------------------- the long stages
@pytest.fixture(scope="module")
def digits() -> Model:
    return Model.load(DIGITS)


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return {"input": np.load(MODELS / "digits_calib.npz")["input"][:32]}


def _on(stream_kind: str, monkeypatch, work):
    """``work()`` with stderr a terminal or not: (its result, what was drawn). The progress
    logger is off: a handler an earlier CLI test left on it may write elsewhere or fail."""
    monkeypatch.setattr(logging.getLogger("sparsec.progress"), "disabled", True)
    stream = _stderr(monkeypatch, terminal=stream_kind == "terminal")
    return work(), stream.getvalue()


def test_sensitivity_draws_its_groups_and_measures_the_same(digits, samples, monkeypatch):
    def work():
        table = measure(digits, samples, (0.5,), batch_size=8)
        return [(g.id, [p.error for p in g.points]) for g in table.groups]

    plain, nothing = _on("pipe", monkeypatch, work)
    shown, drawn = _on("terminal", monkeypatch, work)
    assert shown == plain and nothing == ""
    assert "sensitivity:" in drawn and f"/{len(plain)} [" in drawn and "group" in drawn


def test_calibration_batches_draw_and_sum_the_same(digits, samples, monkeypatch):
    conv = next(node for node in digits.nodes() if node.op_type == "Conv")
    requests = [(conv.outputs[0].name, 1)]

    def work():
        return channel_norms(digits, samples, requests, batch_size=8)

    plain, nothing = _on("pipe", monkeypatch, work)
    shown, drawn = _on("terminal", monkeypatch, work)
    assert nothing == "" and "calibration:" in drawn and "/4 [" in drawn and "batch" in drawn
    np.testing.assert_array_equal(shown[requests[0]], plain[requests[0]])


def test_recovery_rounds_draw_and_refit_the_same(digits, samples, monkeypatch):
    def work():
        model, result = prune(digits.copy(), ratio=0.5, recover=False)
        report = recover(model, digits, samples, result.artifacts["plan"], batch_size=8)
        return report["output_error_after"], [row["error_after"] for row in report["layers"]]

    plain, nothing = _on("pipe", monkeypatch, work)
    shown, drawn = _on("terminal", monkeypatch, work)
    assert shown == plain and nothing == ""
    assert "recover:" in drawn and "round" in drawn and "recover round 1:" in drawn


def test_steps_rounds_draw_and_cut_the_same(digits, monkeypatch):
    def work():
        model = digits.copy()
        result = ChannelPrunePass(ratio=0.5, steps=2)(model)
        return result.stats, {
            name: model.constant(value).tolist() for name, value in model.initializers().items()
        }

    plain, nothing = _on("pipe", monkeypatch, work)
    shown, drawn = _on("terminal", monkeypatch, work)
    assert shown == plain and nothing == ""
    assert "channel-prune steps:" in drawn and "/2 [" in drawn


def test_verbosity_is_module_state_shared_by_every_importer():
    set_verbosity(-1)
    assert results.verbosity() == -1


def test_quiet_keeps_the_passes_warnings_on_stderr(cli, tmp_path):
    code, out, err = cli(
        "compress",
        MODELS / "digits_cnn.onnx",
        "-o",
        tmp_path / "out.onnx",
        "-q",
        "--channels",
        "0.5",
        "--exclude",
        "nosuch*",
    )
    assert code == 0 and out == ""
    lines = err.splitlines()
    assert lines[0] == (
        "warning: channel.exclude-unmatched: --exclude 'nosuch*' matches no node or initializer"
    )
    assert len(lines) == 2 and "agrees with the original on" in lines[1]  # the quality warning
