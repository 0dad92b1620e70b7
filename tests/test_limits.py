"""
The body size limits of ``[server]`` over real sockets on loopback, where
what matters is what a client reads when Gourmet refuses a body it is
still sending.  Every wait is bounded.  The deadlines, the idle timeout
and the number of connections are tested in memory, on the reactor's
clock (``tests/test_memory_frontend.py``).
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import pytest_twisted

from gourmet.http.request import refusal
from tests.rawhttp import RawClient, sleep, status_of
from tests.upstreams import UpstreamServer

HEAD = b"POST / HTTP/1.1\r\nHost: example.com\r\n"


async def refused(client: RawClient, timeout: float = 5.0) -> bytes:
    reply = await client.read_until_closed(timeout)
    assert client.closed
    return reply


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
