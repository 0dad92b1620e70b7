"""
TCP load balancing (``[[streams]]``) in this process, against real TCP
servers on loopback: bytes both ways, balancing by weight, a server down
skipped and counted, half-close passed on, backpressure, and the counts
the console shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence, Tuple

import pytest
import pytest_twisted
from twisted.internet.ssl import PrivateCertificate

from gourmet.tcp.factory import StreamFactory
from tests.configs import LISTEN
from tests.rawhttp import sleep
from tests.streams import (
    Firehose,
    SaysWhoItSees,
    SlowSink,
    TcpClient,
    TcpServer,
    connect,
    greetings,
)
from tests.test_tls import certificate_files

STREAM_LISTEN = "tcp:0:interface=127.0.0.1"


def stream_config(
    servers: Sequence[str],
    weights: Sequence[int] = (),
    stream_extra: str = "",
    upstream_extra: str = "",
) -> str:
    """
    An upstream ``tcp`` of ``servers``, and a stream in front of it on a
    free loopback port (and the HTTP side [server] needs).
    """
    text = f"[upstreams.tcp]\n{upstream_extra}\n"
    for index, address in enumerate(servers):
        text += f"[[upstreams.tcp.servers]]\npath = '{address}'\n"
        if weights:
            text += f"weight = {weights[index]}\n"
    return (
        text
        + f"[server]\n{LISTEN}\n"
        + "[[server.locations]]\nlocation = '/'\nupstream = 'tcp'\n"
        + f"[[streams]]\nlisten = '{STREAM_LISTEN}'\nupstream = 'tcp'\n{stream_extra}\n"
    )


def the_stream(running: Any) -> StreamFactory:
    (factory,) = running.service.streams.factories
    return factory


def stream_port(running: Any) -> int:
    listener: Any = the_stream(running).listener
    port: int = listener.port.getHost().port
    return port


async def client_through(
    gourmet: Any, server: TcpServer, listen: str = STREAM_LISTEN
) -> Tuple[Any, TcpClient]:
    """
    Gourmet with a stream on ``listen`` to ``server``, and a client
    connected to it (in TLS when it is an ``ssl:`` endpoint).
    """
    text = stream_config([server.address]).replace(STREAM_LISTEN, listen)
    running = await gourmet(text)
    tls = listen.startswith("ssl:")
    return running, await connect(stream_port(running), tls=tls)


def servers(started: Any, count: int, **kwargs: Any) -> List[TcpServer]:
    return [started(TcpServer(**kwargs)) for _ in range(count)]


@pytest_twisted.ensureDeferred
async def test_bytes_go_both_ways_and_are_counted(gourmet: Any, started: Any) -> None:
    (echo,) = servers(started, 1)
    running, client = await client_through(gourmet, echo)
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    client.send(payload)
    assert await client.read(len(payload)) == payload
    client.shutdown_write()
    await client.read_to_end()
    await sleep(0.05)
    counts = the_stream(running).counts
    assert (counts.connections, counts.active, counts.failed) == (1, 0, 0)
    assert counts.received == counts.sent == len(payload)
    server = running.upstream("tcp").servers[0]
    assert server.stats.bytes_sent == server.stats.bytes_received == len(payload)
    assert server.active == 0


@pytest_twisted.ensureDeferred
async def test_connections_are_balanced_by_weight(gourmet: Any, started: Any) -> None:
    a = started(TcpServer(greeting=b"a"))
    b = started(TcpServer(greeting=b"b"))
    running = await gourmet(stream_config([a.address, b.address], weights=[3, 1]))
    assert await greetings(stream_port(running), 40) == {b"a": 30, b"b": 10}


@pytest_twisted.ensureDeferred
async def test_a_down_server_is_skipped_and_counted(gourmet: Any, started: Any) -> None:
    up = started(TcpServer(greeting=b"up"))
    down = started(TcpServer(greeting=b"down"))
    await down.stop()  # its port now refuses connections
    running = await gourmet(stream_config([down.stopped_address, up.address]))
    port = stream_port(running)
    for _ in range(6):
        client = await connect(port)
        assert await client.read(2) == b"up"
        client.close()
        await client.closed()
    upstream = running.upstream("tcp")
    dead = upstream.server(down.stopped_address)
    # Refused once, then out of rotation for fail_timeout: no client saw it.
    assert dead.failures == 1
    assert dead.health.state.value == "down"
    assert "Connection refused" in (dead.health.last_error or "")
    assert dead.stats.errors_hidden == 1 and dead.stats.errors_seen == 0
    assert dead.active == 0
    assert the_stream(running).counts.failed == 0


@pytest_twisted.ensureDeferred
async def test_no_server_to_connect_to_closes_the_client(
    gourmet: Any, started: Any
) -> None:
    (gone,) = servers(started, 1)
    await gone.stop()
    running = await gourmet(stream_config([gone.stopped_address]))
    client = await connect(stream_port(running))
    client.send(b"anyone there?")
    assert await client.read_to_end() == b""
    counts = the_stream(running).counts
    assert (counts.connections, counts.failed, counts.active) == (1, 1, 0)


@pytest_twisted.ensureDeferred
async def test_a_half_close_reaches_the_server_and_the_answer_comes_back(
    gourmet: Any, started: Any
) -> None:
    (echo,) = servers(started, 1)
    _, client = await client_through(gourmet, echo)
    client.send(b"last words")
    client.shutdown_write()
    # The server saw the end of what the client sends, and its echo still
    # comes back on the half that is open.
    assert await client.read_to_end() == b"last words"
    assert echo.half_closed == 1


@pytest_twisted.ensureDeferred
async def test_a_half_close_while_the_server_reads_slowly(
    gourmet: Any, started: Any
) -> None:
    # Gourmet holds the client back while the server does not read; the
    # client's half-close must still reach the server once it has read all.
    sink = started(TcpServer(protocol=SlowSink))
    _, client = await client_through(gourmet, sink)
    size = 32 * 1024 * 1024
    client.send(b"y" * size)
    client.shutdown_write()
    assert await client.read_to_end(within=20) == b"%d\n" % size


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_holds_the_server_back(
    gourmet: Any, started: Any
) -> None:
    hose = started(TcpServer(protocol=Firehose))
    running, client = await client_through(gourmet, hose)
    transport: Any = client.transport
    transport.pauseProducing()  # reads nothing more
    await sleep(1.0)
    (firehose,) = hose.firehoses
    sent_after_a_second = firehose.sent
    await sleep(1.0)
    # What Gourmet read from the server stays within the sockets' buffers:
    # the firehose is paused, not feeding Gourmet's memory.
    assert firehose.paused
    assert firehose.sent == sent_after_a_second
    assert the_stream(running).counts.sent < 64 * 1024 * 1024
    client.close()


@pytest.mark.parametrize("setting", ['"v1"', '"v2"', "true"])
@pytest_twisted.ensureDeferred
async def test_the_server_learns_the_client_from_a_proxy_header(
    gourmet: Any, started: Any, setting: str
) -> None:
    reader = started(TcpServer(protocol=SaysWhoItSees, proxied=True))
    running = await gourmet(
        stream_config([reader.address], stream_extra=f"proxy_protocol = {setting}")
    )
    port = stream_port(running)
    client = await connect(port)
    # Twisted's reader took the header for the connection's addresses: the
    # client's, and Gourmet's stream listener's.
    client_port = client.tcp.getHost().port
    client.send(b"who am I?")
    said = await client.read_to_end()
    assert said == f"127.0.0.1 {client_port} 127.0.0.1 {port}\n".encode()


@pytest_twisted.ensureDeferred
async def test_the_upstreams_proxy_protocol_serves_its_streams_too(
    gourmet: Any, started: Any
) -> None:
    reader = started(TcpServer(protocol=SaysWhoItSees, proxied=True))
    text = stream_config([reader.address], upstream_extra='proxy_protocol = "v1"')
    running = await gourmet(text)
    client = await connect(stream_port(running))
    client_port = client.tcp.getHost().port
    client.send(b"who am I?")
    said = await client.read_to_end()
    assert said.startswith(b"127.0.0.1 %d " % client_port)


@pytest_twisted.ensureDeferred
async def test_an_ssl_endpoint_terminates_tls_for_a_stream(
    gourmet: Any, started: Any, tmp_path: Path
) -> None:
    key, certificate = certificate_files(tmp_path)
    (echo,) = servers(started, 1)
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}"
    running, client = await client_through(gourmet, echo, listen)
    client.send(b"in the clear behind TLS")
    assert await client.read(23) == b"in the clear behind TLS"
    # The server got plain bytes.
    assert echo.received == 23
    client.close()
    await client.closed()
    await sleep(0.05)
    assert the_stream(running).counts.received == 23


@pytest_twisted.ensureDeferred
async def test_the_proxy_header_goes_before_tls_to_an_https_server(
    gourmet: Any, started: Any, tmp_path: Path
) -> None:
    key, certificate = certificate_files(tmp_path)
    context = PrivateCertificate.loadPEM(
        key.read_text() + certificate.read_text()
    ).options()
    reader = started(TcpServer(protocol=SaysWhoItSees, proxied=True, tls=context))
    address = f"https://{reader.address}"
    text = stream_config([address], stream_extra='proxy_protocol = "v2"')
    text = text.replace(
        f"path = '{address}'\n", f"path = '{address}'\ntls_verify = false\n"
    )
    running = await gourmet(text)
    port = stream_port(running)
    client = await connect(port)
    client_port = client.tcp.getHost().port
    client.send(b"who am I?")
    # Read in the clear from Gourmet, which spoke TLS to the server after
    # the header.
    said = await client.read_to_end()
    assert said == f"127.0.0.1 {client_port} 127.0.0.1 {port}\n".encode()
