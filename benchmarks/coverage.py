"""Channel-pruning coverage: sparsec vs onnxsim's structured pruning, one row per model.

Usage (the competitor needs ``pip install -e '.[bench]'``, i.e. onnxsim >= 0.8.1)::

    python benchmarks/coverage.py [MODEL.onnx ...] [--suite digits|light|pypi|timm|all]
        [--ratio 0.5] [--latency-runs 20] [--out-dir DIR] [--no-competitor] [--markdown] [--timeout 3600]

``--ratio``: fraction of channels to remove; ``--out-dir``: keep the outputs (else a temporary
folder). Suites: ``digits`` = models/digits_{cnn,mlp,cnn_dynamo}.onnx; ``light`` = .cache/light
from models/fill_light_models.py (missing ones are built); ``pypi`` = real models from PyPI
wheels that ship ONNX files (PP-OCRv4 detector and recognizer, Silero VAD: the list, licenses
and where each comes from are in benchmarks/pypi_models.py); ``timm`` = .cache/timm/*.onnx from
models/make_timm_models.py (skipped if absent). Each tool runs in its own child process:

* sparsec: ``sparsec compress MODEL --channels R -o OUT --report OUT.json --latency-runs N``.
* onnxsim: ``onnxsim.apply_structured_pruning(model, sparsity=R)``, measured in the child.

Columns (ratios are after / before: lower is smaller or faster):

* params, MACs: ratios (sparsec: its report; onnxsim: ``sparsec analyze --json`` on both files).
* lat: sparsec's own latency ratio, from its report (onnxruntime default threading).
* lat1t: latency ratio measured here the same way for every output: onnxruntime CPU, 1
  intra-op and 1 inter-op thread, median of N runs after 2 warm-ups, on the model's own
  ``--inputs`` arrays when its suite gives them (``pypi_models.extra_args``), else one seeded
  standard-normal input (seed 0) at its ``--input-shape`` (symbolic dims: batch 1, others 128).
* oracle: sparsec's correctness check from its report, max |error| / max |output| against the
  masked original (MODEL with the removed channels zeroed); ~1e-7 means exact surgery.
* err: max |output - MODEL's| / max |MODEL's| measured here on the lat1t input: what pruning
  without fine-tuning costs (comparable between the tools; large on random weights).
* compile s: load + passes + save from sparsec's report (its before-figures analysis and
  validation are reporting, not compiling, and are left out); onnxsim: load + prune + save.
* peak MB (xW): peak RSS above the post-import baseline while compiling, in MiB and as a
  multiple of the model's weight bytes.
* groups: channel groups pruned / total (sparsec only).

A failure shows as one line ("error: ...", "no change") in place of the tool's figures (in full
below the table); "?" = a figure the report lacks.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPARSEC = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'sparsec'; from sparsec.cli import main; sys.exit(main())",
]
BLOCKS = [
    ("", ["model"]),
    (
        "sparsec",
        ["params", "MACs", "lat", "lat1t", "oracle", "err", "compile s", "peak MB (xW)", "groups"],
    ),
    ("onnxsim", ["params", "MACs", "lat1t", "err", "compile s", "peak MB (xW)"]),
]


def child_onnxsim(model: str, out: str, ratio: str) -> dict:
    """Prune with onnxsim; seconds and peak RSS of load + prune + save."""
    import onnx
    import onnxsim

    baseline, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    proto = onnx.load(model)
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    weight_bytes = sum(
        math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in proto.graph.initializer
    )
    pruned = onnxsim.apply_structured_pruning(proto, sparsity=float(ratio))
    onnx.save(
        pruned, out, save_as_external_data=weight_bytes > 1.5e9, location=Path(out).name + ".data"
    )
    seconds, peak_kb = (
        time.perf_counter() - start,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline,
    )
    return {
        "seconds": seconds,
        "peak_mb": peak_kb / 1024,
        "weight_bytes": weight_bytes,
        "changed": sum(shapes.get(t.name) != list(t.dims) for t in pruned.graph.initializer),
    }


def measure_feeds(session, extra: list[str]) -> dict:
    """Inputs for timing: the model's ``--inputs`` arrays when its extra arguments name them,
    else seeded random data at the ``--input-shape`` dims (declared dims, 1 for a symbolic
    batch, 128 for other symbolic dims)."""
    import numpy as np

    options = dict(zip(extra[::2], extra[1::2], strict=False))
    if "--inputs" in options:
        with np.load(options["--inputs"]) as data:
            return {v.name: data[v.name] for v in session.get_inputs()}
    bound = {}
    for text in [options[k] for k in options if k == "--input-shape"]:
        name, dims = text.rsplit(":", 1)
        bound[name] = [int(d) for d in dims.split("x")]
    rng, feeds = np.random.default_rng(0), {}
    types = {"float16": np.float16, "double": np.float64, "int64": np.int64, "int32": np.int32}
    for value in session.get_inputs():
        shape = bound.get(value.name) or [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 else 128)
            for i, d in enumerate(value.shape)
        ]
        dtype = types.get(value.type.removeprefix("tensor(").removesuffix(")"), np.float32)
        data = (
            rng.standard_normal(shape)
            if np.issubdtype(dtype, np.floating)
            else rng.integers(0, 2, shape)
        )
        feeds[value.name] = data.astype(dtype)
    return feeds


def child_measure(runs: str, extra: str, reference: str, *candidates: str) -> dict:
    """1-thread median latency of every model, and each candidate's relative error, on the
    inputs ``measure_feeds`` makes from the model's extra arguments (JSON list)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    load = lambda path: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])  # noqa: E731
    ref = load(reference)
    feeds = measure_feeds(ref, json.loads(extra))

    def median_ms(sess) -> float:
        times = []
        for _ in range(2 + max(1, int(runs))):  # the first 2 runs are warm-ups
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times[2:])

    expected = ref.run(None, feeds)
    scale = max(float(np.abs(e).max()) for e in expected)
    result = {reference: {"ms": median_ms(ref)}}
    for path in candidates:
        try:
            sess = load(path)
            pairs = zip(sess.run(None, feeds), expected, strict=True)
            diff = max(float(np.abs(g.astype(np.float64) - e).max()) for g, e in pairs)
            result[path] = {"ms": median_ms(sess), "err": diff / scale if scale else diff}
        except Exception as error:  # becomes a table cell, not a crash
            result[path] = {"error": f"{type(error).__name__}: {error}"}
    return result


