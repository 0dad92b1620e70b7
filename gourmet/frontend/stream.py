"""
One HTTP/2 stream of a client's connection: the channel its request is
read from and its response written to, as twisted.web's ``Request``
expects a channel to be, so that the proxy serves it as it serves an
HTTP/1.1 request.

A stream's request is checked as an HTTP/1.1 head is
(:func:`gourmet.http.h2head.check_h2_head`), its body kept as an HTTP/1.1
body is (in memory when small, else in a temporary file) and passed on
once it has all arrived.  Its response goes out as the client's flow
control allows; what waits is held here, and the upstream is paused once
:data:`HIGH_WATER` bytes wait, so a client that stops reading one stream
costs Gourmet that much, and the other streams go on.
"""

from __future__ import annotations

from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    Deque,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    cast,
)

from h2.errors import ErrorCodes
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from gourmet.deadline import MinimumRate
from gourmet.frontend.channel import note_refusal
from gourmet.http.h2head import H2Head, check_h2_head
from gourmet.http.request import BadRequest
from gourmet.http.tokens import lower_name

if TYPE_CHECKING:
    from gourmet.frontend.site import GourmetRequest, GourmetSite

#: Response bytes a stream holds for its client before it pauses the
#: upstream sending them (the client's window is full, or the connection's).
HIGH_WATER = 65536

#: Response header fields HTTP/2 forbids (RFC 9113, 8.2.2): an upstream's
#: HTTP/1.1 framing and connection management, which end at Gourmet.
_CONNECTION_SPECIFIC = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    }
)


class StreamConnection(Protocol):
    """
    What a stream needs of its connection
    (:class:`gourmet.frontend.http2.Http2Connection`).
    """

    site: GourmetSite
    #: Whether the transport takes more.
    may_send: bool

    def send_headers(
        self,
        stream: Http2Stream,
        fields: Sequence[Tuple[bytes, bytes]],
        end_stream: bool = False,
    ) -> None:
        """
        Frame a head for ``stream``.
        """

    def send_waiting(self, stream: Http2Stream) -> None:
        """
        Send what the windows allow of ``stream``'s response.
        """

    def reset_stream(self, stream: Http2Stream, error_code: int) -> None:
        """
        End ``stream`` with RST_STREAM.
        """

    def stream_closed(self, stream: Http2Stream, answered: bool) -> None:
        """
        ``stream`` is done with.
        """

    def flush(self) -> None:
        """
        Write what is framed.
        """

    def getPeer(self) -> Any:
        """
        The client's address.
        """

    def getHost(self) -> Any:
        """
        Gourmet's address.
        """

    def tls_info(self) -> Tuple[str, Optional[str]]:
        """
        The TLS version and SNI name.
        """


