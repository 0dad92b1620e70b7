"""
The service one configuration runs: the proxy's listeners and site, the
upstreams' state and connection pools, the admin console, the access log
and the demo upstreams, built from a :class:`GourmetConfig`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Type, cast

from twisted.application.service import MultiService
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger

from gourmet._twisted import sockets
from gourmet._twisted.check import check_twisted
from gourmet._twisted.pollloop import install_poll_loop
from gourmet.admin.app import AdminApp, AdminResource, Running, admin_site
from gourmet.admin.auth import AdminSecurity, PasswordThreads
from gourmet.admin.views import ListenerInfo
from gourmet.building import (
    admin_endpoint,
    check_shareable,
    listener_for,
    plain_factory,
    proxy_endpoints,
    routing_root,
    tls_contexts,
    tls_endpoints,
    tls_factory,
    upstream_pool,
)
from gourmet.cluster.member import ClusterMember
from gourmet.collector import settle_again
from gourmet.config.endpoints import default_backlog
from gourmet.config.load import ConfigError, load_config
from gourmet.config.model import GourmetConfig, UpstreamConfig
from gourmet.demo import demo_service
from gourmet.discovery.updates import Discovery
from gourmet.frontend.accesslog import AccessLog
from gourmet.frontend.challenge import Challenges
from gourmet.frontend.site import GourmetSite
from gourmet.listener import Listener
from gourmet.pypy import nursery_warning, running_nursery
from gourmet.reload import Reload
from gourmet.shutdown import Drainable, GracefulStop
from gourmet.systemd import SystemdNotifier
from gourmet.tcp.listeners import StreamListeners
from gourmet.tls.renewal import AcmeRenewal, ThreadedIssuer, served_config
from gourmet.tls.store import CertificateStore
from gourmet.upstream.checks import HealthChecks
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import Upstream
from gourmet.workers.supervisor import Supervisor

__all__ = ["GourmetService", "build_service"]


class GourmetService(MultiService):
    """
    Everything one configuration runs: the proxy's listeners, the access
    log, the demo upstreams, and the upstreams' runtime state and pools.
    """

    log = Logger()
    #: What systemd is told (set by :func:`build_service`).
    notifier: SystemdNotifier
    #: The certificates TLS listeners serve (set by :func:`build_service`).
    certificates: CertificateStore
    #: ACME's pending http-01 challenges, answered by the proxy's site.
    challenges: Challenges
    #: What TLS listeners listen with: the site in TLS.
    tls_factory: Any
    #: What plain proxy listeners listen with: the site.
    plain_factory: Any
    #: ACME's certificate and its renewal (set by :func:`build_service`).
    acme: AcmeRenewal

    def __init__(
        self,
        config: GourmetConfig,
        upstreams: Dict[str, Upstream],
        pools: Dict[str, ConnectionPool],
        site: GourmetSite,
        access_log: AccessLog,
        log_observer: Optional[ILogObserver] = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.upstreams = upstreams
        self.pools = pools
        self.site = site
        self.access_log = access_log
        self.admin_site: Optional[GourmetSite] = None
        self.listeners: List[Listener] = []
        self.admin_listener: Optional[Listener] = None
        self._log_observer = log_observer
        self._stopping: Optional[GracefulStop] = None
        self._accepting: Optional[Deferred[None]] = None
        #: The [[streams]]: TCP load balancing.
        self.streams = StreamListeners(upstreams, site.clock)
        #: Active health checks, of the upstreams that have them.
        self.checks = HealthChecks(site.clock)
        #: The providers of upstreams whose servers are found, not listed.
        self.discovery = Discovery(site.clock, self.apply_servers)
        #: This instance in ``[cluster]``, if the configuration has one.
        self.cluster: Optional[ClusterMember] = None
        #: The worker processes' supervisor, with ``workers`` above 1.
        self.workers: Optional[Supervisor] = None

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
        self.checks.update(self.upstreams.values())
        self.discovery.update(self.config.upstreams)
        warning = nursery_warning(running_nursery())
        if warning is not None:
            self.log.warn("{warning}", warning=warning)
        # Once it serves: a script that waits for the line may connect.
        # Asked before the notifier starts: said before READY=1 is.
        self.serving().addCallback(lambda _: self.say_listening())
        super().startService()

    def serving(self) -> Deferred[None]:
        """
        Fires once the proxy accepts: its workers all serve, or (one
        process) every provider has answered once; meanwhile the proxy's
        listeners hold new connections in their backlog.
        """
        if self.workers is not None:
            return self.workers.all_ready()
        if self._accepting is None:
            self._accepting = self._accept_once_found()
        waiting: Deferred[None] = Deferred()
        self._accepting.addCallback(lambda _: waiting.callback(None))
        return waiting

    def _accept_once_found(self) -> Deferred[None]:
        if not self.discovery.upstreams:
            return succeed(None)
        ports = [each.port for each in self.shared_listeners() if each.port]
        for port in ports:
            port.stopReading()  # type: ignore[attr-defined]

        def accept(_: object) -> None:
            for port in ports:
                if port.connected:  # type: ignore[attr-defined]  # not closed since
                    port.startReading()  # type: ignore[attr-defined]

        return self.discovery.first_answers().addCallback(accept)

    def say_listening(self) -> None:
        """
        Log where the proxy, the streams and the console listen.
        """
        # The addresses listened on, not the endpoint strings: a port 0 in
        # the configuration is told here as the port it became.
        self.log.info(
            "gourmet listening on {addresses} with {count} upstreams from {source}",
            addresses=", ".join(listener.address() for listener in self.listeners),
            count=len(self.upstreams),
            source=self.config.source,
        )
        self.streams.log_listening()
        admin = self.admin_listener
        if admin is not None:
            self.log.info(
                "admin console on {address} ({mode})",
                address=admin.address(),
                mode="changes allowed with credentials"
                if self.config.admin.has_credentials
                else "read-only: no credentials configured",
            )

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

    def https_port(self) -> Optional[int]:
        """
        The port of the first TLS listener the configuration lists, where
        ``redirect_to_https`` sends clients; None if it has none.
        """
        for description in self.config.frontend.tls_listen:
            for listener in self.listeners:
                if listener.tls and listener.description == description:
                    return listener.port_number()
        return None

    def stopService(self) -> Any:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # systemd hears of the stop first, not after the requests in flight.
        self.notifier.stopService()
        # Workers stop accepting and finish their requests meanwhile.
        workers = (
            None
            if self.workers is None
            else self.workers.stop_workers(self.config.frontend.shutdown_timeout)
        )
        self.checks.stop()
        await self.discovery.stop()
        # Listeners first: nothing new comes in while the requests in flight
        # finish; the access log, closed with the other services, after
        # them, so that it has their lines.
        listeners = [*self.all_listeners(), *self.streams.listeners]
        await DeferredList([maybeDeferred(each.stopService) for each in listeners])
        # Open TCP streams run on until they end, or the timeout cuts them.
        sites: List[Drainable] = [self.site, self.streams.open]
        if self.admin_site is not None:
            sites.append(self.admin_site)
        self._stopping = GracefulStop(
            sites, self.site.clock, self.config.frontend.shutdown_timeout
        )
        await self._stopping.run()
        if workers is not None:
            await workers
        await super().stopService()
        await DeferredList([pool.close() for pool in self.pools.values()])

    def serve_certificates(self) -> None:
        """
        Serve new TLS connections with the configuration's certificates,
        then ACME's (renewed just now).
        """
        config = served_config(self.config, self.acme.certificates)
        try:
            self.certificates.replace(tls_contexts(config, self.certificates))
        except ConfigError as error:
            self.log.error(
                "gourmet: {error} (the certificates served before stay)", error=error
            )

    # -- reloading ---------------------------------------------------------

    def apply_servers(self, config: UpstreamConfig) -> None:
        """
        Give an upstream the servers of ``config`` (its provider's latest),
        as a reload would: those that stay keep their state, removed ones
        finish what they have and their idle connections close.
        """
        state, pool = self.upstreams.get(config.name), self.pools.get(config.name)
        if state is None or pool is None:
            return
        state.reconfigure(config)
        pool.keep_only({server.origin for server in state.servers})
        self.checks.update(self.upstreams.values())
        if self.cluster is not None:
            self.cluster.reapply()
        if self.workers is not None:
            self.workers.servers_found(config.name)

    def reload(self, who: str) -> Deferred[Optional[str]]:
        """
        Load the configuration file again and apply it (see
        :mod:`gourmet.reload`), for ``who`` (``"SIGHUP"``, a console user).

        :return: fires with None once it applies everywhere (with workers,
            once every worker has it), or at once with the error line of a
            file not valid, in which case nothing changed.
        """
        self.notifier.reloading()
        try:
            error = self._reload(who)
        except BaseException:
            self.notifier.ready()
            raise
        if error is not None or self.workers is None:
            done: Deferred[None] = succeed(None)
        else:
            done = self.workers.reloaded(who)

        def finish(_: object) -> Optional[str]:
            if error is None:
                self._say_reloaded(who)
            # systemd's reload ends when this is sent, whatever came of it.
            self.notifier.ready()
            return error

        return done.addBoth(finish)

    def load_file(self) -> GourmetConfig:
        """
        The configuration file as it is now, for a reload.

        :raises ConfigError: when it is not valid.
        """
        return load_config(self.config.source)

    def _reload(self, who: str) -> Optional[str]:
        try:
            reload = Reload(self, self.load_file())
            reload.prepare()
        except ConfigError as error:
            line = f"gourmet: {error}"
            self.log.error(
                "{line} (reload for {who} refused: nothing changed)",
                line=line,
                who=who,
            )
            return line
        reload.apply()
        if self.cluster is not None:
            self.cluster.reapply()
        # What the old configuration held is garbage now: once, not in
        # the middle of traffic.
        settle_again()
        return None

    def _say_reloaded(self, who: str) -> None:
        summary = self._summary()
        self.log.info(
            "gourmet reloaded {source} for {who}: {summary}",
            source=self.config.source,
            who=who,
            summary=summary,
        )
        app = self.admin_app
        if app is not None:
            app.note_reload(who, f"reloaded the configuration: {summary}")

    def _summary(self) -> str:
        servers = sum(len(each.servers) for each in self.upstreams.values())
        return (
            f"{len(self.upstreams)} upstreams, {servers} servers,"
            f" {len(self.config.frontend.locations)} locations, listening on "
            + ", ".join(listener.address() for listener in self.listeners)
        )

    def reopen_logs(self) -> Any:
        """
        Reopen the access log file where the configuration says (logrotate
        moved it away); with workers, a Deferred that fires once each has.
        """
        try:
            self.access_log.reopen()
        except OSError as error:
            self.log.error("cannot reopen the access log: {error}", error=error)
        if self.workers is not None:
            return self.workers.reopen_logs()
        return None

    @property
    def admin_app(self) -> Optional[AdminApp]:
        """
        The console's application, when it has one.
        """
        if self.admin_site is None:
            return None
        return cast(AdminResource, self.admin_site.resource).admin

    def shared_listeners(self) -> List[Listener]:
        """
        The listeners worker processes accept on: the proxy's and the
        streams'.
        """
        return [*self.listeners, *self.streams.listeners]

    def all_listeners(self) -> List[Listener]:
        """
        The proxy's listeners and the console's.
        """
        return [*self.listeners, *filter(None, [self.admin_listener])]

    def adopt_listener(self, listener: Listener) -> None:
        """
        Count a listener a reload opened as the proxy's or the console's.
        """
        if listener.factory is self.admin_site:
            self.admin_listener = listener
        else:
            self.listeners.append(listener)

    def forget_listener(self, listener: Listener) -> None:
        """
        Stop counting a listener a reload is closing.
        """
        if listener is self.admin_listener:
            self.admin_listener = None
        elif listener in self.listeners:
            self.listeners.remove(listener)

    # -- stopping -------------------------------------------------------------

    def stop_now(self) -> None:
        """
        A stop under way cuts the requests still in flight, rather than
        wait for them (a second SIGTERM or SIGINT).
        """
        if self._stopping is not None:
            self._stopping.cut("on a second signal")
        if self.workers is not None:
            self.workers.stop_now()


def build_service(
    config: GourmetConfig,
    reactor: Any,
    log_observer: Optional[ILogObserver] = None,
    cls: Type[GourmetService] = GourmetService,
) -> GourmetService:
    """
    The service for ``config``: a ``cls``, which a worker process's
    service subclasses.

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
    pools = {u.name: upstream_pool(u, reactor) for u in config.upstreams}
    frontend = config.frontend
    challenges = Challenges()
    # Asked only when a request is redirected, once the service exists.
    root = routing_root(
        config, upstreams, pools, reactor, lambda: service.https_port(), challenges
    )
    access_log = AccessLog(config.log.access_log, config.log.access_log_format, reactor)
    site = GourmetSite(root, reactor, access_log, frontend)
    service = cls(config, upstreams, pools, site, access_log, log_observer)
    access_log.setServiceParent(service)
    service.challenges = challenges
    service.certificates = CertificateStore()
    _add_acme(service, config, reactor)
    service.certificates.replace(
        tls_contexts(
            served_config(config, service.acme.certificates), service.certificates
        )
    )
    service.tls_factory = tls_factory(site, service.certificates, reactor)
    service.plain_factory = plain_factory(site)
    backlog = frontend.backlog or default_backlog()
    for key, description in proxy_endpoints(config):
        listener = listener_for(
            config, key, description, backlog, service.plain_factory, reactor
        )
        listener.setServiceParent(service)
        service.listeners.append(listener)
    for key, description in tls_endpoints(config):
        listener = listener_for(
            config, key, description, backlog, service.tls_factory, reactor, tls=True
        )
        listener.setServiceParent(service)
        service.listeners.append(listener)
    service.streams.start(config, service, backlog)
    if config.cluster.enabled:
        _add_cluster(service, config, reactor)
    admin = admin_endpoint(config)
    if admin is not None:
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
            running=Running(
                reactor,
                pools,
                service.listener_infos,
                service.reload,
                lambda: service.certificates.certificates,
                streams=lambda: service.streams.factories,
                providers=lambda: service.discovery.upstreams,
                cluster=service.cluster,
                workers=lambda: service.workers,
            ),
        )
        key, description = admin
        service.admin_listener = listener_for(
            config, key, description, backlog, service.admin_site, reactor
        )
        service.admin_listener.setServiceParent(service)
    if config.demo.listen:
        demo_service(reactor, config.demo.listen).setServiceParent(service)
    if frontend.workers > 1 and cls is GourmetService:
        check_shareable(config)
        service.workers = Supervisor(service, reactor, frontend.workers)
        service.workers.setServiceParent(service)
    # Last: started once every listener listens, stopped first.
    service.notifier = SystemdNotifier(
        lambda: service.upstreams,
        reactor,
        ready_when=service.serving,
    )
    service.notifier.setServiceParent(service)
    return service


