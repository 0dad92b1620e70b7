"""
Faults on either side of the proxy over real sockets on loopback:
upstreams that reset or close; clients that leave mid-upload or
mid-download or pipeline without reading.  Each ends with an answer or a
cut that cannot be mistaken for success, and nothing left open (file
descriptors counted).  Upstreams that stall or never connect, and every
server down, are tested in memory, on the reactor's clock
(``tests/test_memory_upstream.py``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable, List

import pytest_twisted
from twisted.internet import reactor

from tests.rawhttp import sleep
from tests.test_rfc import OK, Response, raw_client, request, wait_for


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def temp_files() -> int:
    """
    Open files of this process in the temporary directory, where
    twisted.web keeps request bodies over 100 kB.
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(tempfile.gettempdir())
    return count


async def fds_back_to(baseline: int, slack: int = 2) -> None:
    """
    Wait for the reactor to close what it should; fail if file descriptors
    stay above ``baseline``.
    """
    try:
        await wait_for(lambda: open_fds() <= baseline + slack, timeout=5)
    except AssertionError:
        raise AssertionError(f"{open_fds()} fds open, {baseline} before") from None


async def warm(running: Any, path: str = "/warm") -> int:
    """
    Send Gourmet a first request, so that what it opens once is in the
    baseline: the file descriptors open after it.
    """
    await (await running.get(path)).content()
    return open_fds()


