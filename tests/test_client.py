"""
The upstream client and its pool against real servers on loopback: a
Twisted site, and a scripted server for the responses no sane server
sends.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, AsyncIterator, List, Optional

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.client import (
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    InvalidResponse,
    IResponseReceiver,
    ReadTimeout,
    ResponseHead,
    UpstreamRequest,
    parse_head,
)
from gourmet.origin import Origin, parse_origin
from gourmet.pool import ConnectionPool


@implementer(IResponseReceiver)
class Collector:
    """
    Collects one response; ``done`` fires with it (or its failure).
    """

    def __init__(self) -> None:
        self.head: Optional[ResponseHead] = None
        self.pieces: List[bytes] = []
        self.received = 0
        self.done: Deferred[Collector] = Deferred()

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def response_head(self, head: ResponseHead) -> None:
        self.head = head

    def response_data(self, data: bytes) -> None:
        self.pieces.append(data)
        self.received += len(data)

    def response_end(self) -> None:
        self.done.callback(self)

    def response_failed(self, reason: Failure) -> None:
        self.done.errback(reason)


class Scripted(Protocol):
    """
    Answers each request head it reads with the next scripted response.
    """

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.buffer = b""

    def connectionMade(self) -> None:
        self.server.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.server.requests.append(head)
            answer = self.server.responses.pop(0)
            if answer is not None:
                self.transport.write(answer)  # type: ignore[union-attr]
            if self.server.close_after:
                self.transport.loseConnection()  # type: ignore[union-attr]


class ScriptedServer:
    def __init__(self, *responses: Optional[bytes], close_after: bool = False):
        self.responses = list(responses)
        self.close_after = close_after
        self.requests: List[bytes] = []
        self.connections = 0
        self.port: Optional[IListeningPort] = None

    def start(self) -> Origin:
        factory: Any = ServerFactory.forProtocol(lambda: Scripted(self))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        address: Any = self.port.getHost()
        return parse_origin(f"127.0.0.1:{address.port}")


@pytest_twisted.async_yield_fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(reactor, max_idle_per_origin=2, idle_timeout=30)
    yield pool
    await pool.close()


@pytest_twisted.async_yield_fixture
async def scripted() -> AsyncIterator[Any]:
    servers: List[ScriptedServer] = []

    def start(*responses: Optional[bytes], close_after: bool = False) -> Any:
        server = ScriptedServer(*responses, close_after=close_after)
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        assert server.port is not None
        await maybeDeferred(server.port.stopListening)


async def fetch(
    pool: ConnectionPool,
    origin: Origin,
    target: bytes = b"/",
    method: bytes = b"GET",
    body: Optional[bytes] = None,
    read_timeout: float = 10,
) -> Collector:
    connection = await pool.acquire(origin)
    collector = Collector()
    connection.send(
        UpstreamRequest(
            method=method,
            target=target,
            headers=[(b"Host", origin.host_header)],
            body=io.BytesIO(body) if body is not None else None,
            body_length=len(body or b""),
        ),
        collector,
        read_timeout,
    )
    return await collector.done


@pytest_twisted.ensureDeferred
async def test_keep_alive_reuses_one_connection(
    pool: ConnectionPool, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    origin = parse_origin(server.address)
    for path in (b"/a", b"/b", b"/c"):
        response = await fetch(pool, origin, path)
        assert response.head is not None and response.head.status == 200
        assert json.loads(response.body)["uri"] == path.decode()
    assert server.connections == 1
    assert pool.idle_count(origin) == 1


@pytest_twisted.ensureDeferred
async def test_large_body_is_streamed_intact(
    pool: ConnectionPool, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    body = bytes(range(256)) * 12_000  # 3 MB, sent by a producer
    response = await fetch(
        pool, parse_origin(server.address), b"/up", b"POST", body=body
    )
    answer = json.loads(response.body)
    assert answer["body_length"] == len(body)
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    # The connection is good for another request afterwards.
    again = await fetch(pool, parse_origin(server.address), b"/again")
    assert json.loads(again.body)["uri"] == "/again"
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_repeated_headers_stay_repeated(
    pool: ConnectionPool, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    response = await fetch(pool, parse_origin(server.address), b"/cookies")
    assert response.head is not None
    assert (response.head.status, response.head.reason) == (201, b"Made It")
    cookies = [v for n, v in response.head.headers if n.lower() == b"set-cookie"]
    assert cookies == [b"a=1", b"b=2"]


FRAMINGS = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"hello world",
        True,
    ),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"ok",
        True,
    ),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"ok",
        False,
    ),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
    (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        b"ok",
        True,
    ),
]


@pytest.mark.parametrize(("response", "body", "kept"), FRAMINGS)
@pytest_twisted.ensureDeferred
async def test_response_framing(
    pool: ConnectionPool, scripted: Any, response: bytes, body: bytes, kept: bool
) -> None:
    _, origin = scripted(response)
    collected = await fetch(pool, origin)
    assert collected.body == body
    assert pool.idle_count(origin) == (1 if kept else 0)


@pytest_twisted.ensureDeferred
async def test_body_until_close(pool: ConnectionPool, scripted: Any) -> None:
    _, origin = scripted(b"HTTP/1.1 200 OK\r\n\r\nall of it", close_after=True)
    collected = await fetch(pool, origin)
    assert collected.body == b"all of it"
    assert pool.idle_count(origin) == 0


@pytest_twisted.ensureDeferred
async def test_head_response_has_no_body(pool: ConnectionPool, scripted: Any) -> None:
    server, origin = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    collected = await fetch(pool, origin, method=b"HEAD")
    assert collected.head is not None and collected.head.content_length == 100
    assert collected.body == b""
    # Not waiting for 100 bytes: the next response on the connection reads.
    again = await fetch(pool, origin)
    assert again.body == b"ok" and server.connections == 1


INVALID = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header : x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000,
]


@pytest.mark.parametrize("response", INVALID)
@pytest_twisted.ensureDeferred
async def test_invalid_responses_fail(
    pool: ConnectionPool, scripted: Any, response: bytes
) -> None:
    _, origin = scripted(response)
    with pytest.raises(InvalidResponse):
        await fetch(pool, origin)
    assert pool.idle_count(origin) == 0


@pytest_twisted.ensureDeferred
async def test_closed_before_any_byte_is_before_response(
    pool: ConnectionPool, scripted: Any
) -> None:
    _, origin = scripted(None, close_after=True)
    with pytest.raises(ConnectionClosed) as raised:
        await fetch(pool, origin)
    assert raised.value.before_response


@pytest_twisted.ensureDeferred
async def test_closed_mid_body_is_not_before_response(
    pool: ConnectionPool, scripted: Any
) -> None:
    _, origin = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close_after=True
    )
    with pytest.raises(ConnectionClosed) as raised:
        await fetch(pool, origin)
    assert not raised.value.before_response


@pytest_twisted.ensureDeferred
async def test_read_timeout(pool: ConnectionPool, scripted: Any) -> None:
    _, origin = scripted(None)
    with pytest.raises(ReadTimeout):
        await fetch(pool, origin, read_timeout=0.2)
    assert pool.idle_count(origin) == 0


@pytest_twisted.ensureDeferred
async def test_connect_refused(pool: ConnectionPool, scripted: Any) -> None:
    server, origin = scripted()
    await maybeDeferred(server.port.stopListening)
    with pytest.raises(ConnectFailed) as raised:
        await pool.acquire(origin)
    assert not isinstance(raised.value, ConnectTimeout)


def test_connect_timeout() -> None:
    """
    A connection that never completes (which loopback cannot produce on
    demand, so the reactor is Twisted's in-memory one) fails after
    ``connect_timeout``.
    """
    memory = MemoryReactorClock()
    pool = ConnectionPool(memory, connect_timeout=2)
    failures: List[Failure] = []
    pool.acquire(parse_origin("127.0.0.1:9")).addErrback(failures.append)
    assert len(memory.tcpClients) == 1
    memory.advance(1.9)
    assert failures == []
    memory.advance(0.2)
    assert len(failures) == 1 and failures[0].check(ConnectTimeout)
    assert memory.connectors[0].stoppedConnecting


def test_cancelled_connect_stops_connecting() -> None:
    memory = MemoryReactorClock()
    pool = ConnectionPool(memory, connect_timeout=2)
    connecting = pool.acquire(parse_origin("127.0.0.1:9"))
    connecting.addErrback(lambda _: None)
    connecting.cancel()
    assert memory.connectors[0].stoppedConnecting
    assert memory.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_pool_keeps_at_most_max_idle(
    pool: ConnectionPool, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    origin = parse_origin(server.address)
    connections = [await pool.acquire(origin) for _ in range(3)]
    collectors = []
    for connection in connections:
        collector = Collector()
        collectors.append(collector)
        connection.send(
            UpstreamRequest(b"GET", b"/", [(b"Host", origin.host_header)]),
            collector,
            10,
        )
    for collector in collectors:
        await collector.done
    assert server.connections == 3
    assert pool.idle_count(origin) == 2


@pytest_twisted.ensureDeferred
async def test_server_closing_an_idle_connection_removes_it(
    pool: ConnectionPool, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    origin = parse_origin(server.address)
    await fetch(pool, origin)
    assert pool.idle_count(origin) == 1
    await server.stop()
    for _ in range(50):
        if pool.idle_count(origin) == 0:
            break
        await sleep(0.02)
    assert pool.idle_count(origin) == 0


@pytest_twisted.ensureDeferred
async def test_idle_connections_expire(make_upstreams: Any) -> None:
    (server,) = make_upstreams("one")
    origin = parse_origin(server.address)
    pool = ConnectionPool(reactor, idle_timeout=0.2)
    try:
        await fetch(pool, origin)
        assert pool.idle_count(origin) == 1
        await sleep(0.5)
        assert pool.idle_count(origin) == 0
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_paused_connection_stops_reading(
    pool: ConnectionPool, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("big")
    origin = parse_origin(server.address)
    connection = await pool.acquire(origin)
    collector = Collector()
    connection.send(
        UpstreamRequest(b"GET", b"/big/50000000", [(b"Host", b"x")]), collector, 10
    )
    while not collector.received:
        await sleep(0.01)
    connection.pause_reading()
    await sleep(0.3)
    held = collector.received
    await sleep(0.3)
    # Socket buffers fill, then nothing more arrives.
    assert collector.received == held < 50_000_000
    connection.resume_reading()
    response = await collector.done
    assert response.received == 50_000_000


def test_read_timeout_waits_while_paused() -> None:
    """
    A client holding the response back is not the server being slow.
    Driven by a Clock: the point is timer arithmetic, not sockets.
    """
    from twisted.internet.testing import StringTransport

    from gourmet.client import UpstreamConnection

    clock = Clock()
    connection = UpstreamConnection(
        parse_origin("127.0.0.1:1"), clock, lambda c: None, lambda c: None
    )
    transport = StringTransport()
    connection.makeConnection(transport)
    collector = Collector()
    failures: List[Failure] = []
    collector.done.addErrback(failures.append)
    connection.send(UpstreamRequest(b"GET", b"/", [(b"Host", b"x")]), collector, 5)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")
    connection.pause_reading()
    clock.advance(20)
    assert failures == []
    connection.resume_reading()
    clock.advance(4)
    assert failures == []
    clock.advance(2)
    assert len(failures) == 1 and failures[0].check(ReadTimeout)


def test_parse_head_keeps_order_and_case() -> None:
    head = parse_head(
        b"HTTP/1.1 404 Not Here\r\nX-A: 1\r\nSet-Cookie: a\r\nset-cookie: b"
    )
    assert head.status == 404 and head.reason == b"Not Here"
    assert head.headers == [
        (b"X-A", b"1"),
        (b"Set-Cookie", b"a"),
        (b"set-cookie", b"b"),
    ]


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
