"""
Active health checks and slow start, on a Clock: HAProxy's rise and fall,
the checks' timing (jitter, one in flight, ``timeout``), the real check over
in-memory connections (a hung endpoint fails at ``timeout``), servers taken
out by checks and brought back, reloads keeping checks, what the console and
``/metrics`` say, and the ramp of slow start.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, List, Optional, Set, Tuple

import pytest
from prometheus_client.exposition import generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gourmet.admin.metrics import UpstreamCollector
from gourmet.admin.views import server_state, upstream_view
from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import HealthCheckConfig, UpstreamConfig
from gourmet.config.origin import parse_origin
from gourmet.upstream.checks import (
    ActiveHealth,
    CheckResult,
    HealthChecks,
    check_server,
)
from gourmet.upstream.state import SLOW_START_FLOOR, AdminState, Server, Upstream

# -- the results, in HAProxy's words ------------------------------------------


def test_results_read_as_haproxy_writes_them() -> None:
    assert str(CheckResult("L7OK", 0.0012, 200)) == "L7OK 200 in 1 ms"
    assert str(CheckResult("L7STS", 0.002, 503)) == "L7STS 503 in 2 ms"
    assert str(CheckResult("L4TOUT", 1.0)) == "L4TOUT"
    assert str(CheckResult("L7TOUT", 1.0)) == "L7TOUT"
    refused = CheckResult("L4CON", 0.0, detail="connection refused")
    assert str(refused) == "L4CON in 0 ms: connection refused"
    assert CheckResult("L7OK", 0, 200).ok and CheckResult("L4OK", 0).ok
    assert not refused.ok and not CheckResult("L7STS", 0, 503).ok


# -- rise and fall --------------------------------------------------------------

GOOD = CheckResult("L7OK", 0.001, 200)
BAD = CheckResult("L7STS", 0.001, 503)


def test_a_server_starts_up_but_one_failure_from_down() -> None:
    clock = Clock()
    health = ActiveHealth("backend/a", clock, rise=2, fall=3)
    assert health.up
    clock.advance(5)
    health.record(BAD)
    assert not health.up
    assert (health.downs, health.down_since, health.last_change) == (1, 5.0, 5.0)


def test_fall_consecutive_failures_take_it_out_and_rise_bring_it_back() -> None:
    clock = Clock()
    health = ActiveHealth("backend/a", clock, rise=2, fall=3)
    health.record(GOOD)
    for _ in range(2):
        health.record(BAD)
    # A success in between starts the count again.
    health.record(GOOD)
    health.record(BAD)
    health.record(BAD)
    assert health.up
    clock.advance(10)
    health.record(BAD)
    assert not health.up
    clock.advance(4)
    health.record(GOOD)
    # A failure while coming back starts the rise again.
    health.record(BAD)
    health.record(GOOD)
    assert not health.up
    clock.advance(6)
    health.record(GOOD)
    assert health.up
    assert health.downtime == 10.0
    assert health.recovered_at == health.last_change == 20.0
    assert (health.checks, health.failed_checks, health.downs) == (11, 6, 1)
    assert health.last == GOOD


def test_downtime_counts_the_stretch_going_on() -> None:
    clock = Clock()
    health = ActiveHealth("backend/a", clock, rise=1, fall=1)
    health.record(BAD)
    clock.advance(7)
    assert health.downtime == 7.0


# -- timing: spread, jitter, one in flight --------------------------------------


def upstream_of(
    *addresses: str,
    check: Optional[HealthCheckConfig] = None,
    slow_start: float = 0.0,
    clock: Optional[Clock] = None,
    balancer: str = "round_robin",
) -> Tuple[Upstream, Clock]:
    text = "[upstreams.backend]\n"
    text += f'balancer = "{balancer}"\nslow_start = {slow_start}\n'
    if balancer == "hash":
        text += 'hash_key = "ip"\n'
    for address in addresses:
        text += f'[[upstreams.backend.servers]]\npath = "{address}"\n'
    text += '[server]\n[[server.locations]]\nlocation = "/"\nupstream = "backend"\n'
    config = parse_config(text, "test.toml").upstream("backend")
    if check is not None:
        config = _with(config, health_check=check)
    clock = clock or Clock()
    return Upstream(config, clock, random.Random(7)), clock


def _with(config: UpstreamConfig, **changes: Any) -> UpstreamConfig:
    from attrs import evolve

    return evolve(config, **changes)


class Probes:
    """
    A probe that records each check asked for and answers it when the test
    says (or at once with ``answer``).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started: List[Tuple[float, str, Deferred[CheckResult]]] = []
        self.answer: Optional[CheckResult] = None
        #: Answers for some servers (by Host), instead of ``answer``.
        self.answers: dict[str, CheckResult] = {}

    def __call__(self, reactor: Any, origin: Any, check: Any) -> Deferred[CheckResult]:
        host = f"{origin.host}:{origin.port}"
        result: Deferred[CheckResult] = Deferred()
        answer = self.answers.get(host, self.answer)
        if answer is not None:
            result = succeed(answer)
        self.started.append((self.clock.seconds(), host, result))
        return result