def _add_acme(service: GourmetService, config: GourmetConfig, reactor: Any) -> None:
    # Made without [server.acme] too: a reload may add it.
    issuer = ThreadedIssuer(reactor, service.challenges)
    issuer.setServiceParent(service)
    service.acme = AcmeRenewal(reactor, issuer, service.serve_certificates)
    service.acme.configure(service.acme.setup_for(config))
    service.acme.setServiceParent(service)


def _add_cluster(service: GourmetService, config: GourmetConfig, reactor: Any) -> None:
    # Every listener listens before any service starts (twistd's
    # privilegedStartService): the default name has the console's port.
    def admin_address() -> Optional[str]:
        listener = service.admin_listener
        return None if listener is None else listener.address()

    service.cluster = ClusterMember(
        config.cluster, service.upstreams, reactor, admin_address
    )
    service.cluster.observers.append(
        lambda applied: _to_workers(service, applied.upstream, applied.server)
    )
    service.cluster.setServiceParent(service)


def _to_workers(service: GourmetService, upstream: str, server: Any) -> None:
    # Another instance's setting, applied in the supervisor: each worker
    # needs it too (a worker started later has it from its Sync).
    if service.workers is not None:
        service.workers.server_changed(upstream, server).addErrback(
            lambda failure: service.log.failure(
                "cluster: a setting did not reach every worker", failure
            )
        )
