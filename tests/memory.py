"""
The proxy path in memory: Gourmet built from a configuration text on
Twisted's ``MemoryReactorClock``, with clients and upstream servers joined
to it by ``twisted.test.iosim``'s fake transports, as treq's
``RequestTraversalAgent`` drives a real ``Site``.

Everything between the two fake transports is Gourmet's own: the channel,
the site, the location resource, the exchange, the pool, the upstream
connection, their parsers and their timers.  Nothing opens a socket and
nothing sleeps: bytes move when :meth:`MemoryGourmet.flush` pumps them (as
a network would, at once), and time moves only when a test calls
:meth:`MemoryGourmet.advance`, so a 60-second deadline is tested to the
microsecond, in microseconds.

What cannot be tested here stays on loopback: socket buffers and
backpressure, TLS, how the kernel reports a reset, twistd itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from hyperframe.frame import Frame
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

from gourmet.config.load import parse_config
from gourmet.frontend.http2 import Http2Connection
from gourmet.http.request import refusal
from gourmet.service import GourmetService, build_service
from tests.h2client import Answer as H2Answer
from tests.h2client import H2Session
from tests.test_rfc import Response


def ok(body: bytes = b"ok") -> bytes:
    """
    A whole 200 response with ``body``, that keeps its connection.
    """
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


OK = ok()

#: What a :class:`MemoryServer` does with one request it reads: write these
#: bytes, call this with the connection (to close it, say), or, for None,
#: nothing at all (a server that never answers).
Answer = Union[bytes, Callable[["UpstreamPeer"], object], None]

#: The address clients connect from, and the proxy's own.
CLIENT_HOST = "192.0.2.1"
PROXY_ADDRESS = IPv4Address("TCP", "192.0.2.100", 8080)


def get(target: bytes = b"/", headers: bytes = b"") -> bytes:
    """
    A GET request, as a client writes it; ``headers`` are more lines, each
    ending with CRLF.
    """
    return b"GET %s HTTP/1.1\r\nHost: shop.example\r\n%s\r\n" % (target, headers)


def post(body: bytes, target: bytes = b"/") -> bytes:
    """
    A POST request with ``body``, as a client writes it.
    """
    return b"POST %s HTTP/1.1\r\nHost: shop.example\r\nContent-Length: %d\r\n\r\n%s" % (
        target,
        len(body),
        body,
    )


def close(peer: UpstreamPeer) -> None:
    """
    An :data:`Answer`: close the connection without a word, as a server does
    with a keep-alive connection it no longer wants.
    """
    peer.close()


class Client(Protocol):
    """
    A client's connection to Gourmet's listener.

    :ivar received: every byte Gourmet sent on it and the client has not
        taken with :meth:`response`.
    :ivar closed: whether the connection has ended.
    """

    def __init__(self, gourmet: MemoryGourmet) -> None:
        self._gourmet = gourmet
        self.received = b""
        self.closed = False

    def assert_refused(self, status: int) -> None:
        """
        Gourmet answered with its bare refusal of ``status`` and nothing
        else, and closed the connection.
        """
        assert self.received == refusal(status), self.received[:200]
        assert self.closed

    def assert_refused_in_json(self, status: int) -> Dict[str, object]:
        """
        The console refused with ``status``, its reason in a JSON body that
        a script reads as it reads the API's errors, and closed.

        :return: the JSON document.
        """
        head, _, body = self.received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 %d " % status), lines[0]
        assert b"Content-Type: application/json" in lines
        assert b"Content-Length: %d" % len(body) in lines
        document = json.loads(body)
        assert document["status"] == status
        assert self.closed
        return document

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True

    def send(self, data: bytes) -> None:
        """
        Send ``data`` and let everything it sets off happen.
        """
        self.write(data)
        self._gourmet.flush()

    def write(self, data: bytes) -> None:
        """
        Send ``data`` with the next :meth:`MemoryGourmet.flush`, with what
        other clients write meanwhile: requests that arrive together.
        """
        self.transport.write(data)  # type: ignore[union-attr]

    def response(self) -> Response:
        """
        The next response received (what there is of it if the connection
        closed before its end: ``complete`` is then false).
        """
        response, rest = Response.parse(self.received, at_close=self.closed)
        assert response is not None, f"no whole response in {self.received[:200]!r}"
        self.received = rest or b""
        return response

    def close(self) -> None:
        """
        Close the connection from the client's side.
        """
        self.transport.loseConnection()  # type: ignore[union-attr]
        self._gourmet.flush()


class UpstreamPeer(Protocol):
    """
    One connection Gourmet made to a :class:`MemoryServer`, as the server
    sees it.

    :ivar received: every byte Gourmet sent on it.
    :ivar requests: the requests read on it, each whole (head and body).
    :ivar closed: whether the connection has ended.
    """

    def __init__(self, server: MemoryServer) -> None:
        self.server = server
        self.received = b""
        self.requests: List[bytes] = []
        self.closed = False
        self._unread = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._unread += data
        while True:
            request = _whole_request(self._unread)
            if request is None:
                return
            self._unread = self._unread[len(request) :]
            self.requests.append(request)
            self.server.requests.append(request)
            self.server.answer(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


def _whole_request(data: bytes) -> Optional[bytes]:
    """
    The first request in ``data`` if all of it is there.  Gourmet frames
    every request body it sends with ``Content-Length``.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    size = end + 4 + length
    return data[:size] if len(data) >= size else None


