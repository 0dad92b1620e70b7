"""
One client request on its way through the proxy: the servers it tries, the
attempt in progress, the retries, and the response streamed back with
backpressure; failures never look like success to the client.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet._twisted.headers import (
    CheckedHeaders,
)
from gourmet.frontend.accesslog import CLIENT_CLOSED, ProxyRecord
from gourmet.frontend.errors import ErrorPages
from gourmet.frontend.site import GourmetRequest
from gourmet.http.cookies import set_cookie
from gourmet.http.forwarding import (
    HeaderList,
    forwardable,
)
from gourmet.http.redirects import REWRITTEN, RedirectRewrite, authority
from gourmet.http.request_id import REQUEST_ID
from gourmet.http.response import (
    InvalidResponse,
    ResponseHead,
)
from gourmet.http.tokens import (
    lower_name,
)
from gourmet.http.upgrade import switched_to, upgrade_headers
from gourmet.net.splice import Splice
from gourmet.proxy.affinity import affinity
from gourmet.upstream.connection import (
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    HeaderTimeout,
    IResponseReceiver,
    ReadTimeout,
    UpstreamConnection,
    UpstreamError,
    UpstreamRequest,
)
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.proxy_protocol import header_for
from gourmet.upstream.state import Server, Upstream

#: Methods that may be sent again after reaching a server (RFC 9110, 9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def describe(error: BaseException) -> str:
    """
    A short description of an upstream failure, for logs and the console.
    """
    if isinstance(error, ConnectTimeout):
        return "connect timed out"
    if isinstance(error, ConnectFailed):
        return f"connect failed: {error}"
    if isinstance(error, HeaderTimeout):
        return "response head timed out"
    if isinstance(error, ReadTimeout):
        return "read timed out"
    if isinstance(error, ConnectionClosed):
        # A failed TLS verification can surface here, after the handshake
        # (seen on PyPy): keep its reason, it tells the operator what to fix.
        return f"closed before the response was complete ({error.reason})"
    return f"{type(error).__name__}: {error}"


def _error(reason: Failure) -> BaseException:
    error = reason.value
    assert error is not None  # a Failure always holds its exception
    return error


@implementer(IResponseReceiver, IPushProducer)
class ProxyExchange:
    """
    One client request on its way through: the servers it tried, the
    attempt in progress, and whether the client has seen anything yet.

    An attempt runs from picking a server until its response ended or
    failed; ``server`` is that server while it lasts, so that its count of
    requests in flight stays true for ``least_conn`` and the console.
    """

    log = Logger()

    def __init__(
        self,
        request: GourmetRequest,
        upstream: Upstream,
        pool: ConnectionPool,
        error_pages: ErrorPages,
        clock: IReactorTime,
        *,
        method: bytes,
        target: bytes,
        headers: List[Any],
        client_host: Optional[bytes],
        body: Any,
        body_length: int,
        upgrade: Optional[bytes] = None,
        response_rules: Optional[Callable[[HeaderList], HeaderList]] = None,
    ) -> None:
        self.request = request
        self.record: ProxyRecord = request.gourmet_record
        self.upstream = upstream
        self.pool = pool
        self.clock = clock
        self.error_pages = error_pages
        config = self.upstream.config
        self.config = config
        self.method = method
        self.target = target
        #: The request's hash key and sticky cookie, if the upstream uses them.
        self.key, self.sticky, self.headers = affinity(config, headers, request.uri)
        #: The client's Host, for redirects; and to send when preserved.
        self.client_host = client_host
        self.body = body
        self.body_length = body_length
        #: The protocols the request asks to switch to, if it asks.
        self.upgrade = upgrade
        #: The switched connections, once the server accepted the upgrade.
        self.tunnel: Optional[Splice] = None
        #: The location's ``response_headers``, bound to this request.
        self.response_rules = response_rules
        # A request that may have reached a server is sent again only if
        # doing so twice is harmless.
        self.replayable = method in IDEMPOTENT and body_length == 0
        self.tries_left = config.tries or len(self.upstream.servers)
        self.tried: List[Server] = []
        #: The servers that failed this request (once per failure), until
        #: its client gets an answer that says whether it saw them.
        self.failed_on: List[Server] = []
        self.server: Optional[Server] = None
        self.attempt_started = 0.0
        self.connecting: Optional[Deferred[UpstreamConnection]] = None
        self.connection: Optional[UpstreamConnection] = None
        self.replaced_stale = False
        self.responding = False
        self.done = False
        self.last_error: Optional[BaseException] = None
        #: What a new connection to a server starts with (proxy_protocol).
        self.proxy_header: Optional[bytes] = None
        if config.proxy_protocol is not None:
            self.proxy_header = self._proxy_header(config.proxy_protocol)
        request.gourmet_client_gone = self._client_gone

    def _proxy_header(self, version: str) -> bytes:
        """
        The PROXY header with the client's address as Gourmet believes it:
        ``X-Real-IP``, after ``trusted_proxies``.
        """
        client_ip = next(
            value for name, value in reversed(self.headers) if name == b"X-Real-IP"
        )
        request = self.request
        return header_for(
            version, client_ip, request.getClientAddress(), request.getHost()
        )

    # -- choosing a server and sending ----------------------------------

    def start(self) -> None:
        server = self.upstream.try_next(
            self.tried, self.tries_left, self.key, self.sticky
        )
        if server is None:
            self._give_up()
            return
        self.tries_left -= 1
        self.server = server
        self.attempt_started = self.clock.seconds()
        self.record.upstreams.append(server.name)
        self._connect(server)

    def _connect(self, server: Server) -> None:
        # An idle connection is used at once: no Deferred for the usual case.
        idle = self.pool.take_idle(server.origin, self.proxy_header)
        if idle is not None:
            self._connected(idle)
            return
        self._connect_new(server)

    def _connect_new(self, server: Server) -> None:
        connecting = self.pool.connect(server.origin, self.proxy_header)
        self.connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self.connecting = None
        server = self.server
        if self.done or server is None:
            connection.abort()
            return
        self.connection = connection
        request = UpstreamRequest(
            method=self.method,
            target=self.target,
            headers=[(b"Host", self._host_sent(server)), *self.headers],
            body=self.body,
            body_length=self.body_length,
            upgrade=self.upgrade is not None,
        )
        config = self.config
        server.stats.bytes_sent += self.body_length
        connection.send(request, self, config.read_timeout, config.header_timeout)

    def _host_sent(self, server: Server) -> bytes:
        """
        The Host header ``server`` is sent: its own, or the client's.
        """
        if self.config.preserve_host and self.client_host is not None:
            return self.client_host
        return server.origin.host_header

    def _connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if reason.check(CancelledError) or self.done:
            return
        self._attempt_failed(_error(reason), reached=False)

    def _end_attempt(self) -> None:
        server = self.server
        if server is not None:
            self.server = None
            server.attempt_finished()

    def _attempt_failed(self, error: BaseException, reached: bool) -> None:
        """
        The attempt failed before anything went to the client: count it
        against the server and try another one if that is allowed.
        """
        server = self.server
        assert server is not None
        self.connection = None
        self.last_error = error
        timed_out = isinstance(error, (ReadTimeout, ConnectTimeout))
        self.record.upstream_statuses.append("504" if timed_out else "502")
        description = describe(error)
        server.failed(description, responded=False)
        self.failed_on.append(server)
        self._end_attempt()
        self.log.info(
            "{method} {target} to {server} failed: {error}",
            method=self.method,
            target=self.target,
            server=server.name,
            error=description,
        )
        if reached and not self.replayable:
            self._give_up()
        else:
            self.start()

    def _give_up(self) -> None:
        """
        No server may take the request (any more): answer with an error.
        """
        self.done = True
        error = self.last_error
        if error is None:
            status, text = 503, "No server is available to handle this request."
        elif isinstance(error, (ReadTimeout, ConnectTimeout)):
            status, text = 504, "The upstream server did not answer in time."
        else:
            status, text = 502, "The upstream server could not be reached."
        self.upstream.stats.gourmet_statuses[status] += 1
        if error is not None:
            self.tried[-1].stats.gourmet_statuses[status] += 1
        self._settle_failures(seen=True)
        self.error_pages.render(self.request, status, text)

    def _settle_failures(self, seen: bool) -> None:
        """
        The client has its answer: count the failures on the way as seen
        (it got an error) or hidden (a retry answered it well).
        """
        for server in self.failed_on:
            server.failures_settled(seen)
        self.failed_on.clear()

    # -- IResponseReceiver ---------------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        server = self.server
        assert server is not None
        status = head.status
        self.record.upstream_statuses.append(str(status))
        server.responded(status, self.clock.seconds() - self.attempt_started)
        config = self.config
        if status in config.fail_status:
            server.failed(f"status {status}")
            self.failed_on.append(server)
        else:
            server.succeeded()
        if status in config.retry_status and self._may_retry():
            # The body is not wanted: drop the connection rather than read it.
            if self.connection is not None:
                self.connection.abort()
                self.connection = None
            self.last_error = UpstreamError(f"status {status}")
            self._end_attempt()
            self.start()
            return
        self._send_head(head)

    def _may_retry(self) -> bool:
        """
        Whether an answer may be dropped for another server's: only when
        there is one to try, so that the last answer goes to the client, as
        nginx does, rather than becoming Gourmet's 503.
        """
        return (
            self.tries_left > 0
            and self.replayable
            and bool(self.upstream.candidates(self.tried))
        )

    def _send_head(self, head: ResponseHead) -> None:
        if self.failed_on:
            self._settle_failures(seen=head.status in self.config.fail_status)
        request = self.request
        self.responding = True
        request.setResponseCode(head.status, head.reason)
        request.responseHeaders = self._client_headers(head)
        request.registerProducer(self, True)

    def _stick(self, headers: CheckedHeaders) -> None:
        """
        With ``sticky_cookie``, set it to the server that answered, unless
        the client's already names it.
        """
        name = self.config.sticky_cookie
        server = self.server
        if name is None or server is None:
            return
        token = self.upstream.sticky_tokens.token(server.name)
        if token != self.sticky:
            secure = self.request.isSecure()
            headers.add_checked(
                b"Set-Cookie", set_cookie(name.encode("ascii"), token, secure)
            )

    def _client_headers(self, head: ResponseHead) -> CheckedHeaders:
        """
        The response's headers as the client gets them.
        """
        request = self.request
        # Start from empty headers: Twisted's defaults (Server, a
        # Content-Type) must not mix with the upstream's.
        headers = CheckedHeaders()
        redirects = self.config.redirect_rewrite
        passed = forwardable(head.headers, head.connection)
        if self.response_rules is not None:
            passed = self.response_rules(passed)
        for name, value in passed:
            if redirects and lower_name(name) in REWRITTEN:
                value = self._redirect_rewrite().header(lower_name(name), value)
            headers.add_checked(name, value)
        self._stick(headers)
        request_id = request.gourmet_request_id
        if request_id is not None:
            # The ID the server was sent, whatever it answered with.
            headers.set_checked(REQUEST_ID, request_id)
        if not headers.hasHeader(b"date"):
            # twisted.web dated every response when it began the request.
            date = request.responseHeaders.getRawHeaders(b"date", [])
            headers.setRawHeaders(b"date", date)
        # A 204 has no body and may not say it has one (RFC 9110, 8.6).
        if head.content_length is not None and head.status != 204:
            headers.setRawHeaders(b"content-length", [b"%d" % head.content_length])
        # twisted.web says here when it will close the client's connection.
        closing = request.responseHeaders.getRawHeaders(b"connection")
        if closing:
            headers.setRawHeaders(b"connection", closing)
        return headers

    def _redirect_rewrite(self) -> RedirectRewrite:
        """
        How this response's redirects are rewritten: from the server that
        answered, by its address or the Host it was sent, to the proxy as
        the client reached it.
        """
        server = self.server
        assert server is not None  # a response is being received from it
        scheme = server.origin.scheme.encode("ascii")
        named = {
            authority(scheme, server.origin.host_header),
            authority(scheme, self._host_sent(server)),
        }
        request = self.request
        host = self.client_host
        if host is None:
            local = request.getHost()
            address = getattr(local, "host", "localhost")
            address = f"[{address}]" if ":" in address else address
            host = f"{address}:{getattr(local, 'port', 80)}".encode("ascii")
        client_scheme = b"https" if request.isSecure() else b"http"
        return RedirectRewrite(
            {each for each in named if each is not None},
            client_scheme + b"://" + host,
        )

    def response_data(self, data: bytes) -> None:
        server = self.server
        if server is not None:
            server.stats.bytes_received += len(data)
        self.request.write(data)

    def response_end(self) -> None:
        self.connection = None
        self._end_attempt()
        if self.done:
            return
        self.done = True
        request = self.request
        request.unregisterProducer()
        request.finish()

    def response_failed(self, reason: Failure) -> None:
        connection = self.connection
        self.connection = None
        if self.done:
            return
        error = _error(reason)
        if not self.responding:
            if not self._replace_stale(connection, error):
                self._attempt_failed(error, reached=True)
            return
        # Part of the response went out already: the client must see it cut
        # short, never as a complete response.
        self.done = True
        description = describe(error)
        if self.server is not None:
            self.server.failed(description)
            self.failed_on.append(self.server)
            self._settle_failures(seen=True)
        self._end_attempt()
        self.log.info(
            "{method} {target}: response cut short: {error}",
            method=self.method,
            target=self.target,
            error=description,
        )
        request = self.request
        self.record.status = request.code
        request.unregisterProducer()
        request.cut_short()

    def _replace_stale(
        self, connection: Optional[UpstreamConnection], error: BaseException
    ) -> bool:
        """
        A keep-alive connection the server had already closed fails before
        any response byte: send the request again once, on a new
        connection to the same server, without holding it against the
        server, if sending it twice is harmless.
        """
        if (
            connection is None
            or self.server is None
            or not connection.reused
            or self.replaced_stale
            or not self.replayable
            or not isinstance(error, ConnectionClosed)
            or not error.before_response
        ):
            return False
        self.replaced_stale = True
        # A new connection: the other kept ones are likely as stale (the
        # server restarted), and this is the one try left.
        self._connect_new(self.server)
        return True

    # -- a switch of protocols (a WebSocket) ----------------------------

    def response_upgraded(self, head: ResponseHead, data: bytes) -> None:
        """
        The server accepted the upgrade: answer the client's handshake with
        its ``101`` and splice the two connections until either ends.  The
        attempt lasts as long: the server counts it as active.
        """
        server, connection = self.server, self.connection
        assert server is not None and connection is not None
        self.connection = None
        self.record.upstream_statuses.append("101")
        server.responded(101, self.clock.seconds() - self.attempt_started)
        server.succeeded()
        self._settle_failures(seen=False)
        protocols = switched_to(head.headers)
        request = self.request
        channel: Any = request.channel
        if protocols is None or channel is None or channel.transport is None:
            connection.abort()
            if protocols is None:
                self.response_failed(Failure(InvalidResponse("101 without Upgrade")))
            return
        self.responding = True
        request.setResponseCode(101, head.reason)
        headers = self._client_headers(head)
        for name, value in upgrade_headers(protocols):
            headers.setRawHeaders(name, [value])
        channel.writeHeaders(b"HTTP/1.1", b"101", head.reason, headers)
        channel.flush_head()
        frontend = request.site.frontend
        tunnel = Splice(self.clock, frontend.tunnel_idle_timeout, self._tunnel_ended)
        self.tunnel = tunnel
        from_client = channel.start_tunnel(tunnel.client)
        connection.start_tunnel(tunnel.server)
        upstream = connection.transport
        assert upstream is not None  # it just sent the 101
        tunnel.join(channel.transport, upstream, from_client, data)

    def _tunnel_ended(self, tunnel: Splice) -> None:
        self.done = True
        server = self.server
        sent, received = tunnel.client.received, tunnel.server.received
        if server is not None:
            server.stats.bytes_sent += sent
            server.stats.bytes_received += received
        self._end_attempt()
        self.log.info(
            "{method} {target}: {protocols} tunnel to {server} ended after"
            " {duration:.1f} s ({why}): {sent} bytes to the server,"
            " {received} to the client",
            method=self.method,
            target=self.target,
            protocols=self.upgrade,
            server=self.record.upstreams[-1],
            duration=tunnel.duration,
            why=tunnel.why,
            sent=sent,
            received=received,
        )
        request = self.request
        request.sentLength = received
        request.site.log(request)

    # -- IPushProducer (the client's side of the backpressure) ----------

    def pauseProducing(self) -> None:
        if self.connection is not None:
            self.connection.pause_reading()

    def resumeProducing(self) -> None:
        if self.connection is not None:
            self.connection.resume_reading()

    def stopProducing(self) -> None:
        self._client_gone(None)

    # -- the client went away -------------------------------------------

    def _client_gone(self, reason: Optional[Failure]) -> None:
        if self.done or self.tunnel is not None:
            # A tunnel's end is told by its splice.
            return
        self.done = True
        self.record.status = CLIENT_CLOSED
        if self.connecting is not None:
            self.connecting.cancel()
        if self.connection is not None:
            self.connection.abort()
            self.connection = None
        self._end_attempt()
        self.request.site.log(self.request)
