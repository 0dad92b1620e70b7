"""
An HTTP/1.1 client connection to one upstream server, made for proxying.

Twisted's own client (``Agent``, ``HTTP11ClientProtocol``) parses a
response into a ``Response`` whose body arrives through a second protocol,
and ``twisted.web.proxy.ProxyClient`` speaks HTTP/1.0; a proxy wants less:
the response head as parsed, then its body bytes as they come, with a way
to stop reading when the client is slow.  :class:`UpstreamConnection` does
that and no more, and it is strict: anything it cannot frame with certainty
is an :class:`InvalidResponse`, never a guess, because a response framed
differently by the proxy and the server desynchronises the connection.
"""

from __future__ import annotations

import re
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import Interface, alsoProvides, implementer

from gourmet._twisted.sockets import tune
from gourmet.config.origin import Origin
from gourmet.deadline import Deadline
from gourmet.http.response import (
    InvalidResponse,
    ResponseHead,
    keeps_alive,
    parse_head,
)
from gourmet.net.splice import SpliceEnd

HeaderList = List[Tuple[bytes, bytes]]

#: Bodies up to this size are sent in the same write as the request head.
SMALL_BODY = 64 * 1024
#: The longest response head (status line and headers) accepted.
MAX_HEAD = 64 * 1024
#: The longest chunk-size line accepted.
MAX_CHUNK_LINE = 4096
_CHUNK_SIZE = re.compile(rb"\A([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?\Z")
_NO_BODY_STATUSES = frozenset({204, 304})


class UpstreamError(Exception):
    """
    A request to an upstream server failed.
    """


class ConnectFailed(UpstreamError):
    """
    No connection to the server could be made.
    """


class ConnectTimeout(ConnectFailed):
    """
    The connection (and TLS handshake) took longer than ``connect_timeout``.
    """


class ReadTimeout(UpstreamError):
    """
    The server sent nothing for ``read_timeout`` seconds.
    """


class HeaderTimeout(ReadTimeout):
    """
    The response head was not complete ``header_timeout`` seconds after the
    request was sent.
    """


class ConnectionClosed(UpstreamError):
    """
    The connection ended before the response was complete.

    :ivar reason: why, as the transport told it.
    :ivar before_response: no byte of a response had arrived, as when a
        server closes an idle keep-alive connection just as a request is
        sent on it.
    """

    def __init__(self, reason: str, before_response: bool) -> None:
        super().__init__(f"connection closed: {reason}")
        self.reason = reason
        self.before_response = before_response


@frozen
class UpstreamRequest:
    """
    A request as it goes to the server.

    :ivar headers: every header, ``Host`` included, but no framing headers:
        ``Content-Length`` is added here for the body.
    :ivar body: the body to send, or None for a request without one.
    :ivar body_length: its length in bytes.
    :ivar upgrade: whether ``headers`` ask for an upgrade, so that a
        ``101 Switching Protocols`` is an answer rather than an error.
    """

    method: bytes
    target: bytes
    headers: HeaderList
    body: Optional[BinaryIO] = None
    body_length: int = 0
    upgrade: bool = False


class IResponseReceiver(Interface):
    """
    Told about the response to a request sent with
    :meth:`UpstreamConnection.send`: first ``response_head``, then any number
    of ``response_data``, then ``response_end``; or ``response_failed`` at
    any point.  After :meth:`UpstreamConnection.abort` it is told nothing.
    """

    def response_head(head: ResponseHead) -> None:
        """
        The final (non-1xx) status line and headers arrived.
        """

    def response_data(data: bytes) -> None:
        """
        Some bytes of the body, unframed.
        """

    def response_end() -> None:
        """
        The whole response arrived; the connection went back to its pool
        (or was closed, if it cannot be used again).
        """

    def response_failed(reason: Failure) -> None:
        """
        The request failed: the reason's value is an :class:`UpstreamError`.
        """

    def response_upgraded(head: ResponseHead, data: bytes) -> None:
        """
        The server switched protocols (``101``) as an upgrade request asked:
        the connection is no longer HTTP, and is the receiver's to splice
        with :meth:`UpstreamConnection.start_tunnel`; ``data`` came after
        the head.
        """


