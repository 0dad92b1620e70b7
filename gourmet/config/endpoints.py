"""
Twisted endpoint strings as Gourmet's listeners use them: what they listen
on, and the listen backlog Gourmet gives them.
"""

from __future__ import annotations

import ipaddress
from typing import Dict, Iterator, Optional, Tuple

#: nginx's default listen backlog, used where the kernel's limit cannot be
#: read: Twisted's own default, 50, stalls a burst of new connections for
#: seconds (SYNs dropped and retried after 1, 3, 7... seconds).
DEFAULT_BACKLOG = 511

#: Where Linux says how long a listen queue may be.
SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def is_loopback_host(host: str) -> bool:
    """
    Whether ``host`` (an address, or ``localhost``) is on loopback only.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint_arguments(description: str) -> Iterator[Tuple[Optional[str], str]]:
    """
    The arguments of a Twisted endpoint string as Twisted reads them:
    ``(None, value)`` for a positional one and ``(key, value)`` for a keyword
    one; a backslash escapes the next character, and only an argument's first
    ``=`` separates its key.
    """
    key: Optional[str] = None
    current = ""
    characters = iter(description)
    for character in characters:
        if character == ":":
            yield key, current
            key, current = None, ""
        elif character == "=" and key is None:
            key, current = current, ""
        elif character == "\\":
            current += next(characters, "")
        else:
            current += character
    yield key, current


#: The positional arguments of the endpoint types that take an interface, up
#: to the interface, as Twisted's parsers name them.
_POSITIONAL: Dict[str, Tuple[str, ...]] = {
    "tcp": ("port", "interface"),
    "tcp6": ("port", "backlog", "interface"),
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface"),
}


def endpoint_is_loopback(description: str) -> bool:
    """
    Whether a server endpoint string listens on loopback only: a ``unix:``
    socket, or a ``tcp:``, ``tcp6:`` or ``ssl:`` one whose interface is a
    loopback address or ``localhost``.  Anything else (no interface means
    every one; ``systemd:`` sockets could be anywhere) is not.
    """
    (kind_key, kind), *arguments = _endpoint_arguments(description)
    if kind_key is None and kind == "unix":
        return True
    names = _POSITIONAL.get(kind, ()) if kind_key is None else ()
    positional = [value for key, value in arguments if key is None]
    values = dict(zip(names, positional))
    # A keyword given twice: the last one counts, as for Twisted.
    values.update((key, value) for key, value in arguments if key is not None)
    return bool(names) and is_loopback_host(values.get("interface", ""))


#: Endpoint types whose parser takes a ``backlog`` argument.
_TAKES_BACKLOG = frozenset({"tcp", "tcp6", "ssl", "unix"})


def default_backlog(somaxconn_path: str = SOMAXCONN_PATH) -> int:
    """
    The listen backlog Gourmet uses when the configuration sets none: the
    kernel's ``somaxconn`` (the most it grants any listener), but never
    less than nginx's 511.
    """
    try:
        with open(somaxconn_path, encoding="ascii") as file:
            somaxconn = int(file.read())
    except (OSError, ValueError):
        return DEFAULT_BACKLOG
    return max(somaxconn, DEFAULT_BACKLOG)


def with_backlog(description: str, backlog: int) -> str:
    """
    ``description`` with ``backlog`` as its listen backlog, unless it sets
    one itself (an explicit ``backlog=`` wins) or is of a type that takes
    none (a ``systemd:`` socket is listening already).
    """
    (kind_key, kind), *arguments = _endpoint_arguments(description)
    if kind_key is not None or kind.lower() not in _TAKES_BACKLOG:
        return description
    if any(key == "backlog" for key, _ in arguments):
        return description
    positional = [value for key, value in arguments if key is None]
    if kind.lower() == "tcp6" and len(positional) >= 2:
        return description  # tcp6:port:backlog:...
    return f"{description}:backlog={backlog}"


def with_unix_mode(description: str, mode: str) -> str:
    """
    ``description`` with ``mode`` (octal, as ``660``) for the socket file,
    when it is a ``unix:`` endpoint that says no ``mode=`` of its own
    (Twisted's default, 666, lets every local user connect).
    """
    (kind_key, kind), *arguments = _endpoint_arguments(description)
    if kind_key is not None or kind.lower() != "unix":
        return description
    if any(key == "mode" for key, _ in arguments):
        return description
    return f"{description}:mode={mode}"