def run(cmd: list[str], timeout: float) -> tuple[bool, str]:
    """(True, stdout), or (False, a one-line failure from the last stderr line)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"error: timeout after {timeout:.0f}s"
    if proc.returncode == 0:
        return True, proc.stdout
    text = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
    return False, "error: " + text.splitlines()[-1].strip().removeprefix("sparsec: ").removeprefix(
        "error: "
    )


def child(task: str, args: list[str], timeout: float) -> dict:
    ok, out = run([sys.executable, __file__, "_child", task, *args], timeout)
    return json.loads(out.splitlines()[-1]) if ok else {"error": out}


def analyze(path: Path, timeout: float) -> dict:
    ok, out = run([*SPARSEC, "analyze", str(path), "--json"], timeout)
    return json.loads(out) if ok else {}


def competitor_version(timeout: float) -> str | None:
    ok, out = run(
        [
            sys.executable,
            "-c",
            ("import onnxsim as o; print(o.__version__, hasattr(o, 'apply_structured_pruning'))"),
        ],
        timeout,
    )
    version, has_it = out.split()[-2:] if ok else (None, "False")
    if has_it == "True":
        return version
    why = (
        f"onnxsim {version} has no apply_structured_pruning"
        if ok
        else f"onnxsim not importable ({out})"
    )
    print(f"note: {why}: no competitor (needs onnxsim >= 0.8.1)", file=sys.stderr)
    return None


def suite_models(suite: str, timeout: float) -> list[Path]:
    models: list[Path] = []
    if suite in ("digits", "all"):
        models += [ROOT / "models" / f"digits_{n}.onnx" for n in ("cnn", "mlp", "cnn_dynamo")]
    if suite in ("light", "all"):
        models += light_models(timeout)
    if suite in ("pypi", "all"):
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from pypi_models import fetch  # real models from PyPI wheels (benchmarks/pypi_models.py)

        models += fetch(timeout)
    if suite in ("timm", "all"):
        found = sorted((ROOT / ".cache" / "timm").glob("*.onnx"))
        if not found:
            print(
                "note: no .cache/timm/*.onnx (run models/make_timm_models.py): timm skipped",
                file=sys.stderr,
            )
        models += found
    return models


def light_models(timeout: float) -> list[Path]:
    """.cache/light models, building missing ones (named light_<name>.onnx or <name>.onnx)."""
    sys.path.insert(0, str(ROOT / "models"))
    from fill_light_models import NAMES

    folder, script = ROOT / ".cache" / "light", str(ROOT / "models" / "fill_light_models.py")

    def existing(name: str) -> Path | None:
        return next(
            (p for p in (folder / f"light_{name}.onnx", folder / f"{name}.onnx") if p.exists()),
            None,
        )

    if missing := [name for name in NAMES if existing(name) is None]:
        print(f"building {', '.join(missing)} into {folder}", file=sys.stderr)
        ok, out = run([sys.executable, script, "--out", str(folder), *missing], timeout)
        if not ok:
            print(f"note: fill_light_models.py failed ({out})", file=sys.stderr)
    return [p for p in map(existing, NAMES) if p is not None]


def numbers(*values) -> bool:
    return all(isinstance(v, (int, float)) for v in values)


def ratio(before, after, digits: int = 3) -> str:
    return f"{after / before:.{digits}f}" if numbers(before, after) and before else "?"


def peak(mb, weight_bytes) -> str:
    return f"{mb:.1f} ({ratio(weight_bytes, mb * 2**20, 1)}x)" if numbers(mb) else "?"


def rel_err(error, scale=1.0) -> str:
    return f"{error / scale if scale else error:.2e}" if numbers(error, scale) else "?"


def sparsec_cells(rep: dict, mine: dict, ref_ms) -> list[str]:
    t, rss, oracle, groups = (
        rep.get(k) or {} for k in ("timings_s", "peak_rss_mb", "oracle", "groups")
    )
    parts = [v for k, v in t.items() if k in ("load", "passes", "save")] or [None]
    change = lambda key, digits=3: ratio(rep.get(f"{key}_before"), rep.get(f"{key}_after"), digits)  # noqa: E731
    return [
        change("params"),
        change("macs"),
        change("latency_ms", 2),
        ratio(ref_ms, mine.get("ms"), 2),
        rel_err(oracle.get("max_abs_error"), oracle.get("max_abs_output")),
        rel_err(mine.get("err")),
        f"{sum(parts):.3g}" if numbers(*parts) else "?",
        peak(rss.get("compile"), rep.get("weight_bytes")),
        f"{groups.get('pruned', '?')}/{groups.get('total', '?')}",
    ]


def competitor_cells(res: dict, before: dict, after: dict, mine: dict, ref_ms) -> list[str]:
    return [
        ratio(before.get("params"), after.get("params")),
        ratio(before.get("macs"), after.get("macs")),
        ratio(ref_ms, mine.get("ms"), 2),
        rel_err(mine.get("err")),
        f"{res['seconds']:.3g}",
        peak(res["peak_mb"], res["weight_bytes"]),
    ]


def _extra_args(model: Path) -> list[str]:
    """What a model of the pypi suite needs to run (its input shapes or inputs)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pypi_models import extra_args

    return extra_args(model)


