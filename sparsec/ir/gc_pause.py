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

A whole compression holds its model and what the passes build from it until it returns:
``holding()`` freezes the objects alive at its start (the loaded model: never scanned) and
postpones every *full* collection to after the block, while young collections still run, so
cyclic garbage of short-lived objects is freed as before and only cycles that died after
surviving two young collections wait. Without it, a channel cut of a 20,000-node graph, which
makes ~700,000 objects that all survive, ran five full collections of ~0.65 s each (2.3 s of
its 8 s) and validation three more.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Iterator
from typing import TypeVar

F = TypeVar("F", bound=Callable)
NEVER = 1 << 30  # a full-collection threshold no block reaches (counted in young collections)


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


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """The objects alive now frozen (out of every collection) and no full collection within the
    block; young collections still run. Blocks nest (the outermost one undoes both)."""
    saved = gc.get_threshold()
    outermost = saved[2] != NEVER
    if outermost:
        gc.freeze()
        gc.set_threshold(saved[0], saved[1], NEVER)
    try:
        yield
    finally:
        if outermost:
            gc.set_threshold(*saved)
            gc.unfreeze()
