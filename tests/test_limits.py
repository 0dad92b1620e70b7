"""
The client limits of ``[server]`` over real sockets on loopback: deadlines
for the head and the body, the body size, the number of connections and
the idle timeout.  Every wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any, List

import pytest_twisted

from gourmet.channel import refusal
from tests.conftest import LISTEN
from tests.rawhttp import RawClient, sleep, status_of
from tests.upstreams import UpstreamServer

HEAD = b"POST / HTTP/1.1\r\nHost: example.com\r\n"


def config(server: UpstreamServer, extra: str) -> str:
    return f"""
[upstreams.backend]
    [[upstreams.backend.servers]]
        path = "{server.address}"
[server]
    {LISTEN}
    {extra}
    [[server.locations]]
        location = "^/"
        upstream = "backend"
"""


async def refused(client: RawClient, timeout: float = 5.0) -> bytes:
    reply = await client.read_until_closed(timeout)
    assert client.closed
    return reply


@pytest_twisted.ensureDeferred
async def test_unfinished_head_gets_408_after_header_timeout(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "header_timeout = 0.5"))
    client = RawClient(running.port)
    try:
        started = time.monotonic()
        await client.send(b"GET / HTTP/1.1\r\nHost: exa")
        assert await refused(client) == refusal(408)
        assert 0.4 < time.monotonic() - started < 2.0
    finally:
        client.close()
    assert server.connections == 0


@pytest_twisted.ensureDeferred
async def test_trickled_head_gets_408_though_bytes_keep_coming(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "header_timeout = 0.5"))
    client = RawClient(running.port)
    try:
        started = time.monotonic()
        await client.send(b"GET / HTTP/1.1\r\n")
        while not client.closed and time.monotonic() - started < 3:
            await client.send(b"X: y\r\n")
            await sleep(0.05)
            client.poll()
        assert client.received == refusal(408)
        assert 0.4 < time.monotonic() - started < 2.0
    finally:
        client.close()
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_silent_connection_gets_408_after_header_timeout(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "header_timeout = 0.5"))
    client = RawClient(running.port)
    try:
        assert await refused(client) == refusal(408)
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_slow_body_gets_408_when_below_body_min_rate(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(
        config(server, "header_timeout = 0.5\nbody_min_rate = 1000")
    )
    client = RawClient(running.port)
    try:
        await client.send(HEAD + b"Content-Length: 100000\r\n\r\n")
        started = time.monotonic()
        # 100 bytes every 0.1 s: 1000 bytes/s at best, below it on average.
        while not client.closed and time.monotonic() - started < 5:
            await client.send(b"x" * 20)
            await sleep(0.1)
            client.poll()
        assert client.received == refusal(408)
        assert 0.4 < time.monotonic() - started < 2.0
    finally:
        client.close()
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_body_faster_than_body_min_rate_passes(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(
        config(server, "header_timeout = 0.3\nbody_min_rate = 1000")
    )
    client = RawClient(running.port)
    try:
        await client.send(HEAD + b"Content-Length: 4000\r\n\r\n")
        # 4000 bytes over about 0.8 s: 5000 bytes/s, past the first checks.
        for _ in range(8):
            await client.send(b"y" * 500)
            await sleep(0.1)
        reply = await client.read_response()
    finally:
        client.close()
    assert status_of(reply) == 200
    assert len(server.seen) == 1
    assert server.seen[0].body == b"y" * 4000


@pytest_twisted.ensureDeferred
async def test_content_length_over_max_body_size_gets_413_before_the_body(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "max_body_size = 1000"))
    client = RawClient(running.port)
    try:
        started = time.monotonic()
        await client.send(HEAD + b"Content-Length: 1001\r\n\r\n")
        assert await refused(client) == refusal(413)
        assert time.monotonic() - started < 1.0
    finally:
        client.close()
    assert server.connections == 0


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_over_the_limit_gets_413_and_no_100(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "max_body_size = 1000"))
    client = RawClient(running.port)
    try:
        await client.send(
            HEAD + b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
        )
        reply = await refused(client)
    finally:
        client.close()
    assert reply == refusal(413)
    assert b"100 Continue" not in reply


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_within_the_limit_gets_100_then_200(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "max_body_size = 1000"))
    client = RawClient(running.port)
    try:
        await client.send(HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        continued = await client.read_response()
        await client.send(b"hello")
        reply = await client.read_response()
    finally:
        client.close()
    assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status_of(reply) == 200
    assert server.seen[0].body == b"hello"


@pytest_twisted.ensureDeferred
async def test_chunked_body_growing_past_max_body_size_gets_413(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "max_body_size = 1000"))
    client = RawClient(running.port)
    sent: List[int] = []
    try:
        await client.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(10):
            await client.send(b"12c\r\n" + b"z" * 300 + b"\r\n")
            sent.append(300)
            await sleep(0.02)
            client.poll()
            if client.closed or client.received:
                break
        reply = await refused(client)
    finally:
        client.close()
    assert reply == refusal(413)
    # Refused on the chunk that went past 1000 bytes, the fourth.
    assert sum(sent) == 1200
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_body_far_over_the_limit_sent_at_once_still_reads_its_413(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "max_body_size = 1000"))
    client = RawClient(running.port)
    try:
        body = b"ffff\r\n" + b"z" * 0xFFFF + b"\r\n"
        # Gourmet drops what follows its answer instead of resetting the
        # connection, which could destroy the answer before it is read.
        await client.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body * 8)
        reply = await refused(client)
    finally:
        client.close()
    assert reply == refusal(413)
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_connections_over_max_connections_are_refused(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "max_connections = 3"))
    site = running.service.site
    held = [RawClient(running.port) for _ in range(3)]
    try:
        for _ in range(500):
            if site.open_connections == 3:
                break
            await sleep(0.01)
        assert site.open_connections == 3
        extra = RawClient(running.port)
        try:
            await extra.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            reply = await refused(extra)
        finally:
            extra.close()
        # 503 if the answer was read before the close, at least a close.
        assert reply in (refusal(503), b"")
        assert site.open_connections == 3
        held.pop().close()
        for _ in range(500):
            if site.open_connections == 2:
                break
            await sleep(0.01)
        fresh = RawClient(running.port)
        try:
            await fresh.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            assert status_of(await fresh.read_response()) == 200
        finally:
            fresh.close()
    finally:
        for client in held:
            client.close()
    assert len(server.seen) == 1


@pytest_twisted.ensureDeferred
async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "idle_timeout = 0.5"))
    assert running.service.site.timeOut == 0.5
    client = RawClient(running.port)
    try:
        await client.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert status_of(await client.read_response()) == 200
        started = time.monotonic()
        # Closed without a word: the client asked for nothing.
        assert await refused(client) == b""
        assert 0.3 < time.monotonic() - started < 2.0
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_header_timeout_starts_again_for_each_request(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config(server, "header_timeout = 0.5"))
    client = RawClient(running.port)
    try:
        # Idle past the header timeout between requests: not a slow head.
        for _ in range(2):
            await client.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            assert status_of(await client.read_response()) == 200
            await sleep(0.7)
        client.poll()
        assert not client.closed
        await client.send(b"GET / HTTP/1.1\r\n")
        assert await refused(client) == refusal(408)
    finally:
        client.close()
    assert len(server.seen) == 2
