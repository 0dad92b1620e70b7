"""
The service one configuration runs: the proxy's listeners and site, the
upstreams' state and connection pools, the admin console, the access log
and the demo upstreams, built from a :class:`GourmetConfig`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.web.server import Site

from gourmet._twisted import sockets
from gourmet._twisted.check import check_twisted
from gourmet._twisted.pollloop import install_poll_loop
from gourmet.admin.app import Running, admin_site
from gourmet.admin.auth import AdminSecurity, PasswordThreads
from gourmet.admin.views import ListenerInfo
from gourmet.config.endpoints import default_backlog, with_backlog, with_unix_mode
from gourmet.config.load import ConfigError
from gourmet.config.model import GourmetConfig
from gourmet.demo import demo_service
from gourmet.frontend.accesslog import AccessLog
from gourmet.frontend.errors import ErrorPages
from gourmet.frontend.routing import Router
from gourmet.frontend.site import GourmetSite, RoutingResource
from gourmet.listener import Listener
from gourmet.proxy.resource import LocationResource
from gourmet.pypy import nursery_warning, running_nursery
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import Upstream

__all__ = ["GourmetService", "build_service"]

#: The mode of a ``unix:`` socket file for the admin console that sets none.
ADMIN_SOCKET_MODE = "660"


class GourmetService(MultiService):
    """
    Everything one configuration runs: the proxy's listeners, the access
    log, the demo upstreams, and the upstreams' runtime state and pools.
    """

    log = Logger()

    def __init__(
        self,
        config: GourmetConfig,
        upstreams: Dict[str, Upstream],
        pools: Dict[str, ConnectionPool],
        site: GourmetSite,
        log_observer: Optional[ILogObserver] = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.upstreams = upstreams
        self.pools = pools
        self.site = site
        self.admin_site: Optional[GourmetSite] = None
        self.listeners: List[Listener] = []
        self.admin_listener: Optional[Listener] = None
        self._log_observer = log_observer

    def setServiceParent(self, parent: Any) -> None:
        # twistd starts its logging after makeService, from an ILogObserver
        # component of the application this is attached to.
        if self._log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        # Listening happens here: a port in use or a socket not permitted
        # stops start-up with one line, not a traceback.
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            self.log.critical(
                "gourmet: {source}: cannot start: {error}",
                source=self.config.source,
                error=error,
            )
            raise SystemExit(1) from None

    def startService(self) -> None:
        # The addresses listened on, not the endpoint strings: a port 0 in
        # the configuration is told here as the port it became.
        self.log.info(
            "gourmet listening on {addresses} with {count} upstreams from {source}",
            addresses=", ".join(listener.address() for listener in self.listeners),
            count=len(self.upstreams),
            source=self.config.source,
        )
        admin = self.admin_listener
        if admin is not None:
            self.log.info(
                "admin console on {address} ({mode})",
                address=admin.address(),
                mode="changes allowed with credentials"
                if self.config.admin.has_credentials
                else "read-only: no credentials configured",
            )
        warning = nursery_warning(running_nursery())
        if warning is not None:
            self.log.warn("{warning}", warning=warning)
        super().startService()

    def listener_infos(self) -> List[ListenerInfo]:
        """
        The proxy's site and the console's, and where each listens.
        """
        infos = [
            ListenerInfo(
                "proxy", [each.address() for each in self.listeners], self.site
            )
        ]
        if self.admin_site is not None and self.admin_listener is not None:
            address = self.admin_listener.address()
            infos.append(ListenerInfo("admin", [address], self.admin_site))
        return infos

    def stopService(self) -> Any:
        async def stop() -> None:
            await super(GourmetService, self).stopService()
            await DeferredList([pool.close() for pool in self.pools.values()])

        return ensureDeferred(stop())


def build_service(
    config: GourmetConfig, reactor: Any, log_observer: Optional[ILogObserver] = None
) -> GourmetService:
    """
    The service for ``config``.

    :raises ConfigError: for what only building can find out (a listen
        string Twisted cannot parse, an unreadable error page).
    :raises TwistedMismatch: when the installed Twisted lacks a name a
        defence relies on.
    """
    unusable = check_twisted()
    # Socket events skip Twisted's per-event log context (gourmet._twisted.pollloop).
    if "gourmet._twisted.pollloop" not in unusable:
        install_poll_loop(reactor)
    sockets.speedups = "gourmet._twisted.sockets" not in unusable
    upstreams = {u.name: Upstream(u, reactor) for u in config.upstreams}
    pools = {
        u.name: ConnectionPool(
            reactor,
            max_idle_per_origin=u.keepalive,
            idle_timeout=u.keepalive_timeout,
            connect_timeout=u.connect_timeout,
        )
        for u in config.upstreams
    }
    error_pages = ErrorPages(_error_page(config))
    frontend = config.frontend
    locations = [
        LocationResource(
            upstreams[location.upstream],
            pools[location.upstream],
            error_pages,
            reactor,
            max_body_size=frontend.max_body_size,
            trusted_proxies=frontend.trusted_proxies,
        )
        for location in frontend.locations
    ]
    root = RoutingResource(Router(frontend.locations), locations, error_pages)
    access_log = AccessLog(config.log.access_log, config.log.access_log_format, reactor)
    site = GourmetSite(root, reactor, access_log, frontend)
    service = GourmetService(config, upstreams, pools, site, log_observer)
    access_log.setServiceParent(service)
    backlog = frontend.backlog or default_backlog()
    for index, description in enumerate(frontend.endpoints):
        key = f"server.listen[{index}]" if frontend.listen else "server.port"
        listener = _listener(config, key, description, backlog, site, reactor)
        listener.setServiceParent(service)
        service.listeners.append(listener)
    if config.admin.listen is not None:
        threads = PasswordThreads()
        threads.setServiceParent(service)
        security = AdminSecurity(
            config.admin, clock=reactor, threads=(reactor, threads)
        )
        service.admin_site = admin_site(
            config,
            upstreams,
            reactor,
            security,
            client_stats=site.client_stats,
            running=Running(reactor, pools, service.listener_infos),
        )
        service.admin_listener = _listener(
            config,
            "admin.listen",
            # The console's socket file: its owner and group, not every user.
            with_unix_mode(config.admin.listen, ADMIN_SOCKET_MODE),
            backlog,
            service.admin_site,
            reactor,
        )
        service.admin_listener.setServiceParent(service)
    if config.demo.listen:
        demo_service(reactor, config.demo.listen).setServiceParent(service)
    return service


def _listener(
    config: GourmetConfig,
    key: str,
    description: str,
    backlog: int,
    site: Site,
    reactor: Any,
) -> Listener:
    description = with_backlog(description, backlog)
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            config.source, key, f"not a Twisted endpoint string: {error}"
        ) from None
    return Listener(endpoint, site)


def _error_page(config: GourmetConfig) -> Optional[str]:
    path = config.frontend.error_page
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as page:
            return page.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(config.source, "server.error_page", str(error)) from None
