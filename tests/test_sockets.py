"""
How Gourmet reads and writes its sockets (gourmet._twisted.sockets).  Reads into a
shared buffer are switched on here whatever the interpreter, so that
CPython runs check the path PyPy takes.
"""

from __future__ import annotations

import hashlib
import json
import socket
from typing import Any, Dict, List, Tuple

import pytest
import pytest_twisted
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from gourmet._twisted import sockets


@pytest.fixture
def buffered_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "BUFFERED_READS", True)


@pytest_twisted.ensureDeferred
async def test_bodies_both_ways_arrive_intact_through_buffered_reads(
    buffered_reads: None, proxy: Any
) -> None:
    server, running = await proxy()
    upload = bytes(range(256)) * 3_900  # under 1 MiB: many reads all the same
    response = await running.request("POST", "/up", data=upload)
    assert response.code == 200, await response.content()
    answer = json.loads(await response.content())
    assert answer["body_length"] == len(upload)
    assert answer["body_sha256"] == hashlib.sha256(upload).hexdigest()
    # 5 MB down: many reads by the upstream connection.
    response = await running.get("/big/5000000")
    assert response.code == 200
    assert await response.content() == b"x" * 5_000_000
    # Small requests on the same connections, one after another.
    for number in range(20):
        response = await running.get(f"/small/{number}")
        assert json.loads(await response.content())["uri"] == f"/small/{number}"
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_both_sides_read_into_the_buffer(
    buffered_reads: None, proxy: Any
) -> None:
    _, running = await proxy()
    reads_by: Dict[type, int] = {}
    original = sockets._BufferedReads.doRead

    def counting(self: Any) -> Any:
        kind = tcp.Server if isinstance(self, tcp.Server) else tcp.Client
        reads_by[kind] = reads_by.get(kind, 0) + 1
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sockets._BufferedReads, "doRead", counting)
        response = await running.get("/hello")
        assert json.loads(await response.content())["uri"] == "/hello"
    # The client's connection to Gourmet, and Gourmet's to the upstream.
    assert reads_by.get(tcp.Server, 0) >= 1
    assert reads_by.get(tcp.Client, 0) >= 1


@pytest_twisted.ensureDeferred
async def test_both_sides_send_without_delay(
    proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    TCP_NODELAY on the client's connection and on the upstream's, as
    nginx's tcp_nodelay: a write after one not yet acknowledged is not held
    for the peer's delayed acknowledgement.
    """
    _, running = await proxy()
    seen: List[tcp.Connection] = []
    install = sockets._tune_class

    def recording(connection: tcp.Connection, buffered: bool) -> None:
        install(connection, buffered)
        seen.append(connection)

    monkeypatch.setattr(sockets, "_tune_class", recording)
    response = await running.get("/hello")
    assert json.loads(await response.content())["uri"] == "/hello"
    assert any(isinstance(connection, tcp.Server) for connection in seen)
    assert any(isinstance(connection, tcp.Client) for connection in seen)
    for connection in seen:
        option = connection.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert option, type(connection)


@pytest.fixture
def server_writes(monkeypatch: pytest.MonkeyPatch) -> List[Tuple[bytes, bool]]:
    """
    What Gourmet writes to its clients' connections, each with whether
    anything was left queued in the transport afterwards.
    """
    writes: List[Tuple[bytes, bool]] = []
    install = sockets._tune_class

    def recording(connection: tcp.Connection, buffered: bool) -> None:
        install(connection, buffered)
        if not isinstance(connection, tcp.Server):
            return
        eager: Any = connection.write

        def write(data: bytes) -> None:
            eager(data)
            queued = bool(connection._tempDataBuffer) or bool(connection.dataBuffer)
            writes.append((data, queued))

        connection.write = write  # type: ignore[method-assign]
        connection.writeSequence = lambda pieces: write(b"".join(pieces))  # type: ignore[method-assign]

    monkeypatch.setattr(sockets, "_tune_class", recording)
    return writes


@pytest_twisted.ensureDeferred
async def test_a_small_response_leaves_in_one_write_at_once(
    server_writes: List[Tuple[bytes, bool]], proxy: Any
) -> None:
    _, running = await proxy()
    response = await running.get("/hello")
    body = await response.content()
    assert json.loads(body)["uri"] == "/hello"
    # Head and body together, straight to the socket: nothing queued for
    # the reactor to send later.
    ((data, queued),) = server_writes
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n" + body)
    assert not queued


@pytest_twisted.ensureDeferred
async def test_a_head_without_a_body_still_leaves(
    server_writes: List[Tuple[bytes, bool]], proxy: Any
) -> None:
    _, running = await proxy()
    response = await running.request("HEAD", "/hello")
    assert response.code == 200
    assert await response.content() == b""
    ((data, _),) = server_writes
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n")


class Receiver(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_nothing_written_after_an_abort_goes_out() -> None:
    """
    An aborted response must not be completed by a later write: an upstream
    failure would look like success to the client.
    """
    receiver = Receiver()
    factory: Any = Factory.forProtocol(lambda: receiver)
    port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        sender = await connectProtocol(endpoint, Protocol())
        transport: Any = sender.transport
        sockets.tune(transport)
        transport.write(b"before ")
        transport.abortConnection()
        transport.write(b"after")
        await receiver.lost
        assert receiver.received == b"before "
    finally:
        await port.stopListening()
