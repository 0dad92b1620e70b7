"""
The admin console: a Klein app on its own listener that shows every
upstream's servers live and lets an operator change a server's weight,
drain, disable and enable it, through a web page or a JSON API.

It holds the very objects the proxy balances over, so a change applies to
the next request.  Who may do what is decided in :mod:`gourmet.admin.auth`.
"""

from __future__ import annotations

import json
from collections import deque
from http import HTTPStatus
from importlib import resources
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Tuple,
    Union,
)

from attrs import evolve, field, frozen
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import HTTPException

from gourmet.admin.auth import (
    REALM,
    SECURITY_HEADERS,
    AdminSecurity,
    Principal,
    Refused,
)
from gourmet.admin.metrics import MetricsResource, metrics_registry
from gourmet.admin.views import (
    Instance,
    ListenerInfo,
    certificate_view,
    listener_view,
    stream_view,
    upstream_view,
)
from gourmet.cluster.member import ClusterMember
from gourmet.cluster.shared import Applied
from gourmet.config.model import (
    MAX_WEIGHT,
    FrontendConfig,
    GourmetConfig,
    is_weight,
)
from gourmet.discovery.updates import ProvidedUpstream
from gourmet.frontend.channel import ClientStats
from gourmet.frontend.errors import error_document
from gourmet.frontend.site import GourmetSite, NamedRequest
from gourmet.tcp.factory import StreamFactory
from gourmet.tls.certificates import Certificate
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import (
    AdminState,
    Server,
    Upstream,
    describe,
    settings_view,
)

#: The console's own files, served from the package.
_STATIC: Dict[str, Tuple[str, bytes]] = {
    "admin.js": ("admin.js", b"text/javascript; charset=utf-8"),
    "admin.css": ("admin.css", b"text/css; charset=utf-8"),
}
_STATES = {state.value: state for state in AdminState}


def _static(name: str) -> bytes:
    return (
        resources.files("gourmet.admin").joinpath("static").joinpath(name).read_bytes()
    )


