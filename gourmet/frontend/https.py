"""
Plain HTTP sent to HTTPS (``[server] redirect_to_https``): every request
on a plain listener is answered with a permanent redirect (308, which
keeps the method and body) to the same host, path and query on Gourmet's
first TLS listener, and goes nowhere else.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gourmet.frontend.errors import ErrorPages
from gourmet.http.hosts import host_name

#: The port an ``https://`` URL means when it names none.
HTTPS_PORT = 443


def https_location(
    host: Optional[bytes], local_host: str, target: bytes, port: Optional[int]
) -> bytes:
    """
    The ``https://`` URL of a request on ``port``.

    :param host: the request's Host header (checked by the channel), if any.
    :param local_host: the address the client connected to, for a request
        without Host (HTTP/1.0).
    :param target: the request's path and query.
    :param port: the TLS listener's port; left out when 443 or unknown.
    """
    if host:
        name = host_name(host.decode("ascii"))
    else:
        name = f"[{local_host}]" if ":" in local_host else local_host
    authority = name if port in (None, HTTPS_PORT) else f"{name}:{port}"
    return b"https://" + authority.encode("ascii") + target


class HttpsRedirect(Resource):
    """
    What every request on a plain listener gets when ``redirect_to_https``
    is on: 308 to its ``https://`` URL, with Gourmet's small page.

    :param https_port: the port of the first TLS listener, asked for each
        redirect (known once it listens: a port 0 becomes one).
    """

    isLeaf = True

    def __init__(
        self, error_pages: ErrorPages, https_port: Callable[[], Optional[int]]
    ) -> None:
        super().__init__()
        self.error_pages = error_pages
        self.https_port = https_port

    def render(self, request: Any) -> Any:
        location = https_location(
            request.getHeader(b"host"),
            getattr(request.getHost(), "host", "localhost"),
            request.uri,
            self.https_port(),
        )
        request.setHeader(b"location", location)
        self.error_pages.render(
            request,
            308,
            "This site is served over HTTPS: " + location.decode("ascii"),
        )
        return NOT_DONE_YET
