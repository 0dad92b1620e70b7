"""
HTTP/1.1's ``Upgrade`` (RFC 9110, 7.8): a request that asks to switch its
connection to another protocol (a WebSocket), which the server accepts
with ``101 Switching Protocols``.

``Upgrade`` is hop-by-hop: Gourmet forwards the request's upgrade itself,
only when the request is HTTP/1.1 and its ``Connection`` names
``upgrade``, as the RFC requires of a sender.  ``h2c`` is left out: a
proxy that switched to HTTP/2 with the server could not pass it on to an
HTTP/1.1 client connection; without it a request is proxied as plain
HTTP/1.1 (which the RFC allows: an upgrade may be ignored).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from gourmet.http.tokens import connection_tokens, is_token


def _protocols(values: Iterable[bytes]) -> List[bytes]:
    return [each.strip() for value in values for each in value.split(b",")]


def _is_protocol(protocol: bytes) -> bool:
    """
    Whether ``protocol`` is ``name`` or ``name/version``, both tokens.
    """
    name, slash, version = protocol.partition(b"/")
    return is_token(name) and (not slash or is_token(version))


def requested_upgrade(
    version: bytes, connection: Iterable[bytes], upgrade: Iterable[bytes]
) -> Optional[bytes]:
    """
    The protocols a request asks to switch to, as its ``Upgrade`` header
    lists them for the server, or None when there is no upgrade to forward.

    :param version: the request's HTTP version (``b"HTTP/1.1"``).
    :param connection: its ``Connection`` values.
    :param upgrade: its ``Upgrade`` values.
    """
    if version != b"HTTP/1.1" or b"upgrade" not in connection_tokens(connection):
        return None
    protocols = [
        protocol
        for protocol in _protocols(upgrade)
        if _is_protocol(protocol) and protocol.partition(b"/")[0].lower() != b"h2c"
    ]
    return b", ".join(protocols) or None


def upgrade_headers(protocols: bytes) -> List[Tuple[bytes, bytes]]:
    """
    The hop-by-hop headers that ask the next hop for an upgrade to
    ``protocols``, or that tell the client it was accepted.
    """
    return [(b"Connection", b"Upgrade"), (b"Upgrade", protocols)]


def switched_to(headers: Iterable[Tuple[bytes, bytes]]) -> Optional[bytes]:
    """
    The protocols a ``101`` response's ``Upgrade`` names, or None when it
    names none (such a 101 is not a switch Gourmet can pass on).
    """
    values = [value for name, value in headers if name.lower() == b"upgrade"]
    protocols = [each for each in _protocols(values) if _is_protocol(each)]
    return b", ".join(protocols) or None
