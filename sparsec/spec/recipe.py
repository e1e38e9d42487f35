"""Recipes: compression jobs in a TOML file, read into ``JobSpec``s and written from one.

A recipe has an optional ``[defaults]`` table and one or more ``[[job]]`` tables. A job's keys
are ``sparsec compress``'s long option names with underscores (``source``, ``output``,
``channels``, ``max_top1_drop``, ...) plus its ``name``; ``[defaults]`` applies to every job (a
job's own key wins), but for ``jobs`` and ``executor``, which shape a target's sweep: from
``[defaults]`` they apply to the jobs with a target only. Relative paths are relative to the
recipe's folder. Every key is checked by the same ``Option`` table as the flags, so a recipe
fails with the same line a flag would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsec.errors import InputError, UsageError
from sparsec.passes.syntax import format_value  # TOML values, as --passes writes them
from sparsec.spec.job import JobSpec
from sparsec.spec.options import OPTION_BY_NAME, OPTIONS, TARGET_NAMES

# Keys that only shape a target's sweep: from [defaults] they go to the jobs with a target.
SWEEP_NAMES = ("jobs", "executor")

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def load_recipe(path: str | Path, only: str | None = None) -> list[tuple[str, JobSpec]]:
    """(name, spec) per job, in file order; ``only``: that job alone (an unknown name is an
    error listing the names)."""
    path = Path(path)
    table = _read(path)
    unknown = sorted(set(table) - {"defaults", "job"})
    if unknown:
        raise UsageError(
            f"recipe {path}: unknown table {unknown[0]!r} (a recipe has [defaults] and [[job]] tables)"
        )
    defaults, jobs = table.get("defaults", {}), table.get("job", [])
    if not isinstance(defaults, dict) or not isinstance(jobs, list) or not jobs:
        raise UsageError(f"recipe {path}: no [[job]] table (each job is a [[job]] with a name)")
    specs = [_job(path, defaults, job, number) for number, job in enumerate(jobs, 1)]
    names = [name for name, _ in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise UsageError(f"recipe {path}: two jobs are named {duplicate!r}")
    if only is not None:
        if only not in names:
            raise UsageError(f"recipe {path} has no job {only!r} (its jobs: {', '.join(names)})")
        specs = [pair for pair in specs if pair[0] == only]
    return specs


def _read(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"recipe {path} {'is a directory' if path.is_dir() else 'not found'}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"recipe {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise InputError(f"cannot read recipe {path}: {error.strerror or error}") from None


def _job(path: Path, defaults: dict, job: Any, number: int) -> tuple[str, JobSpec]:
    if not isinstance(job, dict):
        raise UsageError(f"recipe {path}: job {number} is not a table")
    name = job.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f'recipe {path}: job {number} needs a name (name = "...")')
    own = {k: v for k, v in job.items() if k != "name"}
    keys = {**defaults, **own}
    if not any(name in keys for name in TARGET_NAMES):  # [defaults]' sweep keys: target jobs only
        keys = {k: v for k, v in keys.items() if k not in SWEEP_NAMES or k in own}
    spec = JobSpec.from_mapping(keys, path.parent.resolve(), where=f"recipe {path}, job {name!r}: ")
    return name, spec


def recipe_text(name: str, spec: JobSpec, folder: Path) -> str:
    """A recipe with one ``[[job]]``: ``spec``'s given options, paths relative to ``folder``."""
    lines = [
        "# written by sparsec compress --save-recipe; run it with: sparsec run THIS.toml",
        "",
        "[[job]]",
    ]
    lines.append(f"name = {format_value(name, bare=False)}")
    for key, value in spec.recipe_keys().items():
        written = relative_path(spec.path(key), folder) if OPTION_BY_NAME[key].path else value
        lines.append(f"{key} = {format_value(written, bare=False)}")
    return "\n".join(lines) + "\n"


def relative_path(path: Path | None, folder: Path) -> str:
    """``path`` relative to ``folder`` when it can be written so ('random' as is)."""
    import os

    if path is None or str(path) in ("-", "random"):
        return str(path)
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


__all__ = ["OPTIONS", "load_recipe", "recipe_text", "relative_path"]
