"""
Keep-alive connections to upstream servers, kept per origin and reused
most-recently-used first, so that a busy proxy opens almost none.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet import endpoints, ssl
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import (
    ConnectingCancelledError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gourmet.config.origin import Origin
from gourmet.upstream.connection import (
    ConnectFailed,
    ConnectTimeout,
    UpstreamConnection,
)
from gourmet.upstream.proxy_protocol import HeaderFirstEndpoint

#: Seconds an idle connection beyond ``max_idle_per_origin`` is kept.  The
#: responses to a burst of requests come back in one turn of the reactor,
#: and the clients' next requests in the next: closing the surplus at once
#: made a new connection for about half the requests at 256 clients.
SURPLUS_GRACE = 1.0


class ConnectionPool:
    """
    Connections to the servers of one upstream.

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``; all
        connections and timers go through it.
    :param max_idle_per_origin: idle connections kept per server; those
        beyond it, least recently used first, are closed once they have
        been idle for :data:`SURPLUS_GRACE`.
    :param idle_timeout: seconds an idle connection is kept.
    :param connect_timeout: seconds allowed for connecting, TLS included.
    :param trust_root: for HTTPS upstreams, an ``IOpenSSLTrustRoot`` of the
        certificate authorities trusted (the platform's by default).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        max_idle_per_origin: int = 32,
        idle_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        trust_root: Optional[Any] = None,
    ) -> None:
        self.reactor = reactor
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.trust_root = trust_root
        self._idle: Dict[Origin, List[UpstreamConnection]] = {}
        self._idle_since: Dict[UpstreamConnection, float] = {}
        self._all: Set[UpstreamConnection] = set()
        self._lost: Dict[UpstreamConnection, Deferred[None]] = {}
        self._connecting: Set[Deferred[UpstreamConnection]] = set()
        self._sweeper: Optional[IDelayedCall] = None
        self._trimmer: Optional[IDelayedCall] = None
        self._closing = False
        #: The servers whose connections are kept when idle; None: all.
        self._wanted: Optional[Set[Origin]] = None
        #: Idle and busy connections worker processes hold, by server, told
        #: to their supervisor's pool (which holds none).
        self.elsewhere: Dict[Origin, Tuple[int, int]] = {}

    def idle_count(self, origin: Optional[Origin] = None) -> int:
        """
        Idle connections kept, to ``origin`` or to all servers.
        """
        if origin is not None:
            return len(self._idle.get(origin, ()))
        return sum(len(idle) for idle in self._idle.values())

    def connection_counts(self, origin: Origin) -> Tuple[int, int]:
        """
        Connections to ``origin`` that are idle, and those carrying a
        request (connecting ones are in neither).
        """
        idle = self.idle_count(origin)
        open_ = sum(1 for connection in self._all if connection.origin == origin)
        # A supervisor's pool holds none: its workers' are told to it.
        idle_elsewhere, busy_elsewhere = self.elsewhere.get(origin, (0, 0))
        return idle + idle_elsewhere, open_ - idle + busy_elsewhere

    # -- getting a connection ---------------------------------------------

    def acquire(
        self, origin: Origin, proxy_header: Optional[bytes] = None
    ) -> Deferred[UpstreamConnection]:
        """
        A connection to ``origin`` for one request: an idle one at once when
        there is one, otherwise a new one once it is connected (and its TLS
        handshake done).  Cancelling the Deferred abandons the attempt.

        The connection goes back to the pool by itself when its response
        has been read whole, and is dropped when it cannot be reused.

        :param proxy_header: the PROXY protocol header a new connection
            starts with; only a connection that started with it is reused.
        """
        connection = self.take_idle(origin, proxy_header)
        if connection is not None:
            return succeed(connection)
        return self.connect(origin, proxy_header)

    def take_idle(
        self, origin: Origin, proxy_header: Optional[bytes] = None
    ) -> Optional[UpstreamConnection]:
        """
        An idle connection to ``origin`` (that started with
        ``proxy_header``), taken from the pool, if there is one: what
        :meth:`acquire` gives at once, without a Deferred.
        """
        idle = self._idle.get(origin)
        if not idle:
            return None
        # Most recently used first.  A connection that started with a PROXY
        # header speaks for its client only: it is private to that header.
        for index in range(len(idle) - 1, -1, -1):
            connection = idle[index]
            if connection.proxy_header != proxy_header:
                continue
            del idle[index]
            self._idle_since.pop(connection, None)
            if connection.idle:
                return connection
        return None

    def connect(
        self, origin: Origin, proxy_header: Optional[bytes] = None
    ) -> Deferred[UpstreamConnection]:
        """
        A new connection to ``origin``, as :meth:`acquire` makes when none
        is idle, starting with ``proxy_header`` if given.
        """
        connection = UpstreamConnection(
            origin, self.reactor, self._connection_idle, self._connection_lost
        )
        connection.proxy_header = proxy_header
        endpoint = self._endpoint(origin, proxy_header)
        connecting = endpoint.connect(OneProtocol(connection))
        result: Deferred[UpstreamConnection] = Deferred(
            lambda _: self._abandon(connecting, connection)
        )
        timer = self.reactor.callLater(
            self.connect_timeout, self._timed_out, result, connecting, connection
        )

        def connected(_: object) -> Deferred[UpstreamConnection]:
            self._all.add(connection)
            return connection.ready

        def settle(outcome: Any) -> None:
            self._connecting.discard(result)
            if timer.active():
                timer.cancel()
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(connect_error(outcome))
            else:
                result.callback(outcome)

        self._connecting.add(result)
        connecting.addCallback(connected).addBoth(settle)
        return result

    def _endpoint(
        self, origin: Origin, proxy_header: Optional[bytes] = None
    ) -> IStreamClientEndpoint:
        return origin_endpoint(
            self.reactor, origin, self.connect_timeout, self.trust_root, proxy_header
        )

    def _timed_out(
        self,
        result: Deferred[UpstreamConnection],
        connecting: Deferred[Any],
        connection: UpstreamConnection,
    ) -> None:
        if not result.called:
            result.errback(
                ConnectTimeout(f"no connection within {self.connect_timeout:g} s")
            )
        self._abandon(connecting, connection)

    def _abandon(
        self, connecting: Deferred[Any], connection: UpstreamConnection
    ) -> None:
        if not connecting.called:
            connecting.cancel()
        elif connection.transport is not None:
            connection.abort()

    # -- connections coming back and going away ---------------------------

    def keep_only(self, origins: Set[Origin]) -> None:
        """
        Keep connections to ``origins`` only (a reload removed the other
        servers): idle ones to others are closed now, busy ones once
        their response is read.
        """
        self._wanted = set(origins)
        for origin in [each for each in self._idle if each not in origins]:
            for connection in self._idle.pop(origin):
                self._idle_since.pop(connection, None)
                connection.close()
        if not self._idle_since and self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _connection_idle(self, connection: UpstreamConnection) -> None:
        wanted = self._wanted
        if (
            self._closing
            or self.max_idle_per_origin <= 0
            or (wanted is not None and connection.origin not in wanted)
        ):
            connection.close()
            return
        idle = self._idle.setdefault(connection.origin, [])
        idle.append(connection)
        self._idle_since[connection] = self.reactor.seconds()
        if len(idle) > self.max_idle_per_origin and self._trimmer is None:
            self._trimmer = self.reactor.callLater(SURPLUS_GRACE, self._trim)
        if self._sweeper is None:
            self._sweeper = self.reactor.callLater(self.idle_timeout, self._sweep)

    def _connection_lost(self, connection: UpstreamConnection) -> None:
        self._all.discard(connection)
        if self._idle_since.pop(connection, None) is not None:
            self._idle[connection.origin].remove(connection)
        lost = self._lost.pop(connection, None)
        if lost is not None:
            lost.callback(None)

    def _trim(self) -> None:
        """
        Close the idle connections beyond ``max_idle_per_origin`` that have
        been idle for :data:`SURPLUS_GRACE`, least recently used first.
        """
        self._trimmer = None
        now = self.reactor.seconds()
        surplus_left = False
        for idle in self._idle.values():
            surplus = len(idle) - self.max_idle_per_origin
            while surplus > 0 and now - self._idle_since[idle[0]] >= SURPLUS_GRACE:
                oldest = idle.pop(0)
                del self._idle_since[oldest]
                oldest.close()
                surplus -= 1
            surplus_left = surplus_left or surplus > 0
        if surplus_left:
            self._trimmer = self.reactor.callLater(SURPLUS_GRACE, self._trim)

    def _sweep(self) -> None:
        # One timer for the whole pool instead of one per idle connection,
        # which would be set and cancelled on every request.
        self._sweeper = None
        now = self.reactor.seconds()
        oldest = now
        for connection, since in list(self._idle_since.items()):
            if now - since >= self.idle_timeout:
                self._idle_since.pop(connection)
                self._idle[connection.origin].remove(connection)
                connection.close()
            else:
                oldest = min(oldest, since)
        if self._idle_since:
            self._sweeper = self.reactor.callLater(
                oldest + self.idle_timeout - now, self._sweep
            )

    def close(self) -> Deferred[Any]:
        """
        Close every connection, idle or busy; fires once all are closed.
        """
        self._closing = True
        for timer in (self._sweeper, self._trimmer):
            if timer is not None and timer.active():
                timer.cancel()
        self._sweeper = self._trimmer = None
        for connecting in list(self._connecting):
            connecting.cancel()
        waiting = []
        for connection in list(self._all):
            lost: Deferred[None] = Deferred()
            self._lost[connection] = lost
            waiting.append(lost)
            if connection.idle:
                connection.close()
            else:
                connection.abort()
        self._idle.clear()
        self._idle_since.clear()
        return DeferredList(waiting)


