"""
The TCP stream connections open at one time, whichever listener took them
(one a reload closed included): what a graceful stop waits for, and cuts
after ``[server] shutdown_timeout``.
"""

from __future__ import annotations

from typing import Optional, Protocol, Set

from twisted.internet.defer import Deferred, succeed


class Abortable(Protocol):
    """
    A stream connection, as a stop sees it.
    """

    def abort(self, why: str) -> None:
        """
        Drop the connection (and its server's) at once.
        """


class OpenStreams:
    """
    The open stream connections: each says when it opens and when it has
    ended.
    """

    def __init__(self) -> None:
        self._open: Set[Abortable] = set()
        self._all_closed: Optional[Deferred[None]] = None

    def opened(self, connection: Abortable) -> None:
        self._open.add(connection)

    def closed(self, connection: Abortable) -> None:
        self._open.discard(connection)
        if not self._open and self._all_closed is not None:
            done, self._all_closed = self._all_closed, None
            done.callback(None)

    @property
    def busy_connections(self) -> int:
        """
        Connections open: every one is busy, as long as it lasts.
        """
        return len(self._open)

    def close_connections(self) -> Deferred[None]:
        """
        Fires when no connection is left: they are left to end by
        themselves (the listeners are closed), as nginx's ``stream`` does.
        """
        if not self._open:
            return succeed(None)
        if self._all_closed is None:
            self._all_closed = Deferred()
        return self._all_closed

    def abort_connections(self) -> int:
        """
        Cut every connection still open, at once.

        :return: how many there were.
        """
        connections = list(self._open)
        for connection in connections:
            connection.abort("cut at stop")
        return len(connections)
