"""
Upstream servers for the tests on loopback port 0, that record what
reaches them: real HTTP servers (Twisted sites), and scripted ones that
answer with exact bytes, for the responses no sane server sends.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, List, Optional, Set, Union

from twisted.internet import reactor as _reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gourmet.config.origin import Origin, parse_origin


class Seen:
    """
    One request as the upstream received it.
    """

    def __init__(self, request: Any) -> None:
        self.method: bytes = request.method
        self.uri: bytes = request.uri
        self.headers = {
            name.lower(): values
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        request.content.seek(0)
        self.body: bytes = request.content.read()

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


class Streamer:
    """
    Writes ``size`` bytes (or forever when size is None) in 64 KiB pieces,
    as a pull producer, and notes when its client goes away.
    """

    chunk = b"x" * 65536

    def __init__(self, request: Any, size: Optional[int], owner: UpstreamServer):
        self.request = request
        self.left = size
        self.owner = owner
        self.paused = False

    def start(self) -> None:
        self.request.notifyFinish().addBoth(self._gone)
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.left is None:
            self.request.write(self.chunk)
            return
        piece = self.chunk[: min(self.left, len(self.chunk))]
        self.left -= len(piece)
        if piece:
            self.request.write(piece)
        if not self.left:
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        pass

    def _gone(self, result: Any) -> None:
        if self.left is None or self.left > 0:
            self.owner.streams_cut += 1


class UpstreamResource(Resource):
    isLeaf = True

    def __init__(self, owner: UpstreamServer) -> None:
        super().__init__()
        self.owner = owner

    def render(self, request: Any) -> Any:
        owner = self.owner
        seen = Seen(request)
        owner.seen.append(seen)
        path = request.path
        request.setHeader(b"x-upstream", owner.name.encode())
        if path.startswith(b"/status/"):
            code = int(path.split(b"/")[2])
            request.setResponseCode(code)
            return b"status %d from %s" % (code, owner.name.encode())
        if path.startswith(b"/big/"):
            Streamer(request, int(path.split(b"/")[2]), owner).start()
            return NOT_DONE_YET
        if path.startswith(b"/slow/"):
            # Answers after the given number of seconds.
            delay = float(path.split(b"/")[2])
            call = self.owner.reactor.callLater(delay, self._late, request)
            request.notifyFinish().addErrback(lambda _: call.cancel())
            return NOT_DONE_YET
        if path.startswith(b"/endless"):
            Streamer(request, None, owner).start()
            return NOT_DONE_YET
        if path.startswith(b"/absolute-redirect/"):
            # As httpbin's: absolute URLs built from the Host it was sent.
            left = int(path.split(b"/")[2])
            target = b"/absolute-redirect/%d" % (left - 1) if left > 1 else b"/get"
            request.setResponseCode(302)
            request.setHeader(b"location", b"http://%s%s" % (_host(request), target))
            return b""
        if path.startswith(b"/redirect-to/"):
            request.setResponseCode(302)
            request.setHeader(b"location", request.args[b"url"][0])
            return b""
        if path == b"/refresh":
            here = b"http://%s" % _host(request)
            request.setHeader(b"refresh", b"3; url=%s/get" % here)
            request.setHeader(b"content-location", b"%s/refresh?a=1" % here)
            return b"wait"
        if path == b"/cookies":
            request.responseHeaders.setRawHeaders(b"set-cookie", [b"a=1", b"b=2"])
            request.setResponseCode(201, b"Made It")
            request.setHeader(b"x-custom", b"kept")
            return b"cookies"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "server": owner.name,
                "method": seen.method.decode(),
                "uri": seen.uri.decode("latin-1"),
                "body_sha256": hashlib.sha256(seen.body).hexdigest(),
                "body_length": len(seen.body),
            }
        ).encode()

    def _late(self, request: Any) -> None:
        request.write(b"late from " + self.owner.name.encode())
        request.finish()


def _host(request: Any) -> bytes:
    host: bytes = request.getHeader(b"host")
    return host


class CountingProtocolSite(Site):
    """
    A site that counts the connections made to it.
    """

    # A plain HTTP/1.1 channel (not Twisted's HTTP/1-or-2 wrapper): the
    # tests reach its transport to drop connections as a crash would.
    protocol = HTTPChannel  # type: ignore[assignment]

    def __init__(self, resource: Resource, owner: UpstreamServer) -> None:
        super().__init__(resource)
        self.owner = owner
        self.noisy = False
        self.protocols: List[Protocol] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.owner.connections += 1
        protocol: Protocol = super().buildProtocol(addr)
        self.protocols.append(protocol)
        return protocol


class UpstreamServer:
    """
    A real HTTP server on 127.0.0.1 that answers with its name and records
    every request.

    :ivar seen: requests received, in order.
    :ivar connections: TCP connections accepted.
    :ivar streams_cut: streamed responses whose client left before the end.
    """

    def __init__(
        self, name: str, reactor: Any = _reactor, tls: Optional[Any] = None
    ) -> None:
        """
        :param tls: a Twisted TLS context factory: serve HTTPS with it.
        """
        self.name = name
        self.reactor = reactor
        self.tls = tls
        self.seen: List[Seen] = []
        self.connections = 0
        self.streams_cut = 0
        self.port_number = 0
        self._port: Optional[IListeningPort] = None
        self.site = CountingProtocolSite(UpstreamResource(self), self)
        self.site.requestFactory = Request

    def start(self) -> None:
        if self.tls is not None:
            self._port = self.reactor.listenSSL(
                self.port_number, self.site, self.tls, interface="127.0.0.1"
            )
        else:
            self._port = self.reactor.listenTCP(
                self.port_number, self.site, interface="127.0.0.1"
            )
        self.port_number = self._port.getHost().port  # type: ignore[union-attr]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port_number}"

    async def stop(self) -> None:
        """
        Stop listening and drop open connections, as a crashed server would.
        """
        if self._port is not None:
            port, self._port = self._port, None
            await maybeDeferred(port.stopListening)
        for protocol in self.site.protocols:
            transport: Any = protocol.transport
            if transport is not None and transport.connected:
                transport.abortConnection()
        self.site.protocols.clear()


#: What a scripted server does with a request: bytes to write, None to say
#: nothing, or a function given the connection's transport (to write in
#: pieces, stall, or reset the connection).
Answer = Union[None, bytes, Callable[[Any], None]]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class Scripted(Protocol):
    """
    Reads each request (head and Content-Length body) and answers it with
    the next scripted answer.
    """

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.buffer = b""

    def connectionMade(self) -> None:
        self.server.connections += 1
        self.server.open.add(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.server.open.discard(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = _content_length(head)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.server.requests.append(head)
            self.server.bodies.append(rest[:length])
            self.answer(self.server.responses.pop(0))

    def answer(self, answer: Answer) -> None:
        transport: Any = self.transport
        if callable(answer):
            answer(transport)
        elif answer is not None:
            transport.write(answer)
        if self.server.close_after:
            transport.loseConnection()


class ScriptedServer:
    """
    A raw upstream on loopback that answers the requests it reads with
    scripted answers, in order, whatever the connection.

    :ivar requests: the request heads read.
    :ivar bodies: their bodies.
    :ivar connections: connections accepted.
    :ivar open: connections still open.
    """

    def __init__(self, *responses: Answer, close_after: bool = False):
        self.responses = list(responses)
        self.close_after = close_after
        self.requests: List[bytes] = []
        self.bodies: List[bytes] = []
        self.connections = 0
        self.open: Set[Scripted] = set()
        self.port: Optional[IListeningPort] = None

    def start(self) -> Origin:
        factory: Any = ServerFactory.forProtocol(lambda: Scripted(self))
        self.port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        return parse_origin(self.address)

    @property
    def address(self) -> str:
        assert self.port is not None
        return f"127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """
        Stop listening and reset the connections still open.
        """
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        for protocol in list(self.open):
            transport: Any = protocol.transport
            transport.abortConnection()
