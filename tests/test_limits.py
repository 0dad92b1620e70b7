"""
The client limits of ``[server]`` over real sockets on loopback: deadlines
for the head and the body, the body size, the number of connections and
the idle timeout.  Every wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import pytest_twisted

from gourmet.http.request import refusal
from tests.rawhttp import RawClient, sleep, status_of
from tests.upstreams import UpstreamServer

HEAD = b"POST / HTTP/1.1\r\nHost: example.com\r\n"
GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


async def refused(client: RawClient, timeout: float = 5.0) -> bytes:
    reply = await client.read_until_closed(timeout)
    assert client.closed
    return reply


async def trickle_to_408(
    client: RawClient,
    server: UpstreamServer,
    piece: bytes,
    pause: float,
    started: float,
    limit: float,
) -> None:
    """
    Send ``piece`` every ``pause`` seconds until the server closes the
    connection (or ``limit`` seconds after ``started``): it answered 408,
    0.4 to 2 s after ``started``, and nothing reached the upstream.
    """
    while not client.closed and time.monotonic() - started < limit:
        await client.send(piece)
        await sleep(pause)
        client.poll()
    assert client.received == refusal(408)
    assert 0.4 < time.monotonic() - started < 2.0
    assert server.seen == []


async def posting(
    raw_proxy: Any, settings: str, framing: bytes
) -> Tuple[UpstreamServer, RawClient]:
    """
    Gourmet with those ``[server]`` settings, and a client that has sent
    it the head of a POST with the ``framing`` header lines.
    """
    server, _, client = await raw_proxy(settings)
    await client.send(HEAD + framing + b"\r\n")
    return server, client


async def refusal_of(
    raw_proxy: Any, settings: str, data: bytes
) -> Tuple[UpstreamServer, bytes, float]:
    """
    Send ``data`` to Gourmet with those ``[server]`` settings, and read
    until it closes the connection.

    :return: the upstream, what Gourmet sent, and the seconds it took.
    """
    server, _, client = await raw_proxy(settings)
    started = time.monotonic()
    await client.send(data)
    reply = await refused(client)
    return server, reply, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_unfinished_head_gets_408_after_header_timeout(raw_proxy: Any) -> None:
    server, reply, elapsed = await refusal_of(
        raw_proxy, "header_timeout = 0.5", b"GET / HTTP/1.1\r\nHost: exa"
    )
    assert reply == refusal(408)
    assert 0.4 < elapsed < 2.0
    assert server.connections == 0


@pytest_twisted.ensureDeferred
async def test_trickled_head_gets_408_though_bytes_keep_coming(raw_proxy: Any) -> None:
    server, _, client = await raw_proxy("header_timeout = 0.5")
    started = time.monotonic()
    await client.send(b"GET / HTTP/1.1\r\n")
    await trickle_to_408(client, server, b"X: y\r\n", 0.05, started, limit=3)


@pytest_twisted.ensureDeferred
async def test_silent_connection_is_closed_without_an_answer(raw_proxy: Any) -> None:
    # A client that asked nothing gets no 408: only a closed connection.
    _, reply, elapsed = await refusal_of(raw_proxy, "header_timeout = 0.5", b"")
    assert reply == b""
    assert 0.4 < elapsed < 2.0


@pytest_twisted.ensureDeferred
async def test_connection_silent_after_a_blank_line_gets_408(raw_proxy: Any) -> None:
    _, reply, _ = await refusal_of(raw_proxy, "header_timeout = 0.5", b"\r\n")
    assert reply == refusal(408)


@pytest_twisted.ensureDeferred
async def test_slow_body_gets_408_when_below_body_min_rate(raw_proxy: Any) -> None:
    server, client = await posting(
        raw_proxy,
        "header_timeout = 0.5\nbody_min_rate = 1000",
        b"Content-Length: 100000\r\n",
    )
    started = time.monotonic()
    # 100 bytes every 0.1 s: 1000 bytes/s at best, below it on average.
    await trickle_to_408(client, server, b"x" * 20, 0.1, started, limit=5)


@pytest_twisted.ensureDeferred
async def test_body_faster_than_body_min_rate_passes(raw_proxy: Any) -> None:
    server, client = await posting(
        raw_proxy,
        "header_timeout = 0.3\nbody_min_rate = 1000",
        b"Content-Length: 4000\r\n",
    )
    # 4000 bytes over about 0.8 s: 5000 bytes/s, past the first checks.
    for _ in range(8):
        await client.send(b"y" * 500)
        await sleep(0.1)
    reply = await client.read_response()
    assert status_of(reply) == 200
    assert len(server.seen) == 1
    assert server.seen[0].body == b"y" * 4000


@pytest_twisted.ensureDeferred
async def test_content_length_over_max_body_size_gets_413_before_the_body(
    raw_proxy: Any,
) -> None:
    server, reply, elapsed = await refusal_of(
        raw_proxy, "max_body_size = 1000", HEAD + b"Content-Length: 1001\r\n\r\n"
    )
    assert reply == refusal(413)
    assert elapsed < 1.0
    assert server.connections == 0


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_over_the_limit_gets_413_and_no_100(
    raw_proxy: Any,
) -> None:
    _, reply, _ = await refusal_of(
        raw_proxy,
        "max_body_size = 1000",
        HEAD + b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    )
    assert reply == refusal(413)
    assert b"100 Continue" not in reply


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_within_the_limit_gets_100_then_200(
    raw_proxy: Any,
) -> None:
    server, client = await posting(
        raw_proxy,
        "max_body_size = 1000",
        b"Expect: 100-continue\r\nContent-Length: 5\r\n",
    )
    continued = await client.read_response()
    await client.send(b"hello")
    reply = await client.read_response()
    assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status_of(reply) == 200
    assert server.seen[0].body == b"hello"


@pytest_twisted.ensureDeferred
async def test_chunked_body_growing_past_max_body_size_gets_413(raw_proxy: Any) -> None:
    sent: List[int] = []
    server, client = await posting(
        raw_proxy, "max_body_size = 1000", b"Transfer-Encoding: chunked\r\n"
    )
    for _ in range(10):
        await client.send(b"12c\r\n" + b"z" * 300 + b"\r\n")
        sent.append(300)
        await sleep(0.02)
        client.poll()
        if client.closed or client.received:
            break
    reply = await refused(client)
    assert reply == refusal(413)
    # Refused on the chunk that went past 1000 bytes, the fourth.
    assert sum(sent) == 1200
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_body_far_over_the_limit_sent_at_once_still_reads_its_413(
    raw_proxy: Any,
) -> None:
    body = b"ffff\r\n" + b"z" * 0xFFFF + b"\r\n"
    # Gourmet drops what follows its answer instead of resetting the
    # connection, which could destroy the answer before it is read.
    server, reply, _ = await refusal_of(
        raw_proxy,
        "max_body_size = 1000",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body * 8,
    )
    assert reply == refusal(413)
    assert server.seen == []


async def settle(site: Any, count: int) -> int:
    """
    The site's open connections, once they are ``count`` (or after 5 s).
    """
    for _ in range(500):
        if site.open_connections == count:
            break
        await sleep(0.01)
    return int(site.open_connections)


@pytest_twisted.ensureDeferred
async def test_connections_over_max_connections_are_refused(
    proxy: Any, raw_socket: Any
) -> None:
    server, running = await proxy("max_connections = 3")
    site = running.service.site
    held = [raw_socket(running.port) for _ in range(3)]
    assert await settle(site, 3) == 3
    extra = raw_socket(running.port)
    await extra.send(GET)
    reply = await refused(extra)
    extra.close()
    # 503 if the answer was read before the close, at least a close.
    assert reply in (refusal(503), b"")
    assert site.open_connections == 3
    held.pop().close()
    await settle(site, 2)
    fresh = raw_socket(running.port)
    await fresh.send(GET)
    assert status_of(await fresh.read_response()) == 200
    assert len(server.seen) == 1


@pytest_twisted.ensureDeferred
async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(
    raw_proxy: Any,
) -> None:
    _, running, client = await raw_proxy("idle_timeout = 0.5")
    assert running.service.site.timeOut == 0.5
    await client.send(GET)
    assert status_of(await client.read_response()) == 200
    started = time.monotonic()
    # Closed without a word: the client asked for nothing.
    assert await refused(client) == b""
    assert 0.3 < time.monotonic() - started < 2.0


@pytest_twisted.ensureDeferred
async def test_header_timeout_starts_again_for_each_request(raw_proxy: Any) -> None:
    server, _, client = await raw_proxy("header_timeout = 0.5")
    # Idle past the header timeout between requests: not a slow head.
    for _ in range(2):
        await client.send(GET)
        assert status_of(await client.read_response()) == 200
        await sleep(0.7)
    client.poll()
    assert not client.closed
    await client.send(b"GET / HTTP/1.1\r\n")
    assert await refused(client) == refusal(408)
    assert len(server.seen) == 2
