"""
The TCP stream connections open at one time, whichever listener took them
(one a reload closed included): what a graceful stop waits for, and cuts
after ``[server] shutdown_timeout``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from gourmet.connections import OpenConnections


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
        self._open: OpenConnections[Abortable] = OpenConnections()

    def opened(self, connection: Abortable) -> None:
        self._open.add(connection)

    def closed(self, connection: Abortable) -> None:
        self._open.discard(connection)

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
        return self._open.when_empty()

    def abort_connections(self) -> int:
        """
        Cut every connection still open, at once.

        :return: how many there were.
        """
        connections = self._open.snapshot()
        for connection in connections:
            connection.abort("cut at stop")
        return len(connections)
