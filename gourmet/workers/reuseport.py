"""
``SO_REUSEPORT`` listeners for worker processes: each worker gets a
listening socket of its own on the same address, and the kernel spreads
new connections over them by a hash of the client's address and port.

Measured with ``benchmarks/accept_spread.py`` (two workers, wrk), one
socket shared by the workers spreads connections unevenly: the worker
that wakes first accepts the whole burst of a load's new connections,
up to every one of them (rounds of 97/3 % and 100/0 % at 32 connections),
while ``SO_REUSEPORT`` sockets stay near 50/50.  So a supervisor's
``tcp:`` listener (the proxy's, ``tls_listen``'s, a stream's) is made
with ``SO_REUSEPORT``: the supervisor holds the address with a socket
that is bound but never listens (nothing queues there), and makes one
listening socket per worker (:func:`worker_socket`).  ``unix:`` and
``systemd:`` listeners, which the kernel cannot spread that way, are
shared as one socket.
"""

from __future__ import annotations

import socket
from typing import Any, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from gourmet.config.endpoints import _named_arguments

__all__ = ["ReservedAddress", "is_reserved", "reserved_endpoint", "worker_socket"]

_FAMILIES = {"tcp": socket.AF_INET, "tcp6": socket.AF_INET6}


def _reusable(family: socket.AddressFamily) -> socket.socket:
    made = socket.socket(family, socket.SOCK_STREAM)
    # As Twisted's listening ports: a restart does not wait for TIME_WAIT.
    made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return made


@implementer(IStreamServerEndpoint)
class ReservedAddress:
    """
    A ``tcp:`` address the supervisor holds for its workers' sockets: bound
    with ``SO_REUSEPORT``, never listening.  Its port is adopted by the
    reactor, so the supervisor's listener knows its address (a port 0
    made real) as any other; it never accepts anything.
    """

    def __init__(
        self,
        reactor: Any,
        family: socket.AddressFamily,
        host: str,
        port: int,
        backlog: int,
    ) -> None:
        self.reactor = reactor
        self.family = family
        self.host = host
        self.port = port
        self.backlog = backlog

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        held = _reusable(self.family)
        try:
            held.bind((self.host, self.port))
        except OSError as error:
            held.close()
            return fail(CannotListenError(self.host, self.port, error))
        held.setblocking(False)
        port = self.reactor.adoptStreamPort(held.fileno(), self.family, factory)
        # adoptStreamPort took a copy.
        held.close()
        # What each worker's socket listens with.
        port.reuseport_backlog = self.backlog
        # Nothing to read on a socket that does not listen.
        port.stopReading()
        return succeed(port)


def reserved_endpoint(
    reactor: Any, description: str, backlog: int
) -> Optional[ReservedAddress]:
    """
    The :class:`ReservedAddress` a supervisor holds for ``description``,
    a ``tcp:`` or ``tcp6:`` endpoint string; None for other kinds.
    """
    kind, values = _named_arguments(description)
    if kind not in _FAMILIES:
        return None
    try:
        port = int(values["port"])
        if "backlog" in values:
            backlog = int(values["backlog"])
    except (KeyError, ValueError):
        return None
    family = _FAMILIES[kind]
    default = "::" if family == socket.AF_INET6 else "0.0.0.0"
    host = values.get("interface", default) or default
    return ReservedAddress(reactor, family, host, port, backlog)


def is_reserved(port: Any) -> bool:
    """
    Whether a listening port is a :class:`ReservedAddress`'s.
    """
    return hasattr(port, "reuseport_backlog")


def worker_socket(port: Any) -> Tuple[socket.socket, int]:
    """
    A new socket for one worker, bound to the address the reserved
    ``port`` holds, and the backlog the worker listens on it with once it
    is about to serve (until then nothing queues for it).
    """
    made = _reusable(port.socket.family)
    try:
        made.bind(port.socket.getsockname())
    except OSError:
        made.close()
        raise
    made.setblocking(False)
    return made, port.reuseport_backlog
