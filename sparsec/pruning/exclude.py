"""``--exclude``: glob patterns (``fnmatch``, case-sensitive, ``|``-separated in a pass option)
that protect parts of a model from a pruning pass.

A unit of pruning (a channel group, a weight) is excluded when any name it touches (its
initializers, the nodes that read or write it) matches any pattern; the first match is its
reason. A pattern that matches no node or initializer of the model is a warning, since it is
most likely a typo that leaves everything it meant to protect pruned.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from sparsec.results import Diagnostic


def joined(exclude: str | Sequence[str]) -> str:
    """The option's text: a ``|``-separated string as given, a list of patterns joined by ``|``."""
    return exclude if isinstance(exclude, str) else "|".join(exclude)


def patterns(exclude: str) -> list[str]:
    """The patterns of a ``|``-separated option."""
    return [p for p in exclude.split("|") if p]


def excluded_by(exclude: str, names: Iterable[str]) -> str | None:
    """Why a unit touching ``names`` is protected (``excluded by --exclude 'P' (matches 'N')``), or None."""
    names = sorted(set(names))
    for pattern in patterns(exclude):
        hit = next((n for n in names if fnmatch.fnmatchcase(n, pattern)), None)
        if hit is not None:
            return f"excluded by --exclude '{pattern}' (matches '{hit}')"
    return None


def unmatched_warnings(exclude: str, model, code: str) -> list[Diagnostic]:
    """A ``code`` warning per pattern that matches no node or initializer of ``model``."""
    names = [n.name for n in model.nodes() if n.name] + list(model.initializers())
    return [
        Diagnostic("warning", code, f"--exclude '{pattern}' matches no node or initializer")
        for pattern in patterns(exclude)
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names)
    ]