def _json(request: IRequest, document: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode("utf-8") + b"\n"


def _error(request: IRequest, status: int, description: str) -> bytes:
    # Counted with the channel's refusals, as the console listener's own.
    site = getattr(request, "site", None)
    if isinstance(site, GourmetSite):
        site.client_stats.refusals[status] += 1
    return _json(request, error_document(status, description), status)


class AdminApp:
    """
    The console's routes, as methods of an object that holds the running
    upstreams (never module globals).
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        config: GourmetConfig,
        upstreams: Mapping[str, Upstream],
        security: AdminSecurity,
        client_stats: Optional[ClientStats] = None,
        running: Optional[Running] = None,
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.security = security
        self.running = running or Running(security.clock)
        self.instance = Instance.here(self.running.clock.seconds(), config.source)
        #: The latest changes, newest last.
        self.changes: Deque[Union[Change, Reloaded]] = deque(maxlen=CHANGES_KEPT)
        registry = metrics_registry(
            upstreams,
            client_stats,
            security.throttle,
            pools=self.running.pools,
            listeners=self.running.listeners,
            instance=self.instance,
            certificates=self.running.certificates,
            streams=self.running.streams,
            providers=self.running.providers,
            cluster=self.running.cluster,
            workers=self._workers_view,
        )
        self._metrics = MetricsResource(registry)
        self._locations = _locations_by_upstream(config)
        if self.running.cluster is not None:
            self.running.cluster.observers.append(self._shared_change)

    def _shared_change(self, applied: Applied) -> None:
        """
        List a change another instance made, applied here.
        """
        setting = applied.setting
        self.changes.append(
            Change(
                who=setting.who,
                when=setting.when,
                upstream=applied.upstream,
                server=applied.server,
                before=settings_view(applied.server, *applied.before),
                after=_settings(applied.server),
                undo=applied.before,
                instance=setting.instance,
            )
        )

    def _cluster_view(self) -> Optional[Dict[str, Any]]:
        cluster = self.running.cluster
        return None if cluster is None else cluster.view()

    def _share(self, upstream: str, server: Server, who: str) -> Optional[str]:
        """
        Write a change made here for the other instances; this instance's
        name, if it has others.
        """
        cluster = self.running.cluster
        if cluster is None:
            return None
        cluster.share(upstream, server, who)
        return cluster.name

    def _workers_view(self) -> Optional[Dict[str, Any]]:
        workers = self.running.workers()
        return None if workers is None else workers.view()

    async def _refresh(self) -> None:
        """
        With worker processes, have the upstreams hold their figures now.
        """
        workers = self.running.workers()
        if workers is not None:
            await workers.refresh()

    async def _changed(self, upstream: str, server: Server) -> None:
        """
        With worker processes, wait until each has applied the change.
        """
        workers = self.running.workers()
        if workers is not None:
            await workers.server_changed(upstream, server)

    def reconfigure(self, config: GourmetConfig) -> None:
        """
        Take a reload's configuration: its users, tokens and locations.
        """
        self.config = config
        self.security = self.security.with_config(config.admin)
        self._locations = _locations_by_upstream(config)

    # -- the page -------------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def page(self, request: IRequest) -> bytes:
        await self.security.may_read(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _static("admin.html")

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: IRequest, name: str) -> bytes:
        if name not in _STATIC:
            raise Refused(404, f"No file {name!r}.")
        filename, content_type = _STATIC[name]
        request.setHeader(b"content-type", content_type)
        return _static(filename)

    @app.route("/login", methods=["GET"])
    async def login(self, request: IRequest) -> bytes:
        """
        Asks the browser for credentials (it then sends them with every
        request to the console), and goes back to the page.
        """
        principal = await self.security.principal(request)
        if principal is None:
            raise Refused(401, "Sign in to make changes.", challenge=True)
        request.redirect(b"/")
        return b""

    # -- the API ---------------------------------------------------------------

    @app.route("/api/session", methods=["GET"])
    async def session(self, request: IRequest) -> bytes:
        principal = await self.security.may_read(request)
        return _json(
            request,
            {
                "user": principal.name if principal else None,
                "csrf_token": (
                    self.security.csrf_token(principal) if principal else None
                ),
                "can_change": principal is not None and principal.may_change,
                "sign_in": principal is None
                and bool(self.config.admin.users or self.config.admin.viewers),
                "max_weight": MAX_WEIGHT,
            },
        )

    @app.route("/api/upstreams", methods=["GET"])
    async def list_upstreams(self, request: IRequest) -> bytes:
        await self.security.may_read(request)
        await self._refresh()
        return _json(
            request,
            {
                "upstreams": [
                    self._view(upstream) for upstream in self.upstreams.values()
                ],
                "changes": [change.view() for change in reversed(self.changes)],
                "instance": self.instance.view(self.running.clock.seconds()),
                "listeners": [listener_view(each) for each in self.running.listeners()],
                "streams": [stream_view(each) for each in self.running.streams()],
                "certificates": [
                    certificate_view(each, index == 0)
                    for index, each in enumerate(self.running.certificates())
                ],
                "cluster": self._cluster_view(),
                "workers": self._workers_view(),
            },
        )

    @app.route("/api/upstreams/<name>", methods=["GET"])
    async def one_upstream(self, request: IRequest, name: str) -> bytes:
        await self.security.may_read(request)
        await self._refresh()
        return _json(request, self._view(self._upstream(name)))

    @app.route("/api/upstreams/<name>/servers/<server_id>", methods=["PATCH", "POST"])
    async def change_server(
        self, request: IRequest, name: str, server_id: str
    ) -> bytes:
        principal = await self.security.may_change(request)
        upstream = self._upstream(name)
        server = self._server(upstream, server_id)
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0]
        if content_type.strip().lower() != b"application/json":
            raise Refused(415, "Send the change as application/json.")
        weight, state, force = parse_change(request.content.read())
        before = _settings(server)
        serving = bool(upstream.in_rotation()[0])
        undo = (server.weight_override, server.admin_state)
        if weight is not _UNCHANGED:
            server.set_weight(weight)  # type: ignore[arg-type]
        if state is not None:
            server.admin_state = state
        if serving and not upstream.in_rotation()[0] and not force:
            server.weight_override, server.admin_state = undo
            raise Refused(
                409,
                f"This would leave {upstream.name} with no server taking"
                " requests: every request to it would get 503. Send"
                ' "force": true to do it anyway.',
            )
        instance = self._share(upstream.name, server, principal.name)
        change = Change(
            who=principal.name,
            when=self.security.clock.seconds(),
            upstream=upstream.name,
            server=server,
            before=before,
            after=_settings(server),
            undo=undo,
            instance=instance,
        )
        self.changes.append(change)
        self._log_change(request, principal, "changed", change)
        await self._changed(upstream.name, server)
        await self._refresh()
        view = self._view(upstream)
        (changed,) = (each for each in view["servers"] if each["id"] == server.id)
        return _json(request, changed)

    @app.route("/api/changes/undo", methods=["POST"])
    async def undo(self, request: IRequest) -> bytes:
        """
        Undo the latest change: its server gets back the weight and state it
        had before.
        """
        principal = await self.security.may_change(request)
        if not self.changes:
            raise Refused(409, "There is no change to undo.")
        if isinstance(self.changes[-1], Reloaded):
            raise Refused(
                409,
                "The latest change is a reload of the configuration file:"
                " change the file and reload again.",
            )
        change = self.changes.pop()
        assert isinstance(change, Change)
        server = change.server
        server.weight_override, server.admin_state = change.undo
        self._share(change.upstream, server, principal.name)
        self._log_change(request, principal, "undid", change)
        await self._changed(change.upstream, server)
        return _json(request, {"undone": change.view()})

    def _log_change(
        self, request: IRequest, principal: Principal, verb: str, change: Change
    ) -> None:
        self.log.info(
            "admin: {who} from {client} {verb} {upstream}/{server}: {change}",
            who=principal.name,
            client=getattr(request.getClientAddress(), "host", "-"),
            verb=verb,
            upstream=change.upstream,
            server=change.server.name,
            change=change.view()["description"],
        )

    @app.route("/api/reload", methods=["POST"])
    async def reload(self, request: IRequest) -> bytes:
        """
        Load the configuration file again, as SIGHUP does: 400 with the
        error line when it is not valid (nothing changes then).
        """
        principal = await self.security.may_change(request)
        reload = self.running.reload
        if reload is None:
            raise Refused(409, "This console cannot reload its configuration.")
        client = getattr(request.getClientAddress(), "host", "-")
        error = await reload(f"{principal.name} from {client}")
        if error is not None:
            raise Refused(400, error)
        return _json(request, {"reloaded": self.changes[-1].view()})

    def note_reload(self, who: str, description: str) -> None:
        """
        List a reload with the console's changes.
        """
        when = self.running.clock.seconds()
        self.changes.append(Reloaded(who, when, description))

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> IResource:
        await self.security.may_read(request)
        await self._refresh()
        return self._metrics

    # -- errors -----------------------------------------------------------------

    @app.handle_errors(Refused)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, Refused)
        if error.challenge and (self.config.admin.users or self.config.admin.viewers):
            request.setHeader(b"www-authenticate", REALM)
        if error.retry_after is not None:
            request.setHeader(b"retry-after", b"%d" % error.retry_after)
        return _error(request, error.status, error.message)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        status = error.code or 500
        if status == 405 and error.response is None:
            request.setHeader(b"allow", b", ".join(_allowed(error)))
        description = "No such page." if status == 404 else HTTPStatus(status).phrase
        return _error(request, status, description)

    # -- helpers ------------------------------------------------------------------

    def _view(self, upstream: Upstream) -> Dict[str, Any]:
        return upstream_view(
            upstream,
            self._locations.get(upstream.name, []),
            self.running.pools.get(upstream.name),
            self.running.providers().get(upstream.name),
        )

    def _upstream(self, name: str) -> Upstream:
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise Refused(404, f"No upstream named {name!r}.")
        return upstream

    @staticmethod
    def _server(upstream: Upstream, server_id: str) -> Server:
        try:
            return upstream.server(server_id)
        except KeyError:
            raise Refused(
                404, f"Upstream {upstream.name!r} has no server {server_id!r}."
            ) from None


def _locations_by_upstream(config: GourmetConfig) -> Dict[str, List[str]]:
    locations: Dict[str, List[str]] = {}
    for location in config.frontend.locations:
        locations.setdefault(location.upstream, []).append(location.pattern.pattern)
    return locations


def _no_listeners() -> Iterable[ListenerInfo]:
    return ()


def _no_certificates() -> Iterable[Certificate]:
    return ()


class Workers(Protocol):
    """
    What the console asks of the worker processes' supervisor
    (:class:`gourmet.workers.supervisor.Supervisor`).
    """

    def refresh(self) -> Awaitable[None]:
        """
        Have the upstreams hold the sum of the workers' figures.
        """

    def server_changed(self, upstream: str, server: Server) -> Awaitable[Any]:
        """
        Apply an operator's change in every worker.
        """

    def view(self) -> Dict[str, Any]:
        """
        The workers, as the API shows them.
        """


def _no_workers() -> Optional[Workers]:
    return None


@frozen
class Running:
    """
    What the console shows beside the upstreams, from the running service.

    :ivar clock: for the instance's uptime.
    :ivar pools: each upstream's connections, by upstream name.
    :ivar listeners: the sites listening for clients now (the console's
        own included), asked for at each look: addresses are known only
        once listening has started.
    """

    clock: Any
    pools: Mapping[str, ConnectionPool] = field(factory=dict)
    listeners: Callable[[], Iterable[ListenerInfo]] = _no_listeners
    #: Reloads the configuration file for whom it names; the error line
    #: when the file is not valid.
    reload: Optional[Callable[[str], Deferred[Optional[str]]]] = None
    #: The certificates TLS listeners serve now, the default one first.
    certificates: Callable[[], Iterable[Certificate]] = _no_certificates
    #: The TCP streams' factories, each with its listener and counts.
    streams: Callable[[], Iterable[StreamFactory]] = tuple
    #: The providers of upstreams whose servers are found, by upstream.
    providers: Callable[[], Mapping[str, ProvidedUpstream]] = dict
    #: This instance in ``[cluster]``, if it has one.
    cluster: Optional[ClusterMember] = None
    #: The worker processes' supervisor, with ``[server] workers`` above 1.
    workers: Callable[[], Optional[Workers]] = _no_workers


_UNCHANGED = object()

#: Changes the console lists (and may undo the latest of).
CHANGES_KEPT = 50


@frozen
class Change:
    """
    One change an operator made: who, when, to which server, and its
    settings before and after; ``undo`` is what restores it exactly (the
    weight override, None for the configured weight, and the state);
    ``instance``, in a ``[cluster]``, the instance whose console made it.
    """

    who: str
    when: float
    upstream: str
    server: Server
    before: Dict[str, Any]
    after: Dict[str, Any]
    undo: Tuple[Optional[int], AdminState]
    instance: Optional[str] = None

    def view(self) -> Dict[str, Any]:
        """
        The change as the API shows it.
        """
        return {
            "who": self.who,
            "when": self.when,
            "upstream": self.upstream,
            "server": self.server.name,
            "server_id": self.server.id,
            "before": self.before,
            "after": self.after,
            "description": describe(self.before, self.after),
            "kind": "change",
            "instance": self.instance,
        }


@frozen
class Reloaded:
    """
    A reload of the configuration file, listed with the changes.
    """

    who: str
    when: float
    description: str

    def view(self) -> Dict[str, Any]:
        """
        The reload as the API lists it.
        """
        return {
            "who": self.who,
            "when": self.when,
            "upstream": None,
            "server": None,
            "server_id": None,
            "before": None,
            "after": None,
            "description": self.description,
            "kind": "reload",
            "instance": None,
        }


def parse_change(body: bytes) -> Tuple[object, Optional[AdminState], bool]:
    """
    The weight (an int, None to go back to the configured one, or
    ``_UNCHANGED``) and the state (or None) a PATCH body asks for, and
    whether it insists (``"force": true``) on a change that leaves its
    upstream with no server taking requests.

    :raises Refused: 400 for anything else, saying what was expected.
    """
    try:
        change = json.loads(body)
    except (ValueError, RecursionError):
        # Not JSON, not UTF-8, or nested deeper than Python recurses.
        raise Refused(400, "The body is not JSON.") from None
    if not isinstance(change, dict) or not change:
        raise Refused(400, 'Expected a JSON object with "weight" and/or "state".')
    unknown = sorted(set(change) - {"weight", "state", "force"})
    if unknown:
        raise Refused(400, f"Unknown field {unknown[0]!r}: expected weight or state.")
    force = change.pop("force", False)
    if not isinstance(force, bool):
        raise Refused(400, f"force must be true or false, got {json.dumps(force)}.")
    if not change:
        raise Refused(400, 'Expected a JSON object with "weight" and/or "state".')
    weight = change.get("weight", _UNCHANGED)
    if weight is not _UNCHANGED and weight is not None and not is_weight(weight):
        raise Refused(
            400,
            f"weight must be a whole number from 0 to {MAX_WEIGHT} "
            f"(or null for the configured weight), got {json.dumps(weight)}.",
        )
    state = change.get("state")
    if state is not None and not (isinstance(state, str) and state in _STATES):
        raise Refused(
            400, f"state must be one of up, drain, disabled, got {json.dumps(state)}."
        )
    return weight, _STATES[state] if state is not None else None, force


def _settings(server: Server) -> Dict[str, Any]:
    # The weight the server has when up: a drained server's is 0 only for now.
    return settings_view(server, server.weight_override, server.admin_state)


def _allowed(error: HTTPException) -> List[bytes]:
    methods = getattr(error, "valid_methods", None) or []
    return [method.encode("ascii") for method in methods]


class AdminResource(Resource):
    """
    The Klein app behind the checks every request gets first: the Host
    header, and the security headers on every answer.
    """

    isLeaf = True

    def __init__(self, admin: AdminApp) -> None:
        super().__init__()
        self.admin = admin
        self.wrapped = admin.app.resource()

    def render(self, request: IRequest) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        try:
            self.admin.security.check_host(request)
        except Refused as error:
            return _error(request, error.status, error.message)
        return self.wrapped.render(request)


def admin_site(
    config: GourmetConfig,
    upstreams: Mapping[str, Upstream],
    reactor: Any,
    security: Optional[AdminSecurity] = None,
    client_stats: Optional[ClientStats] = None,
    running: Optional[Running] = None,
) -> GourmetSite:
    """
    The console's site, for its own listener: with the proxy's strict
    channel and its limits on what clients send (the console is on a
    network too), but a body limit and connection count of its own, both
    enforced before any credential is checked.

    :param client_stats: the proxy site's, for the metrics.
    :param running: the pools and listeners it shows.
    """
    security = security or AdminSecurity(config.admin)
    admin = AdminApp(
        config, upstreams, security, client_stats, running or Running(reactor)
    )
    site = GourmetSite(AdminResource(admin), reactor, frontend=admin_limits(config))
    site.requestFactory = NamedRequest
    site.json_refusals = True
    site.noisy = False
    return site


def admin_limits(config: GourmetConfig) -> FrontendConfig:
    """
    The limits of the console's listener: the proxy's, with a body limit
    and a connection count of its own.
    """
    return evolve(
        config.frontend,
        locations=(),
        max_body_size=config.admin.max_body_size,
        max_connections=config.admin.max_connections,
        trusted_proxies=(),
        # The proxy's HSTS is for the proxy's clients.
        hsts=None,
    )
