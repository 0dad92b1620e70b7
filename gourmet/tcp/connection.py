"""
One client connection of a ``[[streams]]`` listener: the server it gets
(balanced per connection, retried on connect failure within the
upstream's ``tries``, each failure counted by passive health), then the
two connections spliced byte for byte until both have ended, and one log
line saying how it went.

Nothing is read from the client until a server is connected, so a client
that sends at once is held back by TCP, not by Gourmet's memory.
"""

from __future__ import annotations

from typing import Any, List, Optional
from typing import Protocol as Interface

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.config.model import StreamConfig
from gourmet.net.splice import Splice, SpliceEnd, SpliceProtocol
from gourmet.tcp.counts import StreamCounts
from gourmet.tcp.drain import OpenStreams
from gourmet.upstream.pool import OneProtocol, connect_error, origin_endpoint
from gourmet.upstream.proxy_protocol import header_for
from gourmet.upstream.state import Server, Upstream


class StreamSettings(Interface):
    """
    What a connection needs of its listener's factory
    (:class:`gourmet.tcp.factory.StreamFactory`).
    """

    config: StreamConfig
    clock: Any
    counts: StreamCounts
    open_streams: OpenStreams
    trust_root: Any

    @property
    def upstream(self) -> Upstream:
        """
        The upstream the stream balances over now.
        """


