"""Long fuzzing run: random valid ONNX graphs through ``sparsec compress`` for N minutes.

    python benchmarks/fuzz.py --minutes 30 [--seed S] [--out tests/fuzz_regressions] [--qdq]
        [--opset 11] [--graphs N]

Graph ``i`` of the run is ``sparsec.testing.graphs.generate(S + i)`` (every one at ``--opset``
when given; at most ``--graphs`` of them), checked in the four modes (cleanup, --channels 0.5,
--heads 0.5, --nm 2:4) by ``sparsec.testing.fuzz.check_graph``. The checks run in one worker
process (one graph at a time, so one core), restarted when it dies or hangs: an onnxruntime
abort or a hang is itself recorded as a failure (``crash``, ``timeout``) instead of ending the
run; an exception in the harness itself (e.g. a source tree caught mid-edit) is printed and the
graph retried on a fresh import. Failures are minimized (blocks dropped while the same class
persists; up to 8 per class) and each whose minimized op sequence is new is saved to ``--out``
as ``<name>.onnx`` plus ``<name>.json`` (seed, mode, failure line, the description that rebuilds
it). Exit-2 refusals are allowed but counted, and each new kind printed. A progress line (graphs
tried, refusals, failures by class) is printed every ``--every`` graphs and at the end; the exit
code is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sparsec.testing.fuzz import MODES, Failure, check_description, minimize, save_failure  # noqa: E402
from sparsec.testing.graphs import OPSETS, generate  # noqa: E402


def _serve(conn, workdir: str) -> None:
    """Worker loop: say "ready" once sparsec imports, then receive (graph, modes) and send back
    the failures as tuples."""
    try:
        import sparsec.cli  # noqa: F401  (a source tree caught mid-edit fails here, not in a check)
    except Exception as error:
        conn.send(f"{type(error).__name__}: {error}")
        return
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        graph, modes = job
        try:
            refusals: list = []
            failures = check_description(graph, Path(workdir) / "graph", modes, refusals)
        except Exception as error:  # the harness or a half-edited source tree, not a finding
            failures, refusals = (
                [Failure("harness", "error", f"{type(error).__name__}: {error}")],
                [],
            )
        try:
            conn.send(([(f.mode, f.kind, f.line) for f in failures], refusals))
        except BrokenPipeError:  # the parent is gone
            return


class HarnessError(Exception):
    """The harness itself cannot run (e.g. sparsec does not import): not a finding."""


class Worker:
    """One checking process, replaced when it crashes or exceeds ``timeout`` seconds."""

    def __init__(self, workdir: str, timeout: float) -> None:
        self.workdir, self.timeout, self.process = workdir, timeout, None
        self.refusals: list = []  # (mode, error line) of the last check's exit-2 refusals
        self.context = multiprocessing.get_context("spawn")

    def _start(self) -> None:
        """A fresh worker, once it has imported sparsec; HarnessError when it cannot."""
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=_serve, args=(child, self.workdir), daemon=True)
        self.process.start()
        try:
            answer = self.conn.recv() if self.conn.poll(self.timeout) else "no answer"
        except EOFError:
            answer = f"exit code {self.process.join(5) or self.process.exitcode}"
        if answer != "ready":
            self.stop()
            raise HarnessError(f"the checking process did not start: {answer}")

    def check(self, graph: dict, modes) -> list[Failure]:
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send((graph, list(modes)))
        if not self.conn.poll(self.timeout):
            self.stop()
            return [Failure(",".join(modes), "timeout", f"no answer in {self.timeout:g} s")]
        try:
            rows, self.refusals = self.conn.recv()
            return [Failure(*row) for row in rows]
        except EOFError:
            self.process.join(5)
            code, self.process = self.process.exitcode, None
            return [
                Failure(",".join(modes), "crash", f"the checking process died (exit code {code})")
            ]

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None


@dataclass
class Tally:
    """What the run saw: graphs tried, failures and exit-2 refusals by class."""

    started: float = field(default_factory=time.monotonic)
    tried: int = 0
    failures: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)

    def refused(self, rows: list, seed: int) -> None:
        """Count refusals; print each class the first time (a valid graph refused is suspect)."""
        for mode, line in rows:
            key = Failure(mode, "refused", line).key
            if not self.refusals[key]:
                print(f"  refusal (exit 2) of valid graph seed {seed}: {mode}: {line}", flush=True)
            self.refusals[key] += 1

    def line(self, saved: int) -> str:
        top = ", ".join(f"{n}x {key}" for key, n in self.failures.most_common(5)) or "none"
        return (
            f"[{(time.monotonic() - self.started) / 60:5.1f} min] graphs {self.tried}, "
            f"refusals {sum(self.refusals.values())} in {len(self.refusals)} classes, failures "
            f"{sum(self.failures.values())} in {len(self.failures)} classes (saved {saved}): {top}"
        )


class Saver:
    """Minimizes failures and saves those whose minimized block list (its op sequence) is new
    for their class: one class (e.g. every oracle failure) can hide several bugs. At most
    ``cap`` minimizations per class."""

    def __init__(self, worker: Worker, out: Path, cap: int = 8) -> None:
        self.worker, self.out, self.cap = worker, out, cap
        self.tries: Counter = Counter()
        self.signatures: set = set()
        self.saved = 0

    def _check(self, graph: dict, modes: str) -> list[Failure]:
        return self.worker.check(graph, modes.split(","))

    def offer(self, graph: dict, failure: Failure, seed: int) -> None:
        if self.tries[failure.key] >= self.cap:
            return
        self.tries[failure.key] += 1
        small = graph  # a timeout: each try could take the whole timeout, keep the graph as it is
        if failure.kind != "timeout":
            try:
                small = minimize(graph, failure, self._check)
            except HarnessError as error:
                print(f"  not minimized (harness error: {error})", flush=True)
        signature = (failure.key, tuple(block["op"] for block in small["blocks"]))
        if signature in self.signatures:
            return
        self.signatures.add(signature)
        path = save_failure(self.out, small, failure, seed, len(graph["blocks"]))
        self.saved += 1
        print(
            f"  failure on seed {seed}: {failure.key}\n    {failure.line}\n"
            f"    minimized {len(graph['blocks'])} -> {len(small['blocks'])} blocks: {path}",
            flush=True,
        )


def _check_or_wait(worker: Worker, graph: dict) -> list[Failure] | None:
    """The failures of ``graph``, or None after a harness error (printed; then a 10 s wait for
    the source tree to import again, and the caller retries the same graph)."""
    try:
        failures = worker.check(graph, MODES)
    except HarnessError as error:
        failures = [Failure("harness", "error", str(error))]
    if any(f.mode == "harness" for f in failures):
        print(f"  harness error (retrying in 10 s): {failures[0].line}", flush=True)
        worker.stop()
        time.sleep(10)
        return None
    return failures


@dataclass(frozen=True)
class Plan:
    """What to generate and for how long: ``graphs`` (None: no limit) stops the run early."""

    minutes: float
    seed: int
    qdq: bool
    opset: int | None
    graphs: int | None


def run(plan: Plan, out: Path, every: int, timeout: float) -> int:
    tally = Tally()
    deadline, seed = tally.started + plan.minutes * 60, plan.seed
    with tempfile.TemporaryDirectory(prefix="sparsec-fuzz-") as workdir:
        worker = Worker(workdir, timeout)
        saver = Saver(worker, out)
        try:
            while time.monotonic() < deadline and tally.tried != plan.graphs:
                graph = generate(seed + tally.tried, qdq=plan.qdq, opset=plan.opset)
                failures = _check_or_wait(worker, graph)
                if failures is None:
                    continue
                tally.tried += 1
                tally.refused(worker.refusals, seed + tally.tried - 1)
                for failure in failures:
                    tally.failures[failure.key] += 1
                    saver.offer(graph, failure, seed + tally.tried - 1)
                if tally.tried % every == 0:
                    print(tally.line(saver.saved), flush=True)
        finally:  # also on Ctrl-C or SIGTERM: no worker left behind
            worker.stop()
    print(tally.line(saver.saved), flush=True)
    return 1 if tally.failures else 0


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0, help="the first graph's seed (default 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fuzz_regressions")
    parser.add_argument(
        "--qdq", action="store_true", help="also generate QuantizeLinear/DequantizeLinear pairs"
    )
    parser.add_argument(
        "--every", type=int, default=50, help="print a progress line every N graphs"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds one check may take")
    parser.add_argument(
        "--opset", type=int, choices=OPSETS, help="generate every graph at this opset"
    )
    parser.add_argument("--graphs", type=int, help="stop after N graphs (before --minutes)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    plan = Plan(args.minutes, args.seed, args.qdq, args.opset, args.graphs)
    return run(plan, args.out, args.every, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
