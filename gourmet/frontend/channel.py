"""
The client side of the proxy's HTTP/1.1: Twisted's :class:`HTTPChannel`,
made strict, with limits and deadlines.

A proxy that reads a request differently from the server behind it opens
a request-smuggling hole, so Gourmet accepts only requests that every
reasonable parser reads the same way.  Anything ambiguous (two framings,
obsolete syntax, stray control bytes) is answered with a 4xx and the
connection is closed; nothing of it reaches an upstream.  Whatever passes
is sent upstream re-serialized, with one ``Content-Length`` of Gourmet's.

The checks are pure functions (:func:`check_request_line`,
:func:`check_header_line`, :func:`check_head`) raising :exc:`BadRequest`;
:class:`GourmetChannel` calls them as lines arrive, before Twisted acts on
them, and decides the body's framing itself.
"""

from __future__ import annotations

import re
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    Callable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    HTTPChannel,
    _ChunkedTransferDecoder,
    _IdentityTransferDecoder,
)
from twisted.web.http_headers import Headers

from gourmet._twisted.sockets import tune
from gourmet.config.model import FrontendConfig
from gourmet.deadline import Deadline
from gourmet.http.forwarding import CONTROL, TCHAR

if TYPE_CHECKING:
    from gourmet.frontend.site import GourmetSite

#: Status lines of Gourmet's own refusals (RFC 9110 names, whatever the
#: Python version).
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}

#: Seconds a refused client may go on sending (its data is dropped) after
#: the answer, so that closing with unread data does not reset the
#: connection before the client has read why.
LINGER_SECONDS = 2.0

#: The largest body length accepted from a request when there is no
#: ``max_body_size``: 18 decimal digits, below 2**63.
MAX_LENGTH_DIGITS = 18
_MAX_BODY = 10**MAX_LENGTH_DIGITS - 1

#: Shortest wait between two checks of a body's rate, so that a body
#: arriving exactly at the minimum rate does not spin the timer.
_MIN_RATE_CHECK = 0.25