CHECK = HealthCheckConfig(path="/health", interval=2.0, timeout=1.0, rise=2, fall=3)


def checks_for(upstream: Upstream, clock: Clock) -> Tuple[HealthChecks, Probes]:
    probes = Probes(clock)
    checks = HealthChecks(clock, probes, random.Random(3))
    checks.update([upstream])
    return checks, probes


def test_first_checks_spread_over_the_interval_then_every_interval() -> None:
    addresses = [f"10.0.0.{n}:80" for n in range(1, 9)]
    upstream, clock = upstream_of(*addresses, check=CHECK)
    checks, probes = checks_for(upstream, clock)
    probes.answer = GOOD
    for _ in range(200):
        clock.advance(0.01)
    first: dict[str, float] = {}
    for when, host, _ in probes.started:
        first.setdefault(host, when)
    firsts = list(first.values())
    assert len(firsts) == 8
    assert all(0 <= when < 2.0 for when in firsts)
    # Spread, not all at once.
    assert max(firsts) - min(firsts) > 0.5
    for _ in range(2000):
        clock.advance(0.01)
    per_server: dict[str, List[float]] = {}
    for when, host, _ in probes.started:
        per_server.setdefault(host, []).append(when)
    for times in per_server.values():
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        assert all(1.8 - 0.011 <= gap <= 2.2 + 0.011 for gap in gaps)
    checks.stop()
    assert not clock.getDelayedCalls()


def test_a_hung_check_is_never_doubled() -> None:
    upstream, clock = upstream_of("10.0.0.1:80", "10.0.0.2:80", check=CHECK)
    checks, probes = checks_for(upstream, clock)
    clock.advance(2.0)
    assert len(probes.started) == 2
    clock.advance(20.0)
    # The probe never answered: no second check of the same server.
    assert len(probes.started) == 2
    _, _, hung = probes.started[0]
    hung.callback(BAD)
    clock.advance(2.2)
    assert len(probes.started) == 3
    checks.stop()
    assert not clock.getDelayedCalls()


def test_a_server_failing_checks_is_out_within_fall_intervals_and_back_after_rise() -> (
    None
):
    upstream, clock = upstream_of("10.0.0.1:80", "10.0.0.2:80", check=CHECK)
    checks, probes = checks_for(upstream, clock)
    probes.answer = GOOD
    clock.pump([0.1] * 30)
    a = upstream.server("10.0.0.1:80")
    assert a.active_health is not None and a.active_health.checks >= 1
    # /health now fails; other paths would still answer, nobody asks them.
    probes.answers["10.0.0.1:80"] = BAD
    failing_since = clock.seconds()
    while a.available():
        clock.advance(0.1)
        assert clock.seconds() - failing_since <= 3 * 2.0 * 1.1 + 2.0
    assert a not in upstream.candidates()
    assert server_state(a) == "down"
    view = upstream_view(upstream, ["/"])["servers"][0]
    assert view["down_by"] == ["active"]
    assert view["checks"]["last"] == "L7STS 503 in 1 ms"
    assert view["checks"]["downs"] == 1
    del probes.answers["10.0.0.1:80"]
    back_since = clock.seconds()
    while not a.available():
        clock.advance(0.1)
    assert clock.seconds() - back_since <= 2 * 2.0 * 1.1 + 0.1
    assert a in upstream.candidates()
    checks.stop()