class _State:
    IDLE = "idle"
    HEAD = "head"
    LENGTH = "length"
    CHUNK_SIZE = "chunk size"
    CHUNK_DATA = "chunk data"
    CHUNK_END = "chunk end"
    TRAILERS = "trailers"
    UNTIL_CLOSE = "until close"
    TUNNEL = "tunnel"
    CLOSED = "closed"


@implementer(IHandshakeListener)
class UpstreamConnection(Protocol):
    """
    One connection to one server, carrying one request at a time.

    :ivar origin: the server this connects to.
    :ivar reused: whether a request was sent on this connection before the
        current one.
    :ivar requests: how many requests were sent on it.
    :ivar proxy_header: the PROXY protocol header it started with (it
        speaks for that client only); None: none.
    """

    proxy_header: Optional[bytes] = None

    def __init__(
        self,
        origin: Origin,
        clock: IReactorTime,
        on_idle: Callable[[UpstreamConnection], None],
        on_lost: Callable[[UpstreamConnection], None],
    ) -> None:
        self.origin = origin
        self.clock = clock
        self._on_idle = on_idle
        self._on_lost = on_lost
        self.requests = 0
        self.ready: Deferred[UpstreamConnection] = Deferred()
        self._state = _State.IDLE
        self._receiver: Optional[IResponseReceiver] = None
        self._buffer = b""
        self._left = 0
        self._got_bytes = False
        self._keep_alive = False
        self._body_sent = True
        self._sender: Optional[FileSender] = None
        self._timeout = 0.0
        self._header_timeout = 0.0
        self._sent_at = 0.0
        self._deadline = Deadline(clock, self._check_timeout)
        self._last_read = 0.0
        self._paused = False
        self._request_method = b""
        self._upgrade = False
        self._tunnel: Optional[SpliceEnd] = None

    @property
    def reused(self) -> bool:
        return self.requests > 1

    @property
    def idle(self) -> bool:
        return self._state == _State.IDLE and self.transport is not None

    # -- connection events -----------------------------------------------

    def connectionMade(self) -> None:
        tune(self.transport)
        # Over TLS, the connection is ready only once the handshake is done.
        if not self.origin.is_tls:
            self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        if not self.ready.called:
            self.ready.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state = self._state
        self._state = _State.CLOSED
        self._deadline.cancel()
        if not self.ready.called:
            self.ready.errback(ConnectFailed(_reason_text(reason)))
        self._on_lost(self)
        if self._tunnel is not None:
            self._tunnel.lost(reason)
        elif state == _State.UNTIL_CLOSE and reason.check(ConnectionDone):
            self._finish(reusable=False)
        elif self._receiver is not None:
            self._fail(
                ConnectionClosed(
                    _reason_text(reason),
                    before_response=not self._got_bytes,
                )
            )

    # -- sending --------------------------------------------------------

    def send(
        self,
        request: UpstreamRequest,
        receiver: IResponseReceiver,
        read_timeout: float,
        header_timeout: Optional[float] = None,
    ) -> None:
        """
        Send ``request``; ``receiver`` hears about the response.

        :param read_timeout: the longest silence from the server, before and
            after the response head.
        :param header_timeout: the longest wait, once the request is sent,
            for the whole response head; ``read_timeout`` when None.
        """
        assert self._state == _State.IDLE and self.transport is not None
        self.requests += 1
        self._receiver = receiver
        self._request_method = request.method
        self._upgrade = request.upgrade
        self._state = _State.HEAD
        self._got_bytes = False
        self.resume_reading()
        self._timeout = read_timeout
        if header_timeout is None:
            header_timeout = read_timeout
        self._header_timeout = header_timeout
        self._sent_at = self._last_read = self.clock.seconds()
        self._deadline.set(min(read_timeout, header_timeout))
        # One join: no formatted copy of each line, nor of the whole head.
        pieces = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
        for name, value in request.headers:
            pieces += (name, b": ", value, b"\r\n")
        body = request.body
        if body is not None:
            pieces.append(b"Content-Length: %d\r\n" % request.body_length)
        pieces.append(b"\r\n")
        head = b"".join(pieces)
        if body is None or request.body_length == 0:
            self.transport.write(head)
        elif request.body_length <= SMALL_BODY:
            body.seek(0)
            self.transport.write(head + body.read())
        else:
            self.transport.write(head)
            self._send_body(body)

    def _send_body(self, body: BinaryIO) -> None:
        body.seek(0)
        self._body_sent = False
        sender = self._sender = FileSender()
        sending = sender.beginFileTransfer(body, self.transport)

        def sent(_: object) -> None:
            self._sender = None
            self._body_sent = True
            # The server's time to answer starts once it has the request.
            self._sent_at = self._last_read = self.clock.seconds()

        sending.addCallbacks(sent, lambda _: None)

    # -- flow control -----------------------------------------------------

    def pause_reading(self) -> None:
        """
        Stop reading the response until :meth:`resume_reading`; the server is
        held back by TCP.  The read timeout does not run meanwhile.
        """
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = self.clock.seconds()
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def abort(self) -> None:
        """
        Drop the connection at once; the receiver is told nothing more.
        """
        self._receiver = None
        self._deadline.cancel()
        self._stop_sending()
        if self._state != _State.CLOSED:
            self._state = _State.CLOSED
            self.transport.abortConnection()  # type: ignore[union-attr]

    def close(self) -> None:
        """
        Close an idle connection politely.
        """
        if self.transport is not None and self._state != _State.CLOSED:
            self.transport.loseConnection()

    # -- the read timeout ---------------------------------------------------

    def _check_timeout(self) -> None:
        # Checked when due rather than moved on every read, which would cost
        # more than the rare early check.
        # While the body is still going out or the client holds the response
        # back, the server is not the one keeping us waiting.
        now = self.clock.seconds()
        if not self._body_sent:
            # Back in time for the head's deadline, which starts once sent.
            due = now + min(self._timeout, self._header_timeout)
        elif self._paused:
            due = now + self._timeout
        else:
            due = self._last_read + self._timeout
        head_due = self._sent_at + self._header_timeout
        waiting_for_head = self._state == _State.HEAD and self._body_sent
        if waiting_for_head:
            due = min(due, head_due)
        if now < due:
            self._deadline.set(due - now)
            return
        if waiting_for_head and now >= head_due:
            self._fail(
                HeaderTimeout(f"no response head within {self._header_timeout:g} s")
            )
        else:
            self._fail(ReadTimeout(f"no response bytes for {self._timeout:g} s"))

    def _stop_sending(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    # -- parsing ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.data(data)
            return
        if self._state == _State.IDLE:
            # Bytes nobody asked for: the connection cannot be trusted.
            self.abort()
            return
        self._got_bytes = True
        self._last_read = self.clock.seconds()
        self._buffer += data
        try:
            self._parse()
        except InvalidResponse as error:
            self._fail(error)

    def _parse(self) -> None:
        while self._receiver is not None:
            step = _PARSERS.get(self._state)
            if step is None or not step(self):
                return

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise InvalidResponse("response head too long")
            return False
        if end > MAX_HEAD:
            raise InvalidResponse("response head too long")
        raw, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        head = parse_head(raw)
        if head.status == 101:
            self._switch(head)
            return False
        if head.status < 200:
            return True  # an interim response: the real one follows
        self._keep_alive = keeps_alive(head)
        self._frame_body(head)
        receiver = self._receiver
        assert receiver is not None
        receiver.response_head(head)
        return True

    def _switch(self, head: ResponseHead) -> None:
        """
        A ``101``: the connection leaves HTTP, if its request asked to.
        """
        if not self._upgrade:
            raise InvalidResponse("101 Switching Protocols was not asked for")
        if not self._body_sent:
            raise InvalidResponse("101 Switching Protocols before the request's body")
        receiver = self._receiver
        assert receiver is not None
        self._receiver = None
        self._state = _State.TUNNEL
        self._deadline.cancel()
        data, self._buffer = self._buffer, b""
        receiver.response_upgraded(head, data)

    def start_tunnel(self, end: SpliceEnd) -> None:
        """
        Pass every event of this switched connection to ``end``, a half
        close too: its transport is the splice's from now on.
        """
        self._tunnel = end
        alsoProvides(self, IHalfCloseableProtocol)
        self.resume_reading()

    def readConnectionLost(self) -> None:
        # Only once start_tunnel declared IHalfCloseableProtocol.
        assert self._tunnel is not None
        self._tunnel.read_ended()

    def writeConnectionLost(self) -> None:
        pass

    def _frame_body(self, head: ResponseHead) -> None:
        if self._request_method == b"HEAD" or head.status in _NO_BODY_STATUSES:
            self._state = _State.LENGTH
            self._left = 0
            # A 204 may not announce a body (RFC 9110, 8.6 and 9112, 6.1); one
            # that does may send it too, and the connection cannot be trusted.
            # HEAD and 304 responses announce the body they leave out; bytes
            # that follow them anyway end the connection in _parse_length or
            # dataReceived.
            if head.status == 204 and (head.content_length or head.chunked):
                self._keep_alive = False
        elif head.chunked:
            self._state = _State.CHUNK_SIZE
        elif head.content_length is not None:
            self._state = _State.LENGTH
            self._left = head.content_length
        else:
            self._state = _State.UNTIL_CLOSE
            self._keep_alive = False

    def _deliver(self, data: bytes) -> None:
        if data and self._receiver is not None:
            self._receiver.response_data(data)

    def _parse_length(self) -> bool:
        if self._left == 0:
            self._finish(reusable=self._keep_alive and not self._buffer)
            return False
        data = self._buffer[: self._left]
        self._buffer = self._buffer[len(data) :]
        self._left -= len(data)
        self._deliver(data)
        return self._left == 0

    def _parse_until_close(self) -> bool:
        data, self._buffer = self._buffer, b""
        self._deliver(data)
        return False

    def _parse_chunk_size(self) -> bool:
        line = self._line(MAX_CHUNK_LINE, "chunk size line")
        if line is None:
            return False
        match = _CHUNK_SIZE.match(line)
        if match is None:
            raise InvalidResponse(f"bad chunk size line {line[:40]!r}")
        self._left = int(match[1], 16)
        self._state = _State.CHUNK_DATA if self._left else _State.TRAILERS
        return True

    def _parse_chunk_data(self) -> bool:
        data = self._buffer[: self._left]
        self._buffer = self._buffer[len(data) :]
        self._left -= len(data)
        if self._left == 0:
            self._state = _State.CHUNK_END
        self._deliver(data)
        return self._left == 0

    def _parse_chunk_end(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            raise InvalidResponse("chunk data longer than its size")
        self._buffer = self._buffer[2:]
        self._state = _State.CHUNK_SIZE
        return True

    def _parse_trailers(self) -> bool:
        # Trailers are read and dropped: twisted.web cannot send them on.
        while True:
            line = self._line(MAX_HEAD, "trailer")
            if line is None:
                return False
            if not line:
                self._finish(reusable=self._keep_alive and not self._buffer)
                return False

    def _line(self, limit: int, what: str) -> Optional[bytes]:
        end = self._buffer.find(b"\r\n", 0, limit + 2)
        if end < 0:
            if len(self._buffer) > limit:
                raise InvalidResponse(f"{what} too long")
            return None
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        return line

    # -- the end of a response ----------------------------------------------

    def _finish(self, reusable: bool) -> None:
        receiver = self._receiver
        self._receiver = None
        # Cleared, not cancelled: the next request sets it again (see
        # gourmet.deadline).
        self._deadline.clear()
        reusable = reusable and self._body_sent and self._state != _State.CLOSED
        if reusable:
            self._state = _State.IDLE
            # The client may have paused us during the last bytes: an idle
            # connection must read, to see the server close it, and the next
            # request's answer must be read.
            self.resume_reading()
            self._on_idle(self)
        else:
            self._stop_sending()
            if self._state != _State.CLOSED:
                self._state = _State.CLOSED
                self.transport.loseConnection()  # type: ignore[union-attr]
        if receiver is not None:
            receiver.response_end()

    def _fail(self, error: Exception) -> None:
        receiver = self._receiver
        self.abort()
        if receiver is not None:
            receiver.response_failed(Failure(error))


#: What reads the buffer in each state: each returns whether it may go on.
_PARSERS: Dict[str, Callable[[UpstreamConnection], bool]] = {
    _State.HEAD: UpstreamConnection._parse_head,
    _State.LENGTH: UpstreamConnection._parse_length,
    _State.CHUNK_SIZE: UpstreamConnection._parse_chunk_size,
    _State.CHUNK_DATA: UpstreamConnection._parse_chunk_data,
    _State.CHUNK_END: UpstreamConnection._parse_chunk_end,
    _State.TRAILERS: UpstreamConnection._parse_trailers,
    _State.UNTIL_CLOSE: UpstreamConnection._parse_until_close,
}


def _reason_text(reason: Failure) -> str:
    text = str(reason.value)
    return text.splitlines()[0] if text else type(reason.value).__name__