class Http2Stream:
    """
    The channel of one request on an :class:`Http2Connection`: it reads
    the request from the connection's events and writes the response
    through the connection, under the client's flow control.

    It is its request's transport too: ``abortConnection`` resets the
    stream alone, which is how a response cut short ends.

    :ivar request: the request, once its head passed the checks.
    """

    log = Logger()
    #: HTTP/2 is only spoken over TLS (ALPN ``h2``).
    secure = True

    def __init__(self, connection: StreamConnection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.site: GourmetSite = connection.site
        # twisted.web's Request logs through its channel's factory.
        self.factory = self.site
        self.request: Optional[GourmetRequest] = None
        self.producer: Optional[IPushProducer] = None
        self._producer_paused = False
        self._head: Optional[H2Head] = None
        self._pending: Deque[bytes] = deque()
        self.pending_size = 0
        #: The response is all written (requestDone); some may wait.
        self.finishing = False
        #: Nothing more is sent on it: ended, refused or reset.
        self.closed = False
        #: The client has not ended its request yet.
        self.client_sending = True
        self._rate = MinimumRate(self.site.clock, self._too_slow)

    @property
    def transport(self) -> Http2Stream:
        return self

    # -- the request -----------------------------------------------------

    def head_received(self, fields: Sequence[Tuple[bytes, bytes]], ended: bool) -> None:
        """
        The request's header block has arrived; ``ended``: without a body.
        """
        limits = self.site.frontend
        self.client_sending = not ended
        try:
            head = check_h2_head(fields, limits)
        except BadRequest as error:
            self.refuse(error)
            return
        if head.dropped:
            self.site.client_stats.headers_dropped["underscore"] += head.dropped
        request = cast("GourmetRequest", self.site.requestFactory(self, queued=False))
        headers: Headers = request.requestHeaders
        for name, value in head.headers:
            headers.addRawHeader(name, value)
        request.gotLength(0 if ended else head.body_length)
        self.request = request
        self._head = head
        if not ended:
            self._rate.start(limits.body_min_rate, limits.header_timeout)
            if headers.getRawHeaders(b"expect") == [b"100-continue"]:
                self.connection.send_headers(self, [(b":status", b"100")])

    def data_received(self, data: bytes) -> None:
        """
        A piece of the request's body has arrived.
        """
        request = self.request
        if request is None or self.closed:
            return
        rate = self._rate
        rate.received += len(data)
        limit = self.site.frontend.max_body_size
        if limit and rate.received > limit:
            self.refuse(BadRequest(413, f"body larger than {limit} bytes"))
            return
        request.handleContentChunk(data)

    def body_ended(self) -> bool:
        """
        The client has sent the whole request.

        :return: whether it is to be served (it was not refused).
        """
        self._rate.stop()
        self.client_sending = False
        head = self._head
        if self.request is None or self.closed or head is None:
            return False
        length = head.body_length
        if length is not None and self._rate.received != length:
            # h2 checks a body that grows past its length, not one that
            # ends short of it.
            self.refuse(BadRequest(400, "body shorter than its content-length"))
            return False
        return True

    def serve(self) -> None:
        """
        Hand the request to the site, as twisted.web's channel does.
        """
        head = self._head
        if self.request is None or head is None or self.closed:
            return
        self.request.requestReceived(head.method, head.path, b"HTTP/2")

    def _too_slow(self, rate: int) -> None:
        self.refuse(BadRequest(408, f"body slower than {rate} bytes/s"))

    def refuse(self, error: BadRequest) -> None:
        """
        Answer ``error`` with a bare status and end the stream; the other
        streams of the connection go on.
        """
        if self.closed:
            return
        note_refusal(self.log, self.site, self.getPeer(), error)
        fields = [(b":status", b"%d" % error.status), (b"content-length", b"0")]
        if self.site.frontend.server_header:
            fields.append((b"server", b"Gourmet"))
        self.connection.send_headers(self, fields, end_stream=True)
        self._forget_request(Failure(ConnectionLost("request refused")))
        self.connection.stream_closed(self, answered=True)
        # A deadline refuses between reads: nothing else will send it.
        self.connection.flush()

    # -- the response (what twisted.web's Request calls) ----------------

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Headers
    ) -> None:
        fields: List[Tuple[bytes, bytes]] = [(b":status", code)]
        for name, values in headers.getAllRawHeaders():
            name = lower_name(name)
            if name not in _CONNECTION_SPECIFIC:
                fields.extend((name, value) for value in values)
        # HSTS as nginx's add_header adds it, unless the upstream said its own.
        hsts = self.site.frontend.hsts
        if hsts is not None and not headers.hasHeader(b"strict-transport-security"):
            fields.append((b"strict-transport-security", hsts.encode()))
        self.connection.send_headers(self, fields)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._pending.append(data)
        self.pending_size += len(data)
        self.connection.send_waiting(self)

    def writeSequence(self, iovec: Sequence[bytes]) -> None:
        self.write(b"".join(iovec))

    def flush_head(self) -> None:
        """
        Send what is ready: a head waiting for its body's first bytes.
        """
        self.connection.flush()

    def requestDone(self, request: Any) -> None:
        self.finishing = True
        self.connection.send_waiting(self)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError("an HTTP/2 stream takes streaming producers only")
        self.producer = producer
        self._producer_paused = False
        self.producer_may_send(self.connection.may_send)

    def unregisterProducer(self) -> None:
        self.producer = None

    def isSecure(self) -> bool:
        return True

    def getPeer(self) -> Any:
        return self.connection.getPeer()

    def getHost(self) -> Any:
        return self.connection.getHost()

    def tls_info(self) -> Tuple[str, Optional[str]]:
        """
        The connection's TLS version and SNI name, for the access log.
        """
        return self.connection.tls_info()

    def loseConnection(self) -> None:
        # twisted.web's Request asks this of a channel it is done with; a
        # stream ends when its response does (requestDone).
        pass

    def abortConnection(self) -> None:
        """
        Cut the response short: the client sees the stream reset, never a
        whole response.
        """
        if self.closed:
            return
        self.connection.reset_stream(self, ErrorCodes.INTERNAL_ERROR)
        self._forget_request(Failure(ConnectionLost("response cut short")))

    # -- what the connection calls ---------------------------------------

    def take(self, limit: int) -> bytes:
        """
        Up to ``limit`` bytes of the response waiting to be sent.
        """
        pending = self._pending
        chunk = pending[0]
        if len(chunk) <= limit:
            pending.popleft()
        else:
            pending[0] = chunk[limit:]
            chunk = chunk[:limit]
        self.pending_size -= len(chunk)
        return chunk

    def producer_may_send(self, connection_may_send: bool) -> None:
        """
        Pause the response's producer while too much of it waits or the
        connection cannot send; resume it when neither holds.
        """
        producer = self.producer
        if producer is None:
            return
        pause = not connection_may_send or self.pending_size > HIGH_WATER
        if pause != self._producer_paused:
            self._producer_paused = pause
            if pause:
                producer.pauseProducing()
            else:
                producer.resumeProducing()

    def reset_by_client(self) -> bool:
        """
        The client reset the stream (or went away).

        :return: whether the response was still under way.
        """
        self._rate.stop()
        if self.closed:
            return False
        self.closed = True
        premature = not self.finishing
        self._forget_request(Failure(ConnectionLost("stream reset by the client")))
        return premature

    def _forget_request(self, reason: Failure) -> None:
        """
        The stream is closed: a request that did not finish hears of it
        (a response under way stops; its body file closes).
        """
        self.closed = True
        self._rate.stop()
        self._pending.clear()
        self.pending_size = 0
        request, self.request = self.request, None
        if request is not None and not self.finishing:
            request.connectionLost(reason)
