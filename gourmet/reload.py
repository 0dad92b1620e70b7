"""
Reloading the configuration file while Gourmet runs (``SIGHUP``,
``systemctl reload``, ``POST /api/reload``), as nginx does, in one process.

A reload first does everything that can fail: the file is read and checked
whole (its certificates read again), the error page read, the TLS contexts
built, new listeners opened and the access log reopened.  If any of it
fails, what it opened is closed and nothing else has changed.  Then it
applies the rest, which cannot fail, for the next request: upstreams and
their servers (a server that stays keeps its health, its active checks,
figures and the operator's weight and state), balancers, pools, locations, limits, the
certificates new TLS connections get, and the console's users.  Requests
in flight finish on what they started with (open TLS connections keep
their certificate); servers removed get no new request, and their kept
connections are closed once idle.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Tuple, cast

from twisted.application.service import IServiceCollection
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory

from gourmet.admin.app import AdminApp, admin_limits
from gourmet.building import (
    admin_endpoint,
    listener_for,
    proxy_endpoints,
    routing_root,
    tls_contexts,
    tls_endpoints,
    upstream_pool,
)
from gourmet.config.endpoints import default_backlog
from gourmet.config.load import ConfigError
from gourmet.config.model import GourmetConfig
from gourmet.discovery.updates import Discovery
from gourmet.frontend.accesslog import AccessLog
from gourmet.frontend.challenge import Challenges
from gourmet.frontend.site import GourmetSite, RoutingResource
from gourmet.listener import Listener
from gourmet.tcp.listeners import StreamListeners, StreamReload
from gourmet.tls.renewal import AcmeRenewal, AcmeSetup, served_config
from gourmet.tls.store import CertificateStore, ServerContexts
from gourmet.upstream.checks import HealthChecks
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import Upstream


class Reloadable(Protocol):
    """
    What a reload changes: :class:`gourmet.service.GourmetService`, a
    service collection its new listeners join.
    """

    config: GourmetConfig
    upstreams: Dict[str, Upstream]
    pools: Dict[str, ConnectionPool]
    site: GourmetSite
    admin_site: Optional[GourmetSite]
    access_log: AccessLog
    certificates: CertificateStore
    tls_factory: IProtocolFactory
    plain_factory: IProtocolFactory
    challenges: Challenges
    acme: AcmeRenewal
    streams: StreamListeners
    checks: HealthChecks
    discovery: Discovery

    def https_port(self) -> Optional[int]:
        """
        The port of the first TLS listener.
        """

    @property
    def admin_app(self) -> Optional[AdminApp]:
        """
        The console's application, when it has one.
        """

    def all_listeners(self) -> List[Listener]:
        """
        The proxy's listeners and the console's.
        """

    def adopt_listener(self, listener: Listener) -> None:
        """
        Count a listener the reload opened.
        """

    def forget_listener(self, listener: Listener) -> None:
        """
        Stop counting a listener the reload closes.
        """


class Reload:
    """
    One reload of ``service`` to ``config``: :meth:`prepare`, then
    :meth:`apply`.
    """

    def __init__(self, service: Reloadable, config: GourmetConfig) -> None:
        self.service = service
        self.config = config
        self.reactor: Any = service.site.clock
        self._opened: List[Listener] = []
        self._closing: List[Listener] = []
        self._root: RoutingResource
        self._contexts: Optional[ServerContexts] = None
        self._acme: Optional[AcmeSetup] = None
        self._streams: Optional[StreamReload] = None

    # -- what can fail --------------------------------------------------

    def prepare(self) -> None:
        """
        Do what may fail, undoing it if it does.

        :raises ConfigError: naming the key at fault.
        """
        config = self.config
        if (config.admin.listen is None) != (self.service.admin_site is None):
            raise ConfigError(
                config.source,
                "admin.listen",
                "turning the admin console on or off needs a restart",
            )
        if config.cluster != self.service.config.cluster:
            raise ConfigError(
                config.source, "cluster", "changing [cluster] needs a restart"
            )
        upstreams, pools = self._upstreams_for_routing()
        try:
            self._root = routing_root(
                config,
                upstreams,
                pools,
                self.reactor,
                self.service.https_port,
                self.service.challenges,
            )
            self._contexts = self._tls_contexts()
            self._open_listeners()
            self._streams = self.service.streams.reload(
                config,
                cast(IServiceCollection, self.service),
                config.frontend.backlog or default_backlog(),
            )
            self._reopen_access_log()
        except ConfigError:
            self.undo()
            raise

    def _tls_contexts(self) -> Optional[ServerContexts]:
        # ACME's certificate stays served, unless [server.acme] changed
        # (then the new state directory's, or the placeholder).
        self._acme = self.service.acme.setup_for(self.config)
        acme = () if self._acme is None else (self._acme.certificate,)
        return tls_contexts(served_config(self.config, acme), self.service.certificates)

    def _upstreams_for_routing(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        # The new root needs every upstream by name; those that exist now are
        # reconfigured in place at apply, the others made here.
        service = self.service
        upstreams: Dict[str, Any] = {}
        pools: Dict[str, Any] = {}
        for upstream in self.config.upstreams:
            name = upstream.name
            existing = service.upstreams.get(name)
            upstreams[name] = existing or Upstream(upstream, self.reactor)
            pools[name] = service.pools.get(name) or upstream_pool(
                upstream, self.reactor
            )
        self._upstreams, self._pools = upstreams, pools
        return upstreams, pools

    def _wanted_listeners(self) -> List[Tuple[str, str, IProtocolFactory, bool]]:
        plain = self.service.plain_factory
        config = self.config
        wanted: List[Tuple[str, str, IProtocolFactory, bool]] = [
            (key, each, plain, False) for key, each in proxy_endpoints(config)
        ]
        tls = self.service.tls_factory
        wanted += [(key, each, tls, True) for key, each in tls_endpoints(config)]
        admin = admin_endpoint(config)
        admin_site = self.service.admin_site
        if admin is not None and admin_site is not None:
            wanted.append((*admin, admin_site, False))
        return wanted

    def _open_listeners(self) -> None:
        service = self.service
        # A listener is known by its endpoint and whether it is TLS: one
        # moved from listen to tls_listen is closed and opened again.
        current = {
            (each.description, each.tls): each for each in service.all_listeners()
        }
        backlog = self.config.frontend.backlog or default_backlog()
        kept = set()
        for key, description, factory, tls in self._wanted_listeners():
            if (description, tls) in current:
                kept.add((description, tls))
                continue
            listener = listener_for(
                self.config, key, description, backlog, factory, self.reactor, tls
            )
            try:
                # A running parent starts it: it listens now.
                listener.setServiceParent(cast(IServiceCollection, service))
            except CannotListenError as error:
                listener.disownServiceParent()
                raise ConfigError(
                    self.config.source, key, f"cannot listen: {error}"
                ) from None
            self._opened.append(listener)
        self._closing = [each for known, each in current.items() if known not in kept]

    def _reopen_access_log(self) -> None:
        log = self.config.log
        access_log = self.service.access_log
        try:
            access_log.reopen(log.access_log, log.access_log_format)
        except OSError as error:
            raise ConfigError(
                self.config.source, "log.access_log", f"cannot open: {error}"
            ) from None

    def undo(self) -> None:
        """
        Close the listeners :meth:`prepare` opened.
        """
        for listener in self._opened:
            listener.disownServiceParent()
        self._opened = []
        if self._streams is not None:
            self._streams.undo()

    # -- what cannot fail ----------------------------------------------

    def apply(self) -> None:
        """
        Make the prepared configuration the one requests get.
        """
        self._apply_upstreams()
        service, config = self.service, self.config
        # Servers that stay keep their checks' timing and record.
        service.checks.update(service.upstreams.values())
        # Providers whose options stay keep running, and their servers.
        service.discovery.update(config.upstreams)
        site = service.site
        site.resource = self._root
        service.certificates.replace(self._contexts)
        site.frontend = config.frontend
        site.timeOut = config.frontend.idle_timeout
        admin_site = service.admin_site
        if admin_site is not None:
            admin_site.frontend = admin_limits(config)
            admin_site.timeOut = config.frontend.idle_timeout
            app = service.admin_app
            assert app is not None  # the console has a site, so an app
            app.reconfigure(config)
        for listener in self._opened:
            service.adopt_listener(listener)
        service.config = config
        if self._streams is not None:
            self._streams.apply()
        service.acme.configure(self._acme)
        for listener in self._closing:
            service.forget_listener(listener)
            # It stops listening; its clients' connections stay open.
            listener.disownServiceParent()

    def _apply_upstreams(self) -> None:
        service = self.service
        for upstream in self.config.upstreams:
            name = upstream.name
            state, pool = self._upstreams[name], self._pools[name]
            if name in service.upstreams:
                state.reconfigure(service.discovery.with_servers(upstream))
            pool.max_idle_per_origin = upstream.keepalive
            pool.idle_timeout = upstream.keepalive_timeout
            pool.connect_timeout = upstream.connect_timeout
            pool.keep_only({server.origin for server in state.servers})
        for name in [each for each in service.upstreams if each not in self._upstreams]:
            # Requests in flight hold the pool; its connections close once
            # their responses are read.
            service.pools[name].keep_only(set())
            del service.upstreams[name], service.pools[name]
        for name, state in self._upstreams.items():
            service.upstreams.setdefault(name, state)
            service.pools.setdefault(name, self._pools[name])
