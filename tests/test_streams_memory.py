"""
A TCP stream's timing in memory, on a ``MemoryReactorClock``: the idle
timeout, the connect timeout and its retry on another server, and a client
that leaves while its server is being connected to, each tested with
``Clock.advance`` rather than sleeps.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gourmet.config.load import parse_config
from gourmet.tcp.drain import OpenStreams
from gourmet.tcp.factory import StreamFactory
from gourmet.upstream.state import Upstream
from tests.test_streams import stream_config

A, B = "127.0.0.1:7001", "127.0.0.1:7002"


class Stream:
    """
    A stream listener's factory on a memory reactor, its upstream ``tcp``
    of ``servers``, and the client connections made to it.
    """

    def __init__(self, servers: List[str], stream_extra: str = "") -> None:
        self.reactor = MemoryReactorClock()
        config = parse_config(
            stream_config(servers, stream_extra=stream_extra), "test.toml"
        )
        self.upstream = Upstream(config.upstreams[0], self.reactor)
        self.open = OpenStreams()
        self.server_transports: List[StringTransport] = []
        self.factory = StreamFactory(
            config.streams[0], {"tcp": self.upstream}, self.reactor, self.open
        )

    def client(self) -> Tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def attempts(self) -> List[int]:
        """
        The ports of the connections attempted so far, in order.
        """
        return [port for _, port, *_ in self.reactor.tcpClients]

    def server_answers(self, attempt: int = -1) -> Tuple[Any, StringTransport]:
        """
        The server of the connection attempt ``attempt`` accepts it.
        """
        factory = self.reactor.tcpClients[attempt][2]
        protocol: Any = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.server_transports.append(transport)
        return protocol, transport


def test_an_idle_stream_is_cut_after_idle_timeout() -> None:
    stream = Stream([A], stream_extra="idle_timeout = 60")
    client, client_transport = stream.client()
    server, server_transport = stream.server_answers()
    client.dataReceived(b"ping")
    assert server_transport.value() == b"ping"
    stream.reactor.advance(50)
    server.dataReceived(b"pong")  # traffic either way keeps it open
    stream.reactor.advance(50)
    assert not client_transport.disconnecting
    assert not server_transport.disconnecting
    stream.reactor.advance(10)
    # Sixty seconds without a byte: both cut, whatever they had queued.
    assert client_transport.disconnected and server_transport.disconnected
    client.connectionLost(Failure(ConnectionDone()))
    server.connectionLost(Failure(ConnectionDone()))
    (server_state,) = stream.upstream.servers
    assert server_state.active == 0
    assert stream.factory.counts.active == 0
    assert stream.open.busy_connections == 0
    assert client.splice.why == "idle"


def test_nothing_is_read_until_a_server_is_connected() -> None:
    stream = Stream([A])
    client, client_transport = stream.client()
    assert client_transport.producerState == "paused"
    # Bytes already in flight are kept, and sent first.
    client.dataReceived(b"hello ")
    stream.server_answers()
    client.dataReceived(b"world")
    server_transport = stream.server_transports[-1]
    assert server_transport.value() == b"hello world"
    assert client_transport.producerState == "producing"
    (server_state,) = stream.upstream.servers
    assert server_state.active == 1
    assert server_state.stats.bytes_sent == 11


def test_a_connect_timeout_tries_the_next_server() -> None:
    stream = Stream([A, B])
    _, client_transport = stream.client()
    assert stream.attempts() == [7001]
    stream.reactor.advance(4.9)
    assert stream.attempts() == [7001]
    stream.reactor.advance(0.2)  # connect_timeout: 5 s by default
    assert stream.attempts() == [7001, 7002]
    a, b = stream.upstream.servers
    assert a.health.last_error == "connect timed out"
    assert a.active == 0 and b.active == 1
    server, _ = stream.server_answers()
    server.dataReceived(b"from b")
    assert client_transport.value() == b"from b"


def test_a_client_that_leaves_while_connecting_frees_the_server() -> None:
    stream = Stream([A])
    client, _ = stream.client()
    (server_state,) = stream.upstream.servers
    assert server_state.active == 1
    client.connectionLost(Failure(ConnectionDone()))
    assert server_state.active == 0
    assert stream.factory.counts.active == 0
    # Its timer went with it: nothing is tried later.
    stream.reactor.advance(10)
    assert stream.attempts() == [7001]
    assert server_state.failures == 0