class OneProtocol(Factory):
    """
    Hands an endpoint the protocol already made for it; quiet, unlike
    ``connectProtocol``'s factory and ``Factory.forProtocol``'s, which log
    "Starting factory" and "Stopping factory" for every connection.
    """

    noisy = False

    def __init__(self, made: Protocol) -> None:
        self.made = made

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.made


def origin_endpoint(
    reactor: Any,
    origin: Origin,
    connect_timeout: float,
    trust_root: Any = None,
    proxy_header: Optional[bytes] = None,
) -> IStreamClientEndpoint:
    """
    The endpoint that connects to ``origin``: TCP, in TLS for ``https``
    (verified against ``trust_root``, the platform's CAs by default, unless
    the server says ``tls_verify = false``), ``proxy_header`` sent first.
    The caller's own timer of ``connect_timeout`` seconds bounds the time;
    the endpoint's is a second longer.
    """
    tcp = _tcp_endpoint(reactor, origin, connect_timeout + 1)
    if proxy_header is not None:
        # Under TLS: the header comes before the handshake.
        tcp = HeaderFirstEndpoint(tcp, proxy_header)
    if not origin.is_tls:
        return tcp
    if origin.tls_verify:
        options = ssl.optionsForClientTLS(origin.host, trustRoot=trust_root)
    else:
        options = ssl.CertificateOptions(verify=False)
    return endpoints.wrapClientTLS(options, tcp)


