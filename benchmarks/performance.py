"""The performance suite in one command: every benchmark of compile time, memory, sweep speed,
latency and start-up, run one after the other, their tables gathered into one markdown file
headed by the machine they ran on.

Usage::

    python benchmarks/performance.py [--out benchmarks/results/performance.md] [--quick]
        [--only compile,scaling,memory,sweep,latency,startup]

Each step is a benchmark script of this folder run as its own process (its own table, printed
as it goes and copied into the file under its heading, with the exact command); a step whose
script or models are missing says so and the suite goes on. ``--quick`` runs each step on its
smallest setting (a smoke run, not figures to quote). The start-up step is measured here:
``sparsec --help``, ``sparsec passes`` and a bad flag, each a fresh process, median of 7.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# step -> (title, full arguments, quick arguments); arguments after the script's name
STEPS = {
    "compile": (
        "Compile time, sparsec vs onnxsim",
        ["compile_time.py"],
        ["compile_time.py", "models/digits_cnn.onnx", "--repeat", "3"],
    ),
    "scaling": (
        "Compile time against graph size",
        ["compile_time.py", "--scaling", "--plot", "benchmarks/compile_scaling.png"],
        ["compile_time.py", "--scaling", "--sizes", "1000,2000", "--repeat", "1"],
    ),
    "memory": (
        "Peak memory per phase",
        ["memory.py", "--suite", "all", "--markdown"],
        ["memory.py", "--suite", "digits"],
    ),
    "sweep": (
        "Sensitivity sweep speed",
        ["sensitivity_speed.py"],
        ["sensitivity_speed.py", "--skip-recognizer"],
    ),
    "latency": ("Latency against MACs", ["latency_macs.py"], ["latency_macs.py", "--quick"]),
}
STARTUP = (["--help"], ["passes"], ["compress", "--no-such-flag"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/performance.md")
    parser.add_argument("--quick", action="store_true", help="each step's smallest setting")
    parser.add_argument("--only", default=",".join([*STEPS, "startup"]))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - {*STEPS, "startup"})
    if unknown:
        parser.error(
            f"unknown step(s) {', '.join(unknown)}; steps: {', '.join([*STEPS, 'startup'])}"
        )
    sections = [machine()]
    for step in chosen:
        sections.append(startup() if step == "startup" else run_step(step, args.quick))
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(sections) + "\n")
    print(f"wrote {out}")
    return 0


def machine() -> str:
    """The heading: date, CPU, cores, memory, the load average (other jobs on a shared machine
    slow every wall-clock figure), Python and the runtime versions."""
    import numpy
    import onnx
    import onnxruntime

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory = next(
        (line.split()[1] for line in _read("/proc/meminfo") if line.startswith("MemTotal")), "?"
    )
    gib = f"{int(memory) / 2**20:.1f} GiB" if memory != "?" else "?"
    return (
        f"# sparsec performance suite\n\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{cpu}, {os.cpu_count()} cores, {gib}, load average {os.getloadavg()[0]:.1f} at the "
        f"start; Python {platform.python_version()}, onnxruntime "
        f"{onnxruntime.__version__}, onnx {onnx.__version__}, numpy {numpy.__version__}; "
        f"`{' '.join(['python benchmarks/performance.py', *sys.argv[1:]])}`"
    )


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def run_step(step: str, quick: bool) -> str:
    """Run one benchmark script, echoing its output; its section of the report."""
    title, full, small = STEPS[step]
    arguments = small if quick else full
    script = HERE / arguments[0]
    command = ["python", f"benchmarks/{arguments[0]}", *arguments[1:]]
    heading = f"## {title}\n\n`{' '.join(command)}`"
    if not script.exists():
        return f"{heading}\n\n(not run: {script.name} is not in this checkout)"
    print(f"== {title}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), *arguments[1:]],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    print(done.stdout, end="", flush=True)
    seconds = time.perf_counter() - start
    status = "" if done.returncode == 0 else f" (exit {done.returncode}: {_last_line(done.stderr)})"
    return f"{heading} ({seconds:.0f} s{status})\n\n```\n{done.stdout.rstrip()}\n```"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def startup(runs: int = 7) -> str:
    """Median wall time of each start-up command, each run a fresh process."""
    sparsec = [sys.executable, "-m", "sparsec.entry"]
    rows = ["| command | median s | best s |", "|---|---:|---:|"]
    for arguments in STARTUP:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([*sparsec, *arguments], check=False, cwd=ROOT, capture_output=True)
            times.append(time.perf_counter() - start)
        rows.append(
            f"| `sparsec {' '.join(arguments)}` | {statistics.median(times):.3f} | {min(times):.3f} |"
        )
    table = "\n".join(rows)
    print(table, flush=True)
    return f"## Start-up (a fresh process each, median of {runs})\n\n{table}"


if __name__ == "__main__":
    sys.exit(main())
