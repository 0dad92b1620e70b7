"""
HTTP/2 to clients (RFC 9113): a connection that the h2 library frames and
keeps the state of, whose streams (:class:`gourmet.frontend.stream.Http2Stream`)
carry requests to the proxy as HTTP/1.1 connections do.

Gourmet drives h2 itself rather than through Twisted's
``twisted.web._http2``, a private module that sends one frame per reactor
turn, queues each stream's response without bound and checks nothing of a
request.  Here a stream's response goes out at once as far as the
client's windows allow, and what waits pauses the upstream.

What the anchors defend against, and how this connection does:

- Rapid reset (CVE-2023-44487): requests are served only after all the
  frames of one read are handled, so a stream reset in the same read never
  reaches an upstream; and a connection whose client resets more than
  :data:`PREMATURE_RESETS` streams before their response ended, more than
  half of those it opened, is closed with ``ENHANCE_YOUR_CALM`` (Envoy's
  rule).
- CONTINUATION floods (2024): h2 refuses a header block of more than 64
  frames, and the deadlines run on whole frames' events only, so a block
  sent a frame at a time gets no more time than any request.
- HPACK bombs: the decoder stops at ``max_header_size`` (plus HPACK's 32
  bytes a field), ``SETTINGS_MAX_HEADER_LIST_SIZE`` as advertised; a
  request over Gourmet's own count of it gets 431.
- Floods of frames that need an answer (PING, SETTINGS): a client that
  does not read what Gourmet sends may leave :data:`UNREAD_LIMIT` bytes
  unread before its connection is cut.
- Too many streams: ``http2_max_concurrent_streams`` is advertised, and a
  client opening more breaks the protocol.

A protocol error closes the whole connection with GOAWAY (h2's choice);
a request Gourmet refuses (:mod:`gourmet.http.h2head`) gets its status on
its own stream, and the connection goes on.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet._twisted.sockets import tune
from gourmet.deadline import Deadline
from gourmet.frontend.channel import LINGER_SECONDS
from gourmet.frontend.stream import Http2Stream
from gourmet.tls.store import tls_details

#: Streams a client may reset before their response ended, on one
#: connection, before the share of them counts (Envoy's
#: ``premature_reset_total_stream_count`` is 500; HTTP/2 clients rarely
#: cancel more than a handful).
PREMATURE_RESETS = 100

#: Bytes Gourmet may write for a client that is not reading (its
#: transport paused) before the connection is cut: answers to PING and
#: SETTINGS, heads of responses.
UNREAD_LIMIT = 256 * 1024

#: Each stream's window for the request body, and the connection's: the
#: body is written to memory or a file as it comes, so it can flow.
_STREAM_WINDOW = 256 * 1024
_CONNECTION_WINDOW = 1024 * 1024

#: HPACK counts 32 bytes a field besides its name and value (RFC 7541, 4.1).
_HPACK_FIELD_OVERHEAD = 32


@implementer(IPushProducer)
class Http2Connection(Protocol):
    """
    A client's HTTP/2 connection to the proxy site, over TLS.

    For the site it is a channel as :class:`GourmetChannel` is: counted
    for ``max_connections``, busy while a stream is open, closed
    gracefully (GOAWAY, then the streams finish) when Gourmet stops.
    """

    log = Logger()
    secure = True
    http2 = True

    def __init__(self, site: Any) -> None:
        self.site = site
        limits = site.frontend
        self.h2 = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                # A response head is Gourmet's: checked when the upstream
                # sent it, its names in lower case and without HTTP/1.1's
                # connection fields (Http2Stream.writeHeaders); h2's own
                # pass over it again took a fifth of a request's time.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        header_list = (
            limits.max_header_size + _HPACK_FIELD_OVERHEAD * limits.max_headers
        )
        self.h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: (
                    limits.http2_max_concurrent_streams
                ),
                SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
                SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            },
        )
        self.h2.decoder.max_header_list_size = header_list
        self.streams: Dict[int, Http2Stream] = {}
        #: Streams with response bytes waiting for a window.
        self._waiting: Dict[int, Http2Stream] = {}
        #: Whether the transport takes more (it has not paused us).
        self.may_send = True
        self._unread = 0
        self._counted = False
        self._closing = False
        #: Closed, or closing after a GOAWAY: nothing more is read or sent.
        self._gone = False
        self._opened = 0
        self._premature = 0
        self._served_one = False
        self._deadline: Optional[Deadline] = None
        self._abort_call: Optional[IDelayedCall] = None
        self._host: Any = None
        self._peer: Any = None
        self._tls_info: Optional[Tuple[str, Optional[str]]] = None

    @property
    def requests(self) -> Dict[int, Http2Stream]:
        """
        The streams open: the site counts a connection with one as busy.
        """
        return self.streams

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        tune(transport)
        transport.registerProducer(self, True)
        h2 = self.h2
        h2.initiate_connection()
        if not self.site.connection_opened(self):
            # Nothing was served: the client may try again elsewhere.
            h2.close_connection(ErrorCodes.REFUSED_STREAM, last_stream_id=0)
            self._lose()
            return
        self._counted = True
        h2.increment_flow_control_window(_CONNECTION_WINDOW)
        self.flush()
        # The first request must come as an HTTP/1.1 head must: within
        # header_timeout; then the connection may idle for idle_timeout.
        self._deadline = Deadline(self.site.clock, self._timed_out)
        self._deadline.set(self.site.frontend.header_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        streams = list(self.streams.values())
        self.streams.clear()
        self._waiting.clear()
        for stream in streams:
            stream.reset_by_client()
        if self._counted:
            self._counted = False
            self.site.connection_closed(self)

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = self.transport.getPeer()  # type: ignore[union-attr]
        return self._peer

    def getHost(self) -> Any:
        if self._host is None:
            self._host = self.transport.getHost()  # type: ignore[union-attr]
        return self._host

    def tls_info(self) -> Tuple[str, Optional[str]]:
        """
        The TLS version and SNI name, read once a connection.
        """
        if self._tls_info is None:
            self._tls_info = tls_details(self.transport.getHandle())  # type: ignore[union-attr]
        return self._tls_info

    def close_when_idle(self) -> None:
        """
        Gourmet is stopping: tell the client with GOAWAY that no new stream
        will be served, and close once the open ones are answered.
        """
        if self._closing:
            return
        self._closing = True
        if not self.streams:
            self._close(ErrorCodes.NO_ERROR)
            return
        # h2 would refuse to send anything more after its own GOAWAY, so
        # this one is framed here, after what h2 has waiting.
        self.flush()
        goaway = GoAwayFrame(stream_id=0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self._write(goaway.serialize())

    def _close(self, error_code: int) -> None:
        if not self._gone:
            self.h2.close_connection(error_code)
            self._lose()

    def _lose(self) -> None:
        """
        Send what h2 has framed (its GOAWAY last) and close.
        """
        self.flush()
        self._gone = True
        transport: Any = self.transport
        # A TLS transport closes only once its producer is gone, and then
        # waits for the client's close_notify: a client that never sends
        # it (or keeps sending) is cut off, as HTTP/1.1 refusals are.
        transport.unregisterProducer()
        transport.loseConnection()
        self._abort_call = self.site.clock.callLater(
            LINGER_SECONDS, transport.abortConnection
        )

    def _timed_out(self) -> None:
        self.log.debug("closed an idle HTTP/2 connection")
        self._close(ErrorCodes.NO_ERROR)

    # -- receiving -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as error:
            self._protocol_error(error)
            return
        ready: List[Http2Stream] = []
        for event in events:
            self._handle(event, ready)
        if events and not self.streams and self._deadline is not None:
            self._deadline.set(self._idle_period())
        self.flush()
        # Served only now: a stream reset in this read never reached here.
        for stream in ready:
            stream.serve()

    def _handle(self, event: Any, ready: List[Http2Stream]) -> None:
        kind = type(event)
        if kind is RequestReceived:
            self._request_received(event)
        elif kind is DataReceived:
            self._data_received(event)
        elif kind is StreamEnded:
            self._request_ended(event.stream_id, ready)
        elif kind is WindowUpdated or kind is RemoteSettingsChanged:
            self._send_all_waiting()
        elif kind is StreamReset:
            self._stream_reset(event.stream_id)
        elif kind is ConnectionTerminated:
            # The client said GOAWAY: h2 sends nothing more after it.
            self._lose()

    def _request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self._closing:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self._opened += 1
        stream = Http2Stream(self, stream_id)
        self.streams[stream_id] = stream
        if self._deadline is not None:
            self._deadline.clear()
        self._served_one = True
        stream.head_received(event.headers, event.stream_ended is not None)

    def _data_received(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.data_received(event.data)
        # The body is stored as it comes: the client may send more at once.
        with contextlib.suppress(StreamClosedError):
            self.h2.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )

    def _request_ended(self, stream_id: int, ready: List[Http2Stream]) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.body_ended():
            ready.append(stream)

    def _stream_reset(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        self._waiting.pop(stream_id, None)
        if stream is None or not stream.reset_by_client():
            return
        self._premature += 1
        if self._premature > PREMATURE_RESETS and self._premature * 2 > self._opened:
            self.log.warn(
                "closed an HTTP/2 connection from {peer}: {resets} of its"
                " {streams} streams reset before their response ended",
                peer=getattr(self.getPeer(), "host", "?"),
                resets=self._premature,
                streams=self._opened,
            )
            self.site.client_stats.protocol_errors["rapid_reset"] += 1
            self._close(ErrorCodes.ENHANCE_YOUR_CALM)

    def _protocol_error(self, error: ProtocolError) -> None:
        self.log.info(
            "closed an HTTP/2 connection from {peer}: {error}",
            peer=getattr(self.getPeer(), "host", "?"),
            error=error,
        )
        self.site.client_stats.protocol_errors["protocol"] += 1
        # h2 has framed its GOAWAY with the error's code.
        self._lose()

    def _idle_period(self) -> float:
        limits = self.site.frontend
        return limits.idle_timeout if self._served_one else limits.header_timeout

    # -- sending (what streams call) -------------------------------------

    def send_headers(
        self,
        stream: Http2Stream,
        fields: Sequence[Tuple[bytes, bytes]],
        end_stream: bool = False,
    ) -> None:
        """
        Frame a response head (sent with the next flush).
        """
        if self._gone:
            return
        try:
            self.h2.send_headers(stream.stream_id, fields, end_stream=end_stream)
        except StreamClosedError:
            self.stream_closed(stream, answered=False)

    def send_waiting(self, stream: Http2Stream) -> None:
        """
        Send what the client's windows allow of ``stream``'s response, and
        end it if it is all written.
        """
        if stream.closed or self._gone:
            return
        self._send_some(stream)
        self.flush()

    def _send_some(self, stream: Http2Stream) -> None:
        h2 = self.h2
        stream_id = stream.stream_id
        try:
            while stream.pending_size and self.may_send:
                window = min(
                    h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size
                )
                if window <= 0:
                    break
                h2.send_data(stream_id, stream.take(window))
            if not stream.pending_size and stream.finishing:
                h2.end_stream(stream_id)
                self.stream_closed(stream, answered=True)
                return
        except StreamClosedError:
            self.stream_closed(stream, answered=False)
            return
        if stream.pending_size:
            self._waiting[stream_id] = stream
        else:
            self._waiting.pop(stream_id, None)
        stream.producer_may_send(self.may_send)

    def _send_all_waiting(self) -> None:
        for stream in list(self._waiting.values()):
            if not self.may_send or self._gone:
                return
            self._send_some(stream)

    def reset_stream(self, stream: Http2Stream, error_code: int) -> None:
        """
        End ``stream`` at once with RST_STREAM.
        """
        if not self._gone:
            with contextlib.suppress(StreamClosedError):
                self.h2.reset_stream(stream.stream_id, error_code)
        self.stream_closed(stream, answered=False)
        self.flush()

    def stream_closed(self, stream: Http2Stream, answered: bool) -> None:
        """
        ``stream`` is done with: its response was sent whole (``answered``)
        or it was reset.  A client still sending its request is told to
        stop (RST_STREAM NO_ERROR, as RFC 9113, 8.1 has it).
        """
        stream.closed = True
        stream_id = stream.stream_id
        self.streams.pop(stream_id, None)
        self._waiting.pop(stream_id, None)
        if answered and stream.client_sending and not self._gone:
            self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        if not self.streams:
            if self._closing:
                self._close(ErrorCodes.NO_ERROR)
            elif self._deadline is not None:
                self._deadline.set(self._idle_period())

    def flush(self) -> None:
        """
        Write what h2 has framed.
        """
        data = self.h2.data_to_send()
        if data and not self._gone:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if not self.may_send:
            self._unread += len(data)
            if self._unread > UNREAD_LIMIT:
                self.log.info(
                    "cut an HTTP/2 connection from {peer}: {size} bytes unread",
                    peer=getattr(self.getPeer(), "host", "?"),
                    size=self._unread,
                )
                self.site.client_stats.protocol_errors["unread"] += 1
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
        self.transport.write(data)  # type: ignore[union-attr]

    # -- IPushProducer: the transport's backpressure ---------------------

    def pauseProducing(self) -> None:
        self.may_send = False
        self._unread = 0
        for stream in self.streams.values():
            stream.producer_may_send(False)

    def resumeProducing(self) -> None:
        self.may_send = True
        self._send_all_waiting()
        self.flush()
        for stream in list(self.streams.values()):
            stream.producer_may_send(True)

    def stopProducing(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()
