"""
``provider = "etcd"`` against a real etcd (tests/etcd.py) on loopback:
keys put and deleted under the prefix come and go within a second; a
watch broken by a restart of etcd, or by its connection cut while keys
change, resumes without missing a change; a compacted revision makes a
full read; a bad value is left out and the others applied; endpoints are
tried in turn; and through a real ``twistd``, servers join and leave while
requests run, none of which fails.

The provider runs in this process, on the reactor, giving what it finds to
a sink that records it; a :class:`Gate` between it and etcd cuts its
connections and refuses new ones while the test changes keys, and counts
the full reads it makes.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.web.client import URI
from zope.interface import implementer

from gourmet.config.load import ConfigError, parse_config
from gourmet.discovery.etcd import FACTORY, EtcdWatch, range_end, server_of
from gourmet.discovery.provider import IServerSink, ProvidedServer
from gourmet.etcd.gateway import KEEPALIVE, Endpoints
from tests.etcd import Etcd, free_port
from tests.processes import Twistd
from tests.rawhttp import sleep
from tests.test_discovery_twistd import Traffic, api, gourmet_with, until

PREFIX = "/gourmet/upstreams/api/"


@implementer(IServerSink)
class Recorded:
    """
    What a provider told: each set, each failure.
    """

    def __init__(self) -> None:
        self.sets: List[List[ProvidedServer]] = []
        self.failures: List[str] = []

    def servers(self, found: Sequence[ProvidedServer]) -> None:
        self.sets.append(list(found))

    def failed(self, reason: str) -> None:
        self.failures.append(reason)

    def addresses(self) -> Optional[List[str]]:
        return [each.address for each in self.sets[-1]] if self.sets else None


class _GatedServer(ProxyServer):
    def connectionMade(self) -> None:
        gate = cast(Gate, self.factory)
        if not gate.open:
            cast(ITCPTransport, self.transport).abortConnection()
            return
        gate.connections.append(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        gate = cast(Gate, self.factory)
        if self not in gate.requests:
            # One request a connection: the provider keeps none open idle.
            gate.requests[self] = data.split(b" ", 2)[1].decode()
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        gate = cast(Gate, self.factory)
        if self in gate.connections:
            gate.connections.remove(self)
        super().connectionLost(reason)


class Gate(ProxyFactory):
    """
    A TCP forwarder to etcd that can be shut (its connections cut, new
    ones refused) and opened again, and that notes each request's path.
    """

    protocol = _GatedServer

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        self.open = True
        self.connections: List[_GatedServer] = []
        self.requests: Dict[_GatedServer, str] = {}
        self.listening = reactor.listenTCP(0, cast(Any, self), interface="127.0.0.1")

    @property
    def url(self) -> str:
        address = cast(IPv4Address, self.listening.getHost())
        return f"http://127.0.0.1:{address.port}"

    def paths(self) -> List[str]:
        return list(self.requests.values())

    async def shut(self) -> None:
        """
        Shut, once the watch has gone through: the servers are found by the
        read before, and a slow machine may not have sent the watch yet.
        """
        await until("a watch", lambda: "/v3/watch" in self.paths(), 5)
        self.cut()

    def cut(self) -> None:
        self.open = False
        for each in list(self.connections):
            cast(ITCPTransport, each.transport).abortConnection()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    server = Etcd(tmp_path)
    yield server
    pytest_twisted.blockon(Deferred.fromCoroutine(server.close()))


@pytest.fixture
def gate(etcd: Etcd) -> Iterator[Gate]:
    gate = Gate(etcd.client_port)
    yield gate
    gate.cut()
    pytest_twisted.blockon(gate.listening.stopListening())


@pytest.fixture
def watching() -> Iterator[Callable[..., Recorded]]:
    """
    ``watching(endpoint, ..., option=value)``: a provider of the keys under
    :data:`PREFIX`, started on the reactor, and what it told; stopped after.
    """
    started: List[EtcdWatch] = []

    def watch(*endpoints: str, **more: Any) -> Recorded:
        raw = {
            "endpoints": list(endpoints),
            "prefix": PREFIX,
            "dial_timeout": 2,
            **more,
        }
        options = FACTORY.options(raw, Path("."))
        provider = FACTORY.provider(options, "api", reactor)
        started.append(provider)
        recorded = Recorded()
        provider.start(recorded)
        return recorded

    yield watch
    for provider in started:
        pytest_twisted.blockon(_stopped(provider))


def _stopped(provider: EtcdWatch) -> Deferred[Any]:
    # Bounded: a provider that never closes its connection fails the test.
    return maybeDeferred(provider.stop).addTimeout(10, reactor)


@pytest.fixture
def logged() -> Iterator[Callable[[], str]]:
    """
    The log's messages while the test runs, as one text.
    """
    with capturedLogs() as events:
        yield lambda: "\n".join(formatEvent(event) for event in events)


async def found(recorded: Recorded, addresses: List[str], seconds: float = 5) -> float:
    return await until(
        f"servers {addresses} (have {recorded.addresses()})",
        lambda: recorded.addresses() == addresses,
        seconds,
    )


def server(address: str, **more: Any) -> Any:
    return {"address": address, **more}


async def watching_a(
    etcd: Etcd, watching: Callable[..., Recorded], endpoint: str
) -> Recorded:
    """
    A provider on ``endpoint``, once it found the server of key ``a``.
    """
    await etcd.put(PREFIX + "a", server("10.0.0.1:80"))
    recorded = watching(endpoint)
    await found(recorded, ["10.0.0.1:80"])
    return recorded


# -- Keys and servers ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_keys_put_and_deleted_under_the_prefix_come_and_go_within_a_second(
    etcd: Etcd, watching: Callable[..., Recorded]
) -> None:
    await etcd.put(PREFIX + "a", server("10.0.0.1:80"))
    await etcd.put("/gourmet/upstreams/apix", server("10.0.0.8:80"))
    await etcd.put("/gourmet/upstreams/web/c", server("10.0.0.9:80"))
    recorded = watching(etcd.url)
    await found(recorded, ["10.0.0.1:80"])
    assert recorded.sets[-1][0].metadata == {"etcd_key": PREFIX + "a"}

    await etcd.put(PREFIX + "b", server("10.0.0.2:80", weight=3))
    assert await found(recorded, ["10.0.0.1:80", "10.0.0.2:80"]) < 1.0
    assert recorded.sets[-1][1].weight == 3
    await etcd.put("/gourmet/upstreams/web/d", server("10.0.0.10:80"))
    await etcd.put(PREFIX + "a", server("10.0.0.1:80", weight=0))
    await until("weight 0", lambda: recorded.sets[-1][0].weight == 0, 1.0)

    await etcd.delete(PREFIX + "a")
    assert await found(recorded, ["10.0.0.2:80"]) < 1.0
    await etcd.delete(PREFIX + "b")
    # The service has no server now: an empty set is a set.
    assert await found(recorded, []) < 1.0
    assert recorded.failures == []


@pytest_twisted.ensureDeferred
async def test_a_bad_value_is_left_out_and_the_other_keys_applied(
    etcd: Etcd, watching: Callable[..., Recorded], logged: Callable[[], str]
) -> None:
    await etcd.put(PREFIX + "good", server("10.0.0.1:80"))
    await etcd.put(PREFIX + "not-json", "10.0.0.2:80")
    recorded = watching(etcd.url)
    await found(recorded, ["10.0.0.1:80"])
    await etcd.put(PREFIX + "no-address", {"weight": 2})
    await etcd.put(PREFIX + "ftp", server("ftp://10.0.0.3"))
    await etcd.put(PREFIX + "heavy", server("10.0.0.4:80", weight=5000))
    await etcd.put(PREFIX + "twice", server("10.0.0.1:80"))
    await etcd.put(PREFIX + "later", server("10.0.0.5:80"))
    await found(recorded, ["10.0.0.1:80", "10.0.0.5:80"])
    text = logged()
    for key, why in [
        ("not-json", "not JSON"),
        ("no-address", 'no "address"'),
        ("ftp", "expected scheme http or https"),
        ("heavy", '"weight": expected 0 to 1000, got 5000'),
        ("twice", f"10.0.0.1:80 is already {PREFIX}good's"),
    ]:
        assert f"etcd key {PREFIX}{key} is left out: {why}" in text, key
    # Mended, a key is a server like the others.
    await etcd.put(PREFIX + "not-json", server("10.0.0.2:80"))
    await found(recorded, ["10.0.0.1:80", "10.0.0.5:80", "10.0.0.2:80"])
    assert recorded.failures == []


# -- Breaks, restarts and compaction ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_watch_resumes_after_etcd_restarts_without_a_missed_change(
    etcd: Etcd, gate: Gate, watching: Callable[..., Recorded], logged: Callable[[], str]
) -> None:
    recorded = await watching_a(etcd, watching, gate.url)
    await etcd.put(PREFIX + "b", server("10.0.0.2:80"))
    await found(recorded, ["10.0.0.1:80", "10.0.0.2:80"])

    await etcd.restart()
    # Right after: the provider may not be watching yet.
    await etcd.put(PREFIX + "c", server("10.0.0.3:80"))
    await etcd.delete(PREFIX + "a")
    await found(recorded, ["10.0.0.2:80", "10.0.0.3:80"], 10)
    assert "the watch ended" in logged()
    # Resumed, not read again: the first read is the only one.
    assert gate.paths().count("/v3/kv/range") == 1
    assert gate.paths().count("/v3/watch") >= 2


@pytest_twisted.ensureDeferred
async def test_changes_while_the_connection_is_cut_are_all_seen_when_it_is_back(
    etcd: Etcd, gate: Gate, watching: Callable[..., Recorded]
) -> None:
    await etcd.put(PREFIX + "a", server("10.0.0.1:80"))
    await etcd.put(PREFIX + "b", server("10.0.0.2:80"))
    recorded = watching(gate.url)
    await found(recorded, ["10.0.0.1:80", "10.0.0.2:80"])
    sets = len(recorded.sets)

    await gate.shut()
    await etcd.delete(PREFIX + "a")
    await etcd.put(PREFIX + "c", server("10.0.0.3:80"))
    await etcd.put(PREFIX + "b", server("10.0.0.2:80", weight=4))
    # Unreachable: said, and the servers stay as they were.
    await until("a failure said", lambda: recorded.failures != [], 5)
    assert recorded.failures[0].startswith(f"etcd unreachable: {gate.url}: ")
    assert len(recorded.sets) == sets

    gate.open = True
    await found(recorded, ["10.0.0.2:80", "10.0.0.3:80"], 10)
    assert recorded.sets[-1][0].weight == 4
    assert gate.paths().count("/v3/kv/range") == 1


@pytest_twisted.ensureDeferred
async def test_a_compacted_revision_makes_a_full_read(
    etcd: Etcd, gate: Gate, watching: Callable[..., Recorded], logged: Callable[[], str]
) -> None:
    recorded = await watching_a(etcd, watching, gate.url)

    await gate.shut()
    await etcd.put(PREFIX + "b", server("10.0.0.2:80"))
    await etcd.delete(PREFIX + "a")
    last = await etcd.put(PREFIX + "c", server("10.0.0.3:80"))
    # The deletion of a is now gone from etcd's history: only a new read
    # can tell that a left.
    await etcd.compact(last)
    gate.open = True
    await found(recorded, ["10.0.0.2:80", "10.0.0.3:80"], 10)
    assert gate.paths().count("/v3/kv/range") == 2
    assert "was compacted" in logged()
    # And the watch after it goes on.
    await etcd.put(PREFIX + "d", server("10.0.0.4:80"))
    await found(recorded, ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"])


@pytest_twisted.ensureDeferred
async def test_endpoints_are_tried_in_turn(
    etcd: Etcd, watching: Callable[..., Recorded]
) -> None:
    await etcd.put(PREFIX + "a", server("10.0.0.1:80"))
    nobody = f"http://127.0.0.1:{free_port()}"
    recorded = watching(nobody, etcd.url)
    await found(recorded, ["10.0.0.1:80"])
    # One endpoint answering is not a failure.
    assert recorded.failures == []

    etcd.stop()
    await until("a failure said", lambda: recorded.failures != [], 10)
    # Said once a round of them failed, naming each.
    assert nobody in recorded.failures[0] and etcd.url in recorded.failures[0]
    assert recorded.addresses() == ["10.0.0.1:80"]


@pytest_twisted.ensureDeferred
async def test_with_authentication_on_a_token_is_taken_at_each_connection(
    etcd: Etcd, gate: Gate, watching: Callable[..., Recorded]
) -> None:
    await etcd.put(PREFIX + "a", server("10.0.0.1:80"))
    await etcd.enable_authentication("secret")
    recorded = watching(gate.url, username="root", password="secret")
    wrong = watching(etcd.url, username="root", password="guessed")
    anonymous = watching(etcd.url)
    await found(recorded, ["10.0.0.1:80"])
    await until("failures said", lambda: bool(wrong.failures and anonymous.failures), 5)
    assert "authentication failed" in wrong.failures[0]
    assert "user name is empty" in anonymous.failures[0]

    await gate.shut()
    await etcd.put(PREFIX + "b", server("10.0.0.2:80"))
    gate.open = True
    await found(recorded, ["10.0.0.1:80", "10.0.0.2:80"], 10)
    assert gate.paths()[:3] == ["/v3/auth/authenticate", "/v3/kv/range", "/v3/watch"]
    assert gate.paths().count("/v3/kv/range") == 1
    assert gate.paths()[-2:] == ["/v3/auth/authenticate", "/v3/watch"]


@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_never_answers_is_given_up_and_tried_again(
    watching: Callable[..., Recorded],
) -> None:
    # Accepts connections, and says nothing.
    silent = reactor.listenTCP(
        0, cast(Any, Factory.forProtocol(Protocol)), interface="127.0.0.1"
    )
    try:
        address = cast(IPv4Address, silent.getHost())
        recorded = watching(f"http://127.0.0.1:{address.port}", dial_timeout=0.2)
        await until("two failures", lambda: len(recorded.failures) >= 2, 5)
        assert "no answer in time" in recorded.failures[0]
    finally:
        await maybeDeferred(silent.stopListening)


@pytest_twisted.ensureDeferred
async def test_a_stopped_provider_tells_nothing_more(etcd: Etcd) -> None:
    options = FACTORY.options({"endpoints": [etcd.url], "prefix": PREFIX}, Path("."))
    provider = FACTORY.provider(options, "api", reactor)
    recorded = Recorded()
    provider.start(recorded)
    await found(recorded, [])
    await _stopped(provider)
    await etcd.put(PREFIX + "a", server("10.0.0.1:80"))
    await sleep(0.3)
    assert recorded.addresses() == []
    assert all(
        getattr(cast(Any, call).func, "__self__", None) is not provider
        for call in reactor.getDelayedCalls()
    )


@pytest_twisted.ensureDeferred
async def test_connections_to_etcd_have_tcp_keepalive(etcd: Etcd) -> None:
    # A watch on an etcd whose host vanished (no FIN, no RST) cannot be
    # staged on loopback: the setting that ends it is checked instead.
    endpoint = Endpoints(reactor, 2).endpointForURI(URI.fromBytes(etcd.url.encode()))
    closed: Deferred[None] = Deferred()

    class Closing(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            closed.callback(None)

    protocol = await endpoint.connect(Factory.forProtocol(Closing))
    transport = cast(Any, protocol).transport
    handle = transport.getHandle()
    try:
        assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle, interval, count = KEEPALIVE
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == count
    finally:
        transport.loseConnection()
        await closed


# -- Values and options, without etcd ------------------------------------------


def test_a_prefix_range_ends_after_its_last_key() -> None:
    assert range_end(b"/a/") == b"/a0"
    assert range_end(b"a\xff") == b"b"
    assert range_end(b"\xff\xff") == b"\0"


def test_a_value_names_a_server() -> None:
    assert server_of("k", b'{"address": "https://[::1]:8443", "weight": 2}') == (
        ProvidedServer("https://[::1]:8443", weight=2, metadata={"etcd_key": "k"})
    )
    with pytest.raises(ValueError, match="expected a JSON object"):
        server_of("k", b'["10.0.0.1:80"]')
    with pytest.raises(ValueError, match='"weight"'):
        server_of("k", b'{"address": "10.0.0.1:80", "weight": true}')


UPSTREAM = """\
[upstreams.api]
provider = "etcd"
{options}
[server]
[[server.locations]]
location = "/"
upstream = "api"
"""


def test_options() -> None:
    text = UPSTREAM.format(
        options='endpoints = ["http://127.0.0.1:2379/", "https://etcd:2379"]\n'
        f'prefix = "{PREFIX}"\ndial_timeout = 1.5'
    )
    config = parse_config(text, "gourmet.toml", ".").upstream("api")
    assert config.provider_options.endpoints == (
        "http://127.0.0.1:2379",
        "https://etcd:2379",
    )
    assert config.provider_options.prefix == PREFIX
    assert config.provider_options.dial_timeout == 1.5


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        (f'prefix = "{PREFIX}"', "endpoints", "expected a list of etcd URLs"),
        (
            f'endpoints = "http://127.0.0.1:2379"\nprefix = "{PREFIX}"',
            "endpoints",
            "expected a list",
        ),
        (
            f'endpoints = ["127.0.0.1:2379"]\nprefix = "{PREFIX}"',
            "endpoints",
            "expected http://host:port or https://host:port",
        ),
        (
            f'endpoints = ["http://127.0.0.1:99999"]\nprefix = "{PREFIX}"',
            "endpoints",
            "out of range",
        ),
        (
            f'endpoints = ["http://127.0.0.1:2379/v3"]\nprefix = "{PREFIX}"',
            "endpoints",
            "expected no path",
        ),
        ('endpoints = ["http://127.0.0.1:2379"]', "prefix", "expected the keys"),
        ('endpoints = ["http://127.0.0.1:2379"]\nprefix = ""', "prefix", "expected"),
        (
            f'endpoints = ["http://e:2379"]\nprefix = "{PREFIX}"\ndial_timeout = 0',
            "dial_timeout",
            "expected above 0",
        ),
        (
            f'endpoints = ["http://e:2379"]\nprefix = "{PREFIX}"\nusername = "x"',
            "password",
            "username and password go together",
        ),
        (
            f'endpoints = ["http://e:2379"]\nprefix = "{PREFIX}"\npassword = 7',
            "password",
            "expected a string",
        ),
        (
            f'endpoints = ["http://e:2379"]\nprefix = "{PREFIX}"\nuser = "x"',
            "user",
            "",
        ),
    ],
)
def test_option_errors_name_the_key(options: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(UPSTREAM.format(options=options), "gourmet.toml", ".")
    assert raised.value.key == f"upstreams.api.{key}"
    assert message in raised.value.message


# -- Through twistd ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_servers_put_and_deleted_in_etcd_join_and_leave_with_no_request_lost(
    tmp_path: Path, etcd: Etcd, processes: List[Twistd], make_upstreams: Any
) -> None:
    a, b, c = make_upstreams("a", "b", "c")
    await etcd.put(PREFIX + "a", server(a.address))
    upstream = f'provider = "etcd"\nendpoints = ["{etcd.url}"]\nprefix = "{PREFIX}"'
    gourmet = await gourmet_with(tmp_path, processes, upstream)
    traffic = Traffic(gourmet)
    try:
        await until("a answers", lambda: traffic.answered["a"] > 0, 10)
        await etcd.put(PREFIX + "b", server(b.address))
        assert await until("b answers", lambda: traffic.answered["b"] > 0, 5) < 1.0

        await etcd.delete(PREFIX + "a")
        await sleep(0.5)
        left = traffic.answered["a"]
        await until("more requests to b", lambda: traffic.answered["b"] > 50, 10)
        assert traffic.answered["a"] == left

        # etcd restarted: the servers stay meanwhile, and a key put right
        # after it is back is seen.
        await etcd.restart()
        await etcd.put(PREFIX + "c", server(c.address))
        await until("c answers", lambda: traffic.answered["c"] > 0, 10)
        view = await api(gourmet)
    finally:
        await traffic.stop()
    assert traffic.failures == []
    assert view["provider"]["name"] == "etcd"
    assert sorted(each["address"] for each in view["servers"]) == sorted(
        [b.address, c.address]
    )
    assert {each["found"]["etcd_key"] for each in view["servers"]} == {
        PREFIX + "b",
        PREFIX + "c",
    }