def part(length: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length


# -- the upstream fails mid-response -------------------------------------


def reset_after(data: bytes) -> Any:
    """
    An answer that writes ``data``, then resets the connection once the
    bytes are on their way (an abort in the same turn would drop them).
    """

    def answer(transport: Any) -> None:
        transport.write(data)
        reactor.callLater(0.05, transport.abortConnection)

    return answer


async def cut_short(scripted_proxy: Any, data: bytes) -> Response:
    """
    What a raw client reads when the upstream writes ``data`` then resets
    the connection: a 200, cut short, on a connection Gourmet closed.
    """
    _, running = await scripted_proxy(reset_after(data))
    client = await raw_client(running.port, request())
    response = await client.response()
    assert response.status == 200
    assert not response.complete and client.closed
    return response


@pytest_twisted.ensureDeferred
async def test_reset_mid_body_is_cut_short_for_the_client(scripted_proxy: Any) -> None:
    response = await cut_short(scripted_proxy, part(100_000) + b"x" * 1000)
    assert response.header(b"content-length") == b"100000"
    assert len(response.body) == 1000


@pytest_twisted.ensureDeferred
async def test_reset_mid_chunked_body_has_no_last_chunk(scripted_proxy: Any) -> None:
    response = await cut_short(
        scripted_proxy,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n wor",
    )
    assert response.header(b"transfer-encoding") == b"chunked"
    assert response.body.startswith(b"hello")


# -- keep-alive connections the upstream closed ----------------------------


def close_without_answer(transport: Any) -> None:
    transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_get_on_a_connection_the_upstream_closed_is_sent_again(
    scripted_proxy: Any,
) -> None:
    upstream, running = await scripted_proxy(OK, close_without_answer, OK)
    for _ in range(2):
        response = await running.get("/")
        assert (response.code, await response.content()) == (200, b"ok")
    # The second request went on the kept connection, found it closed, and
    # went again, once, on a new one.
    assert len(upstream.requests) == 3 and upstream.connections == 2
    server = running.upstream("backend").servers[0]
    assert server.failures == 0 and server.active == 0


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_the_upstream_closes_leaves_the_pool(
    scripted_proxy: Any,
) -> None:
    def answer_then_close(transport: Any) -> None:
        transport.write(OK)
        reactor.callLater(0.05, transport.loseConnection)

    upstream, running = await scripted_proxy(answer_then_close, OK)
    pool = running.service.pools["backend"]
    assert (await (await running.get("/")).content()) == b"ok"
    await wait_for(lambda: pool.idle_count() == 0, timeout=2)
    response = await running.get("/")
    assert (response.code, await response.content()) == (200, b"ok")
    assert upstream.connections == 2


@pytest_twisted.ensureDeferred
async def test_a_post_is_never_sent_twice(scripted_proxy: Any) -> None:
    upstream, running = await scripted_proxy(OK, close_without_answer, OK)
    assert (await (await running.get("/")).content()) == b"ok"
    response = await running.request("POST", "/pay", data=b"pay once")
    assert response.code == 502
    await response.content()
    # It reached the server on the kept connection, which then closed: the
    # server may have acted on it, so it is not sent again.
    assert upstream.bodies.count(b"pay once") == 1
    assert upstream.connections == 1


# -- clients that leave --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_mid_upload_sends_nothing_upstream(proxy: Any) -> None:
    server, running = await proxy("max_body_size = 0")
    baseline, temp_baseline = await warm(running), temp_files()
    client = await raw_client(
        running.port, request(b"/up", b"POST", (b"Content-Length: 5000000",))
    )
    client.send(b"x" * 500_000)
    # twisted.web spools a body that large to a temporary file.
    await wait_for(lambda: temp_files() > temp_baseline)
    client.close()
    await wait_for(lambda: temp_files() == temp_baseline)
    await fds_back_to(baseline)
    assert [seen.uri for seen in server.seen] == [b"/warm"]
    assert server.connections == 1
    assert running.upstream("backend").servers[0].active == 0


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_before_the_answer_cancels_the_upstream_request(
    scripted_proxy: Any,
) -> None:
    upstream, running = await scripted_proxy(None)
    baseline = open_fds()
    client = await raw_client(
        running.port, request(b"/up", b"POST", body=b"y" * 300_000)
    )
    await wait_for(lambda: upstream.bodies)
    assert len(upstream.bodies[0]) == 300_000
    assert running.upstream("backend").servers[0].active == 1
    client.close()
    await wait_for(lambda: not upstream.open)
    assert running.upstream("backend").servers[0].active == 0
    await fds_back_to(baseline)


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_mid_download_closes_the_upstream_connection(
    proxy: Any,
) -> None:
    server, running = await proxy(name="big")
    baseline = await warm(running)
    client = await raw_client(running.port, request(b"/big/50000000"))
    await wait_for(lambda: len(client.data) > 100_000)
    client.close()
    await wait_for(lambda: server.streams_cut == 1)
    assert running.upstream("backend").servers[0].active == 0
    assert running.service.pools["backend"].idle_count() == 0
    await fds_back_to(baseline)


def vm_rss() -> int:
    """
    This process's resident memory, in bytes.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


#: How much resident memory may grow, per client, while 1000 clients
#: pipeline requests for large responses and read none of them.  With
#: backpressure a connection holds at most a transport buffer and a read
#: (64 KiB each) in Gourmet, and a buffer in the in-process upstream: about
#: 155 KiB a client measured, once every client is connected.  Without it
#: every response (10 MB each, 10 per client) piles up in memory: 30 such
#: clients already grew it by over 200 MiB.
PIPELINING_MEMORY_PER_CLIENT = 256 * 1024


def accepted(running: Any, count: int) -> Callable[[], bool]:
    """
    Whether Gourmet has accepted ``count`` client connections.
    """
    return lambda: bool(running.service.site.open_connections >= count)


@pytest_twisted.ensureDeferred
async def test_clients_pipelining_without_reading_use_bounded_memory(
    proxy: Any,
) -> None:
    server, running = await proxy(name="big")
    baseline, rss_before = await warm(running), vm_rss()
    clients_count, pipelined = 1000, 10
    burst = request(b"/big/10000000") * pipelined
    clients: List[socket.socket] = []
    for _ in range(clients_count):
        client = socket.socket()
        # Small receive buffers: the kernel holds little for a client that
        # does not read, and Gourmet's own buffering shows.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.settimeout(5)
        client.connect(("127.0.0.1", running.port))
        client.sendall(burst)
        clients.append(client)
        if len(clients) % 25 == 0:
            # Let Gourmet accept them before connecting more: the listen
            # backlog is short, and this loop blocks the reactor.
            await wait_for(accepted(running, len(clients)), 10)
    try:
        await wait_for(lambda: len(server.seen) >= clients_count, timeout=15)
        await sleep(0.5)
        grown = vm_rss() - rss_before
        bound = PIPELINING_MEMORY_PER_CLIENT * clients_count
        assert grown < bound, f"grew by {grown / 2**20:.0f} MiB"
    finally:
        for client in clients:
            client.close()
    await wait_for(lambda: running.upstream("backend").servers[0].active == 0, 10)
    await fds_back_to(baseline)
