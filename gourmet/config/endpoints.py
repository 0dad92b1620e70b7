"""
Twisted endpoint strings as Gourmet's listeners use them: what they listen
on, the listen backlog Gourmet gives them, and the certificate files of an
``ssl:`` one, found from the configuration file's directory and checked
before anything listens.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Dict, Iterator, Optional, Tuple

from gourmet.tls.certificates import (
    certificates_in,
    check_key_matches,
    check_valid_at,
    private_key_in,
    read_file,
)

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
#: to the interface (for ``ssl:``, up to its last file), as Twisted's
#: parsers name them.
_POSITIONAL: Dict[str, Tuple[str, ...]] = {
    "tcp": ("port", "interface"),
    "tcp6": ("port", "backlog", "interface"),
    "ssl": (
        "port",
        "privateKey",
        "certKey",
        "sslmethod",
        "interface",
        "backlog",
        "extraCertChain",
        "dhParameters",
    ),
}


def _named_arguments(description: str) -> Tuple[Optional[str], Dict[str, str]]:
    """
    The type of a Twisted endpoint string (None when its first argument is
    a keyword one), and its arguments by the names Twisted's parser gives
    them, for the types of :data:`_POSITIONAL`.
    """
    (kind_key, kind), *arguments = _endpoint_arguments(description)
    names = _POSITIONAL.get(kind, ()) if kind_key is None else ()
    positional = [value for key, value in arguments if key is None]
    values = dict(zip(names, positional))
    # A keyword given twice: the last one counts, as for Twisted.
    values.update((key, value) for key, value in arguments if key is not None)
    return (None if kind_key is not None else kind), values


def endpoint_is_loopback(description: str) -> bool:
    """
    Whether a server endpoint string listens on loopback only: a ``unix:``
    socket, or a ``tcp:``, ``tcp6:`` or ``ssl:`` one whose interface is a
    loopback address or ``localhost``.  Anything else (no interface means
    every one; ``systemd:`` sockets could be anywhere) is not.
    """
    kind, values = _named_arguments(description)
    if kind == "unix":
        return True
    return kind in _POSITIONAL and is_loopback_host(values.get("interface", ""))


#: The arguments of an ``ssl:`` endpoint that name files.
_TLS_FILES = ("privateKey", "certKey", "extraCertChain", "dhParameters")
#: The private key (and certificate) file of an ``ssl:`` endpoint that names
#: none, as Twisted's parser has it.
_DEFAULT_PRIVATE_KEY = "server.pem"


def tls_files(description: str) -> Dict[str, str]:
    """
    The files an ``ssl:`` endpoint string has Twisted read, by argument:
    ``privateKey`` (``server.pem`` when not given), ``certKey`` (the
    private key's file when not given), and ``extraCertChain`` and
    ``dhParameters`` when given.  Empty for other endpoint types.
    """
    kind, values = _named_arguments(description)
    if kind != "ssl":
        return {}
    files = {name: values[name] for name in _TLS_FILES if name in values}
    files.setdefault("privateKey", _DEFAULT_PRIVATE_KEY)
    files.setdefault("certKey", files["privateKey"])
    return files


def _escaped(text: str) -> str:
    """
    ``text`` as one argument of an endpoint string: ``\\``, ``:`` and
    ``=`` escaped with a backslash, as Twisted's parser reads them.
    """
    for character in "\\:=":
        text = text.replace(character, "\\" + character)
    return text


def with_files_from(description: str, base_dir: str) -> str:
    """
    ``description`` with the relative file names of an ``ssl:`` endpoint
    (its key, certificate, chain and DH parameters, and the key's default
    ``server.pem``) made absolute against ``base_dir``, the configuration
    file's directory, so that they do not depend on where twistd runs.
    Absolute names, and other endpoint types, are left as they are.
    """
    if all(os.path.isabs(path) for path in tls_files(description).values()):
        return description
    names = iter(_POSITIONAL["ssl"])
    (_, first), *arguments = _endpoint_arguments(description)
    parts = [first]
    for key, value in arguments:
        name = key if key is not None else next(names, None)
        if name in _TLS_FILES:
            value = _absolute(value, base_dir)
        parts.append(_escaped(value) if key is None else f"{key}={_escaped(value)}")
    if "privateKey" not in _named_arguments(description)[1]:
        default = _absolute(_DEFAULT_PRIVATE_KEY, base_dir)
        parts.append(f"privateKey={_escaped(default)}")
    return ":".join(parts)


def _absolute(path: str, base_dir: str) -> str:
    return (
        path if os.path.isabs(path) else os.path.abspath(os.path.join(base_dir, path))
    )


def check_tls_files(description: str) -> None:
    """
    Read the files an ``ssl:`` endpoint string names, as Twisted does when
    it makes the endpoint, and check them as ``[[server.certificates]]``
    are checked (:mod:`gourmet.tls.certificates`): a certificate, the
    private key that goes with it, valid now.  A problem is then one line
    naming the file, before anything listens, rather than Twisted's
    traceback (or a certificate every client refuses).

    :raises ValueError: saying which file cannot be read, holds no
        certificate or key, holds a key that is not the certificate's, or
        a certificate expired or not valid yet.
    """
    files = tls_files(description)
    if not files:
        return
    contents = {name: read_file(path) for name, path in files.items()}
    key_path, certificate_path = files["privateKey"], files["certKey"]
    # Twisted reads the two as one PEM text, the certificate's file first,
    # and takes the first certificate and the first key in it.
    pem = contents["certKey"] + b"\n" + contents["privateKey"]
    certificate = certificates_in(pem, certificate_path)[0]
    key = private_key_in(pem, key_path)
    check_key_matches(key, certificate, key_path, certificate_path)
    check_valid_at(
        certificate, certificate_path, datetime.datetime.now(datetime.timezone.utc)
    )


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