def test_reload_keeps_the_checks_of_servers_that_stay() -> None:
    upstream, clock = upstream_of("10.0.0.1:80", "10.0.0.2:80", check=CHECK)
    checks, probes = checks_for(upstream, clock)
    probes.answer = BAD
    clock.advance(2.0)
    a = upstream.server("10.0.0.1:80")
    record = a.active_health
    assert record is not None and not record.up
    new = _with(
        upstream.config,
        servers=upstream.config.servers[:1],
        health_check=HealthCheckConfig(path="/health", interval=4.0, rise=5, fall=3),
    )
    upstream.reconfigure(new)
    checks.update([upstream])
    assert upstream.server("10.0.0.1:80").active_health is record
    assert not record.up and record.rise == 5
    assert [server.name for server in checks.checked()] == ["10.0.0.1:80"]
    # The interval the reload set applies from the next check.
    before = len(probes.started)
    clock.advance(4.5)
    assert len(probes.started) - before == 1
    # Health checks taken away: servers are passive-health only again.
    upstream.reconfigure(_with(new, health_check=None))
    checks.update([upstream])
    assert a.active_health is None and a.available()
    assert checks.checked() == []
    assert not clock.getDelayedCalls()


# -- the real check, over in-memory connections ---------------------------------


def connected_check(
    check: HealthCheckConfig, address: str = "10.0.0.1:8080"
) -> Tuple[MemoryReactorClock, StringTransport, Any, Deferred[CheckResult]]:
    reactor = MemoryReactorClock()
    result = check_server(reactor, parse_origin(address), check)
    host, port, factory, _, _ = reactor.tcpClients[0]
    assert (host, port) == ("10.0.0.1", 8080)
    protocol: Any = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return reactor, transport, protocol, result


def outcome(result: Deferred[CheckResult]) -> CheckResult:
    got: List[CheckResult] = []

    def keep(value: CheckResult) -> CheckResult:
        got.append(value)
        return value

    result.addCallback(keep)
    assert got, "no result yet"
    return got[0]


