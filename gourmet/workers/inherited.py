"""
The listening sockets a worker process inherits from its supervisor, by
the endpoint string the configuration gives them: told in the
environment (``GOURMET_WORKER_SOCKETS``), as systemd tells a service its
sockets in ``LISTEN_FDS``, and adopted with the reactor's public
``adoptStreamPort``.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Dict, Mapping, Optional, Tuple

from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

__all__ = [
    "ENVIRONMENT",
    "encode",
    "inherited_endpoint",
    "inherited_sockets",
    "shared_name",
]

#: The variable that names a worker's inherited sockets.
ENVIRONMENT = "GOURMET_WORKER_SOCKETS"

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def shared_name(key: str, description: str) -> str:
    """
    The name a shared socket goes by: where the configuration sets it and
    what it says (two listeners may say the same ``tcp:0``; a reload that
    changes what a key says opens a new socket).
    """
    return f"{key}={description}"


def encode(
    sockets: Mapping[str, Tuple[int, socket.AddressFamily]],
    backlogs: Optional[Mapping[str, int]] = None,
) -> str:
    """
    The value of :data:`ENVIRONMENT` for ``sockets``: endpoint string to
    the descriptor number in the worker and the socket's family; and, for
    a socket the worker is to listen on itself, the backlog (``backlogs``).
    """
    names = {family: name for name, family in _FAMILIES.items()}
    backlogs = backlogs or {}
    return json.dumps(
        {
            key: [fd, names[family], backlogs.get(key)]
            for key, (fd, family) in sockets.items()
        },
        sort_keys=True,
    )


def _decoded(environ: Mapping[str, str]) -> Dict[str, Any]:
    value = environ.get(ENVIRONMENT)
    return json.loads(value) if value else {}


def inherited_sockets(
    environ: Mapping[str, str] = os.environ,
) -> Dict[str, Tuple[int, socket.AddressFamily]]:
    """
    The sockets this process inherited, by endpoint string (none outside
    a worker).
    """
    return {
        key: (int(fd), _FAMILIES[family])
        for key, (fd, family, *_) in _decoded(environ).items()
    }


def inherited_endpoint(
    reactor: Any, name: str, environ: Mapping[str, str] = os.environ
) -> Optional[IStreamServerEndpoint]:
    """
    An endpoint that adopts the socket inherited under ``name`` (see
    :func:`shared_name`), or None when there is none (not a worker, or a
    listener a reload adds).
    """
    found = _decoded(environ).get(name)
    if found is None:
        return None
    fd, family, *rest = found
    backlog = rest[0] if rest else None
    if backlog is not None:
        # Bound by the supervisor, listening from now on: nothing queued
        # for this worker before it could serve.
        listening = socket.fromfd(fd, _FAMILIES[family], socket.SOCK_STREAM)
        listening.listen(backlog)
        listening.close()
    return AdoptedStreamServerEndpoint(reactor, fd, _FAMILIES[family])
