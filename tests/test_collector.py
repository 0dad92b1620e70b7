"""
CPython's collector kept off what start-up made (gourmet.collector).
"""

from __future__ import annotations

import gc
import platform
from typing import Any, Iterator, List

import pytest

from gourmet.collector import settle, settle_again

pytestmark = pytest.mark.skipif(
    platform.python_implementation() != "CPython", reason="PyPy has no gc.freeze"
)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settling_leaves_a_full_collection_only_what_came_after(
    unfrozen: None,
) -> None:
    before = len(gc.get_objects())
    assert settle()
    # What was there is out of the collector's sight...
    assert gc.get_freeze_count() >= before // 2
    assert len(gc.get_objects()) < before // 2
    # ...and garbage made afterwards is still collected.
    cycle: List[Any] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_a_reload_settles_again_only_where_start_up_did(unfrozen: None) -> None:
    assert not settle_again()
    assert gc.get_freeze_count() == 0
    settle()
    frozen = gc.get_freeze_count()
    kept = [[n] for n in range(1000)]
    assert settle_again()
    assert gc.get_freeze_count() >= frozen + len(kept)
