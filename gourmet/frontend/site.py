"""
The proxy's web site: the request class that carries what the proxy did for
the access log, the root resource that routes each request to its
location, and the count of client connections.
"""

from __future__ import annotations

import io
import tempfile
from typing import (
    IO,
    Any,
    Callable,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
    cast,
)

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import provider

from gourmet._twisted.headers import set_raw
from gourmet.config.model import FrontendConfig
from gourmet.connections import OpenConnections
from gourmet.frontend.accesslog import AccessLog, ProxyRecord
from gourmet.frontend.challenge import Challenges
from gourmet.frontend.channel import ClientStats, GourmetChannel
from gourmet.frontend.errors import ErrorPages
from gourmet.frontend.routing import Router
from gourmet.http.forwarding import TrustedProxies, parse_ip
from gourmet.http.request_id import REQUEST_ID, RequestIds, kept_request_id

#: Request bodies shorter than this are kept in memory until they go
#: upstream; longer ones, and chunked ones, in a temporary file.
IN_MEMORY_BODY = 100_000

#: What Gourmet's own responses say in ``Server``: no version to help an
#: attacker pick an exploit (nginx's ``server_tokens off``).
SERVER = b"Gourmet"


@provider(INonQueuedRequestFactory)
class NamedRequest(Request):
    """
    A request served through a :class:`GourmetChannel`, whose own
    responses say ``Server: Gourmet`` rather than Twisted's name and
    version, which twisted.web sets for every request.
    """

    def setHeader(self, name: Union[str, bytes], value: Union[str, bytes]) -> None:
        if name == b"Server":  # twisted.web's own, set for every request
            site: GourmetSite = self.channel.site  # type: ignore[attr-defined]
            if not site.frontend.server_header:
                return
            value = SERVER
        super().setHeader(name, value)

    def write(self, data: bytes) -> None:
        super().write(data)
        # The channel holds the head back for the body's first bytes; with
        # none in this write, it goes now (a client may be waiting on it).
        channel: Optional[GourmetChannel] = self.channel  # type: ignore[assignment]
        if channel is not None:
            channel.flush_head()


# Declared, so that the channel's check for it finds a declaration rather
# than raising (and catching) an AttributeError in zope.interface for
# every request: costly on PyPy.
@provider(INonQueuedRequestFactory)
class GourmetRequest(NamedRequest):
    """
    A request that remembers where the proxy sent it.

    :ivar gourmet_record: the upstreams tried and their statuses, for the
        access log.
    :ivar gourmet_target: the path and query to forward, as routing made it.
    :ivar gourmet_client_gone: told when the client's connection is lost
        before the response ended: what ``notifyFinish``'s errback says,
        without a Deferred for every request.
    """

    # A proxied response has the upstream's Content-Type or none at all.
    defaultContentType = None

    gourmet_record: ProxyRecord
    gourmet_target: bytes = b""
    #: The request's ID (``X-Request-ID``); None with ``request_id = false``.
    gourmet_request_id: Optional[bytes] = None
    gourmet_client_gone: Optional[Callable[[Failure], object]] = None
    site: GourmetSite  # set by process(), before any resource sees it

    def cut_short(self) -> None:
        """
        Close the client's connection at once, in the middle of the
        response: the client must see it incomplete, never as a whole one.
        """
        self.site.log(self)
        transport: Any = self.channel.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.gourmet_client_gone is not None:
            self.gourmet_client_gone(reason)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # twisted.web's, less the parsing of the query string, and of a
        # POST's form or multipart body, into ``args``: the proxy passes
        # both on as they came and never reads ``args``, and parsed them
        # for every request (a multipart body whole, in memory).
        content: Any = self.content
        content.seek(0, 0)
        self.args = {}
        self.method, self.uri = command, path
        self.clientproto = version
        self.path = path.partition(b"?")[0]
        self.process()

    def process(self) -> None:
        channel: GourmetChannel = self.channel  # type: ignore[assignment]
        site: GourmetSite = channel.site  # type: ignore[assignment]
        now = site.clock.seconds()
        self.gourmet_record = ProxyRecord(started=now)
        if channel.secure:
            self.gourmet_record.tls = channel.tls_info()
        if site.frontend.request_id:
            self.gourmet_request_id = self.gourmet_record.request_id = self._request_id(
                site
            )
        if self.path == b"*":
            super().process()  # twisted.web's answer to OPTIONS *
            return
        # What twisted.web's process does, less what the proxy's resources
        # never use, for every request: its Date formatted once a second,
        # its Server and Date set without a sanitising copy, and its path
        # not split and unquoted into prepath and postpath (the root routes
        # by the whole path, and every resource it routes to is a leaf).
        self.site = site
        headers = self.responseHeaders
        set_raw(headers, b"Date", site.http_date(now))
        if site.frontend.server_header:
            set_raw(headers, b"Server", SERVER)
        self.prepath = []
        self.postpath = []
        self.sitepath: List[bytes] = []
        try:
            self.render(site.resource.getChildWithDefault(b"", self))
        except BaseException:
            self.processingFailed(Failure())

    def _request_id(self, site: GourmetSite) -> bytes:
        """
        The client's ``X-Request-ID`` when the client is a trusted proxy
        and the ID a sane one, otherwise a new one.  The client's header
        is taken out of the request: the ID goes upstream in Gourmet's.
        """
        headers = self.requestHeaders
        incoming = headers.getRawHeaders(REQUEST_ID)
        if incoming is None:
            return site.request_ids.new()
        headers.removeHeader(REQUEST_ID)
        peer = getattr(self.getClientAddress(), "host", "")
        kept = kept_request_id(incoming)
        if kept is not None and site.trusted_proxies.trusts(parse_ip(peer.encode())):
            return kept
        return site.request_ids.new()


