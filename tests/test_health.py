"""
Passive health: servers go down after failures and come back on a trial
request, following nginx's max_fails / fail_timeout.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from gourmet.upstream.health import Health, PassiveHealth


def make(max_fail: int = 1, fail_timeout: float = 10.0) -> tuple[PassiveHealth, Clock]:
    clock = Clock()
    return PassiveHealth("up/s1", clock, max_fail, fail_timeout), clock


def test_one_failure_takes_a_server_out_by_default() -> None:
    health, _ = make()
    health.failed("connect failed")
    assert not health.available()
    assert health.state is Health.DOWN
    assert health.down_until == 10.0
    assert health.last_error == "connect failed"


def test_failures_must_fall_within_the_window() -> None:
    health, clock = make(max_fail=3, fail_timeout=10)
    health.failed("e1")
    clock.advance(6)
    health.failed("e2")
    clock.advance(6)  # the first failure is now 12 s old
    health.failed("e3")
    assert health.available()
    health.failed("e4")  # e2, e3, e4 within 10 s
    assert not health.available()


def test_server_is_tried_again_after_fail_timeout_and_comes_back() -> None:
    health, clock = make(fail_timeout=10)
    health.failed("refused")
    clock.advance(9.9)
    assert not health.available()
    clock.advance(0.1)
    assert health.available()
    assert health.state is Health.TRIAL
    health.request_started()
    # Only one trial request at a time.
    assert not health.available()
    health.succeeded()
    assert health.state is Health.UP  # type: ignore[comparison-overlap]
    assert health.available()
    assert health.down_since is None


def test_failed_trial_takes_the_server_out_again() -> None:
    health, clock = make(fail_timeout=5)
    health.failed("refused")
    clock.advance(5)
    health.request_started()
    health.failed("refused again")
    assert health.state is Health.DOWN
    assert health.down_until == 10.0
    assert health.down_since == 0.0


def test_abandoned_trial_lets_another_one_go() -> None:
    health, clock = make(fail_timeout=5)
    health.failed("refused")
    clock.advance(5)
    health.request_started()
    health.cancelled()
    assert health.available()


def test_max_fail_zero_never_takes_a_server_out() -> None:
    health, _ = make(max_fail=0)
    for _ in range(100):
        health.failed("refused")
    assert health.available()
    assert health.last_error == "refused"
