"""
Configuration texts for Gourmet in front of servers on loopback.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence, Union

#: A listen setting for a free loopback port.
LISTEN = 'listen = ["tcp:0:interface=127.0.0.1"]'
#: The admin console's listen setting for a free loopback port.
ADMIN_LISTEN = "tcp:0:interface=127.0.0.1"


class Addressed(Protocol):
    """
    A server on loopback: an upstream, scripted or real.
    """

    @property
    def address(self) -> str: ...


def access_log(path: object, line_format: str = "combined") -> str:
    """
    The ``[log]`` table of an access log written to ``path``.
    """
    return f'[log]\naccess_log = "{path}"\naccess_log_format = "{line_format}"\n'


def config(
    servers: Sequence[Union[str, Addressed]],
    weights: Optional[Sequence[int]] = None,
    upstream_extra: str = "",
    server_extra: str = "",
) -> str:
    """
    One upstream, ``backend``, of ``servers`` (given as addresses, or as
    servers that know theirs), to which Gourmet, listening on ``LISTEN``,
    sends every request.

    :param weights: the servers' weights, in order.
    :param upstream_extra: more settings of the upstream.
    :param server_extra: more settings of ``[server]``.
    """
    lines = ["[upstreams.backend]", upstream_extra]
    for index, server in enumerate(servers):
        address = server if isinstance(server, str) else server.address
        lines += ["[[upstreams.backend.servers]]", f'path = "{address}"']
        if weights:
            lines.append(f"weight = {weights[index]}")
    lines += [
        "[server]",
        LISTEN,
        server_extra,
        "[[server.locations]]",
        'location = "^/"',
        'upstream = "backend"',
    ]
    return "\n".join(lines) + "\n"
