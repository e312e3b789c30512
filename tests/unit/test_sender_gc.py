"""A sender process raises the young-generation threshold above what its sends in
flight hold, and freezes what start-up made (workers.runner.tune_gc_for_sending)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from workers.runner import tune_gc_for_sending


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_threshold_follows_the_sends_in_flight(restored_gc: None) -> None:
    older = gc.get_threshold()[1:]
    tune_gc_for_sending(500)
    assert gc.get_threshold() == (10_000, *older)
    assert gc.get_freeze_count() > 0
    tune_gc_for_sending(1)
    assert gc.get_threshold()[0] == 700        # never below CPython's default
