"""
The PROXY protocol to upstream servers (``[upstreams.NAME]
proxy_protocol``): every new connection to a server starts with a header
giving the client's address, before any byte of HTTP or TLS.

Such a connection speaks for one client only, so the pool keeps it apart
(:meth:`gourmet.upstream.pool.ConnectionPool.take_idle` matches the
header): a kept connection is reused only for the same client address
seen at the same Gourmet address, as HAProxy keeps such connections
private.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from gourmet.net.proxy_header import Address, encode_v1, encode_v2

_ENCODERS = {"v1": encode_v1, "v2": encode_v2}


def header_for(
    version: str, client_ip: bytes, peer: IAddress, local: IAddress
) -> bytes:
    """
    The header that says a request came from the client at ``client_ip``
    to Gourmet at ``local``.

    :param version: ``"v1"`` or ``"v2"``.
    :param client_ip: the client's address as Gourmet believes it (its
        ``X-Real-IP``: the connection's peer, or, from ``trusted_proxies``,
        the address they vouch for).
    :param peer: the client connection's peer, whose port is the client's
        when ``client_ip`` is its address (0 otherwise: a port a proxy in
        front does not tell).
    :param local: the address the client connected to.
    """
    peer_host = getattr(peer, "host", None)
    return _header(
        version,
        client_ip,
        peer_host,
        getattr(peer, "port", 0),
        getattr(local, "host", None),
        getattr(local, "port", 0),
    )


@lru_cache(maxsize=1024)
def _header(
    version: str,
    client_ip: bytes,
    peer_host: Optional[str],
    peer_port: int,
    local_host: Optional[str],
    local_port: int,
) -> bytes:
    client = client_ip.decode("ascii", "replace")
    source: Optional[Address] = (client, peer_port if client == peer_host else 0)
    destination: Optional[Address] = None
    if local_host is not None:
        destination = (local_host, local_port)
    return _ENCODERS[version](source, destination)


class _HeaderFirst(ProtocolWrapper):
    """
    Writes the header on the socket before its protocol (HTTP, or TLS
    under it) hears of the connection.
    """

    factory: _HeaderFirstFactory

    def makeConnection(self, transport: Any) -> None:
        transport.write(self.factory.header)
        super().makeConnection(transport)


# Generic for the type checker only: Twisted 25.5's (PyPy 3.9's) is not.
if TYPE_CHECKING:
    _HeaderFirstBase = WrappingFactory[_HeaderFirst]
else:
    _HeaderFirstBase = WrappingFactory


class _HeaderFirstFactory(_HeaderFirstBase):
    protocol = _HeaderFirst
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, header: bytes) -> None:
        super().__init__(wrapped)
        self.header = header


@implementer(IStreamClientEndpoint)
class HeaderFirstEndpoint:
    """
    ``endpoint``, whose connections start with ``header``: put it under a
    TLS endpoint, as the header goes before the handshake.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, header: bytes) -> None:
        self.endpoint = endpoint
        self.header = header

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        connecting = self.endpoint.connect(_HeaderFirstFactory(factory, self.header))
        return connecting.addCallback(_wrapped)


def _wrapped(wrapper: Any) -> Any:
    return wrapper.wrappedProtocol
