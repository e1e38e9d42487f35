"""Cached analyses carried from a model to an edited copy of it, so that the copy does not
recompute what its caller knows: a sensitivity sweep prunes hundreds of copies of one model, and
each copy's shapes are the original's, but for the channels its cut removed.

Invariant: the caller vouches for what it carries. An entry is taken only while it is current
on ``source`` (its version and structure), is transformed by ``edit`` into what ``target``'s
analysis would compute now, and is stored against ``target``'s current state: the next edit of
``target`` makes it stale like any other entry (``Model.cached``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparsec.ir.model import Model


def carry(
    source: Model,
    target: Model,
    prefix: str | tuple[str, ...],
    edit: Callable[[Any], Any] | None = None,
) -> int:
    """Put ``source``'s current cache entries whose key starts with ``prefix`` (or one of
    them) into ``target``'s cache (through ``edit`` when given); how many were carried."""
    entries = source.current_entries(prefix)
    if entries:
        target.remember({key: edit(r) if edit is not None else r for key, r in entries.items()})
    return len(entries)
