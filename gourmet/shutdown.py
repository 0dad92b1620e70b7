"""
A graceful stop of Gourmet's client side, as nginx's and HAProxy's: once
the listeners are closed, idle keep-alive connections are closed at once
and the others once their request is answered, for at most
``[server] shutdown_timeout`` seconds; what is left then is cut.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class Drainable(Protocol):
    """
    Client connections a stop drains: a site's, or the TCP streams'.
    """

    @property
    def busy_connections(self) -> int:
        """
        Connections with work under way.
        """

    def close_connections(self) -> Deferred[Any]:
        """
        Close them as their work ends; fires when none is left.
        """

    def abort_connections(self) -> int:
        """
        Cut them all; how many there were.
        """


class GracefulStop:
    """
    One stop of the client connections of ``sites``.

    :param timeout: seconds requests in flight may take to finish.
    """

    log = Logger()

    def __init__(
        self, sites: Sequence[Drainable], clock: IReactorTime, timeout: float
    ) -> None:
        self.sites = sites
        self.clock = clock
        self.timeout = timeout
        self._timer: Optional[IDelayedCall] = None

    async def run(self) -> None:
        """
        Close the connections and wait until none is left: the requests in
        flight finished, or were cut at the timeout or by :meth:`cut`.
        """
        busy = sum(site.busy_connections for site in self.sites)
        waiting = DeferredList([site.close_connections() for site in self.sites])
        if busy:
            self.log.info(
                "stopping: waiting up to {timeout}s for the requests of"
                " {count} client connections",
                timeout=self.timeout,
                count=busy,
            )
            self._timer = self.clock.callLater(
                self.timeout, self.cut, f"still open after {self.timeout}s"
            )
        await waiting
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self.log.info("stopping: every request in flight was answered")

    def cut(self, why: str) -> None:
        """
        Cut every client connection still open, with its request.
        """
        count = sum(site.abort_connections() for site in self.sites)
        if count:
            self.log.warn(
                "stopping: cut {count} client connections {why}",
                count=count,
                why=why,
            )
