"""Analyses memoised beside a live graph (``Model``'s base): a result is kept with the graph's
``version`` (bumped by ``touch``, which every ``Model`` edit calls) *and* its structure
(``digest.structure``: the identities of its nodes, their inputs and attributes, the inputs,
outputs, initializers and their tensors), so an edit made through onnx-ir invalidates it as
surely as one made through a ``Model`` method. ``remember`` stores a result a caller vouches
for (shapes carried past a pass, a copy's shapes from its original); ``current_entries`` reads
what is current without computing anything.
"""

from __future__ import annotations

from typing import Any

from sparsec.ir import digest


class AnalysisCache:
    """The memo of a graph wrapper with an ``ir`` (``onnx_ir.Model``) attribute."""

    ir: Any

    def __init__(self) -> None:
        self.version = 0
        self._cache: dict[str, tuple[int, tuple, Any]] = {}  # key: (version, structure, result)
        self._structure: tuple = ()  # the last structure computed, shared by the cache entries

    def touch(self) -> None:
        """Record that the graph changed: cached analyses become stale. ``Model`` methods call
        it; an edit made through onnx-ir needs no call (the caches see the structure change),
        but calling it is harmless, and it is the way to say that a tensor was changed in
        place (``const_value`` holding new bytes in the same object)."""
        self.version += 1
        self._cache.clear()  # stale now: no entry keeps the old graph's objects alive

    def cached(self, key: str, compute) -> Any:
        """Memoise ``compute()`` (a read-only analysis of this model) until the graph changes,
        through a ``Model`` method or through onnx-ir."""
        hit = self._cache.get(key)
        if hit is not None and hit[0] == self.version and self._current_structure() == hit[1]:
            return hit[2]
        result = compute()
        self.remember({key: result})
        return result

    def current_entries(
        self, prefix: str | tuple[str, ...], *, unedited: bool = False
    ) -> dict[str, Any]:
        """The memoised results (``cached``) still current on the graph now whose key starts
        with ``prefix`` (or one of them): what an analysis knows without recomputing.
        ``unedited``: the caller knows the graph was not edited since the last lookup (a pass
        that reported no change ran since), so the graph is not walked again to check."""
        if not any(key.startswith(prefix) for key in self._cache):
            return {}
        now = self._structure if unedited else self._current_structure()
        return {
            key: result
            for key, (version, structure, result) in self._cache.items()
            if key.startswith(prefix) and version == self.version and structure is now
        }

    def remember(self, entries: dict[str, Any]) -> None:
        """Store each result under its key as if ``cached`` had just computed it on the graph
        now: the caller vouches that it is what that computation gives; the next edit makes it
        stale like any other entry."""
        state = (self.version, self._current_structure())
        for key, result in entries.items():
            self._cache[key] = (*state, result)

    def _current_structure(self) -> tuple:
        """``digest.structure`` of the graph now; the previous tuple when equal to it, so that
        cache entries share one tuple and later comparisons stop at its identity."""
        now = digest.structure(self.ir)
        if now != self._structure:
            self._structure = now
            self._cache.clear()  # every entry was kept with the old structure
            self._structure_changed()
        return self._structure

    def _structure_changed(self) -> None:
        """Called when the graph was found edited since the last look (a subclass drops what
        it derived from the old graph)."""
