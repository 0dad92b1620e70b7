"""
The ``[[streams]]`` of a running Gourmet: a listener and a factory for
each, and the connections open on any of them; opened at start-up, and
changed by a reload (:class:`StreamReload`).

A stream is known by its ``listen`` string: a reload that keeps it keeps
its listener, its counts and its open connections, and gives the next
connections its new ``upstream``, ``proxy_protocol`` and
``idle_timeout``; one it adds is opened (a port in use fails the whole
reload); one it drops stops listening, and its open connections run on
until they end (or Gourmet stops).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from twisted.application.service import IServiceCollection
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gourmet.building import listener_for
from gourmet.config.load import ConfigError
from gourmet.config.model import GourmetConfig, StreamConfig
from gourmet.listener import Listener
from gourmet.tcp.drain import OpenStreams
from gourmet.tcp.factory import StreamFactory
from gourmet.upstream.state import Upstream


class StreamListeners:
    """
    Every stream's listener and factory, in the configuration's order.

    :param upstreams: the running upstreams by name (changed in place by
        a reload).
    """

    log = Logger()

    def __init__(self, upstreams: Mapping[str, Upstream], reactor: Any) -> None:
        self.upstreams = upstreams
        self.reactor = reactor
        self.open = OpenStreams()
        self.factories: List[StreamFactory] = []

    @property
    def listeners(self) -> List[Listener]:
        return [each.listener for each in self.factories if each.listener is not None]

    def make_listener(
        self, config: GourmetConfig, index: int, backlog: int
    ) -> StreamFactory:
        """
        The factory of ``config.streams[index]``, with its listener (not
        listening yet).

        :raises ConfigError: when Twisted cannot parse its endpoint.
        """
        stream = config.streams[index]
        factory = StreamFactory(stream, self.upstreams, self.reactor, self.open)
        factory.listener = listener_for(
            config,
            f"streams[{index}].listen",
            stream.listen,
            backlog,
            factory,
            self.reactor,
        )
        return factory

    def start(self, config: GourmetConfig, parent: Any, backlog: int) -> None:
        """
        Make every stream's listener a child of ``parent`` (which listens
        when it starts).
        """
        for index in range(len(config.streams)):
            factory = self.make_listener(config, index, backlog)
            assert factory.listener is not None
            factory.listener.setServiceParent(parent)
            self.factories.append(factory)

    def log_listening(self) -> None:
        """
        Say where each stream listens (a port 0 told as the port it became).
        """
        for factory in self.factories:
            self.log.info(
                "stream {listen} on {address} to upstream {upstream}",
                listen=factory.config.listen,
                address=factory.address(),
                upstream=factory.config.upstream,
            )

    def reload(
        self, config: GourmetConfig, parent: IServiceCollection, backlog: int
    ) -> StreamReload:
        """
        Open the listeners ``config`` adds (a running ``parent`` starts
        them at once).

        :raises ConfigError: naming the stream whose port cannot be opened;
            nothing is left open then.
        """
        reload = StreamReload(self, config)
        current: Dict[str, StreamFactory] = {
            each.config.listen: each for each in self.factories
        }
        try:
            for index, stream in enumerate(config.streams):
                existing = current.pop(stream.listen, None)
                if existing is not None:
                    reload.factories.append((existing, stream))
                    continue
                factory = self._open(config, index, backlog, parent)
                reload.opened.append(factory)
                reload.factories.append((factory, stream))
        except ConfigError:
            reload.undo()
            raise
        reload.closing = list(current.values())
        return reload

    def _open(
        self,
        config: GourmetConfig,
        index: int,
        backlog: int,
        parent: IServiceCollection,
    ) -> StreamFactory:
        """
        A new stream's factory, its listener listening (a child of the
        running ``parent``).

        :raises ConfigError: when its endpoint cannot be parsed or listened on.
        """
        factory = self.make_listener(config, index, backlog)
        assert factory.listener is not None
        try:
            factory.listener.setServiceParent(parent)
        except CannotListenError as error:
            factory.listener.disownServiceParent()
            raise ConfigError(
                config.source, f"streams[{index}].listen", f"cannot listen: {error}"
            ) from None
        return factory


class StreamReload:
    """
    A reload's changes to the streams: listeners opened (closed again by
    :meth:`undo`), then :meth:`apply`.
    """

    def __init__(self, streams: StreamListeners, config: GourmetConfig) -> None:
        self.streams = streams
        self.config = config
        self.factories: List[tuple[StreamFactory, StreamConfig]] = []
        self.opened: List[StreamFactory] = []
        self.closing: List[StreamFactory] = []

    def undo(self) -> None:
        for factory in self.opened:
            if factory.listener is not None:
                factory.listener.disownServiceParent()
        self.opened = []

    def apply(self) -> None:
        for factory, stream in self.factories:
            factory.reconfigure(stream)
        self.streams.factories = [factory for factory, _ in self.factories]
        for factory in self.closing:
            # It stops listening; its connections run on (in ``open``).
            if factory.listener is not None:
                factory.listener.disownServiceParent()
