"""
Passive health: a server's failures, counted as requests go by, decide
whether it may take requests.

nginx's semantics: ``max_fail`` failures within ``fail_timeout`` seconds take
the server out for ``fail_timeout`` seconds; then one trial request is let
through, and its outcome brings the server back or takes it out again.
``max_fail = 0`` turns the accounting off.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable, Deque, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class Health(enum.Enum):
    """
    What passive health says of a server.
    """

    UP = "up"
    #: Taken out after too many failures, until ``down_until``.
    DOWN = "down"
    #: ``fail_timeout`` has passed since it went down; one trial request may go.
    TRIAL = "trial"


class PassiveHealth:
    """
    The failure record of one server.

    :param name: the server's name, for the log.
    :param clock: where the time comes from.
    :param max_fail: failures within the window that take the server out.
    :param fail_timeout: the window, and how long the server stays out.
    """

    log = Logger()

    def __init__(
        self, name: str, clock: IReactorTime, max_fail: int, fail_timeout: float
    ) -> None:
        self.name = name
        self._clock = clock
        self.max_fail = max_fail
        self.fail_timeout = fail_timeout
        self._failures: Deque[float] = deque(maxlen=max(max_fail, 1))
        self._state = Health.UP
        #: Since when it has been up: start-up, or its last recovery.
        self.up_since: Optional[float] = clock.seconds()
        self.down_since: Optional[float] = None
        self.down_until: Optional[float] = None
        self.last_error: Optional[str] = None
        #: When it last came back up after being taken out (for slow start).
        self.recovered_at: Optional[float] = None
        self._trial_in_flight = False
        #: Told ``(down, seconds, error)`` when this process's own requests
        #: take the server out or bring it back (workers pass it on).
        self.on_change: Optional[Callable[[bool, float, str], None]] = None

    def reconfigure(self, max_fail: int, fail_timeout: float) -> None:
        """
        A reload's settings: from the next failure on.
        """
        if max_fail != self.max_fail:
            self._failures = deque(self._failures, maxlen=max(max_fail, 1))
        self.max_fail = max_fail
        self.fail_timeout = fail_timeout

    @property
    def state(self) -> Health:
        if self._state is Health.DOWN and self._clock.seconds() >= (
            self.down_until or 0.0
        ):
            self._state = Health.TRIAL
        return self._state

    def available(self) -> bool:
        """
        Whether the server may be picked for a request now.
        """
        state = self._state
        if state is Health.UP:
            return True
        state = self.state
        return state is Health.TRIAL and not self._trial_in_flight

    def request_started(self) -> None:
        """
        Note that a request was sent to the server; while the server is on
        trial, no other request goes to it until this one's outcome is known.
        """
        if self._state is not Health.UP and self.state is Health.TRIAL:
            self._trial_in_flight = True

    def succeeded(self) -> None:
        if self._state is not Health.UP:
            self._trial_in_flight = False
            if self.state is Health.TRIAL:
                self._back_up()

    def failed(self, error: str) -> None:
        """
        Count a failure (a connect error, timeout, reset, invalid response or
        a configured failure status) described by ``error``.
        """
        self.last_error = error
        if self.max_fail == 0:
            return
        now = self._clock.seconds()
        if self._state is not Health.UP:
            self._trial_in_flight = False
            if self.state is Health.TRIAL:
                self._take_out(now, error)
            return
        failures = self._failures
        failures.append(now)
        if len(failures) >= self.max_fail and now - failures[0] <= self.fail_timeout:
            self._take_out(now, error)

    def _take_out(self, now: float, error: str) -> None:
        self._state = Health.DOWN
        self._failures.clear()
        if self.down_since is None:
            self.down_since = now
        self.up_since = None
        self.down_until = now + self.fail_timeout
        self.log.warn(
            "server {server} down for {seconds}s: {error}",
            server=self.name,
            seconds=self.fail_timeout,
            error=error,
            server_down=True,
        )
        if self.on_change is not None:
            self.on_change(True, self.fail_timeout, error)

    def taken_out_elsewhere(self, seconds: float, error: str) -> None:
        """
        Another worker's requests took the server out for ``seconds``:
        this one takes it out too (logged there, not again here).
        """
        now = self._clock.seconds()
        self.last_error = error
        self._state = Health.DOWN
        self._trial_in_flight = False
        self._failures.clear()
        if self.down_since is None:
            self.down_since = now
        self.up_since = None
        self.down_until = now + seconds

    def back_up_elsewhere(self) -> None:
        """
        Another worker's trial request found the server back up.
        """
        if self._state is not Health.UP:
            self._trial_in_flight = False
            self._state = Health.UP
            self.up_since = self.recovered_at = self._clock.seconds()
            self.down_since = None
            self.down_until = None

    def _back_up(self) -> None:
        self.log.info(
            "server {server} back up after {seconds:.1f}s down",
            server=self.name,
            seconds=self._clock.seconds() - (self.down_since or 0.0),
            server_up=True,
        )
        self._state = Health.UP
        self.up_since = self.recovered_at = self._clock.seconds()
        self.down_since = None
        self.down_until = None
        if self.on_change is not None:
            self.on_change(False, 0.0, "")

    def cancelled(self) -> None:
        """
        The request sent to the server ended with no verdict on the server
        (the client went away): a trial may be made again.
        """
        self._trial_in_flight = False
