"""
Gourmet under systemd: the notify protocol of ``sd_notify(3)``, spoken
directly (one datagram to the unix socket named by ``$NOTIFY_SOCKET``), so
that systemd knows when Gourmet listens, reloads and stops, shows what it is
doing, and restarts it when its reactor stops turning; and the one line a
``systemd:`` listen endpoint gets when systemd passed no such socket.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gourmet.config.endpoints import _endpoint_arguments
from gourmet.upstream.state import AdminState, Upstream

__all__ = [
    "STATUS_SECONDS",
    "NotifySocket",
    "SystemdNotifier",
    "notify_address",
    "status_text",
    "systemd_endpoint_problem",
    "watchdog_interval",
]

#: Seconds between two looks at what ``systemctl status`` should say.
STATUS_SECONDS = 5.0


def notify_address(value: Optional[str]) -> Optional[str]:
    """
    The address ``$NOTIFY_SOCKET`` names, as :meth:`socket.socket.sendto`
    takes it: a path, or for ``@name`` the abstract socket ``\\0name``;
    None when it is unset, empty or of a kind Gourmet does not speak (such
    as ``vsock:``).
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> Optional[float]:
    """
    Seconds between two ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as
    ``sd_watchdog_enabled(3)`` advises; None when it is unset or not a
    positive number, or when ``$WATCHDOG_PID`` names another process.
    """
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def status_text(upstreams: Mapping[str, Upstream]) -> str:
    """
    What ``systemctl status`` shows while Gourmet serves: requests sent to
    servers so far, how many servers take requests now (healthy and not
    drained or disabled by an operator), and the upstreams left with none.
    """
    requests = 0
    up = 0
    servers = 0
    empty = []
    for name, upstream in upstreams.items():
        taking = 0
        for server in upstream.servers:
            requests += server.requests
            servers += 1
            if server.admin_state is AdminState.UP and server.available():
                taking += 1
        up += taking
        if upstream.servers and not taking:
            empty.append(name)
    text = (
        f"serving: {_plural(requests, 'request')} proxied,"
        f" {up} of {_plural(servers, 'server')} up"
    )
    if empty:
        text += "; none up in " + ", ".join(empty)
    return text


class NotifySocket:
    """
    Sends notifications to systemd, never blocking and never raising: a
    socket that is gone or full is logged once, and again only after a
    notification got through in between.

    :param notify_socket: ``$NOTIFY_SOCKET``.
    :ivar address: where they go (see :func:`notify_address`); None sends
        nothing.
    """

    log = Logger()

    def __init__(self, notify_socket: Optional[str]) -> None:
        self.notify_socket = notify_socket
        self.address = notify_address(notify_socket)
        self._socket: Optional[socket.socket] = None
        self._failing = False

    def send(self, fields: Sequence[str]) -> bool:
        """
        Send ``KEY=value`` lines as one datagram.

        :return: whether it was sent.
        """
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # A datagram systemd has no room for is dropped, not waited
                # for: the reactor never blocks on it.
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError as error:
            if not self._failing:
                self._failing = True
                self.log.warn(
                    "cannot notify systemd at {address}: {error}"
                    " (not logged again until a notification gets through)",
                    address=self.notify_socket,
                    error=error,
                )
            return False
        self._failing = False
        return True

    def close(self) -> None:
        """
        Close the socket; a later :meth:`send` opens another.
        """
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class SystemdNotifier(Service):
    """
    Tells systemd (``Type=notify``) about Gourmet: ``READY=1`` once started
    (its siblings listen in ``privilegedStartService``, before this starts),
    ``STATUS=`` lines refreshed every :data:`STATUS_SECONDS`, ``WATCHDOG=1``
    pings when systemd asks for them, and ``STOPPING=1`` first thing when
    stopping.  Without ``$NOTIFY_SOCKET`` it does nothing at all.

    Added last to its parent, it is the first child stopped.

    :param upstreams: the upstreams as they run now (asked at each look, so
        that a reload's new ones are seen).
    :param clock: the reactor: pings from its timers stop when it is stuck,
        and so systemd restarts Gourmet.
    :param environ: where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
        ``WATCHDOG_PID`` are read.
    :param pid: this process's id, compared with ``WATCHDOG_PID``.
    """

    log = Logger()

    def __init__(
        self,
        upstreams: Callable[[], Mapping[str, Upstream]],
        clock: IReactorTime,
        environ: Mapping[str, str] = os.environ,
        pid: Optional[int] = None,
        status_seconds: float = STATUS_SECONDS,
        ready_when: Optional[Callable[[], Deferred[None]]] = None,
    ) -> None:
        self._upstreams = upstreams
        #: What READY=1 waits for (the worker processes), if anything.
        self._ready_when = ready_when
        self.socket = NotifySocket(environ.get("NOTIFY_SOCKET"))
        self.watchdog_seconds = watchdog_interval(
            environ, os.getpid() if pid is None else pid
        )
        self.status_seconds = status_seconds
        self._status_loop = LoopingCall(self._refresh_status)
        self._status_loop.clock = clock
        self._watchdog_loop = LoopingCall(self._ping)
        self._watchdog_loop.clock = clock
        self._status: Optional[str] = None

    @property
    def enabled(self) -> bool:
        """
        Whether systemd listens (``$NOTIFY_SOCKET`` names a unix socket).
        """
        return self.socket.address is not None

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        if self._ready_when is None:
            self.ready()
        else:
            self._ready_when().addCallback(self._workers_ready)
        self._status_loop.start(self.status_seconds, now=False)
        if self.watchdog_seconds is not None:
            self._watchdog_loop.start(self.watchdog_seconds, now=True)

    def stopService(self) -> None:
        # Its parent may stop it early, to say STOPPING=1 before a drain.
        if not self.running:
            return
        super().stopService()
        for loop in (self._status_loop, self._watchdog_loop):
            if loop.running:
                loop.stop()
        if self.enabled:
            self.socket.send(["STOPPING=1", "STATUS=stopping"])
        self.socket.close()

    def _workers_ready(self, _: object) -> None:
        if self.running:
            self.ready()

    def ready(self) -> None:
        """
        Say that Gourmet serves: at start-up, and after a reload.
        """
        self._status = self._current_status()
        self.socket.send(["READY=1", f"STATUS={self._status}"])

    def reloading(self) -> None:
        """
        Say that a reload begins, with the ``CLOCK_MONOTONIC`` time that
        ``Type=notify-reload`` asks for; :meth:`ready` says it ended.
        """
        self._status = "reloading"
        self.socket.send(
            [
                "RELOADING=1",
                f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                "STATUS=reloading",
            ]
        )

    def _current_status(self) -> str:
        try:
            return status_text(self._upstreams())
        except Exception:
            # A look at the state must never stop the loop (a LoopingCall
            # whose call raises never runs again).
            self.log.failure("cannot tell systemd the status")
            return "serving"

    def _refresh_status(self) -> None:
        status = self._current_status()
        if status != self._status:
            self._status = status
            self.socket.send([f"STATUS={status}"])

    def _ping(self) -> None:
        self.socket.send(["WATCHDOG=1"])


