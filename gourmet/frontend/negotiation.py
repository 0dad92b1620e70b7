"""
The protocol of a TLS client connection, chosen when its handshake ends by
what ALPN agreed: HTTP/2 for ``h2``, otherwise HTTP/1.1 (a client that
offered neither, or no ALPN at all, speaks HTTP/1.1 as before ALPN).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IAddress, IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.frontend.http2 import Http2Connection


@implementer(IHandshakeListener)
class ProtocolByAlpn(Protocol):
    """
    Holds a TLS connection's place until its handshake ends, then hands it
    to the protocol ALPN chose, which the TLS wrapper (a
    :class:`twisted.protocols.tls.TLSMemoryBIOProtocol`, whose
    ``wrappedProtocol`` is public) talks to from then on.

    A handshake must end within ``header_timeout``, the time a request's
    head has (nginx gives its handshake ``client_header_timeout`` too).
    """

    log = Logger()

    def __init__(self, site: Any, address: Optional[IAddress]) -> None:
        self.site = site
        self.address = address
        self._deadline: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        timeout = self.site.frontend.header_timeout
        self._deadline = self.site.clock.callLater(timeout, self._timed_out)

    def handshakeCompleted(self) -> None:
        self._stop_deadline()
        tls: Any = self.transport
        chosen: Protocol
        if tls.negotiatedProtocol == b"h2":
            chosen = Http2Connection(self.site)
        else:
            chosen = self.site.buildProtocol(self.address)
        tls.wrappedProtocol = chosen
        chosen.makeConnection(tls)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Before the handshake ended; after, the chosen protocol hears it.
        self._stop_deadline()

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _timed_out(self) -> None:
        self._deadline = None
        self.log.debug("closed a connection whose TLS handshake did not end")
        self.transport.abortConnection()  # type: ignore[union-attr]


class ProtocolByAlpnFactory(Factory):
    """
    What Gourmet's TLS listeners wrap in TLS: ``site``, whose connections
    speak HTTP/1.1 or HTTP/2 as ALPN agrees.
    """

    def __init__(self, site: Any) -> None:
        self.site = site

    def buildProtocol(self, addr: Optional[IAddress]) -> ProtocolByAlpn:
        return ProtocolByAlpn(self.site, addr)

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def logPrefix(self) -> str:
        return str(self.site.logPrefix())
