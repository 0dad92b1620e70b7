"""
Two connections joined byte for byte: a client's and a server's, once an
HTTP upgrade (WebSocket) has been switched to, or a TCP stream from the
start.

What each side sends goes to the other as it comes, with backpressure both
ways: when one side's transport cannot take more, reading from the other
stops until it can (each :class:`SpliceEnd` is the producer registered on
its peer's transport).  A side that stops sending (a TCP half-close) has
the other side's writing closed in turn, as HAProxy and nginx's ``stream``
do; once both have stopped, or either connection is lost, both are closed.
The protocols that own the two connections pass their events on with
:meth:`SpliceEnd.data`, :meth:`SpliceEnd.read_ended` and
:meth:`SpliceEnd.lost`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.deadline import Deadline


@implementer(IPushProducer)
class SpliceEnd:
    """
    One of the two connections of a :class:`Splice`.

    :ivar received: bytes received from this side (and sent to the other).
    :ivar read_closed: this side has sent all it will.
    :ivar closed: this side's connection is gone.
    """

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self.transport: Any = None
        self.peer: SpliceEnd = self
        self.received = 0
        self.read_closed = False
        self.closed = False
        self._closing = False
        self._unregistered = False

    # -- what the connection's protocol reports -----------------------------

    def data(self, data: bytes) -> None:
        self.received += len(data)
        self.splice.last_active = self.splice.clock.seconds()
        peer = self.peer
        if not peer.closed:
            peer.transport.write(data)

    def read_ended(self) -> None:
        """
        This side closed its writing (a TCP half-close): close the other's.
        """
        self.read_closed = True
        peer = self.peer
        if peer.read_closed:
            self.splice.close("closed")
        elif not peer.closed:
            peer._close_writing()

    def lost(self, reason: Failure) -> None:
        if self.closed:
            return
        self.closed = True
        self.splice.end_lost(self, reason)

    # -- IPushProducer, registered on the peer's transport ------------------

    def pauseProducing(self) -> None:
        if not self.closed:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.closed:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The peer's transport is going: so is this side.
        self.close()

    # -- closing ------------------------------------------------------------

    def _close_writing(self) -> None:
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            # A TLS transport cannot half-close: it would close the socket
            # under it; the whole connection goes once its writes are out.
            self.close()
        else:
            # Its producer has nothing more to send.  Left registered, a
            # paused one would be resumed once the buffer drains, instead
            # of the half-close being sent (Twisted's doWrite does one or
            # the other): the peer would never see the end.
            self._unregister()
            half_close()

    def close(self) -> None:
        """
        Close politely: what was written goes out first.
        """
        if self.closed or self._closing or self.transport is None:
            return
        self._closing = True
        # A TLS transport closes only once no producer is registered.
        self._unregister()
        self.transport.loseConnection()

    def _unregister(self) -> None:
        if not self._unregistered:
            self._unregistered = True
            self.transport.unregisterProducer()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()


class Splice:
    """
    A client's and a server's connection joined until either ends, or no
    byte has gone either way for ``idle_timeout`` seconds.

    :param ended: told once, when both connections are gone, with the
        splice (its byte counts and ``why``).
    :ivar why: why it ended: ``"closed"`` by a side, ``"idle"``, or what
        the first connection lost said.
    """

    def __init__(
        self,
        clock: IReactorTime,
        idle_timeout: float,
        ended: Callable[[Splice], None],
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._ended = ended
        self.client = SpliceEnd(self)
        self.server = SpliceEnd(self)
        self.client.peer = self.server
        self.server.peer = self.client
        self.started = self.last_active = clock.seconds()
        self.why: Optional[str] = None
        self._idle = Deadline(clock, self._idle_check)

    @property
    def duration(self) -> float:
        return self.clock.seconds() - self.started

    def join(
        self,
        client: ITransport,
        server: ITransport,
        from_client: bytes = b"",
        from_server: bytes = b"",
    ) -> None:
        """
        Start passing bytes between the two transports, first those that
        arrived before the splice (after the upgrade's head, say).  Neither
        may have a producer registered.
        """
        self.client.transport = client
        self.server.transport = server
        # When a transport's buffer is full, the other side stops reading.
        client.registerProducer(self.server, True)  # type: ignore[attr-defined]
        server.registerProducer(self.client, True)  # type: ignore[attr-defined]
        if self.idle_timeout:
            self._idle.set(self.idle_timeout)
        if from_client:
            self.client.data(from_client)
        if from_server:
            self.server.data(from_server)

    def close(self, why: str) -> None:
        """
        Close both connections once what each was sent has gone out.
        """
        if self.why is None:
            self.why = why
        self.client.close()
        self.server.close()

    def abort(self, why: str) -> None:
        """
        Drop both connections at once.
        """
        if self.why is None:
            self.why = why
        self.client.abort()
        self.server.abort()

    def end_lost(self, end: SpliceEnd, reason: Failure) -> None:
        if self.why is None:
            side = "client" if end is self.client else "server"
            self.why = f"{side} {_reason_text(reason)}"
        peer = end.peer
        if not peer.closed:
            # What the lost side sent is still passed on before the close.
            peer.close()
            return
        self._idle.cancel()
        self._ended(self)

    def _idle_check(self) -> None:
        due = self.last_active + self.idle_timeout
        now = self.clock.seconds()
        if now < due:
            self._idle.set(due - now)
            return
        # Cut, not closed politely: bytes still queued for a side that
        # stopped reading would hold a polite close open for ever.
        self.abort("idle")


def _reason_text(reason: Failure) -> str:
    text = str(reason.value).splitlines()
    return text[0] if text else type(reason.value).__name__


@implementer(IHalfCloseableProtocol)
class SpliceProtocol(Protocol):
    """
    A connection that is all splice from the start (a TCP stream's either
    side): its events go to ``end``.
    """

    def __init__(self, end: SpliceEnd) -> None:
        self.end = end

    def dataReceived(self, data: bytes) -> None:
        self.end.data(data)

    def readConnectionLost(self) -> None:
        self.end.read_ended()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.end.lost(reason)
