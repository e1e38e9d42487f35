"""gc_pause: no automatic collection inside a block, the collector's state restored after it."""

from __future__ import annotations

import gc

import pytest

from sparsec.ir.gc_pause import building, builds
from sparsec.testing import GraphBuilder


def _collections_while(make) -> int:
    """How many automatic collections ran while ``make()`` ran."""
    seen = []

    def count(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(count)
    try:
        make()
    finally:
        gc.callbacks.remove(count)
    return len(seen)


def _cycles(count: int = 50_000) -> list:
    made = []
    for _ in range(count):
        pair = [None]
        pair[0] = pair  # a cycle: only the collector frees it
        made.append(pair)
    return made


def test_no_automatic_collection_inside_a_block():
    assert gc.isenabled()
    assert _collections_while(_cycles) > 0  # the allocations do trigger collections outside

    with building():
        assert _collections_while(_cycles) == 0
    assert gc.isenabled()


def test_state_restored_when_nested_disabled_or_raising():
    with building():
        with building():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block restores the outer block's state
    assert gc.isenabled()
    gc.disable()
    try:
        with building():
            pass
        assert not gc.isenabled()  # a block does not enable a collector the caller disabled
    finally:
        gc.enable()
    with pytest.raises(ValueError), building():
        raise ValueError("boom")
    assert gc.isenabled()


def test_builds_wraps_and_model_copy_leaves_collector_on():
    @builds
    def state():
        return gc.isenabled()

    assert state() is False and state.__name__ == "state"
    model = GraphBuilder((1, 3, 8, 8), seed=0).conv(4).relu().model()
    copy = model.copy()
    assert gc.isenabled()
    assert [n.op_type for n in copy.nodes()] == [n.op_type for n in model.nodes()]
