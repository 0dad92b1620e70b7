"""
The connections open at one time, and who waits for the last of them to
go: what a graceful stop waits for, of a site's clients or of the TCP
streams.
"""

from __future__ import annotations

from typing import Generic, Iterator, List, Optional, Set, TypeVar

from twisted.internet.defer import Deferred, succeed

T = TypeVar("T")


class OpenConnections(Generic[T]):
    """
    Connections told as they open and end; :meth:`when_empty` fires once
    none is left.
    """

    def __init__(self) -> None:
        self._open: Set[T] = set()
        self._empty: Optional[Deferred[None]] = None

    def add(self, connection: T) -> None:
        self._open.add(connection)

    def discard(self, connection: T) -> None:
        self._open.discard(connection)
        waiting = self._empty
        if waiting is not None and not self._open:
            self._empty = None
            waiting.callback(None)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[T]:
        return iter(self._open)

    def snapshot(self) -> List[T]:
        """
        The connections open now, in a list that closing them leaves alone.
        """
        return list(self._open)

    def when_empty(self) -> Deferred[None]:
        """
        Fires when no connection is left (at once if none is open).
        """
        if not self._open:
            return succeed(None)
        if self._empty is None:
            self._empty = Deferred()
        return self._empty
