"""
gourmet.deadline: one reactor call per owner, moved rather than replaced.
"""

from __future__ import annotations

from typing import List, Tuple

from twisted.internet.task import Clock

from gourmet.deadline import Deadline


def deadline() -> Tuple[Clock, Deadline, List[float]]:
    clock = Clock()
    fired: List[float] = []
    return clock, Deadline(clock, lambda: fired.append(clock.seconds())), fired


def test_expires_when_due() -> None:
    clock, timer, fired = deadline()
    timer.set(5)
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [5] and timer.due is None
    clock.advance(100)
    assert fired == [5]


def test_cleared_never_expires_and_its_call_lapses() -> None:
    clock, timer, fired = deadline()
    timer.set(5)
    timer.clear()
    clock.advance(10)
    assert fired == [] and clock.getDelayedCalls() == []


def test_moved_later_expires_at_the_new_time_with_one_call() -> None:
    clock, timer, fired = deadline()
    for _ in range(100):  # a busy connection: set for every request
        timer.set(5)
        clock.advance(1)
        timer.clear()
    timer.set(5)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [105]


def test_moved_sooner_expires_at_the_sooner_time() -> None:
    clock, timer, fired = deadline()
    timer.set(60)
    timer.set(2)
    clock.advance(2)
    assert fired == [2]
    clock.advance(100)
    assert fired == [2]


def test_cancel_leaves_nothing_scheduled() -> None:
    clock, timer, fired = deadline()
    timer.set(5)
    timer.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert fired == []


def test_expired_may_set_it_again() -> None:
    clock = Clock()
    fired: List[float] = []

    def expired() -> None:
        fired.append(clock.seconds())
        if len(fired) < 3:
            timer.set(1)

    timer = Deadline(clock, expired)
    timer.set(1)
    clock.advance(1)
    clock.advance(1)
    clock.advance(1)
    clock.advance(1)
    assert fired == [1, 2, 3]
