"""
TCP servers and a client on loopback for the ``[[streams]]`` tests: an
echo server, servers that say their name, send without end or read
slowly, and a client that says what it got and when the server closed.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.rawhttp import sleep

#: How long a test waits for what it expects over loopback.
WAIT_SECONDS = 10.0


class Loopback(Protocol):
    """
    A protocol whose transport is a TCP one (typed as such, loosely).
    """

    @property
    def tcp(self) -> Any:
        return self.transport

    @property
    def server(self) -> Any:
        return self.factory.server


@implementer(IHalfCloseableProtocol)
class Echo(Loopback):
    """
    Sends back what it reads, first its server's greeting if it has one;
    closes its writing when the client closed its own (a half-close).
    """

    def connectionMade(self) -> None:
        server: TcpServer = self.server
        server.connections += 1
        if server.greeting:
            self.tcp.write(server.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.server.received += len(data)
        self.tcp.write(data)

    def readConnectionLost(self) -> None:
        self.server.half_closed += 1
        self.tcp.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        self.tcp.loseConnection()


@implementer(IHalfCloseableProtocol)
class SlowSink(Loopback):
    """
    Reads nothing for its first second, then everything until the client's
    half-close, and answers with the count of bytes it read.
    """

    def connectionMade(self) -> None:
        self.count = 0
        self.tcp.pauseProducing()
        reactor.callLater(1.0, self.tcp.resumeProducing)

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.tcp.write(b"%d\n" % self.count)
        self.tcp.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Firehose(Loopback):
    """
    Sends 64 KiB after 64 KiB for as long as its client takes them: how
    many it sent tells how much its client (Gourmet) read.
    """

    CHUNK = b"x" * 65536

    def connectionMade(self) -> None:
        self.server.firehoses.append(self)
        self.sent = 0
        self.paused = False
        self.tcp.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.transport is not None and self.connected:
            self.sent += len(self.CHUNK)
            self.tcp.write(self.CHUNK)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True


class SaysWhoItSees(Loopback):
    """
    Says the client address and its own as its transport has them (behind
    Twisted's PROXY protocol reader, those the header gave) when the client
    has sent something (Twisted's reader starts the protocol before the
    header), then closes.
    """

    def dataReceived(self, data: bytes) -> None:
        peer, host = self.tcp.getPeer(), self.tcp.getHost()
        self.tcp.write(f"{peer.host} {peer.port} {host.host} {host.port}\n".encode())
        self.tcp.loseConnection()


class TcpServer:
    """
    A server on a free loopback port, speaking ``protocol``.

    :ivar connections: connections accepted.
    :ivar received: bytes read.
    :ivar half_closed: connections whose client closed its writing.
    """

    def __init__(
        self,
        protocol: type = Echo,
        greeting: bytes = b"",
        proxied: bool = False,
        tls: Any = None,
    ) -> None:
        """
        :param proxied: read a PROXY protocol header (v1 or v2) first, with
            Twisted's reader.
        :param tls: a server TLS context factory: speak TLS (after the PROXY
            header, when ``proxied``).
        """
        self.protocol = protocol
        self.proxied = proxied
        self.tls = tls
        self.greeting = greeting
        self.connections = 0
        self.received = 0
        self.half_closed = 0
        self.firehoses: List[Firehose] = []
        self.port: Optional[IListeningPort] = None

    @property
    def address(self) -> str:
        assert self.port is not None
        host: Any = self.port.getHost()
        return f"127.0.0.1:{host.port}"

    def start(self) -> TcpServer:
        factory: Any = ServerFactory.forProtocol(self.protocol)
        factory.server = self
        factory.noisy = False
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        if self.proxied:
            endpoint = proxyEndpoint(
                TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            )
            # A TCP endpoint listens at once: the Deferred has fired.
            self.port = endpoint.listen(factory).result
        else:
            self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        return self

    async def stop(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            host: Any = port.getHost()
            address = f"127.0.0.1:{host.port}"
            await maybeDeferred(port.stopListening)
            self.stopped_address = address
        for hose in self.firehoses:
            if hose.transport is not None:
                hose.tcp.abortConnection()


@implementer(IHalfCloseableProtocol)
class TcpClient(Loopback):
    """
    A client that keeps what it reads, and says when its connection ended.
    """

    def __init__(self) -> None:
        self.data = b""
        self.read_ended = False
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        # As most clients do: nothing more to read, so the end.
        self.read_ended = True
        self.tcp.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.read_ended = True
        if not self.ended.called:
            self.ended.callback(None)

    def send(self, data: bytes) -> None:
        self.tcp.write(data)

    def shutdown_write(self) -> None:
        self.tcp.loseWriteConnection()

    def close(self) -> None:
        if self.transport is not None:
            self.tcp.abortConnection()

    async def until(self, what: Any, within: float = WAIT_SECONDS) -> None:
        """
        Wait until ``what()`` is true, for at most ``within`` seconds.
        """
        deadline = time.monotonic() + within
        while not what():
            assert time.monotonic() < deadline, (
                f"waited in vain; got {self.data!r:.200}"
            )
            await sleep(0.01)

    async def read(self, count: int, within: float = WAIT_SECONDS) -> bytes:
        await self.until(lambda: len(self.data) >= count or self.read_ended, within)
        return self.data

    async def closed(self, within: float = WAIT_SECONDS) -> None:
        await self.until(lambda: self.ended.called, within)

    async def read_to_end(self, within: float = WAIT_SECONDS) -> bytes:
        await self.until(lambda: self.read_ended, within)
        return self.data


async def connect(port: int, host: str = "127.0.0.1", tls: bool = False) -> TcpClient:
    """
    A :class:`TcpClient` connected to ``host:port`` (in TLS, trusting any
    certificate, with ``tls``).
    """
    endpoint: Any = TCP4ClientEndpoint(reactor, host, port, timeout=5)
    if tls:
        endpoint = wrapClientTLS(CertificateOptions(verify=False), endpoint)
    return await connectProtocol(endpoint, TcpClient())


async def greetings(port: int, connections: int) -> Counter[bytes]:
    """
    The first byte each of ``connections`` connections to ``port``, one
    after the other, reads: which :class:`TcpServer` (by its ``greeting``)
    each reached.
    """
    seen: Counter[bytes] = Counter()
    for _ in range(connections):
        client = await connect(port)
        seen[await client.read(1)] += 1
        client.close()
        await client.closed()
    return seen