class MemoryServer:
    """
    A server of an upstream, at one address, scripted by the test.

    :ivar on_connect: what it does with Gourmet's connection attempts:
        ``"accept"`` them, ``"refuse"`` them as a closed port does, or
        ``"hang"``: leave them unanswered, as a host that drops packets.
    :ivar script: the answers to the next requests it reads, in order; once
        they are used up, every request gets ``then``.
    :ivar attempts: connection attempts Gourmet made to it.
    :ivar connections: the connections it accepted.
    :ivar hanging: the connectors of the attempts it left unanswered.
    :ivar requests: every request it read, on any connection.
    """

    def __init__(self, address: str, *script: Answer, then: Answer = OK) -> None:
        self.address = address
        self.on_connect = "accept"
        self.script = list(script)
        self.then = then
        self.attempts = 0
        self.connections: List[UpstreamPeer] = []
        self.hanging: List[Any] = []
        self.requests: List[bytes] = []

    def answer(self, peer: UpstreamPeer) -> None:
        answer = self.script.pop(0) if self.script else self.then
        if isinstance(answer, bytes):
            peer.write(answer)
        elif answer is not None:
            answer(peer)


class PlainHttp2(Http2Connection):
    """
    Gourmet's HTTP/2 connection without the TLS under it, which memory
    cannot run: what TLS would say of the connection is made up.
    """

    def tls_info(self) -> Tuple[str, Optional[str]]:
        return ("TLSv1.3", "a.test")


