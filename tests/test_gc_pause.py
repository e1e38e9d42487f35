"""gc_pause: no automatic collection inside a block, the collector's state restored after it."""

from __future__ import annotations

import gc

import pytest

from sparsec.ir.gc_pause import building, builds, holding
from sparsec.testing import GraphBuilder


def _collections_while(make, generations=(0, 1, 2)) -> int:
    """How many automatic collections of ``generations`` ran while ``make()`` ran."""
    seen = []

    def count(phase, info):
        if phase == "start" and info["generation"] in generations:
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


def test_holding_freezes_postpones_full_collections_and_restores():
    kept = _cycles(1000)
    saved, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert _collections_while(lambda: _cycles(400_000), generations=(2,)) > 0
    with holding():
        assert gc.get_freeze_count() >= frozen + len(kept)  # alive at the start: frozen
        survivors = []
        young = _collections_while(lambda: survivors.append(_cycles(400_000)), generations=(0,))
        full = _collections_while(lambda: survivors.append(_cycles(400_000)), generations=(2,))
        assert young > 0 and full == 0
        with holding():  # nested: the outer block's state stays
            pass
        assert gc.get_freeze_count() >= frozen + len(kept)
    assert gc.get_threshold() == saved and gc.get_freeze_count() == frozen
    survivors.clear()


def test_holding_still_frees_short_lived_cycles():
    def churn():
        for _ in range(200_000):
            pair = [None]
            pair[0] = pair  # garbage at once: a young collection frees it

    with holding():
        before = len(gc.get_objects())
        churn()
        assert len(gc.get_objects()) - before < 50_000
