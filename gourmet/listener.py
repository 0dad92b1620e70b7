"""
A service that listens on one endpoint, failing loudly: what Gourmet's
proxy, admin and demo listeners are.
"""

from __future__ import annotations

from typing import Any, List, Optional, cast

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure


class Listener(Service):
    """
    Listens on one endpoint for as long as the service runs.

    Unlike :func:`twisted.application.strports.service`, it listens in
    ``privilegedStartService`` and lets a failure out there, so that a port
    in use stops start-up rather than becoming a log line; and it keeps
    the listening port, whose address (a port 0 made real) it can tell.

    :ivar port: the listening port, once listening.
    :ivar description: the endpoint as the configuration says it, by which
        (and by ``tls``) a reload knows it.
    :ivar tls: whether Gourmet serves TLS on it (``factory`` wraps the
        site in TLS).
    :ivar key: where the configuration sets it (``server.listen[0]``).
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        description: str = "",
        tls: bool = False,
        key: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.tls = tls
        self.key = key
        self.port: Optional[IListeningPort] = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        outcome: List[object] = []
        # Every endpoint Gourmet takes (tcp, ssl, unix, systemd) listens at
        # once: the Deferred has fired when listen returns.
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        (result,) = outcome
        if isinstance(result, Failure):
            result.raiseException()
        self.port = cast(IListeningPort, result)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else None

    def address(self) -> str:
        """
        Where it listens, as a person reads it: ``127.0.0.1:8080``, a path;
        ``https://127.0.0.1:8443`` (or a path and ``(TLS)``) when Gourmet
        serves TLS on it.
        """
        if self.port is None:
            return "(not listening)"
        host = self.port.getHost()
        if isinstance(host, (IPv4Address, IPv6Address)):
            name = f"[{host.host}]" if ":" in host.host else host.host
            address = f"{name}:{host.port}"
            return f"https://{address}" if self.tls else address
        address = str(getattr(host, "name", host))
        return f"{address} (TLS)" if self.tls else address

    def port_number(self) -> Optional[int]:
        """
        The TCP port it listens on, if it listens on one.
        """
        host = self.port.getHost() if self.port is not None else None
        return host.port if isinstance(host, (IPv4Address, IPv6Address)) else None
