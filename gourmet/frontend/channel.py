"""
The client side of the proxy's HTTP/1.1: Twisted's :class:`HTTPChannel`,
made strict, with limits and deadlines.

A proxy that reads a request differently from the server behind it opens
a request-smuggling hole, so Gourmet accepts only requests that every
reasonable parser reads the same way.  Anything ambiguous (two framings,
obsolete syntax, stray control bytes) is answered with a 4xx and the
connection is closed; nothing of it reaches an upstream.  Whatever passes
is sent upstream re-serialized, with one ``Content-Length`` of Gourmet's.

The checks are pure functions (:mod:`gourmet.http.request`) raising
:exc:`BadRequest`; :class:`GourmetChannel` calls them as lines arrive,
before Twisted acts on them, and decides the body's framing itself.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import (
    Any,
    List,
    Optional,
    Protocol,
    Tuple,
)

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from zope.interface import alsoProvides

from gourmet._twisted.channel import HTTPChannelHooks
from gourmet._twisted.sockets import tune
from gourmet.config.model import FrontendConfig
from gourmet.deadline import Deadline, MinimumRate
from gourmet.frontend.errors import error_document
from gourmet.frontend.proxy_protocol import ProxyHeaderReader
from gourmet.http.request import (
    MAX_BODY,
    BadRequest,
    Head,
    RequestLine,
    check_head,
    check_header_line,
    check_request_line,
    refusal,
)
from gourmet.net.splice import SpliceEnd
from gourmet.tls.store import tls_details

#: Seconds a refused client may go on sending (its data is dropped) after
#: the answer, so that closing with unread data does not reset the
#: connection before the client has read why.
LINGER_SECONDS = 2.0

#: Statuses whose responses have no body, whatever their headers say.
_NO_BODY = frozenset({b"204", b"304"})

#: The headers of a request not begun; never appended to.
_NO_HEADERS: List[Tuple[bytes, bytes]] = []


def _cancel(call: Optional[IDelayedCall]) -> Optional[IDelayedCall]:
    """
    Cancel ``call`` if it is still to come.

    :return: None, for ``timer = _cancel(timer)``.
    """
    if call is not None and call.active():
        call.cancel()
    return None


class ClientStats:
    """
    What Gourmet did to clients' requests on their way in.

    :ivar headers_dropped: request header lines dropped, by reason
        (``"underscore"``: see ``underscores_in_headers``).
    :ivar refusals: Gourmet's own answers by status: the channel's
        refusals and the site's error responses (404, 502...).
    """

    def __init__(self) -> None:
        self.headers_dropped: Counter[str] = Counter()
        self.refusals: Counter[int] = Counter()
        #: HTTP/2 connections closed for what their client did, by reason
        #: (``"protocol"``, ``"rapid_reset"``, ``"unread"``).
        self.protocol_errors: Counter[str] = Counter()


def note_refusal(log: Logger, site: ChannelSite, peer: Any, error: BadRequest) -> None:
    """
    Log a refusal of a client's request, and count it by status.  A 503
    (too many connections) is not logged here: the site logs those once
    per burst.
    """
    if error.status != 503:
        log.info(
            "refused a request from {peer}: {status} {reason}",
            peer=getattr(peer, "host", "?"),
            status=error.status,
            reason=error.reason,
        )
    site.client_stats.refusals[error.status] += 1


class ChannelSite(Protocol):
    """
    What a :class:`GourmetChannel` needs of the site that builds it
    (:class:`gourmet.frontend.site.GourmetSite`).
    """

    frontend: FrontendConfig
    clock: IReactorTime
    client_stats: ClientStats
    #: Whether refusals carry a JSON body (the admin console's clients).
    json_refusals: bool

    def connection_opened(self, channel: GourmetChannel) -> bool:
        """
        Count a new connection; whether it may be served.
        """

    def connection_closed(self, channel: GourmetChannel) -> None:
        """
        A counted connection is gone.
        """


class GourmetChannel(HTTPChannelHooks):
    """
    An :class:`HTTPChannel` that refuses what it cannot read unambiguously,
    enforces the ``[server]`` limits (see
    :class:`gourmet.config.model.FrontendConfig`) and answers each refusal with
    a bare status and a closed connection.

    Its site (a :class:`ChannelSite`) holds the limits: they are
    its ``frontend``, and it counts connections for ``max_connections``.
    """

    log = Logger()
    site: ChannelSite  # set by the site that builds it
    #: Whether the client speaks TLS to Gourmet (known once connected).
    secure = False
    #: Not an HTTP/2 connection (:class:`gourmet.frontend.http2.Http2Connection`).
    http2 = False
    # Twisted's own limits on the head never apply: Gourmet's (the
    # [server] limits) are checked first, line by line, and configuration
    # keeps them below these.
    totalHeadersSize = 2**31
    maxHeaders = 2**31

    # What most connections never change is a class attribute until it
    # changes: an idle keep-alive connection holds its channel's instance
    # dictionary, whose table grows with its keys (about 1.5 KiB on
    # CPython 3.11 with the 38 left, most of them twisted.web's).
    _rejected = False
    _closing = False
    _linger: Optional[IDelayedCall] = None
    _tls_info: Optional[Tuple[str, Optional[str]]] = None
    _tunnel: Optional[SpliceEnd] = None
    #: Made for the first request with a body.
    _body_rate: Optional[MinimumRate] = None
    _blank_line_seen = False
    _body_declared = 0
    #: Set for every request: moved, not rescheduled (gourmet.deadline).
    #: Made in connectionMade, when the site and its clock are known.
    _head_deadline: Optional[Deadline] = None
    _idle_deadline: Optional[Deadline] = None

    def __init__(self) -> None:
        super().__init__()
        self._counted = False
        self._receiving = False
        self._lines = 0
        self._host: Any = None
        self._peer: Any = None
        self._held_head = b""
        self._reset_request()

    @property
    def _limits(self) -> FrontendConfig:
        limits: FrontendConfig = self.site.frontend
        return limits

    def _reset_request(self) -> None:
        self._request_line: Optional[RequestLine] = None
        # A new list once a request line arrives: an idle connection keeps
        # the shared empty one.
        self._headers: List[Tuple[bytes, bytes]] = _NO_HEADERS
        self._head: Optional[Head] = None
        self._head_size = 0
        if self._blank_line_seen:
            self._blank_line_seen = False
        if self._body_declared:
            self._body_declared = 0

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        clock = self.site.clock
        self._head_deadline = Deadline(clock, self._head_timed_out)
        self._idle_deadline = Deadline(clock, self.timeoutConnection)
        super().connectionMade()
        # Once per connection: twisted.web asks for every request.
        if ISSLTransport.providedBy(self.transport):
            self.secure = True
        tune(self.transport)
        self.MAX_LENGTH = self._limits.max_request_line
        if not self.site.connection_opened(self):
            self._reject(BadRequest(503, "too many connections"), linger=False)
            return
        self._counted = True
        self._start_head_timer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadlines()
        self._linger = _cancel(self._linger)
        if self._tunnel is not None:
            self._tunnel.lost(reason)
        # The request hears of it first: a stop waiting for the last
        # connection then finds its line in the access log.
        super().connectionLost(reason)
        if self._counted:
            self._counted = False
            self.site.connection_closed(self)

    def isSecure(self) -> bool:
        return self.secure

    def tls_info(self) -> Tuple[str, Optional[str]]:
        """
        The TLS version the client speaks and the name it asked for (SNI),
        read once a connection: for the access log.
        """
        if self._tls_info is None:
            # TLSMemoryBIOProtocol's pyOpenSSL connection.
            self._tls_info = tls_details(self.transport.getHandle())  # type: ignore[union-attr]
        return self._tls_info

    # Every request asks for both addresses, and they cannot change: the
    # local one costs a system call and the peer's a new object each time.

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def close_when_idle(self) -> None:
        """
        Gourmet is stopping: close at once if no request is under way, else
        once its response has gone, saying ``Connection: close`` if its head
        has not.
        """
        self._closing = True
        self.persistent = False
        if not self.requests:
            self.loseConnection()

    # -- writing responses ------------------------------------------------
    # Writes reach the socket at once (gourmet._twisted.sockets), so the head waits
    # for the body's first bytes: one send, one packet, for a small response.

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any
    ) -> None:
        keep_alive_1_0 = version == b"HTTP/1.0" and self.persistent
        if not isinstance(headers, Headers):
            self.persistent = self.persistent and not keep_alive_1_0
            super().writeHeaders(version, code, reason, headers)
            return
        pieces = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                pieces.extend((name, b": ", value, b"\r\n"))
        if self.secure:
            # HSTS as nginx's add_header adds it, unless the upstream
            # said its own.
            hsts = self._limits.hsts
            if hsts is not None and not headers.hasHeader(b"strict-transport-security"):
                pieces.extend((b"Strict-Transport-Security: ", hsts.encode(), b"\r\n"))
        if self._closing and not headers.hasHeader(b"connection"):
            pieces.append(b"Connection: close\r\n")
        elif keep_alive_1_0:
            if self._length_known(code, headers):
                pieces.append(b"Connection: keep-alive\r\n")
            else:
                # HTTP/1.0 has no chunks: only the close can end this body.
                self.persistent = False
        pieces.append(b"\r\n")
        self._held_head = b"".join(pieces)

    def _length_known(self, code: bytes, headers: Headers) -> bool:
        """
        Whether the client can tell where a response's body ends without
        the connection closing.
        """
        return (
            headers.hasHeader(b"content-length")
            or code in _NO_BODY
            or self.requests[0].method == b"HEAD"
        )

    def write(self, data: bytes) -> None:
        head = self._held_head
        if head:
            # Only the first write pays for the copy, not every 64 KiB piece.
            self._held_head = b""
            data = head + data
        self.transport.write(data)  # type: ignore[union-attr]

    def writeSequence(self, iovec: Any) -> None:
        # The transport joins the pieces anyway (gourmet._twisted.sockets, and TLS).
        self.write(b"".join(iovec))

    def flush_head(self) -> None:
        """
        Send a head still waiting: its response has no body bytes (HEAD, 204,
        304, an empty body) or they are not there yet.
        """
        head, self._held_head = self._held_head, b""
        if head and self.transport is not None:
            self.transport.write(head)

    # TimeoutMixin's idle timeout, on a Deadline: twisted.web stops and
    # restarts it around every request.

    def setTimeout(self, period: Optional[float]) -> Optional[float]:
        previous, self.timeOut = self.timeOut, period  # type: ignore[assignment]
        idle = self._idle_deadline
        if idle is not None:
            if period is None:
                idle.clear()
            else:
                idle.set(period)
        return previous

    def resetTimeout(self) -> None:
        idle = self._idle_deadline
        if idle is not None and idle.due is not None and self.timeOut is not None:
            idle.set(self.timeOut)

    def _stop_deadlines(self) -> None:
        for deadline in (self._head_deadline, self._idle_deadline):
            if deadline is not None:
                deadline.cancel()
        body_rate = self._body_rate
        if body_rate is not None:
            body_rate.stop()

    # -- a switch to another protocol ---------------------------------------

    def start_tunnel(self, end: SpliceEnd) -> bytes:
        """
        The current request's ``101`` has gone out: the connection is no
        longer HTTP, and every event of it goes to ``end`` (a half close
        too); its transport is the splice's, without a producer.

        :return: what the client sent after the request, kept aside by
            twisted.web until the request was answered.
        """
        self._tunnel = end
        self._stop_deadlines()
        self.setTimeout(None)
        transport: Any = self.transport
        # twisted.web's channel produced for its transport, and may have
        # paused its reading while the request was answered.
        transport.unregisterProducer()
        transport.resumeProducing()
        alsoProvides(self, IHalfCloseableProtocol)
        return self.take_buffered()

    def readConnectionLost(self) -> None:
        # Only once start_tunnel declared IHalfCloseableProtocol.
        assert self._tunnel is not None
        self._tunnel.read_ended()

    def writeConnectionLost(self) -> None:
        pass

    # -- the head ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.data(data)
            return
        if self._rejected:
            return  # lingering: dropped
        if self.line_mode and data and self._head_deadline.due is None:  # type: ignore[union-attr]
            self._start_head_timer()
        if self._receiving:
            # Pipelined data, replayed as an immediate answer ended the
            # request before it: the call already on the stack parses it.
            super().dataReceived(data)
            return
        lines, pending = self._lines, len(self.unparsed)
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False
        transport: Any = self.transport
        if self.line_mode and not self._rejected and not transport.disconnecting:
            # Only new bytes need a look; all of them once a line ended.
            self._check_pending(0 if self._lines != lines else max(pending - 1, 0))

    def _check_pending(self, start: int) -> None:
        """
        The unfinished line left after parsing holds no CRLF, so any LF in
        it, or any CR but a last one, is a bare line break, which servers
        read differently; waiting for a CRLF would only end in a timeout.
        """
        pending = self.unparsed
        if (
            pending.find(b"\n", start) != -1
            or pending.find(b"\r", start, len(pending) - 1) != -1
        ):
            self._reject(BadRequest(400, "bare CR or LF in the head"))

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        self._lines += 1
        try:
            checked = self._check_line(line)
        except BadRequest as error:
            self._reject(error)
            return
        if checked is not None:
            super().lineReceived(checked)

    def _check_line(self, line: bytes) -> Optional[bytes]:
        """
        Check one line of the head before Twisted reads it.

        :return: the line for Twisted: an absolute-form request line is
            rewritten in origin form, which routing and the upstream expect;
            None for a header line dropped.
        """
        limits = self._limits
        if self._request_line is None:
            if not line and not self._blank_line_seen:
                # RFC 9112, 2.2: one empty line before a request is
                # ignored (and Twisted ignores one).
                self._blank_line_seen = True
                return line
            request_line = check_request_line(line, limits.max_request_line)
            self._add_to_head(line)
            self._request_line = request_line
            self._headers = []
            if request_line.authority is None:
                return line
            return b" ".join(request_line[:3])
        if line:
            self._add_to_head(line)
            if len(self._headers) >= limits.max_headers:
                raise BadRequest(431, f"more than {limits.max_headers} headers")
            header = check_header_line(line)
            self._headers.append(header)
            if b"_" in header[0] and self._drops_underscored(header[0]):
                return None
            return line
        head = check_head(self._request_line, self._headers)
        length = head.body_length
        if (
            limits.max_body_size
            and length is not None
            and length > limits.max_body_size
        ):
            raise BadRequest(413, f"body larger than {limits.max_body_size} bytes")
        self._head = head
        return line

    def _drops_underscored(self, name: bytes) -> bool:
        """
        Apply ``underscores_in_headers`` to a header whose name has ``_``.

        :return: whether to drop it.
        :raises BadRequest: 400 when such headers are refused.
        """
        policy = self._limits.underscores_in_headers
        if policy == "pass":
            return False
        if policy == "refuse":
            raise BadRequest(400, "underscore in a header name")
        self.site.client_stats.headers_dropped["underscore"] += 1
        self.log.debug("dropped a request header with '_': {name}", name=name)
        return True

    def _add_to_head(self, line: bytes) -> None:
        size = self._limits.max_header_size
        self._head_size += len(line) + 2
        if self._head_size > size:
            raise BadRequest(431, f"head larger than {size} bytes")
        # The next line may only take what is left.
        self.MAX_LENGTH = max(size - self._head_size - 2, 0)

    def lineLengthExceeded(self, line: bytes) -> None:
        limits = self._limits
        if self._request_line is None:
            limit = limits.max_request_line
            self._reject(BadRequest(414, f"request line longer than {limit} bytes"))
        else:
            limit = limits.max_header_size
            self._reject(BadRequest(431, f"head larger than {limit} bytes"))

    def allHeadersReceived(self) -> None:
        self._head_deadline.clear()  # type: ignore[union-attr]
        assert self._head is not None  # _check_line set it for this line
        length = self._head.body_length
        self.use_body_framing(length, self._chunk_size, check_header_line)
        self.length = length
        if length != 0:
            # From the end of the head, after a grace of header_timeout.
            limits = self._limits
            body_rate = self._body_rate
            if body_rate is None:
                body_rate = MinimumRate(self.site.clock, self._body_too_slow)
                self._body_rate = body_rate
            body_rate.start(limits.body_min_rate, limits.header_timeout)
        # Twisted answers "100 Continue" here, after Gourmet's checks.
        super().allHeadersReceived()

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        # Twisted splits Connection at spaces only (it is a comma list), and
        # closes every HTTP/1.0 connection; an HTTP/1.0 client that asks to
        # keep it is answered as nginx does (see writeHeaders).
        head = self._head
        assert head is not None  # allHeadersReceived: the head passed
        if version == b"HTTP/1.1":
            if head.close:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return not head.close
        return head.keep_alive

    # -- the body ----------------------------------------------------------

    def rawDataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        body_rate = self._body_rate
        if body_rate is not None and not self.handling_request:
            body_rate.received += len(data)
        try:
            super().rawDataReceived(data)
        except BadRequest as error:
            self._reject(error)

    def _chunk_size(self, size: int) -> None:
        """
        Count a chunk before its data arrives, so that a body over the
        limit is refused at once.
        """
        self._body_declared += size
        limit = self._limits.max_body_size
        if limit and self._body_declared > limit:
            raise BadRequest(413, f"chunked body larger than {limit} bytes")
        if self._body_declared > MAX_BODY:
            raise BadRequest(400, "chunk size too large")

    def allContentReceived(self) -> None:
        body_rate = self._body_rate
        if body_rate is not None:
            body_rate.stop()
        self._reset_request()
        self.MAX_LENGTH = self._limits.max_request_line
        super().allContentReceived()

    def malformed_body(self) -> None:
        # With the head checked before Twisted sees it, what Twisted still
        # refuses itself is a malformed chunked body.
        self._reject(BadRequest(400, "malformed chunked body"))

    # -- deadlines ---------------------------------------------------------

    def _start_head_timer(self) -> None:
        self._head_deadline.set(self._limits.header_timeout)  # type: ignore[union-attr]

    def _head_timed_out(self) -> None:
        if self._lines == 0 and not self.unparsed:
            # Nothing asked, nothing to answer: a preconnecting browser or a
            # port scan is closed silently, as nginx does.
            self.log.debug("closed a connection that sent no request")
            self.loseConnection()
            return
        timeout = self._limits.header_timeout
        self._reject(BadRequest(408, f"no whole head within {timeout:g} seconds"))

    def _body_too_slow(self, rate: int) -> None:
        self._reject(BadRequest(408, f"body slower than {rate} bytes/s"))

    # -- refusing ----------------------------------------------------------

    def _reject(self, error: BadRequest, linger: bool = True) -> None:
        """
        Answer ``error`` and close: at once for a connection refused
        outright, otherwise after the client has read the answer (or
        ``LINGER_SECONDS``), dropping whatever else it sends.
        """
        if self._rejected:
            return
        self._rejected = True
        self._stop_deadlines()
        self.setTimeout(None)
        self.clearLineBuffer()
        transport: Any = self.transport
        note_refusal(self.log, self.site, transport.getPeer(), error)
        body = b""
        if self.site.json_refusals:
            body = json.dumps(error_document(error.status, error.reason)).encode()
        transport.write(refusal(error.status, self._limits.server_header, body))
        # Only a socket of the reactor's own can be half-closed: a TLS
        # wrapper would pass the half-close to the socket under it.  The
        # PROXY header's reader passes everything to its socket.
        plain_socket = isinstance(transport, (FileDescriptor, ProxyHeaderReader))
        if linger and plain_socket:
            transport.unregisterProducer()
            transport.loseWriteConnection()
            self._linger = self.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            self.loseConnection()
