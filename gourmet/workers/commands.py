"""
What the supervisor and its workers tell each other, as AMP commands
(:mod:`twisted.protocols.amp`) over a pair of pipes.

Supervisor to worker: :class:`Sync` (the operators' changes so far, the
checks' verdicts and the providers' sets, when the worker starts and after
it reloads), :class:`SetServer` (one change, answered once applied),
:class:`ServerHealth` (a server another worker found down, or back up),
:class:`ServerChecked` (what the supervisor's active checks found),
:class:`Servers` (a set the supervisor's provider found),
:class:`Snapshot` (the worker's figures), :class:`Reload` and
:class:`ReopenLogs`.  Worker to supervisor: :class:`ServerHealth`, for the
supervisor to apply and pass on to the other workers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

#: A worker's descriptors the supervisor's commands come in on and its
#: answers go out on.
COMMANDS_IN = 3
COMMANDS_OUT = 4

__all__ = [
    "COMMANDS_IN",
    "COMMANDS_OUT",
    "Quiet",
    "Reload",
    "ReopenLogs",
    "ServerChecked",
    "ServerHealth",
    "Servers",
    "SetServer",
    "Snapshot",
    "Sync",
]


class Quiet(amp.AMP):
    """
    AMP without its log lines when the pipes open and close: the
    supervisor says when a worker serves and when it ends.
    """

    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class Sync(amp.Command):
    """
    The weight and state an operator set for each server, and what active
    checks say of it, as JSON: ``{upstream: {server: [weight or null,
    state, checked up or null]}}``; and ``provided``, the servers the
    supervisor's providers found, as :class:`Servers` gives them (zlib'd
    JSON, ``{upstream: [server, ...]}``), applied first.
    """

    arguments = [(b"servers", amp.Unicode()), (b"provided", amp.String())]
    response = [(b"pid", amp.Integer())]


class SetServer(amp.Command):
    """
    An operator's change to one server: its weight (None: the
    configured one) and its state (``up``, ``drain``, ``disabled``).
    """

    arguments = [
        (b"upstream", amp.Unicode()),
        (b"server", amp.Unicode()),
        (b"weight", amp.Integer(optional=True)),
        (b"state", amp.Unicode()),
    ]
    response = []


class ServerHealth(amp.Command):
    """
    Passive health took ``server`` out (``down``, for ``seconds``, after
    ``error``) or brought it back.
    """

    arguments = [
        (b"upstream", amp.Unicode()),
        (b"server", amp.Unicode()),
        (b"down", amp.Boolean()),
        (b"seconds", amp.Float()),
        (b"error", amp.Unicode()),
    ]
    response = []


class Snapshot(amp.Command):
    """
    The worker's figures (:mod:`gourmet.workers.snapshot`), as JSON, one
    upstream per item (an AMP value holds at most 64 KiB), compressed.
    """

    arguments = []
    response = [
        (b"upstreams", amp.ListOf(amp.String())),
        (b"streams", amp.String()),
        (b"clients", amp.String()),
    ]


class Reload(amp.Command):
    """
    Load the configuration file again; ``error`` is the line of a file
    not valid (nothing changed then).
    """

    arguments = [(b"who", amp.Unicode())]
    response = [(b"error", amp.Unicode(optional=True))]


class ReopenLogs(amp.Command):
    """
    Reopen the access log (logrotate moved it away), as SIGUSR1 does.
    """

    arguments = []
    response = []


class ServerChecked(amp.Command):
    """
    The supervisor's active health checks took ``server`` out (``up``
    false) or brought it back: workers do not check for themselves.
    """

    arguments = [
        (b"upstream", amp.Unicode()),
        (b"server", amp.Unicode()),
        (b"up", amp.Boolean()),
    ]
    response = []


class Servers(amp.Command):
    """
    The supervisor's provider found a new set of servers for ``upstream``:
    zlib'd JSON, a list of :class:`gourmet.discovery.provider.ProvidedServer`
    as dictionaries.  Workers run no providers of their own.
    """

    arguments = [(b"upstream", amp.Unicode()), (b"servers", amp.String())]
    response = []
