"""Per-layer ratios ``{glob: ratio}`` for channel pruning: read, written, and chosen per group.

Forms: a mapping (Python, a recipe's ``channels = {"layer4.*" = 0.7, "*" = 0.3}``), text,
``GLOB=R`` items separated by ``,`` (``--channels 'layer4.*=0.7,*=0.3'``) or ``|`` (inside
``--passes 'channel-prune(ratios=layer4.*=0.7|*=0.3)'``, whose own separator is ``,``), or a
list of such texts (``["layer4.*=0.7", "*=0.3"]``, the same as ``'layer4.*=0.7,*=0.3'``).

A pattern (``fnmatch``, case-sensitive) matches a channel group when it matches a name of a
layer whose *output channels* the group holds (``analysis.lookup``: node name, weight name,
scope, module path). Precedence, per group: the most specific matching pattern wins (the most
literal characters: ``*``, ``?`` and ``[...]`` count none), ties go to the smaller ratio, then
to the pattern given first. A group no pattern matches is not pruned. A pattern that matches
no layer of the model is an error (a typo would otherwise prune nothing it meant to).

Invariant: standard library only (the option table reads it, and ``sparsec --help`` stays fast).
"""

from __future__ import annotations

import ast
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence

_CLASS = re.compile(r"\[[^\]]*\]")


def parse(value: Mapping | str | Sequence[str]) -> dict[str, float]:
    """``{pattern: ratio}`` from a mapping, ``GLOB=R`` text or a list of ``GLOB=R`` texts (each
    read as the text form); ``ValueError`` saying what is wrong."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str) and _listed(value) is not None:
        return parse(_listed(value))
    elif isinstance(value, str):
        items = _items(value)
    elif isinstance(value, (list, tuple)):
        items = [item for part in value for item in _items(_text_item(part))]
    else:
        raise ValueError(f"expected a ratio or GLOB=R pairs, got {value!r}")
    if not items:
        raise ValueError("expected GLOB=R pairs, e.g. 'layer4.*=0.7,*=0.3'")
    ratios: dict[str, float] = {}
    for pattern, ratio in items:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"a pattern must be non-empty text, got {pattern!r}")
        if pattern.strip() in ratios:
            raise ValueError(f"pattern {pattern.strip()!r} is given twice")
        ratios[pattern.strip()] = _ratio(pattern, ratio)
    return ratios


def _listed(value: str) -> list | None:
    """The list a text spells as a Python/TOML list literal (``["a*=0.5", "*=0.2"]``, as a
    list option reads back), else None."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        found = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return found if isinstance(found, list) else None


def _items(value: str) -> list[tuple[str, str]]:
    return [_item(part) for part in re.split(r"[,|]", value) if part.strip()]


def _text_item(part) -> str:
    if not isinstance(part, str):
        raise ValueError(f"expected GLOB=R text in the list, got {part!r} (e.g. 'layer4.*=0.7')")
    return part


def _item(part: str) -> tuple[str, str]:
    pattern, sep, ratio = part.rpartition("=")
    if not sep or not pattern.strip():
        raise ValueError(f"expected GLOB=R, got {part.strip()!r} (e.g. 'layer4.*=0.7')")
    return pattern, ratio.strip()


def _ratio(pattern: str, value) -> float:
    try:
        ratio = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        ratio = math.nan
    if not 0 <= ratio < 1:
        raise ValueError(f"pattern {pattern.strip()!r}: expected a ratio in [0, 1), got {value!r}")
    return ratio


def text(ratios: Mapping[str, float], separator: str = ",") -> str:
    """The text form, patterns in the given order: ``layer4.*=0.7,*=0.3``."""
    return separator.join(f"{pattern}={float(ratio)!r}" for pattern, ratio in ratios.items())


def specificity(pattern: str) -> int:
    """Literal characters of a pattern (wildcards and ``[...]`` classes count none)."""
    return len(_CLASS.sub("", pattern).replace("*", "").replace("?", ""))


def choose(ratios: Mapping[str, float], names: Iterable[str]) -> tuple[str, float] | None:
    """The (pattern, ratio) a group whose layers have ``names`` takes, or None (no match)."""
    names = list(names)
    order = {pattern: index for index, pattern in enumerate(ratios)}
    matching = [p for p in ratios if any(fnmatch.fnmatchcase(n, p) for n in names)]
    if not matching:
        return None
    best = min(matching, key=lambda p: (-specificity(p), ratios[p], order[p]))
    return best, ratios[best]


def unmatched(ratios: Mapping[str, float], names: Iterable[str]) -> list[str]:
    """The patterns that match none of ``names``."""
    names = list(names)
    return [p for p in ratios if not any(fnmatch.fnmatchcase(n, p) for n in names)]


__all__ = ["choose", "parse", "specificity", "text", "unmatched"]
