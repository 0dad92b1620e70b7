"""
The wait after failed sign-ins to the console, per client address, on a
``Clock``.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from gourmet.admin.throttle import FORGET_AFTER, MAX_WAIT, SignInThrottle


def failing(times: int, clock: Clock, throttle: SignInThrottle) -> None:
    for _ in range(times):
        assert throttle.retry_after("203.0.113.9") is None
        throttle.failed("203.0.113.9")


def test_five_failures_are_free_then_the_wait_doubles() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock)
    failing(4, clock, throttle)
    assert throttle.retry_after("203.0.113.9") is None
    waits = []
    for _ in range(4):
        throttle.failed("203.0.113.9")
        waits.append(throttle.retry_after("203.0.113.9"))
        clock.advance(waits[-1] or 0)
    assert waits == [1, 2, 4, 8]
    # Other addresses are not held back.
    assert throttle.retry_after("198.51.100.7") is None


def test_the_wait_is_capped() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock)
    for _ in range(20):
        throttle.failed("203.0.113.9")
    assert throttle.retry_after("203.0.113.9") == MAX_WAIT == 60


def test_a_sign_in_or_a_quiet_while_starts_afresh() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock)
    failing(5, clock, throttle)
    throttle.succeeded("203.0.113.9")
    failing(4, clock, throttle)
    clock.advance(FORGET_AFTER + 1)
    failing(4, clock, throttle)
    assert throttle.failures == 13
