"""
The upstream client and its pool against real servers on loopback: a
Twisted site, and a scripted server for the responses no sane server
sends.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, AsyncIterator, Callable, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.config.origin import Origin, parse_origin
from gourmet.http.response import InvalidResponse, ResponseHead, parse_head
from gourmet.upstream.connection import (
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    HeaderTimeout,
    IResponseReceiver,
    ReadTimeout,
    UpstreamConnection,
    UpstreamRequest,
)
from gourmet.upstream.pool import ConnectionPool
from tests.rawhttp import sleep
from tests.upstreams import Answer, ScriptedServer


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

    def response_upgraded(self, head: ResponseHead, data: bytes) -> None:
        self.head = head
        self.pieces.append(data)
        self.done.callback(self)


@pytest_twisted.async_yield_fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(reactor, max_idle_per_origin=2, idle_timeout=30)
    yield pool
    await pool.close()


@pytest.fixture
def scripted(
    scripted: Callable[..., ScriptedServer],
) -> Callable[..., Tuple[ScriptedServer, Origin]]:
    """
    The scripted upstreams of conftest, given with their origins.
    """

    def start(
        *answers: Answer, close_after: bool = False
    ) -> Tuple[ScriptedServer, Origin]:
        server = scripted(*answers, close_after=close_after)
        return server, parse_origin(server.address)

    return start


async def fetch(
    pool: ConnectionPool,
    origin: Origin,
    target: bytes = b"/",
    method: bytes = b"GET",
    body: Optional[bytes] = None,
    read_timeout: float = 10,
    header_timeout: Optional[float] = None,
    upgrade: bool = False,
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
            upgrade=upgrade,
        ),
        collector,
        read_timeout,
        header_timeout,
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
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b"", True),
    # A 204 that announces a body may well send it: never reused.
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"", False),
    (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", b"", False),
    # Bytes after a response that has no body: never reused.
    (b"HTTP/1.1 204 No Content\r\n\r\nhello", b"", False),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", b"", True),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", b"", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", b"ok", False),
    (
        # MAX_HEADERS header lines, which is fine.
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: h\r\n" * 199 + b"Content-Length: 0\r\n\r\n",
        b"",
        True,
    ),
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


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def head_then_get(
    pool: ConnectionPool, scripted: Any, answer: bytes
) -> Tuple[Collector, int, int]:
    """
    A HEAD request answered with ``answer``, then a GET answered ``ok``.

    :return: what the HEAD collected, the idle connections after it, and
        the connections the server accepted for both.
    """
    server, origin = scripted(answer, OK)
    collected = await fetch(pool, origin, method=b"HEAD")
    idle = pool.idle_count(origin)
    again = await fetch(pool, origin)
    assert again.body == b"ok"
    return collected, idle, server.connections


@pytest_twisted.ensureDeferred
async def test_head_response_has_no_body(pool: ConnectionPool, scripted: Any) -> None:
    collected, _, connections = await head_then_get(
        pool, scripted, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    )
    assert collected.head is not None and collected.head.content_length == 100
    assert collected.body == b""
    # Not waiting for 100 bytes: the next response on the connection reads.
    assert connections == 1


@pytest_twisted.ensureDeferred
async def test_bytes_after_a_head_response_end_the_connection(
    pool: ConnectionPool, scripted: Any
) -> None:
    collected, idle, connections = await head_then_get(
        pool, scripted, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert collected.body == b"" and idle == 0
    assert connections == 2


@pytest_twisted.ensureDeferred
async def test_late_bytes_after_a_304_drop_the_idle_connection(
    pool: ConnectionPool, scripted: Any
) -> None:
    def head_then_body(transport: Any) -> None:
        transport.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
        reactor.callLater(0.05, transport.write, b"hello")

    server, origin = scripted(head_then_body, OK)
    collected = await fetch(pool, origin)
    assert collected.head is not None and collected.head.status == 304
    assert collected.body == b"" and pool.idle_count(origin) == 1
    for _ in range(100):
        if pool.idle_count(origin) == 0:
            break
        await sleep(0.01)
    # Bytes nobody asked for: the connection is not trusted again.
    assert pool.idle_count(origin) == 0
    again = await fetch(pool, origin)
    assert again.body == b"ok" and server.connections == 2


INVALID = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header : x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: no name\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo-Colon\r\nContent-Length: 0\r\n\r\n",
    # A bare CR or NUL in a value: read differently by different parsers.
    b"HTTP/1.1 200 OK\r\nX-Split: a\rSet-Cookie: b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000,
    # More header lines than MAX_HEADERS, though short enough for MAX_HEAD.
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000 + b"Content-Length: 0\r\n\r\n",
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
async def test_a_101_to_an_upgrade_hands_the_connection_over(
    pool: ConnectionPool, scripted: Any
) -> None:
    _, origin = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x81\x02hi"
    )
    switched = await fetch(pool, origin, upgrade=True)
    assert switched.head is not None and switched.head.status == 101
    # The bytes after the head are the new protocol's, handed over as well.
    assert switched.body == b"\x81\x02hi"
    # The connection is the tunnel's now, never the pool's.
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


def clocked_connection() -> Tuple[Clock, UpstreamConnection, Collector, List[Failure]]:
    """
    An upstream connection on a Clock and an in-memory transport, a
    collector for its response, and the list its failure goes to.
    """
    clock = Clock()
    connection = UpstreamConnection(
        parse_origin("127.0.0.1:1"), clock, lambda c: None, lambda c: None
    )
    connection.makeConnection(StringTransport())
    collector = Collector()
    failures: List[Failure] = []
    collector.done.addErrback(failures.append)
    return clock, connection, collector, failures


def test_header_timeout_bounds_a_head_that_trickles_in() -> None:
    """
    A server that sends its head a byte at a time, never silent for
    ``read_timeout``, still gets ``header_timeout`` for all of it.
    """
    clock, connection, collector, failures = clocked_connection()
    request = UpstreamRequest(b"GET", b"/", [(b"Host", b"x")])
    connection.send(request, collector, 5, header_timeout=3)
    for byte in b"HTTP/1.1 200 OK\r\n":
        connection.dataReceived(bytes([byte]))
        clock.advance(0.5)
        if failures:
            break
    assert len(failures) == 1 and failures[0].check(HeaderTimeout)
    assert clock.seconds() == 3


def test_header_timeout_starts_once_the_body_is_sent() -> None:
    clock, connection, collector, failures = clocked_connection()
    body = b"x" * 200_000  # sent by a producer, not with the head
    request = UpstreamRequest(
        b"POST", b"/", [(b"Host", b"x")], io.BytesIO(body), len(body)
    )
    connection.send(request, collector, 5, header_timeout=3)
    transport: Any = connection.transport
    # The body going out slowly is not the server's delay.
    clock.advance(10)
    assert failures == []
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert transport.value().endswith(body)
    clock.advance(2.9)
    assert failures == []
    clock.advance(0.2)
    assert len(failures) == 1 and failures[0].check(HeaderTimeout)


def test_after_the_head_only_read_timeout_applies() -> None:
    clock, connection, collector, failures = clocked_connection()
    request = UpstreamRequest(b"GET", b"/", [(b"Host", b"x")])
    connection.send(request, collector, 5, header_timeout=1)
    clock.advance(0.5)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")
    for _ in range(4):
        clock.advance(4)
        connection.dataReceived(b"c")
    assert failures == [] and collector.received == 6
    # Silence for read_timeout: the server is too slow after all.
    clock.advance(5)
    assert len(failures) == 1 and failures[0].check(ReadTimeout)
    assert not failures[0].check(HeaderTimeout)


def test_read_timeout_still_applies_before_the_head() -> None:
    """
    ``read_timeout`` shorter than ``header_timeout`` keeps failing a
    silent server as fast as it did before there was a header timeout.
    """
    clock, connection, collector, failures = clocked_connection()
    request = UpstreamRequest(b"GET", b"/", [(b"Host", b"x")])
    connection.send(request, collector, 1, header_timeout=10)
    clock.advance(1)
    assert len(failures) == 1 and failures[0].check(ReadTimeout)
    assert not failures[0].check(HeaderTimeout)


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
async def test_pool_keeps_a_burst_s_surplus_idle_for_a_while(
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
    # The surplus is closed once idle for a second
    # (tests/test_memory_upstream.py times it).
    assert pool.idle_count(origin) == 3


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
    clock, connection, collector, failures = clocked_connection()
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
        b"HTTP/1.1 404 Not Here\r\nX-A: 1\r\nSet-Cookie: a\r\nset-cookie: b\r\n"
        b"X-Spaces: \t padded value \t\r\nX-Empty:\r\nX-Colon: a:b\r\n"
        b"X-Bytes: caf\xc3\xa9\ttab"
    )
    assert head.status == 404 and head.reason == b"Not Here"
    assert head.headers == [
        (b"X-A", b"1"),
        (b"Set-Cookie", b"a"),
        (b"set-cookie", b"b"),
        (b"X-Spaces", b"padded value"),
        (b"X-Empty", b""),
        (b"X-Colon", b"a:b"),
        (b"X-Bytes", b"caf\xc3\xa9\ttab"),
    ]


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            b"HTTP/1.1 200 OK\x00\r\nContent-Length: 0",
            "control character in status line",
        ),
        (b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 0", "control character"),
        (b"HTTP/1.1 200 OK\r\nX-A: a\x7f\r\nContent-Length: 0", "control character"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6", "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked", "unsupported"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10", "bad Content-Length"),
        (b"HTTP/1.1 20 OK", "bad status line"),
        (b"HTTP/1.1 20", "bad status line"),
        (b"HTTP/1.1 2000 OK", "bad status line"),
        (b"HTTP/1.1 600 OK", "bad status line"),
        (b"HTTP/1.2 200 OK", "bad status line"),
        (b"HTTP/1.1 200OK", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length", "bad header line"),
    ],
)
def test_parse_head_refuses_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidResponse, match=message):
        parse_head(raw)


def test_parse_head_checks_a_known_name_again_without_its_colon() -> None:
    """
    Names are checked once and remembered; a line holding only a
    remembered name is still not a header.
    """
    parse_head(b"HTTP/1.1 200 OK\r\nX-Remembered: 1")
    with pytest.raises(InvalidResponse, match="bad header line"):
        parse_head(b"HTTP/1.1 200 OK\r\nX-Remembered")


def test_parse_head_reads_framing_and_connection_in_one_pass() -> None:
    head = parse_head(
        b"HTTP/1.0 200\r\nContent-Length: 7, 7\r\n"
        b"Connection: Keep-Alive, X-Hop\r\nconnection: close"
    )
    assert head.version == b"HTTP/1.0" and head.status == 200 and head.reason == b""
    assert head.content_length == 7 and not head.chunked
    assert head.connection == {b"keep-alive", b"x-hop", b"close"}
    chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked")
    assert chunked.chunked and chunked.content_length is None


class PausingCollector(Collector):
    """
    A receiver whose client is slow: it pauses the connection on each piece
    of the body, as the proxy does when the client's buffers are full.
    """

    def __init__(self, connection: Any) -> None:
        super().__init__()
        self.connection = connection

    def response_data(self, data: bytes) -> None:
        super().response_data(data)
        self.connection.pause_reading()


@pytest_twisted.ensureDeferred
async def test_a_connection_paused_at_the_end_of_a_response_is_reused_reading(
    pool: ConnectionPool, make_upstreams: Any
) -> None:
    """
    Found by the soak test: paused during its last bytes, a connection went
    back to the pool paused, and the next response on it was never read.
    """
    (server,) = make_upstreams("one")
    origin = parse_origin(server.address)
    connection = await pool.acquire(origin)
    first = PausingCollector(connection)
    connection.send(UpstreamRequest(b"GET", b"/a", [(b"Host", b"x")]), first, 10)
    await first.done
    again = await pool.acquire(origin)
    assert again is connection
    second = Collector()
    again.send(UpstreamRequest(b"GET", b"/b", [(b"Host", b"x")]), second, 10)
    timeout = reactor.callLater(5, second.done.cancel)
    response = await second.done
    timeout.cancel()
    assert json.loads(response.body)["uri"] == "/b"
