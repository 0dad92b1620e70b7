"""
One ``[[streams]]`` listener's factory: its configuration (a reload may
change it for the next connections), its counts, and the upstream it
balances over, looked up by name at each connection so that a reload's
servers and weights apply at once.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol

from gourmet.config.model import StreamConfig
from gourmet.tcp.connection import StreamConnection
from gourmet.tcp.counts import StreamCounts
from gourmet.tcp.drain import OpenStreams
from gourmet.upstream.state import Upstream


class StreamFactory(Factory):
    """
    Makes a :class:`gourmet.tcp.connection.StreamConnection` for each
    client connection of one ``[[streams]]`` listener.

    :param upstreams: the running upstreams by name (the service's, which
        a reload changes in place).
    :param clock: the reactor: time, and connections to servers.
    :param trust_root: for ``https://`` servers, the CAs trusted (the
        platform's by default).
    :ivar listener: the listener it serves, once made, for its address.
    """

    noisy = False

    def __init__(
        self,
        config: StreamConfig,
        upstreams: Mapping[str, Upstream],
        clock: IReactorTime,
        open_streams: OpenStreams,
        trust_root: Any = None,
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.clock = clock
        self.open_streams = open_streams
        self.trust_root = trust_root
        self.counts = StreamCounts()
        self.listener: Optional[Any] = None

    @property
    def upstream(self) -> Upstream:
        return self.upstreams[self.config.upstream]

    def reconfigure(self, config: StreamConfig) -> None:
        """
        A reload's settings for the same ``listen``: for the next
        connections; those open keep their server and idle timeout.
        """
        self.config = config

    def address(self) -> str:
        """
        Where it listens, as a person reads it.
        """
        return self.listener.address() if self.listener is not None else "(none)"

    def buildProtocol(self, addr: Optional[IAddress]) -> Protocol:
        return StreamConnection(self)
