"""
A worker process: ``python -m gourmet.workers.worker --config FILE
--index N``, started by the supervisor (:mod:`gourmet.workers.supervisor`).

It runs the configuration as Gourmet does in one process, less what the
supervisor runs for all (the console, the demo upstreams), on the
listening sockets it inherited (:mod:`gourmet.workers.inherited`).  It
answers the supervisor's AMP commands on descriptors 3 (in) and 4 (out),
and tells it when passive health takes a server out or brings it back.
It stops gracefully on SIGTERM (a second one cuts the requests in
flight), and by itself when the supervisor is gone; SIGINT and SIGHUP
are the supervisor's to act on.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import zlib
from typing import Any, Dict, Iterable, List, Optional

from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.config.model import GourmetConfig
from gourmet.discovery.updates import ProvidedElsewhere, found_from_data
from gourmet.service import GourmetService
from gourmet.upstream.checks import HealthChecks
from gourmet.upstream.state import AdminState, Server
from gourmet.workers.commands import (
    COMMANDS_IN,
    COMMANDS_OUT,
    Quiet,
    Reload,
    ReopenLogs,
    ServerChecked,
    ServerHealth,
    Servers,
    SetServer,
    Snapshot,
    Sync,
)
from gourmet.workers.snapshot import client_figures, stream_counts, take_snapshot

__all__ = ["WorkerCommands", "WorkerService", "main", "worker_config"]


def worker_config(config: GourmetConfig) -> GourmetConfig:
    """
    ``config`` as a worker runs it: no console, no demo upstreams and no
    ``[cluster]`` membership, which are the supervisor's.
    """
    return evolve(
        config,
        admin=evolve(config.admin, listen=None),
        demo=evolve(config.demo, listen=()),
        cluster=evolve(config.cluster, etcd=()),
    )


class SupervisorsChecks(HealthChecks):
    """
    A worker's active health checks: none of its own; the supervisor
    checks and tells it (:class:`ServerChecked`).
    """

    def update(self, upstreams: Iterable[Any]) -> None:
        pass


class WorkerService(GourmetService):
    """
    The service of a worker: the configuration file, less the console
    and the demo upstreams; active checks and providers are the
    supervisor's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks = SupervisorsChecks(self.site.clock)
        self.discovery = ProvidedElsewhere(self.site.clock, self.apply_servers)

    def load_file(self) -> GourmetConfig:
        return worker_config(super().load_file())

    def say_listening(self) -> None:
        # The supervisor says where Gourmet listens, and that this serves.
        pass

    def _say_reloaded(self, who: str) -> None:
        # The supervisor says it once, when every worker has the file.
        pass


