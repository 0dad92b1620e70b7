"""
Redirects that name the upstream server, rewritten to name the proxy.

An application behind Gourmet sees the server's own address as ``Host``
(unless ``preserve_host``) and often builds absolute URLs from it:
``Location: http://10.0.0.5:8080/login``.  Passed on as it is, that sends
the browser around the proxy.  As nginx's ``proxy_redirect default`` does,
``Location``, ``Content-Location`` and the URL in ``Refresh`` are rewritten
when their scheme, host and port are the server's (its address, or the
``Host`` sent to it); relative URLs and URLs of other sites are left alone.
"""

from __future__ import annotations

import re
from typing import AbstractSet, Optional, Tuple

#: The response headers that may hold a URL to rewrite, lower-cased.
REWRITTEN = frozenset({b"location", b"content-location", b"refresh"})

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_ABSOLUTE_URL = re.compile(rb"(?i:(https?))://([^/?#]*)(.*)", re.DOTALL)
# A host (name, IPv4 or bracketed IPv6) and an optional port: no userinfo.
_AUTHORITY = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[^:@\[\]]+)(?::([0-9]{1,5}))?")
# "5; url=http://...", the URL possibly quoted.
_REFRESH_URL = re.compile(rb"""(?i)(;\s*url\s*=\s*['"]?)([^'"]*)""")

#: A URL's scheme, lower-cased host and port: whom it names.
Authority = Tuple[bytes, bytes, int]


def authority(scheme: bytes, host_port: bytes) -> Optional[Authority]:
    """
    Whom ``scheme://host_port`` names, or None if ``host_port`` is not a
    plain host and port.
    """
    scheme = scheme.lower()
    match = _AUTHORITY.fullmatch(host_port)
    if match is None or scheme not in _DEFAULT_PORTS:
        return None
    host, port = match.groups()
    return scheme, host.lower(), int(port) if port else _DEFAULT_PORTS[scheme]


class RedirectRewrite:
    """
    The rewriting for one response.

    :param server: whom the server's own URLs name: its address, and the
        ``Host`` it was sent.
    :param client_base: ``scheme://host[:port]`` as the client reached
        Gourmet.
    """

    def __init__(self, server: AbstractSet[Authority], client_base: bytes) -> None:
        self.server = server
        self.client_base = client_base

    def url(self, url: bytes) -> bytes:
        """
        ``url`` naming the proxy instead of the server, if it named the
        server; otherwise unchanged.
        """
        match = _ABSOLUTE_URL.fullmatch(url)
        if match is None:
            return url
        scheme, host_port, rest = match.groups()
        if authority(scheme, host_port) not in self.server:
            return url
        return self.client_base + rest

    def header(self, lower_name: bytes, value: bytes) -> bytes:
        """
        A header of :data:`REWRITTEN` with its URL rewritten.
        """
        if lower_name != b"refresh":
            return self.url(value)
        return _REFRESH_URL.sub(
            lambda match: match.group(1) + self.url(match.group(2)), value, count=1
        )