@implementer(IHalfCloseableProtocol)
class StreamConnection(Protocol):
    """
    A client's connection, until it and its server's have both ended.

    :ivar server: the server of the attempt under way, then of the splice,
        counted as active on it (``least_conn``, the console) while the
        connection lasts.
    """

    log = Logger()

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.counts = settings.counts
        # Kept for the retries: a reload may drop its name meanwhile.
        self.upstream = settings.upstream
        self.splice = Splice(settings.clock, self.config.idle_timeout, self._ended)
        self.tried: List[Server] = []
        #: Servers that failed this connection, until it is known whether
        #: a retry hid the failure.
        self.failed_on: List[Server] = []
        self.server: Optional[Server] = None
        self.server_name = "-"
        self.tries_left = 0
        self.joined = False
        self.done = False
        self.why: Optional[str] = None
        self._early: List[bytes] = []
        self._early_read_ended = False
        self._connecting: Optional[Deferred[Any]] = None
        self._timer: Optional[IDelayedCall] = None
        self._timed_out = False

    # -- the client's side, before and after the splice ---------------------

    @property
    def _client(self) -> Any:
        # A TCP transport (or TLS over one): a producer, half-closeable.
        return self.transport

    def connectionMade(self) -> None:
        self.counts.connections += 1
        self.counts.active += 1
        self.settings.open_streams.opened(self)
        # Nothing is read until there is a server to send it to.
        self._client.pauseProducing()
        upstream = self.upstream
        self.tries_left = upstream.config.tries or len(upstream.servers)
        self._try_next()

    def dataReceived(self, data: bytes) -> None:
        self.counts.received += len(data)
        if self.joined:
            if self.server is not None:
                self.server.stats.bytes_sent += len(data)
            self.splice.client.data(data)
        else:
            self._early.append(data)

    def readConnectionLost(self) -> None:
        if self.joined:
            self.splice.client.read_ended()
        else:
            self._early_read_ended = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.joined:
            self.splice.client.lost(reason)
            return
        # No server was connected (yet): the client left, or was sent away.
        self.done = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._end_attempt()
        self._finish(self.why or "client closed before a server was connected")

    def from_server(self, data: bytes) -> None:
        """
        ``data`` came from the server, on its way to the client.
        """
        self.counts.sent += len(data)
        if self.server is not None:
            self.server.stats.bytes_received += len(data)

    # -- choosing a server and connecting -----------------------------------

    def _try_next(self) -> None:
        upstream = self.upstream
        server = upstream.try_next(self.tried, self.tries_left, self._hash_key())
        if server is None:
            self._give_up()
            return
        self.tries_left -= 1
        self.server = server
        self.server_name = server.name
        settings = self.settings
        timeout = upstream.config.connect_timeout
        endpoint = origin_endpoint(
            settings.clock,
            server.origin,
            timeout,
            settings.trust_root,
            self._proxy_header(),
        )
        side = ServerSide(self.splice.server, self)
        self._timed_out = False
        connecting = endpoint.connect(OneProtocol(side))
        self._connecting = connecting
        self._timer = settings.clock.callLater(timeout, self._connect_timed_out)
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _hash_key(self) -> Optional[bytes]:
        """
        The client's address, for ``balancer = "hash"`` (``hash_key = "ip"``,
        the one key a stream has).
        """
        if self.upstream.config.hash_key is None:
            return None
        host = getattr(self._client.getPeer(), "host", None)
        return None if host is None else str(host).encode("ascii", "replace")

    def _proxy_header(self) -> Optional[bytes]:
        """
        The PROXY protocol header the server is sent first (before TLS to
        an ``https://`` server), if the stream's ``proxy_protocol`` or its
        upstream's asks for one: from the client's address to the one it
        reached Gourmet at (``UNKNOWN``, v2's ``LOCAL``, for a unix socket).
        """
        version = self.config.proxy_protocol or self.upstream.config.proxy_protocol
        if version is None:
            return None
        peer = self._client.getPeer()
        client_ip = str(getattr(peer, "host", "")).encode("ascii", "replace")
        return header_for(version, client_ip, peer, self._client.getHost())

    def _connect_timed_out(self) -> None:
        self._timer = None
        self._timed_out = True
        if self._connecting is not None:
            self._connecting.cancel()

    def _settle(self) -> None:
        self._connecting = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _connected(self, side: ServerSide) -> None:
        self._settle()
        transport: Any = side.transport
        server = self.server
        if self.done or server is None:
            transport.abortConnection()
            return
        server.succeeded()
        self._settle_failures(seen=False)
        early = b"".join(self._early)
        self._early = []
        server.stats.bytes_sent += len(early)
        self.joined = True
        # Reading starts at the next turn of the reactor, by which time the
        # splice may have paused it again (the early bytes filled a buffer).
        self._client.resumeProducing()
        self.splice.join(self._client, transport, from_client=early)
        if self._early_read_ended:
            self.splice.client.read_ended()

    def _connect_failed(self, reason: Failure) -> None:
        self._settle()
        if self.done:
            return
        server = self.server
        assert server is not None
        if self._timed_out:
            description = "connect timed out"
        else:
            description = f"connect failed: {connect_error(reason).value}"
        server.failed(description, responded=False)
        self.failed_on.append(server)
        self.why = f"{server.name} {description}"
        self.log.info(
            "stream {listen}: {server} failed: {error}",
            listen=self.config.listen,
            server=server.name,
            error=description,
        )
        self._end_attempt()
        self._try_next()

    def _end_attempt(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.attempt_finished()

    def _settle_failures(self, seen: bool) -> None:
        for server in self.failed_on:
            server.failures_settled(seen)
        self.failed_on.clear()

    def _give_up(self) -> None:
        """
        No server may take the connection (any more): close it.
        """
        self.counts.failed += 1
        self._settle_failures(seen=True)
        if self.why is None:
            self.why = "no server available"
        else:
            self.why += "; no other server to try"
        self.done = True
        self._client.loseConnection()

    # -- the end ------------------------------------------------------------

    def abort(self, why: str) -> None:
        """
        Drop the connection and its server's at once (Gourmet stopping).
        """
        if self.joined:
            self.splice.abort(why)
            return
        self.why = why
        self._client.abortConnection()

    def _ended(self, splice: Splice) -> None:
        self._end_attempt()
        self._finish(splice.why or "closed")

    def _finish(self, why: str) -> None:
        self.counts.active -= 1
        self.settings.open_streams.closed(self)
        peer = self.transport.getPeer() if self.transport is not None else None
        client = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        splice = self.splice
        received = splice.client.received or sum(map(len, self._early))
        self.log.info(
            "stream {listen} {client} to {server}: {duration:.3f}s,"
            " {received} bytes from the client, {sent} from the server;"
            " ended: {why}",
            listen=self.config.listen,
            client=client,
            server=self.server_name,
            duration=splice.duration,
            received=received,
            sent=splice.server.received,
            why=why,
            stream_ended=True,
        )


class ServerSide(SpliceProtocol):
    """
    The server's connection: its bytes counted on their way to the client.
    """

    def __init__(self, end: SpliceEnd, stream: StreamConnection) -> None:
        super().__init__(end)
        self.stream = stream

    def dataReceived(self, data: bytes) -> None:
        self.stream.from_server(data)
        self.end.data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A connection made for a client that had left is no part of it.
        if self.stream.joined:
            self.end.lost(reason)