_VERSIONS = frozenset({b"HTTP/1.0", b"HTTP/1.1"})
#: Statuses whose responses have no body, whatever their headers say.
_NO_BODY = frozenset({b"204", b"304"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
#: Headers a client may not name in Connection: the proxy would strip
#: them, changing the request's framing or what Gourmet says about it.
_PROTECTED = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"forwarded",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)

# A target is printable ASCII without "#": a fragment is never sent, and
# servers disagree on what to do with one.
_REQUEST_LINE = re.compile(
    rb"([" + TCHAR + rb"]+) ([\x21\x22\x24-\x7e]+) (HTTP/[0-9]\.[0-9])"
)
_ABSOLUTE_TARGET = re.compile(rb"(?i:https?)://([^/?]*)([/?].*)?")
# A DNS name or IPv4 address, or an IPv6 literal, and an optional port.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")
_HEADER_NAME = re.compile(rb"[" + TCHAR + rb"]+")
_DIGITS = re.compile(rb"[0-9]+")
_CODINGS = re.compile(rb"[" + TCHAR + rb"]+(?: *, *[" + TCHAR + rb"]+)*")


class BadRequest(Exception):
    """
    A request Gourmet will not pass on: it is answered with ``status`` and
    its connection closed.

    :ivar status: the response status.
    :ivar reason: what was wrong, for the log.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class RequestLine(NamedTuple):
    """
    A request line that passed :func:`check_request_line`.

    :ivar target: in origin form (or ``*``): an absolute-form target is
        reduced to its path and query.
    :ivar authority: the host and port of an absolute-form target, which
        the Host header must repeat; None for other forms.
    """

    method: bytes
    target: bytes
    version: bytes
    authority: Optional[bytes] = None


class Head(NamedTuple):
    """
    What :func:`check_head` found out about a request.

    :ivar body_length: the body's length; None for a chunked body.
    :ivar close: whether the client asked to close the connection after
        this request.
    :ivar keep_alive: whether it asked to keep it (what an HTTP/1.0 client
        must say for that).
    """

    body_length: Optional[int]
    close: bool
    keep_alive: bool = False


def refusal(status: int) -> bytes:
    """
    Gourmet's answer to a request it refuses: a status and nothing else.
    """
    return (
        b"HTTP/1.1 %d %s\r\nServer: Gourmet\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n" % (status, REASONS[status])
    )


def check_host(value: bytes) -> None:
    """
    :raises BadRequest: unless ``value`` is a host name or address with an
        optional port, as a Host header or an absolute target holds it.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        raise BadRequest(400, "malformed host")
    port = match.group(1)
    if port is not None and int(port) > 65535:
        raise BadRequest(400, "port out of range in host")


def check_request_line(line: bytes, limit: int) -> RequestLine:
    """
    Check a request line: ``method SP target SP HTTP/1.x`` exactly, the
    method a token, the target a path (or ``*`` for OPTIONS) or an
    absolute ``http(s)`` URL, in printable ASCII.

    :param limit: the longest line accepted, in bytes.
    :raises BadRequest: 414 for a line over ``limit``, 505 for an HTTP
        version other than 1.0 and 1.1, 501 for CONNECT, 400 otherwise.
    """
    if len(line) > limit:
        raise BadRequest(414, f"request line longer than {limit} bytes")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise BadRequest(400, "malformed request line")
    method, target, version = match.groups()
    if version not in _VERSIONS:
        raise BadRequest(505, f"unsupported version {version.decode()}")
    if method == b"CONNECT":
        raise BadRequest(501, "CONNECT is not supported")
    if target.startswith(b"/") or (target == b"*" and method == b"OPTIONS"):
        return RequestLine(method, target, version)
    absolute = _ABSOLUTE_TARGET.fullmatch(target)
    if absolute is None:
        raise BadRequest(400, "request target is neither a path nor a URL")
    authority, rest = absolute.groups()
    check_host(authority)
    if not rest or rest.startswith(b"?"):
        rest = b"/" + (rest or b"")
    return RequestLine(method, rest, version, authority)


def check_header_line(line: bytes) -> Tuple[bytes, bytes]:
    """
    Check a header (or trailer) line: a token, a colon right after it, and
    a value without control bytes other than HTAB.  The framing headers
    must be written plainly, with no HTAB around their value.  (A name
    with ``_`` is a token: what becomes of it is the channel's
    ``underscores_in_headers``.)

    :return: the name in lower case, and the value without the spaces and
        tabs around it.
    :raises BadRequest: 400.
    """
    name, colon, value = line.partition(b":")
    if not colon:
        raise BadRequest(400, "header line without a colon")
    if _HEADER_NAME.fullmatch(name) is None:
        if line.startswith((b" ", b"\t")):
            raise BadRequest(400, "obsolete line folding in the head")
        raise BadRequest(400, "malformed header name")
    lower = name.lower()
    if CONTROL.search(value) is not None:
        raise BadRequest(400, f"control character in {lower.decode()}")
    if lower in _FRAMING and b"\t" in value:
        raise BadRequest(400, f"tab in {lower.decode()}")
    return lower, value.strip(b" \t")


def _check_hosts(line: RequestLine, hosts: Sequence[bytes]) -> None:
    if len(hosts) > 1:
        raise BadRequest(400, "more than one Host header")
    if not hosts:
        if line.version == b"HTTP/1.1":
            raise BadRequest(400, "HTTP/1.1 request without Host")
        return
    check_host(hosts[0])
    if line.authority is not None and line.authority.lower() != hosts[0].lower():
        raise BadRequest(400, "Host differs from the absolute target's host")


def _connection_options(values: Sequence[bytes]) -> AbstractSet[bytes]:
    tokens = {
        token.strip(b" \t").lower() for value in values for token in value.split(b",")
    }
    protected = tokens & _PROTECTED
    if protected:
        names = b", ".join(sorted(protected)).decode()
        raise BadRequest(400, f"Connection names {names}")
    return tokens


def _content_length(value: bytes) -> int:
    if _DIGITS.fullmatch(value) is None:
        raise BadRequest(400, "malformed Content-Length")
    if len(value) > MAX_LENGTH_DIGITS:
        raise BadRequest(413, "Content-Length too large")
    return int(value)


def _check_transfer_coding(value: bytes) -> None:
    if value.lower() == b"chunked":
        return
    if _CODINGS.fullmatch(value) is None:
        raise BadRequest(400, "malformed Transfer-Encoding")
    codings = [coding.strip(b" ").lower() for coding in value.split(b",")]
    # RFC 9112, 6.3: a request body whose last coding is not chunked has
    # no length one can trust.
    if codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
        raise BadRequest(400, "chunked is not the last and only framing coding")
    raise BadRequest(501, "unsupported transfer coding")


def _body_length(
    version: bytes, lengths: Sequence[bytes], codings: Sequence[bytes]
) -> Optional[int]:
    if len(lengths) + len(codings) > 1:
        if lengths and codings:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        raise BadRequest(400, "repeated framing header")
    if codings:
        if version != b"HTTP/1.1":
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        _check_transfer_coding(codings[0])
        return None
    if lengths:
        return _content_length(lengths[0])
    return 0


def check_head(line: RequestLine, headers: Sequence[Tuple[bytes, bytes]]) -> Head:
    """
    Check a whole request head, each header line having passed
    :func:`check_header_line`.

    - Host: exactly one for HTTP/1.1, at most one for HTTP/1.0, well
      formed, and the same as an absolute target's host.
    - Framing: at most one Content-Length or Transfer-Encoding line, never
      both.  A Content-Length is digits only (any other value, even a
      repeated ``5, 5``, is refused); a Transfer-Encoding is ``chunked``
      (HTTP/1.1 only).  An unknown coding before ``chunked`` gets 501.
    - Connection names none of the framing headers nor those Gourmet sets.

    :raises BadRequest: 400, 413 for a Content-Length of more than 18
        digits, 501 for an unsupported transfer coding.
    """
    hosts: List[bytes] = []
    lengths: List[bytes] = []
    codings: List[bytes] = []
    connection: List[bytes] = []
    wanted = {
        b"host": hosts,
        b"content-length": lengths,
        b"transfer-encoding": codings,
        b"connection": connection,
    }
    for name, value in headers:
        values = wanted.get(name)
        if values is not None:
            values.append(value)
    _check_hosts(line, hosts)
    options = _connection_options(connection)
    close = b"close" in options
    keep_alive = not close and b"keep-alive" in options
    return Head(_body_length(line.version, lengths, codings), close, keep_alive)


def _cancel(call: Optional[IDelayedCall]) -> Optional[IDelayedCall]:
    """
    Cancel ``call`` if it is still to come.

    :return: None, for ``timer = _cancel(timer)``.
    """
    if call is not None and call.active():
        call.cancel()
    return None


class _CheckedChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder (strict about sizes, extensions and CRLFs),
    which also reports each chunk's size before its data, and checks
    trailer lines as header lines: a request line swallowed as a trailer
    when the final CRLF is missing is refused, not dropped.
    """

    def __init__(
        self,
        data: Callable[[bytes], None],
        finish: Callable[[bytes], None],
        chunk_size: Callable[[int], None],
    ) -> None:
        super().__init__(data, finish)
        self._chunk_size = chunk_size

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done = super()._dataReceived_CHUNK_LENGTH()
        if done:
            self._chunk_size(self.length)
        return done

    def _dataReceived_TRAILER(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end > 0:
            check_header_line(bytes(self._buffer[:end]))
        return super()._dataReceived_TRAILER()


class GourmetChannel(HTTPChannel):
    """
    An :class:`HTTPChannel` that refuses what it cannot read unambiguously,
    enforces the ``[server]`` limits (see
    :class:`gourmet.config.model.FrontendConfig`) and answers each refusal with
    a bare status and a closed connection.

    Its site must be a :class:`gourmet.frontend.site.GourmetSite`: the limits are
    its ``frontend``, and it counts connections for ``max_connections``.
    """

    log = Logger()
    site: GourmetSite  # set by the site that builds it

    def __init__(self) -> None:
        super().__init__()
        self._rejected = False
        self._counted = False
        self._receiving = False
        self._lines = 0
        # Set for every request: moved, not rescheduled (gourmet.deadline).
        # Made in connectionMade, when the site and its clock are known.
        self._head_deadline: Optional[Deadline] = None
        self._idle_deadline: Optional[Deadline] = None
        self._body_timer: Optional[IDelayedCall] = None
        self._linger: Optional[IDelayedCall] = None
        self._host: Any = None
        self._peer: Any = None
        self._held_head = b""
        self._body_started = 0.0
        self._reset_request()

    @property
    def _limits(self) -> FrontendConfig:
        limits: FrontendConfig = self.site.frontend
        return limits

    def _reset_request(self) -> None:
        self._request_line: Optional[RequestLine] = None
        self._headers: List[Tuple[bytes, bytes]] = []
        self._head: Optional[Head] = None
        self._head_size = 0
        self._blank_line_seen = False
        self._body_received = 0
        self._body_declared = 0

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        clock = self.site.clock
        self._head_deadline = Deadline(clock, self._head_timed_out)
        self._idle_deadline = Deadline(clock, self.timeoutConnection)
        super().connectionMade()
        tune(self.transport)
        limits = self._limits
        # Twisted's own limits answer 400; Gourmet's, checked first, say why.
        self.totalHeadersSize = limits.max_header_size
        self.maxHeaders = limits.max_headers
        self.MAX_LENGTH = limits.max_request_line
        if not self.site.connection_opened():
            self._reject(BadRequest(503, "too many connections"), linger=False)
            return
        self._counted = True
        self._start_head_timer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadlines()
        self._body_timer = _cancel(self._body_timer)
        self._linger = _cancel(self._linger)
        if self._counted:
            self._counted = False
            self.site.connection_closed()
        super().connectionLost(reason)

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
        if keep_alive_1_0:
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

    # -- the head ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return  # lingering: dropped
        if self.line_mode and data and self._head_deadline.due is None:  # type: ignore[union-attr]
            self._start_head_timer()
        if self._receiving:
            # Pipelined data, replayed as an immediate answer ended the
            # request before it: the call already on the stack parses it.
            super().dataReceived(data)
            return
        lines, pending = self._lines, len(self._buffer)
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
        pending = self._buffer
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

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        # The framing is chosen once the whole head has passed check_head
        # (allHeadersReceived), by Gourmet's rules rather than Twisted's.
        return True

    def allHeadersReceived(self) -> None:
        self._head_deadline.clear()  # type: ignore[union-attr]
        assert self._head is not None  # _check_line set it for this line
        length = self._head.body_length
        request = self.requests[-1]
        if length is None:
            self._transferDecoder = _CheckedChunkedDecoder(
                request.handleContentChunk, self._finishRequestBody, self._chunk_size
            )
        elif length:
            self._transferDecoder = _IdentityTransferDecoder(
                length, request.handleContentChunk, self._finishRequestBody
            )
        self.length = length
        if length != 0:
            self._watch_body_rate()
        # Twisted answers "100 Continue" here, after Gourmet's checks.
        super().allHeadersReceived()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
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
        if not self._handlingRequest:
            self._body_received += len(data)
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
        if self._body_declared > _MAX_BODY:
            raise BadRequest(400, "chunk size too large")

    def allContentReceived(self) -> None:
        self._body_timer = _cancel(self._body_timer)
        self._reset_request()
        self.MAX_LENGTH = self._limits.max_request_line
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # With the head checked before Twisted sees it, what Twisted still
        # refuses itself is a malformed chunked body.
        self._reject(BadRequest(400, "malformed chunked body"))

    # -- deadlines ---------------------------------------------------------

    def _start_head_timer(self) -> None:
        self._head_deadline.set(self._limits.header_timeout)  # type: ignore[union-attr]

    def _head_timed_out(self) -> None:
        if self._lines == 0 and not self._buffer:
            # Nothing asked, nothing to answer: a preconnecting browser or a
            # port scan is closed silently, as nginx does.
            self.log.debug("closed a connection that sent no request")
            self.loseConnection()
            return
        timeout = self._limits.header_timeout
        self._reject(BadRequest(408, f"no whole head within {timeout:g} seconds"))

    def _watch_body_rate(self) -> None:
        """
        From the end of the head, the body must average ``body_min_rate``;
        it is first checked after a grace of ``header_timeout``.
        """
        limits = self._limits
        if not limits.body_min_rate:
            return
        self._body_started = self.site.clock.seconds()
        self._body_received = 0
        self._body_timer = self.callLater(limits.header_timeout, self._check_body_rate)

    def _check_body_rate(self) -> None:
        self._body_timer = None
        rate = self._limits.body_min_rate
        elapsed = self.site.clock.seconds() - self._body_started
        if self._body_received < rate * elapsed:
            self._reject(BadRequest(408, f"body slower than {rate} bytes/s"))
            return
        # Look again when the body would fall behind if nothing more came.
        wait = max(self._body_received / rate - elapsed, _MIN_RATE_CHECK)
        self._body_timer = self.callLater(wait, self._check_body_rate)

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
        self._body_timer = _cancel(self._body_timer)
        self.setTimeout(None)
        self.clearLineBuffer()
        transport: Any = self.transport
        if error.status != 503:
            # Refused connections are logged by the site, once per burst.
            self.log.info(
                "refused a request from {peer}: {status} {reason}",
                peer=getattr(transport.getPeer(), "host", "?"),
                status=error.status,
                reason=error.reason,
            )
        transport.write(refusal(error.status))
        # Only a socket of the reactor's own can be half-closed: a TLS
        # wrapper would pass the half-close to the socket under it.
        plain_socket = isinstance(transport, FileDescriptor)
        if linger and plain_socket:
            transport.unregisterProducer()
            transport.loseWriteConnection()
            self._linger = self.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            self.loseConnection()
