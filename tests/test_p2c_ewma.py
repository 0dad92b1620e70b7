"""
``p2c_ewma`` sends little to a slow server and its share back when it
recovers; its estimate follows time on a Clock, never the system's.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Dict, List, Optional

import attrs
import pytest
from twisted.internet.task import Clock

from gourmet.config.load import parse_config
from gourmet.config.model import UpstreamConfig
from gourmet.upstream.balancers import BALANCERS, PeakEwmaTwoChoices, ewma_cost
from gourmet.upstream.state import Upstream
from gourmet.upstream.stats import FAILURE_SECONDS, PeakEwma
from tests.configs import config


@attrs.define(eq=False)
class TimedServer:
    """A candidate with a response time, measured on a Clock."""

    name: str
    seconds: float
    clock: Clock
    weight: int = 1
    active: int = 0
    ewma: PeakEwma = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.ewma = PeakEwma(self.clock)

    @property
    def latency_ewma(self) -> Optional[float]:
        return self.ewma.estimate()


def run(
    servers: List[TimedServer],
    clock: Clock,
    requests: int,
    concurrency: int = 4,
    seed: int = 1,
) -> Counter[str]:
    """
    ``requests`` requests, ``concurrency`` in flight at a time, each taking
    its server's time on ``clock``; how many each server got.
    """
    balancer = PeakEwmaTwoChoices(random.Random(seed))
    counts: Counter[str] = Counter()

    def start() -> None:
        server = balancer.pick(servers)
        counts[server.name] += 1
        server.active += 1
        started = clock.seconds()

        def done() -> None:
            server.active -= 1
            server.ewma.observe(clock.seconds() - started)
            if sum(counts.values()) < requests:
                start()

        clock.callLater(server.seconds, done)

    for _ in range(concurrency):
        start()
    while clock.getDelayedCalls():
        clock.advance(
            min(call.getTime() for call in clock.getDelayedCalls()) - clock.seconds()
        )
    return counts


def three(clock: Clock, slow: float = 0.020, fast: float = 0.002) -> List[TimedServer]:
    return [
        TimedServer("a", fast, clock),
        TimedServer("b", fast, clock),
        TimedServer("slow", slow, clock),
    ]


def test_it_is_registered_under_its_name() -> None:
    assert BALANCERS["p2c_ewma"] is PeakEwmaTwoChoices


def test_a_server_ten_times_slower_gets_under_a_tenth() -> None:
    clock = Clock()
    counts = run(three(clock), clock, 5000)
    assert counts["slow"] < 500, counts
    # The fast ones share the rest about evenly.
    assert abs(counts["a"] - counts["b"]) < 0.2 * counts["a"], counts


def test_equal_servers_share_evenly() -> None:
    clock = Clock()
    servers = [TimedServer(name, 0.005, clock) for name in "abc"]
    counts = run(servers, clock, 3000)
    assert all(900 < counts[name] < 1100 for name in "abc"), counts


def test_weights_are_respected() -> None:
    clock = Clock()
    servers = [TimedServer("a", 0.005, clock, weight=3), TimedServer("b", 0.005, clock)]
    counts = run(servers, clock, 4000, concurrency=8)
    assert counts["a"] > 2 * counts["b"], counts


def test_a_recovered_server_gets_its_share_back_within_seconds() -> None:
    clock = Clock()
    servers = three(clock)
    run(servers, clock, 3000)
    servers[2].seconds = 0.002
    recovered = clock.seconds()
    # In rounds of 1 s of traffic (2,000 requests at 2 ms, 4 at a time):
    # its estimate decays (10 s to 1/e) until a pick tries it, and from
    # then on its fast answers bring it back.
    shares: List[float] = []
    while clock.seconds() - recovered < 15:
        counts = run(servers, clock, 2000, seed=len(shares))
        shares.append(counts["slow"] / 2000)
        if shares[-1] > 0.25:
            break
    assert shares[-1] > 0.25, shares
    assert shares[0] < 0.05, shares


def test_a_cold_server_is_probed_once_then_judged() -> None:
    clock = Clock()
    warm = TimedServer("warm", 0.002, clock)
    warm.ewma.observe(0.002)
    cold = TimedServer("cold", 0.002, clock)
    balancer = PeakEwmaTwoChoices(random.Random(1))
    assert balancer.pick([warm, cold]) is cold
    cold.active = 1
    # In flight and not measured yet: no flood before it answers.
    assert [balancer.pick([warm, cold]) for _ in range(10)] == [warm] * 10
    assert ewma_cost(cold) > ewma_cost(warm)


def test_the_estimate_jumps_to_a_peak_and_forgets_it_with_time() -> None:
    clock = Clock()
    ewma = PeakEwma(clock, decay=10.0)
    assert ewma.estimate() is None
    ewma.observe(0.002)
    ewma.observe(0.100)
    assert ewma.estimate() == pytest.approx(0.100)
    clock.advance(10)
    assert ewma.estimate() == pytest.approx(0.100 / 2.718281828, rel=1e-3)
    # A fast answer after a quiet spell counts for much, and never raises it.
    before = ewma.estimate()
    ewma.observe(0.002)
    after = ewma.estimate()
    assert after is not None and before is not None
    assert 0.002 < after < before


def test_a_failure_counts_as_slow() -> None:
    clock = Clock()
    ewma = PeakEwma(clock)
    ewma.observe(0.001)
    ewma.penalize()
    assert ewma.estimate() == pytest.approx(FAILURE_SECONDS)
    ewma.penalize()
    assert ewma.estimate() == pytest.approx(2 * FAILURE_SECONDS)


def test_a_fast_failing_server_does_not_attract_traffic() -> None:
    clock = Clock()
    servers = three(clock, slow=0.002)
    failing = servers[2]
    failing.seconds = 0.0005
    balancer = PeakEwmaTwoChoices(random.Random(4))
    for server in servers:
        server.ewma.observe(server.seconds)
    failing.ewma.penalize()
    counts: Dict[str, int] = Counter(balancer.pick(servers).name for _ in range(300))
    assert counts["slow"] == 0, counts


def backend(decay: float) -> UpstreamConfig:
    text = config(
        ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
        upstream_extra=f'balancer = "p2c_ewma"\newma_decay = {decay}',
    )
    return parse_config(text, "test.toml").upstreams[0]


def test_real_servers_feed_it_and_a_reload_keeps_what_they_learnt() -> None:
    clock = Clock()
    upstream = Upstream(backend(2), clock, random.Random(5))
    assert isinstance(upstream.balancer, PeakEwmaTwoChoices)
    fast, other, slow = upstream.servers
    for server, seconds in ((fast, 0.002), (other, 0.002), (slow, 0.020)):
        server.attempt_started()
        server.responded(200, seconds)
        server.attempt_finished()
    assert Counter(upstream.pick() for _ in range(100))[slow] == 0
    upstream.reconfigure(backend(5))
    assert [server.stats.ewma.decay for server in upstream.servers] == [5.0] * 3
    assert slow.latency_ewma == pytest.approx(0.020)
    assert Counter(upstream.pick() for _ in range(100))[slow] == 0
    # A failure makes a fast server look slow.
    fast.failed("status 502")
    assert (fast.latency_ewma or 0) >= FAILURE_SECONDS