class WorkerCommands(Quiet):
    """
    The worker's end of the supervisor's commands.
    """

    log = Logger()

    def __init__(self, service: GourmetService, reactor: Any) -> None:
        super().__init__()
        self.service = service
        self.reactor = reactor
        self.stopping = False
        self.wire()

    def wire(self) -> None:
        """
        Have every upstream's passive health changes told to the supervisor
        (again after a reload, whose new upstreams have none).
        """
        for upstream in self.service.upstreams.values():
            upstream.health_hook = self._hook(upstream.name)

    def _hook(self, upstream: str) -> Any:
        def changed(server: Server, down: bool, seconds: float, error: str) -> None:
            self.callRemote(
                ServerHealth,
                upstream=upstream,
                server=server.name,
                down=down,
                seconds=seconds,
                error=error,
            ).addErrback(self._not_told)

        return changed

    def _not_told(self, failure: Failure) -> None:
        if not self.stopping:
            self.log.failure("cannot tell the supervisor", failure)

    def _server(self, upstream: str, server: str) -> Optional[Server]:
        state = self.service.upstreams.get(upstream)
        if state is None:
            return None
        try:
            return state.server(server)
        except KeyError:
            return None

    @Sync.responder
    def sync(self, servers: str, provided: bytes) -> Dict[str, Any]:
        for upstream, found in json.loads(zlib.decompress(provided)).items():
            self.servers(upstream, found)
        for upstream, settings in json.loads(servers).items():
            for name, (weight, state, checked) in settings.items():
                self.set_server(upstream, name, weight, state)
                if checked is not None:
                    self.server_checked(upstream, name, checked)
        # The first one: now it knows what the others know, it serves.
        for listener in self.service.shared_listeners():
            if listener.port is not None:
                listener.port.startReading()  # type: ignore[attr-defined]
        return {"pid": os.getpid()}

    @Servers.responder
    def servers_found(self, upstream: str, servers: bytes) -> Dict[str, Any]:
        self.servers(upstream, json.loads(zlib.decompress(servers)))
        return {}

    def servers(self, upstream: str, found: List[Dict[str, Any]]) -> None:
        discovery = self.service.discovery
        if isinstance(discovery, ProvidedElsewhere):
            discovery.provided(upstream, found_from_data(found))

    @ServerChecked.responder
    def server_checked(self, upstream: str, server: str, up: bool) -> Dict[str, Any]:
        found = self._server(upstream, server)
        if found is not None and found.active_health is not None:
            found.active_health.checked_elsewhere(up)
        return {}

    @SetServer.responder
    def set_server(
        self, upstream: str, server: str, weight: Optional[int], state: str
    ) -> Dict[str, Any]:
        found = self._server(upstream, server)
        if found is not None:
            found.set_weight(weight)
            found.admin_state = AdminState(state)
        return {}

    @ServerHealth.responder
    def server_health(
        self, upstream: str, server: str, down: bool, seconds: float, error: str
    ) -> Dict[str, Any]:
        found = self._server(upstream, server)
        if found is not None:
            if down:
                found.health.taken_out_elsewhere(seconds, error)
            else:
                found.health.back_up_elsewhere()
        return {}

    @Snapshot.responder
    def snapshot(self) -> Dict[str, Any]:
        figures = take_snapshot(self.service.upstreams.values(), self.service.pools)
        return {
            "upstreams": [
                zlib.compress(json.dumps({name: each}).encode("utf-8"))
                for name, each in figures.items()
            ],
            "clients": zlib.compress(
                json.dumps(client_figures(self.service.site)).encode()
            ),
            "streams": zlib.compress(
                json.dumps(stream_counts(self.service.streams.factories)).encode()
            ),
        }

    @ReopenLogs.responder
    def reopen_logs(self) -> Dict[str, Any]:
        self.service.reopen_logs()
        return {}

    @Reload.responder
    def reload(self, who: str) -> Deferred[Dict[str, Any]]:
        def reloaded(error: Optional[str]) -> Dict[str, Any]:
            self.wire()
            return {"error": error}

        return self.service.reload(who).addCallback(reloaded)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # The supervisor is gone: so is the reason to serve.
        if not self.stopping:
            self.log.warn("the supervisor is gone: stopping")
            self.stopping = True
            self.reactor.stop()


class WorkerOptions(usage.Options):
    optParameters = [
        ["config", "c", None, "The configuration file to load."],
        ["index", "i", "0", "The worker's number, for the log."],
    ]


@implementer(ILogObserver)
class _Named:
    """
    Marks each event as the worker's (``[worker 2]`` in the log line).
    """

    def __init__(self, observer: ILogObserver, name: str) -> None:
        self.observer = observer
        self.name = name

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_system") in (None, "-"):
            event = {**event, "log_system": self.name}
        self.observer(event)


def main(argv: Optional[List[str]] = None) -> None:
    """
    Run a worker until it is stopped.
    """
    # Ctrl-C reaches the whole process group: the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    options = WorkerOptions()
    options.parseOptions(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor

    from gourmet._twisted.check import TwistedMismatch, check_twisted
    from gourmet.config.load import ConfigError, load_config
    from gourmet.logs import quiet_dns
    from gourmet.service import build_service
    from gourmet.signals import SignalHandlers

    name = f"worker {options['index']}"
    globalLogBeginner.beginLoggingTo(
        [
            _Named(
                FilteringLogObserver(textFileLogObserver(sys.stderr), [quiet_dns()]),
                name,
            )
        ],
        redirectStandardIO=False,
    )
    try:
        check_twisted(log_fallbacks=False)
        config = worker_config(load_config(options["config"]))
        service = build_service(config, reactor, cls=WorkerService)
    except (ConfigError, TwistedMismatch) as error:
        raise SystemExit(f"gourmet {name}: {error}") from None
    commands = WorkerCommands(service, reactor)
    try:
        service.privilegedStartService()
    except OSError as error:
        raise SystemExit(f"gourmet {name}: cannot take its sockets: {error}") from None
    # Not a connection before the supervisor's Sync: the operators' drains,
    # the checks' verdicts and the providers' servers come with it.
    for listener in service.shared_listeners():
        if listener.port is not None:
            listener.port.stopReading()  # type: ignore[attr-defined]
    StandardIO(  # type: ignore[call-arg]
        commands, stdin=COMMANDS_IN, stdout=COMMANDS_OUT, reactor=reactor
    )

    def stop() -> Any:
        commands.stopping = True
        return service.stopService()

    def install_signals() -> None:
        SignalHandlers(reactor, service).install()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    reactor.callWhenRunning(service.startService)
    reactor.callWhenRunning(install_signals)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()


if __name__ == "__main__":
    main()