def run_sparsec(model: Path, out: Path, report: Path, args) -> dict | str:
    """sparsec's JSON report, or its one-line failure."""
    report.unlink(missing_ok=True)  # never read a stale one from --out-dir
    ok, msg = run(
        [
            *SPARSEC,
            "compress",
            str(model),
            "--channels",
            str(args.ratio),
            "-o",
            str(out),
            "--report",
            str(report),
            "--latency-runs",
            str(args.latency_runs),
            *_extra_args(model),
        ],
        args.timeout,
    )
    return (
        (json.loads(report.read_text()) if report.exists() else "error: no report written")
        if ok
        else msg
    )


def bench(model: Path, out_dir: Path, args, competitor: bool) -> dict:
    """Run both tools on one model: {block: cells, or a one-line failure}."""
    say = lambda text: print(text, end="", file=sys.stderr, flush=True)  # noqa: E731
    outs = {
        "sparsec": out_dir / f"{model.stem}.sparsec.onnx",
        "onnxsim": out_dir / f"{model.stem}.onnxsim.onnx",
    }
    say(f"{model.stem}: sparsec")
    row: dict = {
        "": [model.stem],
        "sparsec": run_sparsec(model, outs["sparsec"], out_dir / f"{model.stem}.json", args),
    }
    if competitor:
        say(", onnxsim")
        result = child("onnxsim", [str(model), str(outs["onnxsim"]), str(args.ratio)], args.timeout)
        row["onnxsim"] = result.get("error") or (result if result["changed"] else "no change")
    say(", timing")
    done = [b for b in ("sparsec", "onnxsim") if isinstance(row.get(b), dict)]
    measured = child(
        "measure",
        [
            str(args.latency_runs),
            json.dumps(_extra_args(model)),
            str(model),
            *(str(outs[b]) for b in done),
        ],
        args.timeout,
    )
    say(f" ({measured['error']})\n" if "error" in measured else " done\n")
    ref_ms = measured.get(str(model), {}).get("ms")
    for block in done:
        mine = measured.get(str(outs[block]), {})
        if "error" in mine:
            row[block] = "error: " + mine["error"]
        elif block == "sparsec":
            row[block] = sparsec_cells(row[block], mine, ref_ms)
        else:
            row[block] = competitor_cells(
                row[block],
                analyze(model, args.timeout),
                analyze(outs[block], args.timeout),
                mine,
                ref_ms,
            )
    return row


