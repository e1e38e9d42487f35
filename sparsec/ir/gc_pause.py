"""Pause Python's cyclic garbage collector while a large structure is built.

Loading, copying or serialising a model, and an analysis of it, allocate one object per node,
value, attribute and dim, nearly all of which stay alive. CPython's collector runs a full
collection whenever the survivors since the last one reach a quarter of the long-lived objects, so
building a graph of N objects scans the whole heap several times while finding nothing to free
(on a 20,000-node graph, each model copy ran about three full collections of ~1 s and freed no
object). Inside ``building()`` no automatic collection runs; the objects made meanwhile are
examined once by the next collection after the block, as any new objects are.

Invariant: the collector leaves the block in the state it entered it (blocks nest); nothing but
the timing of collections changes, and a block frees no less than refcounting frees anyway (only
cyclic garbage made inside the block waits for the next collection).
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Iterator
from typing import TypeVar

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def building() -> Iterator[None]:
    """No automatic garbage collection within the block (explicit ``gc.collect()`` still runs)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def builds(function: F) -> F:
    """``function`` run inside ``building()``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with building():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
