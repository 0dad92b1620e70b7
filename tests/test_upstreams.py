"""
An upstream's choice of servers as health changes, on a ``Clock``: the
panic threshold, which balances over every server in rotation when too few
are healthy rather than refusing every request.
"""

from __future__ import annotations

import random
from typing import List, Sequence

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from gourmet.config.load import parse_config
from gourmet.config.model import UpstreamConfig
from gourmet.upstream.state import AdminState, Server, Upstream
from tests.configs import config


def make(servers: int, upstream_extra: str = "") -> tuple[Upstream, Clock]:
    addresses = [f"127.0.0.1:{9001 + n}" for n in range(servers)]
    loaded = parse_config(config(addresses, upstream_extra=upstream_extra), "t.toml")
    clock = Clock()
    return Upstream(loaded.upstreams[0], clock, random.Random(1)), clock


def take_down(servers: Sequence[Server]) -> None:
    for server in servers:
        server.failed("connect failed", responded=False)


def names(servers: List[Server]) -> List[str]:
    return [server.name for server in servers]


def test_statuses_are_not_failures_unless_configured() -> None:
    upstream, _ = make(2)
    defaults: UpstreamConfig = upstream.config
    assert defaults.fail_status == frozenset()
    assert defaults.retry_status == frozenset()
    assert defaults.panic_threshold == 50


def test_half_the_servers_down_is_not_a_panic() -> None:
    upstream, _ = make(2)
    take_down(upstream.servers[:1])
    assert names(upstream.candidates()) == ["127.0.0.1:9002"]
    assert not upstream.in_panic()
    assert upstream.panic_since is None


def test_panic_balances_over_every_server_and_says_so() -> None:
    upstream, clock = make(3)
    clock.advance(100)
    with capturedLogs() as events:
        take_down(upstream.servers[:2])
        candidates = upstream.candidates()
    # One of three healthy is under 50%: the two down take requests too.
    assert names(candidates) == ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    assert upstream.in_panic()
    assert upstream.panic_since == 100
    said = [formatEvent(event) for event in events if "upstream_panic" in event]
    assert said == [
        "upstream backend in panic: 1 of 3 servers healthy, fewer than 50%:"
        " balancing over all of them"
    ]


def test_panic_ends_when_servers_come_back_and_is_logged_once() -> None:
    upstream, clock = make(2, "fail_timeout = 10")
    take_down(upstream.servers)
    with capturedLogs() as events:
        for _ in range(5):
            assert len(upstream.candidates()) == 2
        clock.advance(10)
        # Both are on trial now, and may each take one request: no panic.
        assert len(upstream.candidates()) == 2
        assert not upstream.in_panic()
    said = [formatEvent(event) for event in events if "upstream_panic" in event]
    assert said == [
        "upstream backend in panic: 0 of 2 servers healthy, fewer than 50%:"
        " balancing over all of them",
        "upstream backend out of panic after 10.0s: 2 of 2 servers healthy",
    ]


def test_panic_still_skips_servers_already_tried() -> None:
    upstream, _ = make(2)
    take_down(upstream.servers)
    first = upstream.servers[0]
    assert upstream.candidates(exclude=[first]) == [upstream.servers[1]]
    assert upstream.pick(exclude=upstream.servers) is None


def test_panic_never_sends_to_a_drained_or_disabled_server() -> None:
    upstream, _ = make(3)
    upstream.servers[0].admin_state = AdminState.DRAIN
    upstream.servers[1].admin_state = AdminState.DISABLED
    take_down(upstream.servers[2:])
    # The operator's decisions stand; the one server in rotation is down.
    assert upstream.candidates() == [upstream.servers[2]]
    assert upstream.in_panic()


def test_panic_threshold_zero_refuses_when_all_are_down() -> None:
    upstream, _ = make(2, "panic_threshold = 0")
    take_down(upstream.servers)
    assert upstream.candidates() == []
    assert upstream.pick() is None
    assert not upstream.in_panic()


def test_panic_threshold_100_balances_over_all_once_one_is_down() -> None:
    upstream, _ = make(3, "panic_threshold = 100")
    assert len(upstream.candidates()) == 3
    take_down(upstream.servers[:1])
    assert len(upstream.candidates()) == 3
    assert upstream.in_panic()