class NotFound(Resource):
    """
    What a request no location matches gets: Gourmet's 404.
    """

    isLeaf = True

    def __init__(self, error_pages: ErrorPages) -> None:
        super().__init__()
        self.error_pages = error_pages

    def render(self, request: GourmetRequest) -> Any:
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
        redirect: Optional[IResource] = None,
        challenges: Optional[Challenges] = None,
    ) -> None:
        super().__init__()
        self.router = router
        self.location_resources = tuple(locations)
        self.not_found = NotFound(error_pages)
        #: What a request on a plain listener gets instead of its route
        #: (``redirect_to_https``); None: plain listeners proxy too.
        self.redirect = redirect
        #: ACME's pending http-01 challenges, answered before any route.
        self.challenges = challenges

    def getChildWithDefault(self, path: bytes, request: GourmetRequest) -> IResource:
        if self.challenges is not None:
            answer = self.challenges.resource_for(request.path)
            if answer is not None:
                return answer
        if self.redirect is not None and not request.channel.secure:  # type: ignore[attr-defined]
            return self.redirect
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
    The proxy site.  It never shows a traceback, writes Gourmet's own
    access log rather than Twisted's, and speaks HTTP/1.x to clients
    through :class:`GourmetChannel` (and HTTP/2, on TLS listeners, through
    :class:`gourmet.frontend.http2.Http2Connection`, never Twisted's own,
    whose requests would bypass Gourmet's checks).

    :ivar frontend: the ``[server]`` limits its channels enforce;
        ``idle_timeout`` is its idle timeout.
    :ivar client_stats: what was done to clients' requests on the way in.
    """

    # The admin console's site makes NamedRequests.
    requestFactory: Type[NamedRequest] = GourmetRequest
    displayTracebacks = False
    # Twisted types this as its HTTP/1-or-2 wrapper's factory; any
    # callable returning a protocol will do.
    protocol = GourmetChannel  # type: ignore[assignment]
    # Not "log": that is the access log method of a Site.
    logger = Logger()
    #: Whether refusals carry a JSON body: the admin console's do.
    json_refusals = False

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        access_log: Optional[AccessLog] = None,
        frontend: Optional[FrontendConfig] = None,
    ) -> None:
        if frontend is None:
            frontend = FrontendConfig(locations=())
        super().__init__(resource, reactor=clock, timeout=frontend.idle_timeout)
        self.clock = clock
        self.access_log = access_log
        self.frontend = frontend
        self.client_stats = ClientStats()
        self._refusing = False
        self._channels: OpenConnections[GourmetChannel] = OpenConnections()
        #: Client connections (and HTTP/2 ones of them) worker processes
        #: serve, told to their supervisor's site (which serves none).
        self.served_elsewhere: Tuple[int, int] = (0, 0)
        self.request_ids = RequestIds()
        self._trusted: Tuple[FrontendConfig, TrustedProxies] = (
            frontend,
            TrustedProxies(frontend.trusted_proxies),
        )
        self._date: Tuple[int, bytes] = (-1, b"")

    def http_date(self, now: float) -> bytes:
        """
        ``now`` as a ``Date`` header says it, formatted once a second.
        """
        second, text = self._date
        if int(now) != second:
            second = int(now)
            text = http.datetimeToString(second)
            self._date = (second, text)
        return text

    @property
    def trusted_proxies(self) -> TrustedProxies:
        """
        The proxies in front whose ``X-Request-ID`` is kept, as ``frontend``
        (which a reload replaces) has them.
        """
        frontend, trusted = self._trusted
        if frontend is not self.frontend:
            trusted = TrustedProxies(self.frontend.trusted_proxies)
            self._trusted = (self.frontend, trusted)
        return trusted

    @property
    def open_connections(self) -> int:
        """
        Client connections being served (by the workers too, in the
        supervisor of ``workers``).
        """
        return len(self._channels) + self.served_elsewhere[0]

    @property
    def http2_connections(self) -> int:
        """
        Client connections speaking HTTP/2.
        """
        return (
            sum(1 for channel in self._channels if channel.http2)
            + self.served_elsewhere[1]
        )

    @property
    def busy_connections(self) -> int:
        """
        Client connections with a request under way.
        """
        return sum(1 for channel in self._channels if channel.requests)

    def connection_opened(self, channel: GourmetChannel) -> bool:
        """
        Count a new client connection, unless ``max_connections`` are
        open already.

        :return: whether it may be served.
        """
        limit = self.frontend.max_connections
        if limit and self.open_connections >= limit:
            if not self._refusing:
                # Once per burst: a flood of refusals must not flood the log.
                self.logger.warn(
                    "{limit} client connections open: refusing more",
                    limit=limit,
                )
                self._refusing = True
            return False
        self._refusing = False
        self._channels.add(channel)
        return True

    def connection_closed(self, channel: GourmetChannel) -> None:
        """
        A connection counted by :meth:`connection_opened` is gone.
        """
        self._channels.discard(channel)

    def close_connections(self) -> Deferred[None]:
        """
        Close the idle client connections now and the others once their
        request is answered (Gourmet is stopping; its listeners are
        closed); fires when none is left.
        """
        for channel in self._channels.snapshot():
            channel.close_when_idle()
        return self._channels.when_empty()

    def abort_connections(self) -> int:
        """
        Cut every client connection still open, at once.

        :return: how many there were.
        """
        channels = self._channels.snapshot()
        for channel in channels:
            transport: Any = channel.transport
            if transport is not None:
                transport.abortConnection()
        return len(channels)

    def getContentFile(self, length: Optional[int]) -> IO[bytes]:
        """
        Where a request's body is kept until it is sent upstream: in memory
        when it is known to be small, else in a temporary file, as Twisted
        chooses.  Offered here so that Twisted's request finds this method
        rather than raising and catching an AttributeError for every
        request (costly on PyPy).
        """
        if length is not None and length < IN_MEMORY_BODY:
            return io.BytesIO()
        return tempfile.TemporaryFile()

    def log(self, request: http.Request) -> None:
        # Only GourmetRequests are made here (requestFactory).
        if self.access_log is not None:
            record = cast(GourmetRequest, request).gourmet_record
            self.access_log.write(request, record)
