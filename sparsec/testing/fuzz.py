"""Fuzzing harness: random valid ONNX graphs through ``sparsec compress``, every result checked.

What is generated: seeded graph descriptions from :mod:`sparsec.testing.graphs` (convolutions
of every grouping, Gemm/MatMul, norms, layout ops, pooling, activations, residual and
squeeze-excite shapes, If/Loop bodies, attention blocks, optionally QDQ pairs), each built into a
model that passes ``onnx.checker`` (full check) and runs in onnxruntime before sparsec sees it.

What is checked, per mode (``cleanup``: the default pipeline; ``channels``: ``--channels 0.5``;
``heads``: ``--heads 0.5``; ``nm``: ``--nm 2:4``), running the CLI in-process (``sparsec.cli.main``):

- the exit code is 0 or 2: 1 (validation or the oracle failed: the input was valid, so sparsec
  broke it), 3 (an internal error) or anything else is a failure; so is an exception escaping
  ``main`` or a Python traceback on stderr;
- exit 2 prints exactly one ``sparsec: error:`` line and writes nothing; exit 0 prints none;
  either way the input file is unchanged and nothing else is left in its folder;
- on exit 0: the output passes ``onnx.checker.check_model(full_check=True)``, onnxruntime runs
  it, it keeps the original's output names and shapes, the report says the gated validation
  and the oracle passed, and the exact cleanup keeps the outputs' values. Both models run with
  onnxruntime's graph optimizations off: its QDQ fusions change numbers by themselves, and its
  optimizer aborts the whole process on some valid QDQ graphs (the original as much as the
  output), which a check in this process must not trigger. sparsec's own validation, in the
  same run, covers the optimized sessions.

A failure is a ``Failure(mode, kind, line)``; its ``key`` (mode, kind and the line with names and
numbers blanked) is its class. :func:`minimize` drops blocks of a failing graph description while
the same class persists (delta debugging over the block list).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from sparsec.ir import Model
from sparsec.pruning.oracle import bypass_quantizers, same_quantizers
from sparsec.testing.graphs import build, generate
from sparsec.testing.kit import random_feeds, run

MODES: dict[str, list[str]] = {
    "cleanup": [],
    "channels": ["--channels", "0.5"],
    "heads": ["--heads", "0.5"],
    "nm": ["--nm", "2:4"],
}
ERROR_PREFIX = "sparsec: error:"


@dataclass(frozen=True)
class Failure:
    mode: str
    # exit-1, exit-3, exit-N, uncaught, traceback, stderr, written, input-changed, leftover,
    # checker, onnxruntime, outputs, report, values; invalid-input (the generator's fault);
    # crash, timeout (benchmarks/fuzz.py)
    kind: str
    line: str

    @property
    def key(self) -> str:
        """The failure class: mode, kind and the message with quoted names and numbers blanked."""
        text = re.sub(r"'[^']*'|\"[^\"]*\"", "'?'", self.line)
        text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
        return f"{self.mode}:{self.kind}:{text[:160]}"

    def to_json(self) -> dict:
        return {**asdict(self), "key": self.key}


# ---------------------------------------------------------------- running the CLI in-process
class _CurrentStderr(logging.Handler):
    """sparsec's progress lines, to whatever ``sys.stderr`` is at the time of each line."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _quiet_progress() -> None:
    logger = logging.getLogger("sparsec.progress")
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        logger.addHandler(_CurrentStderr())
        logger.setLevel(logging.INFO)
        logger.propagate = False


@contextlib.contextmanager
def _captured_fd(fd: int) -> Iterator[Callable[[], str]]:
    """Everything written to file descriptor ``fd`` (native libraries' output included)."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(fd)
        os.dup2(sink.fileno(), fd)
        try:
            yield lambda: (sink.seek(0), sink.read().decode("utf-8", "replace"))[1]
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def run_cli(args: list[str]) -> tuple[int | None, str, str]:
    """``sparsec.cli.main(args)`` with stdout and stderr captured (Python and native writes):
    (exit code, or None when an exception escaped ``main``; stdout; stderr)."""
    from sparsec.cli import main

    _quiet_progress()
    out, err = io.StringIO(), io.StringIO()
    with (
        _captured_fd(2) as native_err,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(args)
        except Exception:  # main must catch everything; this is a failure of its own
            code = None
            err.write(traceback.format_exc())
        native = native_err()
    return code, out.getvalue(), err.getvalue() + native


# ---------------------------------------------------------------- checking one model
def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded feeds at the declared shapes (a symbolic batch becomes 1): the kit's
    ``random_feeds``, the inputs ``sparsec compress`` validates on."""
    return random_feeds(model, seed)


def run_model(model: onnx.ModelProto | str | Path, feeds: dict) -> list[np.ndarray]:
    """Outputs in onnxruntime with graph optimizations off (see the module docstring)."""
    return list(run(model, feeds).values())