def _systemd_arguments(description: str) -> Optional[Dict[str, str]]:
    """
    The arguments of a ``systemd:`` endpoint string by the names Twisted's
    parser gives them (``domain``, ``index``, ``name``); None for any other
    endpoint.
    """
    (kind_key, kind), *arguments = _endpoint_arguments(description)
    if kind_key is not None or kind.lower() != "systemd":
        return None
    positional = [value for key, value in arguments if key is None]
    named = dict(zip(("domain", "index", "name"), positional))
    named.update((key, value) for key, value in arguments if key is not None)
    return named


def systemd_endpoint_problem(
    description: str,
    error: Exception,
    environ: Mapping[str, str] = os.environ,
    pid: Optional[int] = None,
) -> Optional[str]:
    """
    Why Twisted could not make the ``systemd:`` endpoint ``description``
    (it failed with ``error``), as one line for the configuration error;
    None when it is not a ``systemd:`` endpoint, or failed for another
    reason than the socket it asks for.

    Twisted reads (and takes out of the environment) ``LISTEN_PID`` and
    ``LISTEN_FDS`` when it is first imported; ``LISTEN_FDNAMES`` it leaves.
    """
    arguments = _systemd_arguments(description)
    if arguments is None:
        return None
    if isinstance(error, AttributeError):
        domain = arguments.get("domain", "")
        return f"domain must be INET, INET6 or UNIX, got {domain!r}"
    if not isinstance(error, (IndexError, KeyError)):
        return None
    wanted = (
        f"no socket named {arguments['name']!r}"
        if "name" in arguments
        else f"no socket at index {arguments.get('index')}"
    )
    listen_pid = environ.get("LISTEN_PID")
    pid = os.getpid() if pid is None else pid
    if listen_pid is not None and listen_pid.strip() != str(pid):
        return (
            f"{wanted}: the sockets systemd passed are for process {listen_pid}"
            f" (LISTEN_PID), not this one ({pid})"
        )
    names = [name for name in environ.get("LISTEN_FDNAMES", "").split(":") if name]
    if not names:
        return (
            f"{wanted}: systemd passed none (LISTEN_FDNAMES is not set);"
            " start Gourmet from a socket unit, such as etc/gourmet.socket"
        )
    passed = ", ".join(names)
    if arguments.get("name") in names or (
        "name" not in arguments
        and arguments.get("index", "").isdigit()
        and int(arguments["index"]) < len(names)
    ):
        return (
            f"{wanted}: LISTEN_FDNAMES names {_plural(len(names), 'socket')}"
            f" ({passed}) but LISTEN_FDS does not say as many"
        )
    return f"{wanted}: systemd passed {_plural(len(names), 'socket')}: {passed}"
