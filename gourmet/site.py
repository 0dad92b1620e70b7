"""
The proxy's web site: the request class that carries what the proxy did for
the access log, and the root resource that routes each request to its
location.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gourmet.accesslog import AccessLog, ProxyRecord
from gourmet.errors import ErrorPages
from gourmet.routing import Router

#: Seconds an idle client connection is kept open, as nginx's
#: ``keepalive_timeout``.
CLIENT_IDLE_TIMEOUT = 75


class GourmetRequest(Request):
    """
    A request that remembers where the proxy sent it.

    :ivar gourmet_record: the upstreams tried and their statuses, for the
        access log.
    :ivar gourmet_target: the path and query to forward, as routing made it.
    """

    # A proxied response has the upstream's Content-Type or none at all.
    defaultContentType = None

    gourmet_record: ProxyRecord
    gourmet_target: bytes = b""

    def process(self) -> None:
        site: GourmetSite = self.channel.site  # type: ignore[attr-defined]
        self.gourmet_record = ProxyRecord(started=site.clock.seconds())
        super().process()


class NotFound(Resource):
    isLeaf = True

    def __init__(self, error_pages: ErrorPages) -> None:
        super().__init__()
        self.error_pages = error_pages

    def render(self, request: Any) -> Any:
        self.error_pages.render(
            request, 404, "No location of this server matches the request."
        )
        return NOT_DONE_YET


class RoutingResource(Resource):
    """
    The root of the proxy site: hands each request to the resource of the
    first location that matches it, or answers 404.
    """

    def __init__(
        self,
        router: Router,
        locations: Sequence[IResource],
        error_pages: ErrorPages,
    ) -> None:
        super().__init__()
        self.router = router
        self.location_resources = tuple(locations)
        self.not_found = NotFound(error_pages)

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        route = self.router.route(
            request.path,
            request.uri.partition(b"?")[2],
            request.getHeader(b"host"),
        )
        if route is None:
            return self.not_found
        index, target = route
        request.gourmet_target = target
        return self.location_resources[index]

    def render(self, request: Any) -> Any:
        # Twisted only renders the root for an empty path, which a client
        # cannot send; route it like any other.
        return self.getChildWithDefault(b"", request).render(request)


class GourmetSite(Site):
    """
    The proxy site.  It never shows a traceback, and writes Gourmet's own
    access log rather than Twisted's.
    """

    requestFactory = GourmetRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        access_log: Optional[AccessLog] = None,
    ) -> None:
        super().__init__(resource, reactor=clock, timeout=CLIENT_IDLE_TIMEOUT)
        self.clock = clock
        self.access_log = access_log

    def log(self, request: Any) -> None:
        if self.access_log is not None:
            self.access_log.write(request, request.gourmet_record)