def one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def check_graph(
    model: onnx.ModelProto, workdir: str | Path, modes=tuple(MODES), refusals: list | None = None
) -> list[Failure]:
    """Run ``model`` through ``sparsec compress`` in each of ``modes`` and check every result
    (see the module docstring). Exit-2 refusals are appended to ``refusals`` as (mode, line)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "input.onnx"
    onnx.save(model, source)
    feeds = feeds_for(model)
    try:
        onnx.checker.check_model(model, full_check=True)
        reference = run_model(model, feeds)
    except Exception as error:  # a generator bug, not sparsec's
        return [Failure("generate", "invalid-input", one_line(error))]
    failures: list[Failure] = []
    for mode in modes:
        failures += _check_mode(model, source, workdir, mode, feeds, reference, refusals)
    return failures


def _check_mode(
    model, source: Path, workdir: Path, mode: str, feeds, reference, refusals
) -> list[Failure]:
    output, report = workdir / f"{mode}.onnx", workdir / f"{mode}.json"
    for stale in (output, report):
        stale.unlink(missing_ok=True)
    args = [
        "compress",
        str(source),
        "-o",
        str(output),
        "--latency-runs",
        "0",
        "--report",
        str(report),
        *MODES[mode],
    ]
    before = source.read_bytes()
    code, _, err = run_cli(args)
    failures = _check_exit(mode, code, err, output) + _check_files(mode, source, before)
    if failures or code != 0:
        if code == 2 and refusals is not None and not failures:
            refusals.append((mode, _error_lines(err)[0]))
        return failures
    return _check_output(model, mode, output, report, feeds, reference)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]


def _check_exit(mode: str, code: int | None, err: str, output: Path) -> list[Failure]:
    errors = _error_lines(err)
    first = errors[0][len(ERROR_PREFIX) :].strip() if errors else ""
    if code is None:
        return [Failure(mode, "uncaught", err.strip().splitlines()[-1])]
    if "Traceback (most recent call last)" in err:
        return [Failure(mode, "traceback", err.strip().splitlines()[-1])]
    if code not in (0, 2):
        return [Failure(mode, f"exit-{code}", first or err.strip()[-300:])]
    if len(errors) != (1 if code == 2 else 0):
        return [
            Failure(
                mode,
                "stderr",
                f"exit {code} with {len(errors)} error lines: {' | '.join(errors)[:300]}",
            )
        ]
    if code == 2 and output.exists():
        return [Failure(mode, "written", f"exit 2 but the output was written: {first}")]
    if code == 0 and not output.exists():
        return [Failure(mode, "written", "exit 0 but no output was written")]
    return []


def _check_files(mode: str, source: Path, before: bytes) -> list[Failure]:
    """The input is unchanged and nothing but outputs and reports is left beside it."""
    if source.read_bytes() != before:
        return [Failure(mode, "input-changed", "the input model's bytes changed")]
    expected = {source.name} | {f"{m}.{ext}" for m in MODES for ext in ("onnx", "json")}
    extra = sorted(p.name for p in source.parent.iterdir() if p.name not in expected)
    return [Failure(mode, "leftover", f"left behind: {', '.join(extra)[:200]}")] if extra else []


def _check_output(model, mode: str, output: Path, report: Path, feeds, reference) -> list[Failure]:
    try:
        onnx.checker.check_model(str(output), full_check=True)
    except Exception as error:
        return [Failure(mode, "checker", one_line(error))]
    written = onnx.load(str(output))
    try:
        actual = run_model(written, feeds)  # unoptimized, as the reference ran (see the docstring)
    except Exception as error:
        return [Failure(mode, "onnxruntime", one_line(error))]
    names = [o.name for o in model.graph.output], [o.name for o in written.graph.output]
    if names[0] != names[1]:
        return [Failure(mode, "outputs", f"output names {names[0]} became {names[1]}")]
    shapes = [r.shape for r in reference], [a.shape for a in actual]
    if shapes[0] != shapes[1]:
        return [Failure(mode, "outputs", f"output shapes {shapes[0]} became {shapes[1]}")]
    failures = _check_report(mode, report)
    if mode == "cleanup" and not failures:
        failures += _check_values(mode, reference, actual)
        bypassed = _check_bypassed(mode, model, written, feeds) if failures else None
        failures = failures if bypassed is None else bypassed
    return failures


def _check_bypassed(mode: str, model, written, feeds) -> list[Failure] | None:
    """The cleanup's values compared with both models' activation quantizers bypassed
    (``oracle.bypass_quantizers``), when both quantize the same activations the same way: a
    quantizer rounds an exact rewrite's float rounding to a whole step. None when they do not
    (the plain comparison stands)."""
    original, output = Model.from_proto(model), Model.from_proto(written)
    if not same_quantizers(original, output):
        return None
    plain = [bypass_quantizers(m).to_proto() for m in (original, output)]
    return _check_values(mode, *(run_model(m, feeds) for m in plain))


def _check_report(mode: str, report: Path) -> list[Failure]:
    data = json.loads(report.read_text())
    oracle, validation = data.get("oracle"), data.get("validation") or {}
    if oracle is not None and not oracle.get("passed"):
        return [Failure(mode, "report", "exit 0 but the report's oracle failed")]
    if data.get("validation_gated") and not validation.get("passed"):
        return [Failure(mode, "report", "exit 0 but the report's gated validation failed")]
    return []


def _check_values(
    mode: str, reference: list[np.ndarray], actual: list[np.ndarray]
) -> list[Failure]:
    """The exact cleanup keeps every output within 1e-4 × max |output| (+ 1e-5)."""
    for index, (want, got) in enumerate(zip(reference, actual)):
        limit = 1e-4 * float(np.abs(want).max(initial=0)) + 1e-5
        error = float(np.abs(want - got).max(initial=0))
        if not error <= limit:
            return [
                Failure(
                    mode,
                    "values",
                    f"output {index} differs from the original by {error:.3g} (limit {limit:.3g})",
                )
            ]
    return []


# ---------------------------------------------------------------- graphs, runs and minimization
def check_description(
    graph: dict, workdir: str | Path, modes=tuple(MODES), refusals: list | None = None
) -> list[Failure]:
    """Build a graph description and check it (a build error is an ``invalid-input`` failure)."""
    try:
        model = build(graph)
    except Exception as error:
        return [Failure("generate", "invalid-input", one_line(error))]
    return check_graph(model, workdir, modes, refusals)


def fuzz_seeds(
    seeds, workdir: str | Path, qdq: bool = False, modes=tuple(MODES), opset: int | None = None
) -> dict[int, list[Failure]]:
    """Generate and check one graph per seed in this process (at ``opset`` when given):
    {seed: failures} for failing seeds."""
    found = {}
    for seed in seeds:
        graph = generate(seed, qdq=qdq, opset=opset)
        failures = check_description(graph, Path(workdir) / f"seed{seed}", modes)
        if failures:
            found[seed] = failures
    return found


Checker = Callable[[dict, str], list[Failure]]  # (graph description, mode) -> failures


def minimize(graph: dict, failure: Failure, check: Checker, budget: int = 80) -> dict:
    """A smaller description whose check in ``failure.mode`` still fails with ``failure.key``:
    delta debugging over the block list (drop chunks, halving their size down to one block),
    then simpler graph-wide settings (initializer weights, batch 1). ``budget`` caps the checks."""
    calls = [0]

    def fails(candidate: dict) -> bool:
        calls[0] += 1
        return calls[0] <= budget and any(
            f.key == failure.key for f in check(candidate, failure.mode)
        )

    blocks = _ddmin(list(graph["blocks"]), lambda b: fails({**graph, "blocks": b}))
    graph = {**graph, "blocks": blocks}
    for setting, simple in (("weights", "initializer"), ("batch", "1")):
        if graph[setting] != simple:
            candidate = {**graph, setting: simple, "input": _simple_input(graph, setting, simple)}
            if fails(candidate):
                graph = candidate
    return graph


def _simple_input(graph: dict, setting: str, value: str) -> dict:
    spec = {**graph["input"], "shape": list(graph["input"]["shape"])}
    if setting == "batch":
        spec["shape"][0] = 1
    return spec


def _ddmin(items: list, fails: Callable[[list], bool]) -> list:
    """Drop chunks of ``items`` while ``fails`` still holds; chunk size halves down to 1."""
    chunk = max(1, len(items) // 2)
    while True:
        start, dropped = 0, False
        while start < len(items):
            candidate = items[:start] + items[start + chunk :]
            if fails(candidate):
                items, dropped = candidate, True
            else:
                start += chunk
        if chunk == 1 and not dropped:
            break
        chunk = max(1, chunk // 2)
    return items


def save_failure(out: Path, graph: dict, failure: Failure, seed: int, original_blocks: int) -> Path:
    """Write the minimized graph as ``<name>.onnx`` plus ``<name>.json`` (seed, mode, failure
    line and class, the description to rebuild it); returns the .onnx path."""
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", failure.key.lower()).strip("-")[:60]
    stem = out / f"seed{seed}-{slug}"
    onnx.save(build(graph), stem.with_suffix(".onnx"))
    meta = {
        "seed": seed,
        "mode": failure.mode,
        "failure": failure.to_json(),
        "blocks_before": original_blocks,
        "graph": graph,
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return stem.with_suffix(".onnx")