def test_a_check_is_one_get_with_connection_close() -> None:
    check = HealthCheckConfig(path="/health?full=1", host="health.internal")
    reactor, transport, protocol, result = connected_check(check)
    sent = transport.value()
    assert sent.startswith(b"GET /health?full=1 HTTP/1.1\r\n")
    assert b"\r\nHost: health.internal\r\n" in sent
    assert b"\r\nConnection: close\r\n" in sent
    reactor.advance(0.004)
    protocol.dataReceived(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    assert str(outcome(result)) == "L7OK 204 in 4 ms"
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert not reactor.getDelayedCalls()


def test_the_host_header_is_the_servers_address_by_default() -> None:
    _, transport, _, _ = connected_check(HealthCheckConfig())
    assert b"\r\nHost: 10.0.0.1:8080\r\n" in transport.value()


def test_a_status_not_expected_is_l7sts() -> None:
    check = HealthCheckConfig(path="/health", expect=frozenset({200}))
    _, _, protocol, result = connected_check(check)
    protocol.dataReceived(
        b"HTTP/1.1 302 Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    assert outcome(result) == CheckResult("L7STS", 0.0, 302)


def test_the_body_read_is_bounded() -> None:
    _, transport, protocol, result = connected_check(HealthCheckConfig())
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    assert not result.called
    protocol.dataReceived(b"x" * 20000)
    assert outcome(result).code == "L7OK"
    assert transport.disconnecting


def test_a_hung_endpoint_fails_at_timeout() -> None:
    reactor, transport, protocol, result = connected_check(
        HealthCheckConfig(timeout=1.5)
    )
    reactor.advance(1.49)
    assert not result.called
    reactor.advance(0.01)
    assert outcome(result).code == "L7TOUT"
    assert str(outcome(result)) == "L7TOUT"
    assert transport.disconnecting or transport.disconnected  # aborted
    protocol.connectionLost(Failure(ConnectionDone()))
    assert not reactor.getDelayedCalls()


def test_no_connection_within_timeout_is_l4tout() -> None:
    reactor = MemoryReactorClock()
    result = check_server(reactor, parse_origin("10.0.0.1:80"), HealthCheckConfig())
    reactor.advance(1.0)
    assert outcome(result).code == "L4TOUT"
    connector = reactor.connectors[0]
    assert connector.stoppedConnecting


def test_a_refused_connection_is_l4con() -> None:
    reactor = MemoryReactorClock()
    result = check_server(reactor, parse_origin("10.0.0.1:80"), HealthCheckConfig())
    _, _, factory, _, _ = reactor.tcpClients[0]
    factory.clientConnectionFailed(
        reactor.connectors[0], Failure(ConnectionRefusedError())
    )
    got = outcome(result)
    assert got.code == "L4CON" and not got.ok
    assert got.detail and "refused" in got.detail.lower()
    assert not reactor.getDelayedCalls()


def test_not_http_is_l7rsp() -> None:
    _, _, protocol, result = connected_check(HealthCheckConfig())
    protocol.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    assert outcome(result).code == "L7RSP"


def test_a_tcp_check_only_connects() -> None:
    _, transport, _, result = connected_check(HealthCheckConfig(type="tcp"))
    assert transport.value() == b""
    assert outcome(result).code == "L4OK"
    assert transport.disconnecting


def test_https_servers_are_checked_over_tls() -> None:
    reactor = MemoryReactorClock()
    check_server(reactor, parse_origin("https://10.0.0.1:8443"), HealthCheckConfig())
    _, port, factory, _, _ = reactor.tcpClients[0]
    assert port == 8443
    # The endpoint wraps the protocol in TLS (wrapClientTLS).
    wrapping: Any = factory.buildProtocol(None)
    wrapped = wrapping._wrappedProtocol
    assert "TLS" in type(wrapped).__name__


# -- what the console and /metrics say -------------------------------------------


def test_metrics_name_the_last_result_and_the_counts() -> None:
    upstream, clock = upstream_of("10.0.0.1:80", "10.0.0.2:80", check=CHECK)
    checks, probes = checks_for(upstream, clock)
    probes.answer = BAD
    clock.advance(2.0)
    clock.advance(5.0)
    text = generate_latest(_Registry(UpstreamCollector({"backend": upstream}))).decode()
    labels = 'server="10.0.0.1:80",upstream="backend"'
    assert f"gourmet_upstream_check_up{{{labels}}} 0.0" in text
    assert f"gourmet_upstream_check_downs_total{{{labels}}} 1.0" in text
    assert f"gourmet_upstream_server_available{{{labels}}} 0.0" in text
    assert (
        'gourmet_upstream_check_last_seconds{result="L7STS",'
        'server="10.0.0.1:80",status="503",upstream="backend"} 0.001'
    ) in text
    downtime = [
        line
        for line in text.splitlines()
        if line.startswith(f"gourmet_upstream_check_downtime_seconds_total{{{labels}")
    ]
    assert downtime and float(downtime[0].split()[-1]) > 4.0
    checks.stop()


class _Registry:
    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def collect(self) -> Any:
        return self.collector.collect()


# -- slow start ------------------------------------------------------------------


def shares(upstream: Upstream, picks: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        server = upstream.pick()
        assert server is not None
        counts[server.name] += 1
    return counts


def take_out_and_back(server: Server) -> None:
    """
    Passive health takes ``server`` out; a trial brings it back now.
    """
    server.health.failed("connection refused")
    server.health.down_until = 0.0
    server.attempt_started()
    server.succeeded()
    server.attempt_finished()


@pytest.mark.parametrize("balancer", ["round_robin", "random", "least_conn"])
def test_slow_start_ramps_a_server_back_over_the_window(balancer: str) -> None:
    upstream, clock = upstream_of(
        "10.0.0.1:80", "10.0.0.2:80", slow_start=30, balancer=balancer
    )
    a = upstream.servers[0]
    # At start-up, no slow start: both have their full share.
    assert shares(upstream, 1000)["10.0.0.1:80"] == pytest.approx(500, abs=60)
    clock.advance(100)
    take_out_and_back(a)
    expected = []
    for seconds in (0, 7.5, 15, 22.5):
        got = shares(upstream, 4000)["10.0.0.1:80"] / 4000
        share = max(SLOW_START_FLOOR, seconds / 30)
        expected.append((got, share / 2))
        assert upstream_view(upstream, [])["servers"][0]["slow_start"] == pytest.approx(
            share, abs=0.001
        )
        clock.advance(7.5)
    for got, want in expected:
        assert got == pytest.approx(want, abs=0.04)
    assert shares(upstream, 1000)["10.0.0.1:80"] == pytest.approx(500, abs=60)
    assert upstream_view(upstream, [])["servers"][0]["slow_start"] is None


def test_slow_start_follows_active_checks_and_reloads_too() -> None:
    upstream, clock = upstream_of(
        "10.0.0.1:80", "10.0.0.2:80", check=CHECK, slow_start=10
    )
    a, _ = upstream.servers
    assert a.slow_start_share(10) == 1.0
    assert a.active_health is not None
    a.active_health.record(BAD)
    clock.advance(5)
    a.active_health.record(GOOD)
    a.active_health.record(GOOD)
    assert a.slow_start_share(10) == SLOW_START_FLOOR
    clock.advance(5)
    assert a.slow_start_share(10) == 0.5
    # A server a reload adds ramps up too.
    config = upstream.config
    added = parse_config(
        '[upstreams.b]\n[[upstreams.b.servers]]\npath = "10.0.0.3:80"\n'
        '[server]\n[[server.locations]]\nlocation = "/"\nupstream = "b"\n',
        "t",
    ).upstream("b")
    upstream.reconfigure(_with(config, servers=(*config.servers, *added.servers)))
    clock.advance(2)
    assert upstream.server("10.0.0.3:80").slow_start_share(10) == pytest.approx(0.2)


def test_a_server_enabled_again_ramps_and_one_undrained_does_not() -> None:
    upstream, clock = upstream_of("10.0.0.1:80", "10.0.0.2:80", slow_start=10)
    a, b = upstream.servers
    a.admin_state = AdminState.DISABLED
    b.admin_state = AdminState.DRAIN
    clock.advance(60)
    a.admin_state = AdminState.UP
    b.admin_state = AdminState.UP
    assert a.slow_start_share(10) == SLOW_START_FLOOR
    assert b.slow_start_share(10) == 1.0
    clock.advance(5)
    assert a.slow_start_share(10) == 0.5


def test_a_server_in_slow_start_alone_still_takes_requests() -> None:
    upstream, clock = upstream_of("10.0.0.1:80", slow_start=30)
    (a,) = upstream.servers
    a.added_at = clock.seconds()
    assert all(upstream.pick() is a for _ in range(50))


def test_a_sticky_client_of_a_server_in_slow_start_stays_with_it() -> None:
    upstream, clock = upstream_of("10.0.0.1:80", "10.0.0.2:80", slow_start=30)
    a = upstream.servers[0]
    clock.advance(100)
    take_out_and_back(a)
    cookie = upstream.sticky_tokens.token(a.name)
    # At 5% of its share, a client whose cookie names it is not moved away
    # (and its session lost) in the other 95% of its requests.
    assert all(upstream.pick(sticky=cookie) is a for _ in range(200))


def test_under_hash_slow_start_moves_each_key_back_once() -> None:
    upstream, clock = upstream_of(
        "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", slow_start=30, balancer="hash"
    )
    a = upstream.servers[0]
    keys = [b"user-%d" % n for n in range(3000)]
    before = {key: upstream.pick(key=key) for key in keys}
    own = sum(server is a for server in before.values())
    clock.advance(100)
    take_out_and_back(a)
    previous: Set[bytes] = set()
    for seconds in (0, 7.5, 15, 22.5, 30):
        # Each key goes to one server at a time, not now one, now another.
        placed = {key: upstream.pick(key=key) for key in keys}
        assert placed == {key: upstream.pick(key=key) for key in keys}
        on_a = {key for key, server in placed.items() if server is a}
        share = max(SLOW_START_FLOOR, seconds / 30)
        assert len(on_a) / own == pytest.approx(share, abs=0.05)
        # A key that came back to it stays; every key it has is its own.
        assert previous <= on_a
        assert all(before[key] is a for key in on_a)
        previous = on_a
        clock.advance(7.5)
    assert {key: upstream.pick(key=key) for key in keys} == before


# -- configuration ---------------------------------------------------------------

BASE = (
    "[upstreams.backend]\n{upstream}\n"
    '[[upstreams.backend.servers]]\npath = "10.0.0.1:80"\n'
    '[server]\n[[server.locations]]\nlocation = "/"\nupstream = "backend"\n'
)


def parse(upstream: str) -> UpstreamConfig:
    return parse_config(BASE.format(upstream=upstream), "gourmet.toml").upstream(
        "backend"
    )


def test_health_check_table_is_read() -> None:
    config = parse(
        "slow_start = 30\n[upstreams.backend.health_check]\n"
        'path = "/health"\ninterval = 5\ntimeout = 2.5\nrise = 1\nfall = 2\n'
        'expect = [200, 204]\nhost = "health.internal"\n'
    )
    assert config.slow_start == 30.0
    assert config.health_check == HealthCheckConfig(
        type="http",
        path="/health",
        interval=5.0,
        timeout=2.5,
        rise=1,
        fall=2,
        expect=frozenset({200, 204}),
        host="health.internal",
    )
    assert parse("").health_check is None
    assert parse("").slow_start == 0.0
    default = parse("[upstreams.backend.health_check]\n").health_check
    assert default == HealthCheckConfig()
    assert default.healthy_status(399) and not default.healthy_status(400)


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ("rise = 0", "health_check.rise", "at least 1"),
        ("fall = true", "health_check.fall", "whole number"),
        ("interval = 0", "health_check.interval", "above 0"),
        ("interval = 1\ntimeout = 2", "health_check.timeout", "at most interval (1)"),
        ('type = "udp"', "health_check.type", "'http', 'tcp'"),
        ('path = "health"', "health_check.path", '"/health"'),
        ('type = "tcp"\npath = "/"', "health_check.path", "sends no request"),
        ("expect = []", "health_check.expect", "at least one status"),
        ("expect = [200, 700]", "health_check.expect[1]", "from 100 to 599"),
        ("intervall = 2", "health_check.intervall", "did you mean 'interval'"),
    ],
)
def test_health_check_errors_name_the_key(table: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse("[upstreams.backend.health_check]\n" + table + "\n")
    assert raised.value.key == f"upstreams.backend.{key}"
    assert message in raised.value.message


def test_slow_start_error_names_the_key() -> None:
    with pytest.raises(ConfigError) as raised:
        parse("slow_start = -1")
    assert raised.value.key == "upstreams.backend.slow_start"
