"""
Where an upstream server lives: scheme, host and port, parsed from the
``path`` a configuration gives for a server.
"""

from __future__ import annotations

import ipaddress
import re

from attrs import field, frozen

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_PORT = re.compile(
    r"""
    \A(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?
    (?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]]+))
    (?::(?P<port>[0-9]{1,5}))?
    /?\Z
    """,
    re.VERBOSE,
)
_HOSTNAME = re.compile(r"\A[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})\Z")


@frozen
class Origin:
    """
    The scheme, host and port of one upstream server.

    :ivar scheme: ``"http"`` or ``"https"``.
    :ivar host: a host name, an IPv4 address, or an IPv6 address without
        brackets.
    :ivar port: the TCP port.
    :ivar tls_verify: for ``https``, whether the upstream's certificate and
        host name are verified.
    """

    scheme: str
    host: str
    port: int
    tls_verify: bool = True

    #: The ``Host`` header a request to this origin carries: the port is
    #: left out when it is the scheme's default, as RFC 9110 asks.  Made
    #: once: every proxied request asks for it.
    host_header: bytes = field(init=False, eq=False, repr=False)

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    @host_header.default
    def _host_header(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != _DEFAULT_PORTS[self.scheme]:
            host = f"{host}:{self.port}"
        return host.encode("idna" if not host.isascii() else "ascii")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_origin(text: str, *, tls_verify: bool = True) -> Origin:
    """
    Parse ``host``, ``host:port``, ``http://host[:port]`` or
    ``https://host[:port]`` (IPv6 addresses in brackets).

    :raises ValueError: with a message saying what was expected.
    """
    match = _HOST_PORT.match(text.strip())
    if match is None:
        raise ValueError(
            "expected host, host:port, http://host[:port] or https://host[:port]"
        )
    scheme = (match["scheme"] or "http").lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"expected scheme http or https, got {scheme!r}")
    if match["ipv6"] is not None:
        host = match["ipv6"]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host = match["host"]
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is not a host name or address")
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not from 1 to 65535")
    return Origin(scheme=scheme, host=host, port=port, tls_verify=tls_verify)
