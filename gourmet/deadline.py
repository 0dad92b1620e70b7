"""
Deadlines that move with every request and are rarely reached.

Scheduling a reactor call for each request and cancelling it when the
request is done costs Twisted a heap entry both ways, and its heap is
rebuilt when cancelled calls pile up: three such timers per request took
about 5% of the proxy's time.  A :class:`Deadline` keeps one call per
connection instead: clearing it only forgets the due time, and setting it
later than the call already waiting lets that call fire early and wait
again.  A connection that stays busy costs the reactor one call per
timeout period, not two per request.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadline:
    """
    Calls ``expired`` once the time set with :meth:`set` is reached, unless
    :meth:`clear` or :meth:`cancel` came first.

    :param clock: the reactor (or a test's Clock).
    :param expired: what to do at the deadline; it may set a new one.
    """

    # Two for every client connection, kept while it is idle.
    __slots__ = ("_call", "_clock", "_due", "_expired")

    def __init__(self, clock: IReactorTime, expired: Callable[[], None]) -> None:
        self._clock = clock
        self._expired = expired
        self._due: Optional[float] = None
        self._call: Optional[IDelayedCall] = None

    @property
    def due(self) -> Optional[float]:
        """
        When it expires, or None when it is not set.
        """
        return self._due

    def set(self, seconds: float) -> None:
        """
        Expire ``seconds`` from now, instead of when it was set to before.
        """
        due = self._clock.seconds() + seconds
        self._due = due
        call = self._call
        if call is None or not call.active():
            self._call = self._clock.callLater(seconds, self._fire)
        elif due < call.getTime():
            call.reset(seconds)
        # Otherwise the waiting call fires early and waits again.

    def clear(self) -> None:
        """
        Expire no more; the call waiting, if any, is left to lapse.
        """
        self._due = None

    def cancel(self) -> None:
        """
        Expire no more, and leave nothing scheduled (the owner is gone).
        """
        self._due = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        due = self._due
        if due is None:
            return
        now = self._clock.seconds()
        if now < due:
            self._call = self._clock.callLater(due - now, self._fire)
            return
        self._due = None
        self._expired()


#: Shortest wait between two checks of a body's rate, so that a body
#: arriving exactly at the minimum rate does not spin the timer.
_MIN_RATE_CHECK = 0.25


class MinimumRate:
    """
    Watches that a request body arrives at ``rate`` bytes a second or more,
    averaged from its start (nginx's ``client_body_timeout`` read as a
    rate), and calls ``too_slow`` with that rate when it falls behind.

    :param clock: the reactor (or a test's Clock).
    :param too_slow: what to do with a body that fell behind.
    """

    __slots__ = ("_call", "_clock", "_rate", "_started", "_too_slow", "received")

    def __init__(self, clock: IReactorTime, too_slow: Callable[[int], None]) -> None:
        self._clock = clock
        self._too_slow = too_slow
        self._rate = 0
        self._started = 0.0
        self.received = 0
        self._call: Optional[IDelayedCall] = None

    def start(self, rate: int, grace: float) -> None:
        """
        Start counting a body from now, first checked after ``grace``
        seconds; a ``rate`` of 0 checks nothing.
        """
        self.stop()
        self._rate = rate
        self._started = self._clock.seconds()
        self.received = 0
        if rate:
            self._call = self._clock.callLater(grace, self._check)

    def stop(self) -> None:
        """
        The body ended, or its request went: check no more.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self) -> None:
        self._call = None
        rate = self._rate
        elapsed = self._clock.seconds() - self._started
        if self.received < rate * elapsed:
            self._too_slow(rate)
            return
        # Look again when the body would fall behind if nothing more came.
        wait = max(self.received / rate - elapsed, _MIN_RATE_CHECK)
        self._call = self._clock.callLater(wait, self._check)
