"""
The signals an operator, systemd or logrotate sends a running Gourmet, as
nginx answers them:

- ``SIGTERM``, ``SIGINT``: stop gracefully (see :mod:`gourmet.shutdown`);
  a second one cuts the requests still in flight;
- ``SIGHUP``: reload the configuration file;
- ``SIGUSR1``: reopen the access log (after logrotate moved it).

Twisted's own handlers for the first two stop the reactor as well, but a
second signal is an error there, and twistd then exits with the signal
rather than 0.  Installed only under twistd: never in a process that
merely builds the service (the tests).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Optional, Protocol

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger


class Signalled(Protocol):
    """
    What the signals act on: :class:`gourmet.service.GourmetService`.
    """

    def stop_now(self) -> None:
        """
        Cut the requests a stop under way waits for.
        """

    def reload(self, who: str) -> Any:
        """
        Load the configuration file again, for ``who``.
        """

    def reopen_logs(self) -> Any:
        """
        Reopen the access log file (a Deferred when that takes a while).
        """


class SignalHandlers:
    """
    Gourmet's handlers, each of which does its work in the reactor's thread
    (a handler runs between two bytecodes of whatever the reactor does).
    """

    log = Logger()

    def __init__(self, reactor: Any, service: Signalled) -> None:
        self.reactor = reactor
        self.service = service
        self._stopping = False

    def install(self) -> None:
        """
        Replace Twisted's handlers; call once the reactor runs, after it
        installed its own.
        """
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGINT, self._terminate)
        signal.signal(signal.SIGHUP, self._hang_up)
        signal.signal(signal.SIGUSR1, self._user1)

    def _terminate(self, number: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(number).name
        if self._stopping:
            self.reactor.callFromThread(self._stop_now, name)
            return
        self._stopping = True
        self.reactor.callFromThread(self._stop, name)

    def _stop(self, name: str) -> None:
        self.log.info(
            "received {signal}: stopping (another one cuts the requests in flight)",
            signal=name,
        )
        self.reactor.stop()

    def _stop_now(self, name: str) -> None:
        self.log.info("received {signal} again: stopping now", signal=name)
        self.service.stop_now()

    def _hang_up(self, number: int, frame: Optional[FrameType]) -> None:
        self.reactor.callFromThread(self.service.reload, "SIGHUP")

    def _user1(self, number: int, frame: Optional[FrameType]) -> None:
        self.reactor.callFromThread(self._reopen)

    def _reopen(self) -> None:
        # Said once done (in every worker too): what is served after the
        # line goes to the new file.
        maybeDeferred(self.service.reopen_logs).addBoth(self._reopened)

    def _reopened(self, result: object) -> None:
        self.log.info("received SIGUSR1: reopening the access log")