class MemoryH2Client(Protocol, H2Session):
    """
    A client's HTTP/2 connection to Gourmet's listener.
    """

    def __init__(self, gourmet: MemoryGourmet) -> None:
        H2Session.__init__(self)
        self._gourmet = gourmet
        #: Every frame received, parsed apart from h2: h2 takes a GOAWAY
        #: as the end of everything, where RFC 9113 lets the streams it
        #: names finish, as Gourmet does when it stops.
        self.frames: List[Frame] = []
        self._unparsed = b""

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def connectionMade(self) -> None:
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        self._unparsed += data
        while len(self._unparsed) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._unparsed[:9]))
            if len(self._unparsed) < 9 + length:
                break
            frame.parse_body(memoryview(self._unparsed[9 : 9 + length]))
            self.frames.append(frame)
            self._unparsed = self._unparsed[9 + length :]
        self.receive(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True

    def get(self, path: str = "/", **options: Any) -> H2Answer:
        """
        Send a request and let everything it sets off happen; its answer.
        """
        stream_id = self.request(path, **options)
        self._gourmet.flush()
        return self.answers[stream_id]


class MemoryGourmet:
    """
    Gourmet's service built from ``config_text`` on a ``MemoryReactorClock``
    and started: its listeners are recorded by the reactor instead of
    bound, and its connections to upstream servers go to the
    :class:`MemoryServer` at each address (refused where there is none).

    :param access_log: where the access log goes, unless the configuration
        says.
    :ivar reactor: the reactor and clock of everything Gourmet does.
    :ivar service: the running service; ``upstreams`` and ``pools`` are
        its state.
    """

    def __init__(
        self, config_text: str, *servers: MemoryServer, access_log: str = "off"
    ) -> None:
        if "[log]" not in config_text:
            config_text += f"\n[log]\naccess_log = {access_log!r}\n"
        self.access_log_path = access_log
        self.reactor = MemoryReactorClock()
        self.servers: Dict[str, MemoryServer] = {s.address: s for s in servers}
        self.service: GourmetService = build_service(
            parse_config(config_text, "memory.toml"), self.reactor
        )
        self.service.privilegedStartService()
        self.service.startService()
        (listener, *_) = self.service.listeners
        assert listener.factory is self.service.plain_factory
        self.clients: List[Union[Client, MemoryH2Client]] = []
        self._pumps: List[IOPump] = []

    def access_log(self) -> List[str]:
        """
        The access log's lines so far.
        """
        self.service.site.access_log.flush()  # type: ignore[union-attr]
        with open(self.access_log_path, encoding="utf-8") as log:
            return log.read().splitlines()

    def upstream(self, name: str = "backend") -> Any:
        return self.service.upstreams[name]

    def pool(self, name: str = "backend") -> Any:
        return self.service.pools[name]

    # -- connections -------------------------------------------------------

    def connect(self, site: Optional[Any] = None) -> Client:
        """
        A new client connection to the proxy's site (or ``site``, such as
        the admin console's), as its listener would accept it.
        """
        peer = IPv4Address("TCP", CLIENT_HOST, 40000 + len(self.clients))
        channel = (site or self.service.site).buildProtocol(peer)
        client = Client(self)
        self._accept(channel, client, peer)
        return client

    def connect_h2(self) -> MemoryH2Client:
        """
        A new HTTP/2 client connection to the proxy's site, its preface
        and settings exchanged.
        """
        peer = IPv4Address("TCP", CLIENT_HOST, 40000 + len(self.clients))
        client = MemoryH2Client(self)
        self._accept(PlainHttp2(self.service.site), client, peer)
        self.flush()
        return client

    def _accept(
        self,
        server: IProtocol,
        client: Union[Client, MemoryH2Client],
        peer: IPv4Address,
    ) -> None:
        """
        Join a client to Gourmet's side of its connection, from ``peer``.
        """
        self._join(
            server,
            FakeTransport(server, True, PROXY_ADDRESS, peer),
            client,
            FakeTransport(client, False, peer, PROXY_ADDRESS),
        )
        self.clients.append(client)

    def _join(
        self,
        server: IProtocol,
        server_side: FakeTransport,
        client: IProtocol,
        client_side: FakeTransport,
    ) -> None:
        self._pumps.append(
            connect(
                server,
                server_side,
                client,
                client_side,
                greet=False,
                clock=self.reactor,
            )
        )

    def _answer_connection_attempts(self) -> bool:
        """
        Let each server answer Gourmet's new connection attempts; whether
        there were any.
        """
        attempts = self.reactor.tcpClients
        connectors = self.reactor.connectors
        answered = bool(attempts)
        while attempts:
            host, port, factory, _, _ = attempts.pop(0)
            connector = connectors.pop(0)
            address = f"{host}:{port}"
            server = self.servers.get(address)
            if server is not None:
                server.attempts += 1
            if server is None or server.on_connect == "refuse":
                factory.clientConnectionFailed(
                    connector, Failure(ConnectionRefusedError(address))
                )
            elif server.on_connect == "hang":
                server.hanging.append(connector)
            else:
                upstream_address = IPv4Address("TCP", host, port)
                connection = factory.buildProtocol(upstream_address)
                assert connection is not None
                peer = UpstreamPeer(server)
                server.connections.append(peer)
                self._join(
                    peer,
                    FakeTransport(peer, True, upstream_address, PROXY_ADDRESS),
                    connection,
                    FakeTransport(connection, False, PROXY_ADDRESS, upstream_address),
                )
        return answered

    # -- time and bytes ------------------------------------------------------

    def flush(self) -> None:
        """
        Run what is due now, answer connection attempts and move bytes both
        ways on every connection, until nothing more happens.
        """
        for _ in range(1000):
            self.reactor.advance(0)
            moved = self._answer_connection_attempts()
            for pump in list(self._pumps):
                moved = pump.pump(advanceClock=False) or moved
            if not moved:
                break
        else:
            raise AssertionError("still busy after 1000 rounds")
        self._pumps = [pump for pump in self._pumps if not _ended(pump)]

    def advance(self, seconds: float) -> None:
        """
        Let ``seconds`` pass: each timer that comes due runs at its own
        time, and what it sets off happens before the next one.  (The
        clock's own ``advance`` would run them all at the end time.)
        """
        self.flush()
        clock = self.reactor
        end = clock.seconds() + seconds
        while True:
            due = [call.getTime() for call in clock.getDelayedCalls()]
            next_due = min((when for when in due if when <= end), default=None)
            if next_due is None:
                break
            clock.rightNow = max(clock.rightNow, next_due)
            self.flush()
        clock.rightNow = end
        self.flush()

    # -- the end -------------------------------------------------------------

    def stop(self) -> None:
        """
        Close every client connection, stop the service (which closes the
        pools' connections) and check that it stopped and left no timer.
        """
        for client in self.clients:
            client.transport.loseConnection()  # type: ignore[union-attr]
        stopped: List[object] = []
        self.service.stopService().addBoth(stopped.append)
        self.flush()
        assert len(stopped) == 1 and not isinstance(stopped[0], Failure), stopped
        assert self._pumps == [], "connections still open"
        assert self.reactor.getDelayedCalls() == [], self.reactor.getDelayedCalls()


def _ended(pump: IOPump) -> bool:
    return bool(pump.clientIO.disconnected and pump.serverIO.disconnected)


class Gourmets:
    """
    ``gourmets(config_text, *servers)`` starts a :class:`MemoryGourmet`
    whose access log is a file in ``directory``; :meth:`stop` stops them
    all, for a fixture's end.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: List[MemoryGourmet] = []

    def __call__(self, config_text: str, *servers: MemoryServer) -> MemoryGourmet:
        log = self.directory / f"access-{len(self.started)}.log"
        gourmet = MemoryGourmet(config_text, *servers, access_log=str(log))
        self.started.append(gourmet)
        return gourmet

    def stop(self) -> None:
        for gourmet in self.started:
            gourmet.stop()
