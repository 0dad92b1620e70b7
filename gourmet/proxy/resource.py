"""
The proxy's resource: a :class:`ReverseProxyResource` per location that
checks what it can at once (the body's size) and
hands each request to a :class:`gourmet.proxy.exchange.ProxyExchange`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET

from gourmet.frontend.errors import ErrorPages
from gourmet.frontend.site import GourmetRequest
from gourmet.http.forwarding import (
    HeaderList,
    TrustedProxies,
    upstream_request_headers,
)
from gourmet.http.request_id import REQUEST_ID
from gourmet.http.rules import HeaderRules, Variables, host_variable
from gourmet.http.upgrade import requested_upgrade, upgrade_headers
from gourmet.proxy.exchange import ProxyExchange
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import Upstream

#: Methods whose request carries a Content-Length even when empty.
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class LocationResource(ReverseProxyResource):
    """
    Serves one ``[[server.locations]]`` entry.

    What it keeps of :class:`ReverseProxyResource`: its place in the
    resource tree (a leaf that renders every request under it), and its
    ``host``, ``port`` and ``path``, which name the upstream's first server
    and no path prefix, as a stock resource for that upstream would have
    them (Gourmet forwards the target routing made).  What it replaces:
    ``render`` and ``getChild``.  The stock resource connects to that one
    server for every request with ``ProxyClient``, an HTTP/1.0 client
    that opens a connection per request, keeps only the last of repeated
    headers and ignores backpressure; here the upstream's balancer picks a
    server for each request, and a :class:`ProxyExchange` sends it over a
    pooled keep-alive HTTP/1.1 connection (``proxyClientFactoryClass`` is
    never used).

    :param trusted_proxies: addresses or networks of the proxies in front
        of Gourmet whose forwarding headers are believed.
    """

    isLeaf = True

    def __init__(
        self,
        upstream: Upstream,
        pool: ConnectionPool,
        error_pages: ErrorPages,
        clock: IReactorTime,
        max_body_size: int = 0,
        trusted_proxies: Iterable[str] = (),
        request_rules: Optional[HeaderRules] = None,
        response_rules: Optional[HeaderRules] = None,
    ) -> None:
        # ReverseProxyResource's one host and port are never used: each
        # request asks the balancer.  A provider's upstream may have no
        # server yet.
        super().__init__("", 0, b"", reactor=clock)
        self.upstream = upstream
        self.pool = pool
        self.error_pages = error_pages
        self.clock = clock
        self.max_body_size = max_body_size
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.request_rules = request_rules
        self.response_rules = response_rules
        self.rules_use_variables = any(
            rules is not None and rules.uses_variables
            for rules in (request_rules, response_rules)
        )

    def getChild(self, path: bytes, request: GourmetRequest) -> LocationResource:
        return self

    def render(self, request: GourmetRequest) -> Any:
        body = request.content
        assert body is not None  # twisted.web read the body before render
        body.seek(0, 2)
        length = body.tell()
        if self.max_body_size and length > self.max_body_size:
            self.error_pages.render(
                request,
                413,
                f"The request body is larger than {self.max_body_size} bytes.",
            )
            return NOT_DONE_YET
        if length == 0 and request.method not in _BODY_METHODS:
            body = None
        address = request.getClientAddress()
        client_ip = getattr(address, "host", "unix").encode("ascii")
        scheme = b"https" if request.isSecure() else b"http"
        headers, client_host = upstream_request_headers(
            request.requestHeaders.getAllRawHeaders(),
            client_ip=client_ip,
            scheme=scheme,
            via=b"%s gourmet" % request.clientproto[5:],
            trusted=self.trusted_proxies,
        )
        request_id = request.gourmet_request_id
        if request_id is not None:
            headers.append((REQUEST_ID, request_id))
        response_rules = None
        if self.request_rules is not None or self.response_rules is not None:
            headers, response_rules = self._apply_rules(
                request, headers, scheme, client_host
            )
        upgrade = _upgrade(request)
        if upgrade is not None:
            headers += upgrade_headers(upgrade)
        exchange = ProxyExchange(
            request,
            self.upstream,
            self.pool,
            self.error_pages,
            self.clock,
            method=request.method,
            target=request.gourmet_target,
            headers=headers,
            client_host=client_host,
            body=body,
            body_length=length,
            upgrade=upgrade,
            response_rules=response_rules,
        )
        exchange.start()
        return NOT_DONE_YET

    def _apply_rules(
        self,
        request: GourmetRequest,
        headers: HeaderList,
        scheme: bytes,
        client_host: Optional[bytes],
    ) -> Tuple[HeaderList, Optional[Callable[[HeaderList], HeaderList]]]:
        """
        The location's ``request_headers`` applied to ``headers``, and its
        ``response_headers`` ready for the response, both with this
        request's variables (gathered only when a value names one).
        """
        variables = None
        if self.rules_use_variables:
            local = getattr(request.getHost(), "host", "localhost")
            local = f"[{local}]" if ":" in local else local
            variables = Variables(
                remote_addr=_real_ip(headers),
                scheme=scheme,
                host=host_variable(client_host, local.encode("ascii")),
                request_id=request.gourmet_request_id or b"",
            )
        if self.request_rules is not None:
            headers = self.request_rules.apply(headers, variables)
        response_rules = None
        if self.response_rules is not None:
            response_rules = partial(self.response_rules.apply, variables=variables)
        return headers, response_rules


def _real_ip(headers: HeaderList) -> bytes:
    """
    The client's address as Gourmet believes it (``$remote_addr``): the
    ``X-Real-IP`` that :func:`upstream_request_headers` put near the end
    (a client's own is never passed on).
    """
    for name, value in reversed(headers):
        if name == b"X-Real-IP":
            return value
    raise AssertionError("upstream_request_headers always sets X-Real-IP")


def _upgrade(request: GourmetRequest) -> Optional[bytes]:
    """
    The protocols ``request`` asks to switch to (a WebSocket), to forward.
    """
    headers = request.requestHeaders
    upgrade = headers.getRawHeaders(b"upgrade")
    if upgrade is None:
        return None
    connection = headers.getRawHeaders(b"connection", [])
    return requested_upgrade(request.clientproto, connection, upgrade)
