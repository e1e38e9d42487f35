"""``sparsec verify``: is a compressed model still what its recorded recipe gives today?

A model written by ``compress`` or ``run`` records in its metadata the job's options (paths
relative to the model's folder), the recipe file and job name when it came from a recipe, the
source's sha256 and the sparsec version (``jobs.RECIPE_KEY`` ...). A model is *current* when:
1. its recipe file (if any) still holds its job with the same options;
2. the source's bytes have the recorded sha256;
3. the job, run again into a temp folder (latency gate left out: timing is not content),
   gives a model with the same ``content_digest`` (graph, weights, opsets; not metadata or
   data-file names).
A model without a recorded recipe was not written by sparsec and is skipped.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sparsec import __version__
from sparsec.errors import InputError, SparsecError
from sparsec.ir import file_sha256
from sparsec.ir.digest import content_digest, read_metadata
from sparsec.jobs import RECIPE_KEY, SOURCE_KEY, VERSION_KEY, recorded_keys, run_job
from sparsec.spec import JobSpec, load_recipe
from sparsec.spec.options import OPTION_BY_NAME


@dataclass
class Verdict:
    current: bool
    line: str


def verify_model(path: str | Path, *, source: str | Path | None = None) -> Verdict:
    """Whether the model at ``path`` is current (see the module docstring), with one line."""
    path = Path(path)
    metadata = read_metadata(path)
    if RECIPE_KEY not in metadata:
        return Verdict(True, "skipped: no recorded recipe (not written by sparsec)")
    recorded = json.loads(metadata[RECIPE_KEY])
    spec = JobSpec.from_mapping(recorded.get("keys", {}), path.parent.resolve())
    stale = _recipe_changed(path, recorded, spec)
    if stale:
        return Verdict(False, stale)
    source_path = Path(source) if source is not None else spec.path("source")
    if source_path is None or not source_path.is_file():
        raise InputError(f"{path}: its source {source_path} is not found (give --source)")
    if file_sha256(source_path) != metadata.get(SOURCE_KEY):
        return Verdict(
            False, f"its source {source_path} changed since it was written (sha256 differs)"
        )
    return _remade_equal(path, spec.with_values(source=str(source_path.resolve())), metadata)


def _recipe_changed(path: Path, recorded: dict, spec: JobSpec) -> str | None:
    """Why the recipe file no longer gives this job, or None (also when there is no file)."""
    if not recorded.get("recipe_file"):
        return None
    recipe = Path(os.path.normpath(path.parent / recorded["recipe_file"]))
    if not recipe.is_file():
        return f"its recipe {recipe} is not found"
    jobs = dict(load_recipe(recipe))
    name = recorded.get("job")
    if name not in jobs:
        return f"its recipe {recipe} no longer has job {name!r}"
    today, then = _resolved(jobs[name]), _resolved(spec)
    changed = sorted(k for k in set(today) | set(then) if today.get(k) != then.get(k))
    if changed:
        first = changed[0]
        return (
            f"job {name!r} of {recipe} changed since it was written: {first} "
            f"{then.get(first)!r} -> {today.get(first)!r}"
            + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
        )
    return None


def _resolved(spec: JobSpec) -> dict:
    """The recorded options of ``spec`` with paths made absolute (comparable across folders)."""
    keys = recorded_keys(spec)
    return {
        key: str(spec.path(key).resolve())
        if OPTION_BY_NAME[key].path and value not in ("-", "random")
        else value
        for key, value in keys.items()
    }


def _remade_equal(path: Path, spec: JobSpec, metadata: dict) -> Verdict:
    with tempfile.TemporaryDirectory(prefix="sparsec-verify-") as folder:
        remade = Path(folder) / path.name
        spec = spec.with_values(output=str(remade), max_latency_ratio=None, latency_runs=0)
        outcome = run_job(spec, name="verify")
        if outcome.error is not None:
            return Verdict(False, f"its recipe no longer gives a model: {_line(outcome.error)}")
        if content_digest(remade) == content_digest(path):
            return Verdict(True, "current (re-made from its recipe: the same graph and weights)")
    version = metadata.get(VERSION_KEY)
    moved = (
        f"; written by sparsec {version}, this is {__version__}" if version != __version__ else ""
    )
    return Verdict(
        False, f"differs from what its recipe gives today{moved}; run it again to update"
    )


def _line(error: SparsecError) -> str:
    return str(error).split("; nothing written")[0]