def render_text(blocks, rows: list[dict]) -> str:
    widths = {
        b: [
            max([len(c)] + [len(r[b][i]) for r in rows if isinstance(r[b], list)])
            for i, c in enumerate(cols)
        ]
        for b, cols in blocks
    }
    span = {b: sum(w) + 2 * (len(w) - 1) for b, w in widths.items()}

    def line(cells_of) -> str:
        parts = []
        for b, _ in blocks:
            cells = cells_of(b)
            if isinstance(cells, str):  # a title or a failure spans the whole block
                parts.append(
                    (cells if len(cells) <= span[b] else cells[: span[b] - 1] + "…").ljust(span[b])
                )
            else:
                parts.append(
                    "  ".join(
                        c.ljust(w) if b == "" else c.rjust(w) for c, w in zip(cells, widths[b])
                    )
                )
        return " | ".join(parts).rstrip()

    return "\n".join([line(lambda b: b), line(dict(blocks).get)] + [line(r.get) for r in rows])


def render_markdown(blocks, rows: list[dict]) -> str:
    head = [f"{b} {c}".strip() for b, cols in blocks for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [
            c
            for b, cols in blocks
            for c in (r[b] if isinstance(r[b], list) else [r[b]] + [""] * (len(cols) - 1))
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--suite", choices=["digits", "light", "pypi", "timm", "all"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--no-competitor", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds per child process (default 3600)"
    )
    args = parser.parse_args()
    models = [m.resolve() for m in args.models] + (
        suite_models(args.suite, args.timeout) if args.suite else []
    )
    if not models:
        parser.error("give model paths or --suite")
    version = None if args.no_competitor else competitor_version(args.timeout)
    blocks = BLOCKS if version else BLOCKS[:2]
    with tempfile.TemporaryDirectory(prefix="coverage-") as tmp:
        out_dir = args.out_dir.resolve() if args.out_dir else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [bench(m, out_dir, args, version is not None) for m in models]
    print(
        f"channels removed: {args.ratio}; lat1t: median of {args.latency_runs} runs, 1 thread; "
        f"onnxsim: {version or 'not run'}\n"
    )
    print(render_markdown(blocks, rows) if args.markdown else render_text(blocks, rows))
    failures = [
        f"{r[''][0]} / {b}: {r[b]}" for r in rows for b, _ in blocks[1:] if isinstance(r[b], str)
    ]
    print("\n" + "\n".join(failures) if failures else "")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(
            json.dumps(
                {"onnxsim": child_onnxsim, "measure": child_measure}[sys.argv[2]](*sys.argv[3:])
            )
        )
    else:
        sys.exit(main())