def _tcp_endpoint(
    reactor: Any, origin: Origin, timeout: float
) -> IStreamClientEndpoint:
    # An address needs no resolver and no happy-eyeballs race; a name
    # gets both from HostnameEndpoint.
    try:
        address = ipaddress.ip_address(origin.host)
    except ValueError:
        return endpoints.HostnameEndpoint(
            reactor, origin.host, origin.port, timeout=timeout
        )
    endpoint_type = (
        endpoints.TCP6ClientEndpoint
        if address.version == 6
        else endpoints.TCP4ClientEndpoint
    )
    return endpoint_type(reactor, origin.host, origin.port, timeout=timeout)


def connect_error(reason: Failure) -> Failure:
    """
    A failed connection attempt as :class:`ConnectFailed` (or
    :class:`ConnectTimeout`, or ``CancelledError`` when it was abandoned),
    with a short reason.
    """
    error = reason.value
    if isinstance(error, (CancelledError, ConnectingCancelledError)):
        return Failure(CancelledError())
    if isinstance(error, ConnectFailed):
        return reason
    if isinstance(error, TimeoutError):
        return Failure(ConnectTimeout(str(error)))
    if isinstance(error, DNSLookupError):
        return Failure(ConnectFailed(f"cannot resolve: {error}"))
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return Failure(ConnectFailed(text))
