"""
One worker process as its supervisor sees it: the process protocol that
carries its AMP commands over its pipes, and when to start it again after
it died.
"""

from __future__ import annotations

import os
from contextlib import suppress
from typing import Any, Dict, List, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gourmet.workers.commands import COMMANDS_IN, COMMANDS_OUT, Quiet, ServerHealth
from gourmet.workers.snapshot import ClientFigures, StreamFigures, requests_in
from gourmet.workers.snapshot import Snapshot as Figures

__all__ = ["RestartPolicy", "Supervising", "WorkerProcess", "how_it_ended"]


class Supervising(Protocol):
    """
    What a worker process tells its supervisor
    (:class:`gourmet.workers.supervisor.Supervisor`).
    """

    def worker_started(self, worker: WorkerProcess) -> None:
        """
        Its pipes are open.
        """

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        It exited, for ``reason``.
        """

    def health_reported(
        self,
        origin: WorkerProcess,
        upstream: str,
        server: str,
        down: bool,
        seconds: float,
        error: str,
    ) -> None:
        """
        Its passive health took a server out or brought it back.
        """


class RestartPolicy:
    """
    How long to wait before starting a worker again: at once after one
    that ran for a while, then twice as long after each quick death (a
    crash loop must not spin), up to ``longest`` seconds.
    """

    def __init__(
        self, first: float = 0.5, longest: float = 30.0, healthy: float = 10.0
    ) -> None:
        self.first = first
        self.longest = longest
        self.healthy = healthy
        self._delays: Dict[int, float] = {}

    def delay(self, index: int, ran: float) -> float:
        """
        The wait before slot ``index`` starts again, its worker having run
        ``ran`` seconds.
        """
        if ran >= self.healthy:
            self._delays[index] = 0.0
            return 0.0
        previous = self._delays.get(index, 0.0)
        delay = min(self.longest, previous * 2 if previous else self.first)
        self._delays[index] = delay
        return delay


class _ChildPipes:
    """
    The transport AMP writes to: the worker's command descriptor.
    """

    def __init__(self, process: Any) -> None:
        self.process = process
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.process.writeToChild(COMMANDS_IN, data)

    def writeSequence(self, pieces: List[bytes]) -> None:
        self.write(b"".join(pieces))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.process.closeChildFD(COMMANDS_IN)

    def getPeer(self) -> Any:
        return ("worker", getattr(self.process, "pid", None))

    def getHost(self) -> Any:
        return ("supervisor", os.getpid())


class SupervisorCommands(Quiet):
    """
    The supervisor's end of one worker's commands.
    """

    def __init__(self, supervisor: Supervising, worker: WorkerProcess) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.worker = worker

    @ServerHealth.responder
    def server_health(
        self, upstream: str, server: str, down: bool, seconds: float, error: str
    ) -> Dict[str, Any]:
        self.supervisor.health_reported(
            self.worker, upstream, server, down, seconds, error
        )
        return {}


class WorkerProcess(ProcessProtocol):
    """
    One worker process, as the supervisor sees it.

    :ivar index: its slot, from 1.
    :ivar ready: whether it has taken the operators' changes and serves.
    :ivar retiring: whether it was told to stop (not to be replaced).
    :ivar figures: its latest snapshot.
    """

    log = Logger()

    def __init__(self, supervisor: Supervising, index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.pid: Optional[int] = None
        self.ready = False
        #: Whether its command pipes are open (from before it is ready).
        self.connected = False
        self.retiring = False
        self.figures: Figures = {}
        self.streams: StreamFigures = {}
        self.clients: ClientFigures = {}
        self.commands = SupervisorCommands(supervisor, self)
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.connected = True
        self.commands.makeConnection(_ChildPipes(self.transport))
        self.supervisor.worker_started(self)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        if childFD == COMMANDS_OUT:
            self.commands.dataReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self.ready = self.connected = False
        self.commands.connectionLost(reason)
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        """
        Send it a signal (``"TERM"``, ``"KILL"``...), if it still runs.
        """
        with suppress(ProcessExitedAlready, OSError):
            self.transport.signalProcess(name)  # type: ignore[union-attr]

    def call(self, command: Any, **arguments: Any) -> Deferred[Any]:
        return self.commands.callRemote(command, **arguments)

    def view(self) -> Dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "ready": self.ready,
            "requests": requests_in(self.figures),
        }


def how_it_ended(reason: Failure) -> str:
    """
    How a process ended, as the log says it: ``exit status 1``, ``signal 9``.
    """
    if isinstance(reason.value, ProcessDone):
        return "exit status 0"
    number = getattr(reason.value, "signal", None)
    if number is not None:
        return f"signal {number}"
    return f"exit status {getattr(reason.value, 'exitCode', None)}"
