"""
The PROXY protocol on the proxy's listeners (``[server]
accept_proxy_protocol``): a connection from a listed load balancer starts
with a v1 or v2 header giving the client's address, which is then the
address of everything after it (the access log, ``X-Forwarded-For``,
``trusted_proxies``); a header from anyone else is refused.

The reader sits under TLS, as the header comes before the handshake: it is
the outermost factory of a listener, plain or TLS.  Without
``accept_proxy_protocol`` it adds nothing to a connection, and a connection
it reads a header from costs one more call per read and per write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from gourmet.http.forwarding import IPAddress, TrustedProxies, parse_ip
from gourmet.net.proxy_header import (
    InvalidProxyHeader,
    parse,
    starts_like_a_header,
)

_Address = Union[IPv4Address, IPv6Address]


def _peer_host(address: Optional[IAddress]) -> str:
    return str(getattr(address, "host", address))


class ProxyHeaderReader(ProtocolWrapper):
    """
    Reads the PROXY header a connection starts with, then hands the rest
    to the listener's own protocol, reporting the client's address the
    header gave as its peer.

    From a load balancer ``accept_proxy_protocol`` lists (``trusted``), the
    header must come, whole and valid, within ``header_timeout``; the own
    protocol hears of the connection only then.  From anyone else, a
    connection that starts like a header is refused, and any other is
    served at once, as if no reader were there.
    """

    log = Logger()

    factory: ProxyHeaderFactory

    def __init__(
        self,
        factory: ProxyHeaderFactory,
        wrapped: Any,
        trusted: bool,
    ) -> None:
        super().__init__(factory, wrapped)
        self.trusted = trusted
        #: The client's address the header gave; None: the connection's.
        self.client: Optional[_Address] = None
        #: Whether the first bytes have been read as they must be.
        self._decided = False
        self._received = b""
        self._deadline: Optional[IDelayedCall] = None
        #: Whether the wrapped protocol has been connected.
        self._handed_over = False
        #: Whether the connection is being closed for its first bytes.
        self._refused = False

    def makeConnection(self, transport: Any) -> None:
        if not self.trusted:
            super().makeConnection(transport)
            self._handed_over = True
            return
        # As ProtocolWrapper does, but the wrapped protocol is connected
        # only once the header has been read.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        timeout = self.factory.site.frontend.header_timeout
        self._deadline = self.factory.site.clock.callLater(timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._decided:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        received = self._received + data
        if self.trusted:
            self._read_header(received)
            return
        looks = starts_like_a_header(received)
        if looks is None:
            self._received = received
            return
        self._received = b""
        if looks:
            self._refused = True
            self.log.warn(
                "refused a PROXY protocol header from {peer}, which"
                " server.accept_proxy_protocol does not list",
                peer=_peer_host(self.transport.getPeer()),  # type: ignore[union-attr]
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._decided = True
        self.wrappedProtocol.dataReceived(received)

    def _read_header(self, received: bytes) -> None:
        try:
            header = parse(received)
        except InvalidProxyHeader as error:
            self._refuse(str(error))
            return
        if header is None:
            self._received = received
            return
        self._decided = True
        self._received = b""
        self._stop_deadline()
        if header.source is not None:
            host, port = header.source
            kind = IPv6Address if ":" in host else IPv4Address
            self.client = kind("TCP", host, port)
        self._handed_over = True
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        rest = received[header.length :]
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def _refuse(self, reason: str) -> None:
        self._refused = True
        self._received = b""
        self._stop_deadline()
        self.log.warn(
            "closed a connection from {peer}: {reason}",
            peer=_peer_host(self.transport.getPeer()),  # type: ignore[union-attr]
            reason=reason,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _timed_out(self) -> None:
        self._deadline = None
        self._refuse("no whole PROXY protocol header within header_timeout")

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def getPeer(self) -> Any:
        if self.client is not None:
            return self.client
        return self.transport.getPeer()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        if not self._handed_over:
            # The wrapped protocol never heard of this connection.
            self.factory.unregisterProtocol(self)
            return
        super().connectionLost(reason)


# Generic for the type checker only: Twisted 25.5's (PyPy 3.9's) is not.
if TYPE_CHECKING:
    _ReaderFactory = WrappingFactory[ProxyHeaderReader]
else:
    _ReaderFactory = WrappingFactory


class ProxyHeaderFactory(_ReaderFactory):
    """
    The outermost factory of a proxy listener: ``wrapped`` (the site, or
    the site in TLS) behind a :class:`ProxyHeaderReader` while ``site``'s
    ``accept_proxy_protocol`` lists any address, which a reload may change.
    """

    protocol = ProxyHeaderReader
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, site: Any) -> None:
        super().__init__(wrapped)
        self.site = site
        self._networks: tuple[str, ...] = ()
        self._trusted = TrustedProxies()

    def buildProtocol(self, addr: Optional[IAddress]) -> Any:
        networks = self.site.frontend.accept_proxy_protocol
        if not networks:
            return self.wrappedFactory.buildProtocol(addr)
        if networks != self._networks:
            self._networks, self._trusted = networks, TrustedProxies(networks)
        trusted = self._trusted.trusts(_ip(addr))
        return ProxyHeaderReader(self, self.wrappedFactory.buildProtocol(addr), trusted)

    def logPrefix(self) -> str:
        return str(self.wrappedFactory.logPrefix())


def _ip(addr: Optional[IAddress]) -> Optional[IPAddress]:
    host = getattr(addr, "host", None)
    return parse_ip(host.encode("ascii")) if isinstance(host, str) else None
