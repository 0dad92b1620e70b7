"""
``provider = "dns"`` against a real authoritative DNS server on loopback
(Twisted Names' own, tests/dnsserver.py), whose zone the tests change.

The lookups go over real UDP (and TCP for a truncated answer) on the
reactor, whose timers also time the queries out; when the next lookup
comes (TTL, refresh, backoff) is on a Clock the tests advance, so that
"within one refresh" is exact.  The last test runs a real ``twistd`` with
requests flowing while SRV records change.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.names import dns

from gourmet.admin.views import upstream_view
from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import UpstreamConfig
from gourmet.discovery.dns import (
    DnsOptions,
    ResolvedName,
    srv_weights,
    system_resolvers,
)
from gourmet.discovery.registry import PROVIDERS
from gourmet.discovery.updates import ProvidedUpstream
from gourmet.upstream.state import Upstream
from tests.dnsserver import DnsServer, Zone, a, aaaa, srv
from tests.processes import Twistd
from tests.rawhttp import sleep
from tests.test_discovery_twistd import Traffic, api, gourmet_with, until

SERVICE = "_http._tcp.api.test"
#: Seconds a query waits for an answer; two tries: a dead server is seen
#: in half a second.
TIMEOUT = 0.25

UPSTREAM = """\
[upstreams.api]
provider = "dns"
{keys}
[server]
[[server.locations]]
location = "/"
upstream = "api"
"""


def dns_keys(server: DnsServer, name: str = SERVICE, extra: str = "") -> str:
    return (
        f'name = "{name}"\nresolvers = ["{server.address}"]\n'
        f"resolver_timeout = {TIMEOUT}\n{extra}"
    )


class Resolving:
    """
    An upstream whose servers a name in ``server``'s zone gives: looked up
    over loopback on the reactor, the next lookup scheduled on a Clock.
    """

    def __init__(self, server: DnsServer, keys: str) -> None:
        self.server = server
        self.zone = server.zone
        self.clock = Clock()
        text = UPSTREAM.format(keys=keys)
        self.config = parse_config(text, "gourmet.toml", "/").upstream("api")
        self.upstream = Upstream(self.config, self.clock)
        self.provider = ResolvedName(
            self.config.provider_options, reactor, clock=self.clock
        )
        self.provided = ProvidedUpstream(
            self.config, self.provider, self.apply, self.clock
        )

    def apply(self, config: UpstreamConfig) -> None:
        self.upstream.reconfigure(config)

    async def start(self) -> None:
        self.provided.start()
        await self.settled()

    async def settled(self) -> None:
        """
        Wait (real time, bounded) for the lookup under way to end.
        """
        await until("the lookup ends", lambda: self.provider.looking is None, 5)

    async def after(self, seconds: float) -> None:
        """
        Let ``seconds`` pass on the Clock, and wait for any lookup that
        starts.
        """
        self.clock.advance(seconds)
        await self.settled()

    def next_lookup_in(self) -> float:
        (call,) = self.clock.getDelayedCalls()
        return float(call.getTime() - self.clock.seconds())

    def addresses(self) -> List[str]:
        return [server.name for server in self.upstream.servers]

    def weights(self) -> Dict[str, int]:
        return {server.name: server.weight for server in self.upstream.servers}

    def view(self) -> Dict[str, Any]:
        return upstream_view(self.upstream, ["/"], None, self.provided)

    def last_error(self) -> Any:
        return self.view()["provider"]["last_error"]

    async def stop(self) -> None:
        await self.provided.stop()
        await self.settled()


@pytest.fixture
def dns_server(started: Any) -> DnsServer:
    server: DnsServer = started(DnsServer(Zone()))
    return server


@pytest_twisted.async_yield_fixture
async def resolving(
    dns_server: DnsServer,
) -> AsyncIterator[Callable[..., Resolving]]:
    """
    ``resolving(keys)``: a :class:`Resolving` (not started), stopped
    after the test.
    """
    made: List[Resolving] = []

    def make(keys: str = "") -> Resolving:
        made.append(Resolving(dns_server, keys or dns_keys(dns_server)))
        return made[-1]

    yield make
    for each in made:
        await each.stop()


async def two_targets_found(
    resolving: Callable[..., Resolving], ttl: int = 5
) -> Resolving:
    """
    A :class:`Resolving` of :data:`SERVICE`, started, once it has found
    the two servers of :func:`two_targets`.
    """
    running = resolving()
    two_targets(running.zone, ttl)
    await running.start()
    assert running.addresses() == ["127.0.0.11:8001", "127.0.0.12:8002"]
    return running


def two_targets(zone: Zone, ttl: int = 5) -> None:
    zone.set(
        SERVICE,
        srv("a.api.test", 8001, ttl=ttl),
        srv("b.api.test", 8002, ttl=ttl),
    )
    zone.set("a.api.test", a("127.0.0.11", ttl=ttl))
    zone.set("b.api.test", a("127.0.0.12", ttl=ttl))


@pytest_twisted.ensureDeferred
async def test_srv_records_added_and_removed_join_and_leave_within_one_refresh(
    resolving: Callable[..., Resolving],
) -> None:
    running = await two_targets_found(resolving)
    zone = running.zone
    # The targets' addresses came with the SRV answer: no more queries.
    assert (zone.asked(dns.SRV), zone.asked(dns.A)) == (1, 0)
    assert running.view()["servers"][0]["found"] == {
        "target": "a.api.test",
        "priority": "0",
        "srv_weight": "1",
    }
    first, second = running.upstream.servers

    zone.add(SERVICE, srv("c.api.test", 8003))
    zone.set("c.api.test", a("127.0.0.13"))
    await running.after(4.9)
    assert zone.asked(dns.SRV) == 1
    assert running.addresses() == ["127.0.0.11:8001", "127.0.0.12:8002"]
    await running.after(0.1)
    assert running.addresses() == [
        "127.0.0.11:8001",
        "127.0.0.12:8002",
        "127.0.0.13:8003",
    ]
    assert running.upstream.servers[:2] == [first, second]

    zone.set(SERVICE, srv("b.api.test", 8002), srv("c.api.test", 8003))
    await running.after(5)
    assert running.addresses() == ["127.0.0.12:8002", "127.0.0.13:8003"]
    assert running.upstream.servers[0] is second
    provider = running.view()["provider"]
    assert (provider["name"], provider["updates"], provider["errors"]) == ("dns", 3, 0)


@pytest_twisted.ensureDeferred
async def test_srv_weights_are_respected_and_only_the_best_priority_is_used(
    resolving: Callable[..., Resolving],
) -> None:
    running = resolving()
    running.zone.set(
        SERVICE,
        srv("x.api.test", 8001, weight=10),
        srv("y.api.test", 8002, weight=30),
        srv("z.api.test", 8003, weight=0),
        srv("backup.api.test", 8004, weight=100, priority=1),
    )
    for name, address in [("x", "11"), ("y", "12"), ("z", "13"), ("backup", "14")]:
        running.zone.set(f"{name}.api.test", a(f"127.0.0.{address}"))
    await running.start()
    assert running.weights() == {
        "127.0.0.11:8001": 10,
        "127.0.0.12:8002": 30,
        "127.0.0.13:8003": 1,
    }
    picked: Counter[str] = Counter()
    for _ in range(410):
        server = running.upstream.pick()
        assert server is not None
        picked[server.name] += 1
    assert picked == {
        "127.0.0.11:8001": 100,
        "127.0.0.12:8002": 300,
        "127.0.0.13:8003": 10,
    }


def test_srv_weights_map_to_gourmets_range() -> None:
    # As they are up to 1000; 0 is "no preference", not a drain.
    assert srv_weights([0, 1, 1000]) == [1, 1, 1000]
    # Above 1000, scaled so that the largest is 1000.
    assert srv_weights([65535, 32768, 0]) == [1000, 500, 1]
    assert srv_weights([2000, 1]) == [1000, 1]
    assert srv_weights([]) == []


@pytest_twisted.ensureDeferred
async def test_targets_are_looked_up_when_the_answer_does_not_give_them(
    resolving: Callable[..., Resolving],
) -> None:
    running = resolving()
    zone = running.zone
    zone.additional = False
    zone.set(
        SERVICE,
        srv("a.api.test", 8001),
        srv("v6.api.test", 8002),
        srv("gone.api.test", 8003),  # a stale record: its host is gone
    )
    zone.set("a.api.test", a("127.0.0.11"))
    zone.set("v6.api.test", aaaa("::1"))
    await running.start()
    assert running.addresses() == ["127.0.0.11:8001", "[::1]:8002"]
    assert (zone.asked(dns.A), zone.asked(dns.AAAA)) == (3, 3)
    assert running.last_error() is None


@pytest_twisted.ensureDeferred
async def test_a_and_aaaa_records_with_a_port(
    dns_server: DnsServer, resolving: Callable[..., Resolving]
) -> None:
    running = resolving(dns_keys(dns_server, name="web.test", extra="port = 8080"))
    zone = running.zone
    zone.set("web.test", a("127.0.0.21"), a("127.0.0.22"), aaaa("::1"))
    await running.start()
    assert running.addresses() == ["127.0.0.21:8080", "127.0.0.22:8080", "[::1]:8080"]
    assert set(running.weights().values()) == {1}
    assert running.view()["servers"][0]["found"] == {"name": "web.test"}
    assert zone.asked(dns.SRV) == 0

    zone.set("web.test", a("127.0.0.21"), aaaa("::1"))
    await running.after(5)
    assert running.addresses() == ["127.0.0.21:8080", "[::1]:8080"]


@pytest.mark.parametrize(
    ("srv_ttl", "address_ttl", "refresh", "expected"),
    [
        (3, 7, '"ttl"', 3),  # the shortest TTL of the answer...
        (9, 2, '"ttl"', 2),  # ...its targets' addresses included
        (0, 0, '"ttl"', 1),  # the floor
        (86400, 86400, '"ttl"', 300),  # the ceiling
        (3, 7, "10", 10),  # seconds: the TTL does not matter
        (3, 7, "0.5", 0.5),
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_next_lookup_comes_when_the_ttl_says(
    dns_server: DnsServer,
    resolving: Callable[..., Resolving],
    srv_ttl: int,
    address_ttl: int,
    refresh: str,
    expected: float,
) -> None:
    running = resolving(dns_keys(dns_server, extra=f"refresh = {refresh}"))
    running.zone.set(SERVICE, srv("a.api.test", 8001, ttl=srv_ttl))
    running.zone.set("a.api.test", a("127.0.0.11", ttl=address_ttl))
    await running.start()
    assert running.next_lookup_in() == pytest.approx(expected)
    await running.after(expected)
    assert running.zone.asked(dns.SRV) == 2
    assert running.next_lookup_in() == pytest.approx(expected)


@pytest_twisted.ensureDeferred
async def test_a_dead_dns_server_keeps_the_servers_says_why_and_recovery_is_seen(
    dns_server: DnsServer, resolving: Callable[..., Resolving]
) -> None:
    running = await two_targets_found(resolving, ttl=2)
    await dns_server.stop()

    await running.after(2)
    assert running.addresses() == ["127.0.0.11:8001", "127.0.0.12:8002"]
    assert running.last_error() == (
        f"{SERVICE} SRV: no answer from {dns_server.address}"
        f" (2 tries of {TIMEOUT:g} s each)"
    )
    assert running.view()["provider"]["error_since"] == 2
    # Tried again after 1 s, then 2, then 4: a backoff.
    backoff = []
    for _ in range(3):
        backoff.append(running.next_lookup_in())
        await running.after(backoff[-1])
    assert backoff == [1, 2, 4]
    assert running.view()["provider"]["errors"] == 4
    assert running.addresses() == ["127.0.0.11:8001", "127.0.0.12:8002"]

    running.zone.set(SERVICE, srv("b.api.test", 8002, ttl=2))
    dns_server.start()
    await running.after(running.next_lookup_in())
    assert running.last_error() is None
    assert running.addresses() == ["127.0.0.12:8002"]
    # Back on the TTL, and the next failure's backoff starts at 1 s again.
    assert running.next_lookup_in() == 2


@pytest_twisted.ensureDeferred
async def test_a_resolver_that_does_not_answer_is_passed_over_for_the_next(
    dns_server: DnsServer, resolving: Callable[..., Resolving]
) -> None:
    dead = DnsServer(Zone())
    dead.start()
    await dead.stop()
    running = resolving(
        f'name = "{SERVICE}"\nresolver_timeout = {TIMEOUT}\n'
        f'resolvers = ["{dead.address}", "{dns_server.address}"]'
    )
    two_targets(running.zone)
    await running.start()
    assert running.addresses() == ["127.0.0.11:8001", "127.0.0.12:8002"]
    assert running.last_error() is None


@pytest.mark.parametrize(
    ("break_it", "reason"),
    [
        (lambda zone: setattr(zone, "failing", True), "the server failed (SERVFAIL)"),
        (lambda zone: zone.set(SERVICE), "no such name (NXDOMAIN)"),
        (lambda zone: zone.set(SERVICE, a("127.0.0.9")), "no SRV records"),
        (
            lambda zone: zone.set(SERVICE, srv("gone.api.test", 8009)),
            "none of its 1 targets has an A or AAAA record",
        ),
    ],
    ids=["servfail", "nxdomain", "no-srv", "no-address"],
)
@pytest_twisted.ensureDeferred
async def test_each_failure_keeps_the_servers_and_says_why(
    resolving: Callable[..., Resolving],
    break_it: Callable[[Zone], None],
    reason: str,
) -> None:
    running = await two_targets_found(resolving)
    break_it(running.zone)
    await running.after(5)
    assert running.last_error() == f"{SERVICE} SRV: {reason}"
    assert running.addresses() == ["127.0.0.11:8001", "127.0.0.12:8002"]
    running.zone.failing = False
    two_targets(running.zone)
    await running.after(running.next_lookup_in())
    assert running.last_error() is None


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ((), "no such name (NXDOMAIN)"),
        ((srv("a.api.test", 8001),), "no A or AAAA records"),
    ],
    ids=["nxdomain", "no-address"],
)
@pytest_twisted.ensureDeferred
async def test_a_name_without_addresses_fails(
    dns_server: DnsServer,
    resolving: Callable[..., Resolving],
    records: Any,
    reason: str,
) -> None:
    running = resolving(dns_keys(dns_server, name="web.test", extra="port = 8080"))
    running.zone.set("web.test", *records)
    await running.start()
    assert running.last_error() == f"web.test A/AAAA: {reason}"
    assert running.addresses() == []


@pytest_twisted.ensureDeferred
async def test_a_target_of_dot_says_the_service_has_no_server_now(
    resolving: Callable[..., Resolving],
) -> None:
    running = await two_targets_found(resolving)
    running.zone.set(SERVICE, srv(".", 0))
    await running.after(5)
    assert running.addresses() == []
    assert running.last_error() is None


@pytest_twisted.ensureDeferred
async def test_a_truncated_answer_is_asked_again_over_tcp(
    dns_server: DnsServer, resolving: Callable[..., Resolving]
) -> None:
    running = resolving()
    # 40 records do not fit the 512 bytes of a UDP answer.
    for index in range(40):
        target = f"host-{index:02}.with-a-long-name.api.test"
        running.zone.add(SERVICE, srv(target, 9000 + index))
        running.zone.set(target, a("127.0.0.11"))
    await running.start()
    assert len(running.addresses()) == 40
    assert len(dns_server.factory.connections) == 1
    await running.stop()
    # The provider closes the connection Twisted keeps for later queries.
    await until("closed", lambda: dns_server.factory.connections == [], 5)


@pytest_twisted.ensureDeferred
async def test_a_stopped_provider_changes_nothing_more(
    resolving: Callable[..., Resolving],
) -> None:
    running = await two_targets_found(resolving)
    await running.stop()
    assert running.clock.getDelayedCalls() == []
    running.zone.set(SERVICE)
    running.clock.advance(300)
    assert running.addresses() == ["127.0.0.11:8001", "127.0.0.12:8002"]


def parse(keys: str) -> DnsOptions:
    config = parse_config(UPSTREAM.format(keys=keys), "gourmet.toml", "/")
    options: DnsOptions = config.upstream("api").provider_options
    return options


def test_options_and_their_defaults() -> None:
    assert PROVIDERS["dns"].name == "dns"
    assert parse(f'name = "{SERVICE}."') == DnsOptions(name=SERVICE)
    # Equal options: a reload keeps the provider running, and its servers.
    assert parse(f'name = "{SERVICE}"') == parse(f'name = "{SERVICE}"')
    options = parse(
        'name = "web.test"\nport = 8080\nrefresh = 30\nresolver_timeout = 1\n'
        'resolvers = ["127.0.0.1", "10.0.0.2:5353", "[::1]:5300", "::1"]'
    )
    assert options == DnsOptions(
        name="web.test",
        port=8080,
        resolvers=(("127.0.0.1", 53), ("10.0.0.2", 5353), ("::1", 5300), ("::1", 53)),
        refresh=30.0,
        resolver_timeout=1.0,
    )


@pytest.mark.parametrize(
    ("keys", "key", "message"),
    [
        ("", "name", "expected a DNS name"),
        ('name = "not a name"', "name", "expected a DNS name"),
        ("name = 5", "name", "expected a DNS name"),
        ('name = "web.test"\nport = 0', "port", "from 1 to 65535"),
        ('name = "web.test"\nport = 70000', "port", "from 1 to 65535"),
        ('name = "web.test"\nport = "80"', "port", "expected a port number"),
        (f'name = "{SERVICE}"\nport = 80', "port", "SRV name"),
        (f'name = "{SERVICE}"\nresolvers = []', "resolvers", "a list of addresses"),
        (f'name = "{SERVICE}"\nresolvers = "127.0.0.1"', "resolvers", "a list"),
        (
            f'name = "{SERVICE}"\nresolvers = ["dns.example:53"]',
            "resolvers",
            "item 1: expected an IP address",
        ),
        (
            f'name = "{SERVICE}"\nresolvers = ["127.0.0.1", "127.0.0.1:99999"]',
            "resolvers",
            "item 2: expected a port from 1 to 65535",
        ),
        (f'name = "{SERVICE}"\nrefresh = 0', "refresh", "expected above 0"),
        (f'name = "{SERVICE}"\nrefresh = -5', "refresh", "expected above 0"),
        (f'name = "{SERVICE}"\nrefresh = "soon"', "refresh", '"ttl" or seconds'),
        (f'name = "{SERVICE}"\nrefresh = true', "refresh", "expected seconds"),
        (f'name = "{SERVICE}"\nresolver_timeout = 0', "resolver_timeout", "above 0"),
        (f'name = "{SERVICE}"\nresolver = ["127.0.0.1"]', "resolver", "resolvers"),
    ],
)
def test_option_errors_name_the_key(keys: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(keys)
    assert raised.value.key == f"upstreams.api.{key}"
    assert message in raised.value.message


def test_resolvers_default_to_those_of_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# by DHCP\nsearch example.com\nnameserver 10.0.0.53\n"
        "nameserver fe80::1%eth0\nnameserver not-an-address\noptions ndots:2\n"
    )
    assert system_resolvers(conf) == (("10.0.0.53", 53), ("fe80::1", 53))
    conf.write_text("search example.com\n")
    assert system_resolvers(conf) == (("127.0.0.1", 53),)
    assert system_resolvers(tmp_path / "missing") == (("127.0.0.1", 53),)


@pytest_twisted.ensureDeferred
async def test_srv_records_change_under_load_through_twistd_with_no_request_lost(
    tmp_path: Path,
    processes: List[Twistd],
    make_upstreams: Any,
    dns_server: DnsServer,
) -> None:
    a_server, b_server = make_upstreams("a", "b")
    zone = dns_server.zone

    def serve(*servers: Any) -> None:
        zone.set(
            SERVICE,
            *[
                srv(f"{each.name}.api.test", each.port_number, ttl=1)
                for each in servers
            ],
        )

    for each in (a_server, b_server):
        zone.set(f"{each.name}.api.test", a("127.0.0.1", ttl=1))
    serve(a_server)
    gourmet = await gourmet_with(
        tmp_path, processes, f'provider = "dns"\n{dns_keys(dns_server)}'
    )
    traffic = Traffic(gourmet)
    try:
        await until("a answers", lambda: traffic.answered["a"] > 0, 10)
        serve(a_server, b_server)
        # A TTL of 1 s: the next lookup finds b.
        joined = await until("b answers", lambda: traffic.answered["b"] > 0, 5)
        assert joined < 3.0, joined

        serve(b_server)
        await api_until(
            gourmet, "a gone", lambda view: servers_of(view) == [b_server.address]
        )
        left = traffic.answered["a"]
        await until("more requests to b", lambda: traffic.answered["b"] > 50, 10)
        assert traffic.answered["a"] == left

        # The DNS server dies: b stays, and the console says why.
        await dns_server.stop()
        await until(
            "the error shown",
            lambda: "no answer from" in gourmet.stderr.read_text(),
            10,
        )
        view = await api(gourmet)
        assert "no answer from" in view["provider"]["last_error"]
        assert servers_of(view) == [b_server.address]
        before = traffic.answered["b"]
        await until("b still answers", lambda: traffic.answered["b"] > before + 20, 10)

        dns_server.start()
        view = await api_until(
            gourmet, "answers again", lambda view: not view["provider"]["last_error"]
        )
    finally:
        await traffic.stop()
    assert traffic.failures == []
    assert view["provider"]["name"] == "dns"
    assert servers_of(view) == [b_server.address]
    # Twisted's DNS client opens a UDP port per query and logs it: a line
    # a second or more with a short TTL, which Gourmet leaves out.
    logged = gourmet.stderr.read_text()
    assert "UDP Port" not in logged
    assert "DNSDatagramProtocol" not in logged


def servers_of(view: Dict[str, Any]) -> List[str]:
    return [each["address"] for each in view["servers"]]


async def api_until(
    gourmet: Twistd,
    what: str,
    condition: Callable[[Dict[str, Any]], bool],
    seconds: float = 15,
) -> Dict[str, Any]:
    """
    The API's view of the upstream once ``condition`` holds for it, looked
    at every 50 ms for at most ``seconds``.
    """
    began = time.monotonic()
    while True:
        view = await api(gourmet)
        if condition(view):
            return view
        if time.monotonic() - began > seconds:
            raise AssertionError(f"{what}: not within {seconds} s: {view}")
        await sleep(0.05)
