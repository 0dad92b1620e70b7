"""
The supervisor of ``[server] workers`` and its workers, in memory: the
restart policy on a Clock, the workers' figures summed, and the AMP
commands between a supervisor and workers wired to each other through
fake process pipes (no process, no socket).
"""

from __future__ import annotations

import json
import socket
from typing import Any, Dict, List, Optional
from unittest.mock import Mock

import pytest
from attrs import evolve
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gourmet.building import check_shareable
from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import GourmetConfig, HealthCheckConfig, UpstreamConfig
from gourmet.discovery.provider import ProvidedServer
from gourmet.discovery.updates import Discovery, ProvidedElsewhere
from gourmet.frontend.channel import ClientStats
from gourmet.tcp.listeners import StreamListeners
from gourmet.upstream.checks import CheckResult
from gourmet.upstream.health import Health
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import AdminState, Upstream
from gourmet.workers.commands import COMMANDS_IN, COMMANDS_OUT
from gourmet.workers.inherited import (
    ENVIRONMENT,
    encode,
    inherited_endpoint,
    inherited_sockets,
    shared_name,
)
from gourmet.workers.process import RestartPolicy, WorkerProcess
from gourmet.workers.reuseport import reserved_endpoint, worker_socket
from gourmet.workers.snapshot import (
    apply_snapshot,
    merge_snapshots,
    requests_in,
    retired,
    take_snapshot,
)
from gourmet.workers.supervisor import Supervisor
from gourmet.workers.worker import WorkerCommands, worker_config

CONFIG = """
[upstreams.b]
[[upstreams.b.servers]]
path = "127.0.0.1:9001"
[[upstreams.b.servers]]
path = "127.0.0.1:9002"
[server]
listen = ["tcp:0:interface=127.0.0.1"]
workers = {workers}
[[server.locations]]
location = "/"
upstream = "b"
"""


def config(workers: object = 2) -> GourmetConfig:
    return parse_config(CONFIG.format(workers=json.dumps(workers)), "gourmet.toml")


# -- configuration -------------------------------------------------------------


def test_workers_default_to_one_and_auto_is_one_per_core() -> None:
    assert (
        parse_config(CONFIG.replace("workers = {workers}", ""), "g").frontend.workers
        == 1
    )
    assert config(3).frontend.workers == 3
    assert config("auto").frontend.workers >= 1


@pytest.mark.parametrize("value", [0, "four", 1.5, True, 100000])
def test_a_bad_workers_value_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as error:
        config(value)
    assert "server.workers" in str(error.value)
    assert 'or "auto"' in str(error.value)


def test_what_workers_cannot_share_is_refused_naming_the_key() -> None:
    mine = config()
    ssl = evolve(mine, frontend=evolve(mine.frontend, listen=("ssl:8443",)))
    with pytest.raises(ConfigError) as error:
        check_shareable(ssl)
    assert str(error.value).startswith("gourmet.toml: server.listen[0]: an ssl:")
    # One process may listen with ssl: as before.
    check_shareable(evolve(ssl, frontend=evolve(ssl.frontend, workers=1)))


def test_a_worker_runs_no_console_and_no_demo() -> None:
    mine = worker_config(config())
    assert mine.admin.listen is None
    assert mine.demo.listen == ()
    assert mine.frontend == config().frontend


# -- restarting ------------------------------------------------------------------


def test_a_worker_that_keeps_dying_waits_longer_each_time() -> None:
    policy = RestartPolicy(first=0.5, longest=4.0, healthy=10.0)
    assert [policy.delay(1, ran=1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    # Another slot has its own record.
    assert policy.delay(2, ran=1.0) == 0.5
    # One that served a while is started again at once, and the record
    # starts over.
    assert policy.delay(1, ran=60.0) == 0.0
    assert policy.delay(1, ran=1.0) == 0.5


# -- figures -----------------------------------------------------------------------


def traffic(clock: Clock, requests: int, status: int = 200) -> Upstream:
    """
    An upstream as one worker has it, after ``requests`` to its first
    server.
    """
    upstream = Upstream(config().upstreams[0], clock)
    server = upstream.servers[0]
    for _ in range(requests):
        server.attempt_started()
        server.responded(status, 0.02)
        server.succeeded()
        server.attempt_finished()
    return upstream


def test_the_console_shows_the_sum_of_the_workers_figures() -> None:
    clock = Clock()
    clock.advance(1000)
    one, two = traffic(clock, 3), traffic(clock, 5, status=503)
    two.servers[0].attempt_started()  # one in flight
    clock.advance(1)
    snapshots = [take_snapshot([one]), take_snapshot([two])]
    # Through JSON, as over AMP.
    snapshots = [json.loads(json.dumps(each)) for each in snapshots]
    assert [requests_in(each) for each in snapshots] == [3, 6]
    supervisor = Upstream(config().upstreams[0], clock)
    apply_snapshot({"b": supervisor}, merge_snapshots(snapshots))
    server = supervisor.servers[0]
    assert (server.requests, server.active) == (9, 1)
    assert server.stats.statuses == {"2xx": 3, "5xx": 5}
    assert len(server.stats.latency) == 8
    assert server.stats.requests.total(5) == 9
    assert supervisor.stats.requests.total(5) == 9
    assert supervisor.stats.response_time.count == 8
    assert supervisor.servers[1].requests == 0
    # A worker that died: its counts stay, its requests in flight do not.
    gone = retired(snapshots[1])
    apply_snapshot({"b": supervisor}, merge_snapshots([gone, snapshots[0]]))
    assert (server.requests, server.active) == (9, 0)
    assert len(server.stats.latency) == 3


# -- the supervisor and its workers, in memory ------------------------------------


class FakeService:
    """
    What the supervisor and a worker run: upstreams and a configuration.
    """

    def __init__(self, clock: Clock, upstream: Optional[UpstreamConfig] = None) -> None:
        self.config = config()
        self.upstreams = {"b": Upstream(upstream or self.config.upstreams[0], clock)}
        self.pools: Dict[str, Any] = {"b": ConnectionPool(clock)}
        self.listeners: List[Any] = []
        self.streams = StreamListeners(self.upstreams, clock)
        self.discovery: Discovery = ProvidedElsewhere(clock, self.apply_servers)
        self.site = Mock(spec=["client_stats", "open_connections", "http2_connections"])
        self.site.client_stats = ClientStats()
        self.site.open_connections = self.site.http2_connections = 0
        self.reloads: List[str] = []

    def shared_listeners(self) -> List[Any]:
        return []

    def apply_servers(self, config: UpstreamConfig) -> None:
        self.upstreams[config.name].reconfigure(config)

    def reload(self, who: str) -> Deferred[Optional[str]]:
        self.reloads.append(who)
        return succeed(None)


class FakeProcess:
    """
    A worker process's pipes, leading to a :class:`WorkerCommands` in
    memory.
    """

    def __init__(self, protocol: WorkerProcess, worker: FakeService, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.signals: List[str] = []
        self.to_worker: List[bytes] = []
        self.to_supervisor: List[bytes] = []
        self.commands = WorkerCommands(worker, reactor=None)  # type: ignore[arg-type]
        self.commands.makeConnection(self)
        protocol.makeConnection(self)

    # The worker's transport: what it writes, the supervisor reads.
    def write(self, data: bytes) -> None:
        self.to_supervisor.append(data)

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def getPeer(self) -> Any:
        return None

    getHost = getPeer

    # The supervisor's transport to the process.
    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == COMMANDS_IN
        self.to_worker.append(data)

    def pump(self) -> bool:
        """
        Deliver what each side wrote; whether there was anything.
        """
        moved = bool(self.to_worker or self.to_supervisor)
        to_worker, self.to_worker = self.to_worker, []
        to_supervisor, self.to_supervisor = self.to_supervisor, []
        for data in to_worker:
            self.commands.dataReceived(data)
        for data in to_supervisor:
            self.protocol.childDataReceived(COMMANDS_OUT, data)
        return moved

    def closeChildFD(self, fd: int) -> None:
        pass

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def die(self, signal: int) -> None:
        self.commands.stopping = True
        self.protocol.processEnded(Failure(ProcessTerminated(signal=signal)))


class Spawner:
    def __init__(self, clock: Clock, upstream: Optional[UpstreamConfig] = None) -> None:
        self.clock = clock
        self.upstream = upstream
        self.processes: List[FakeProcess] = []
        self.workers: List[FakeService] = []

    def __call__(
        self, protocol: WorkerProcess, executable: str, args: List[str], **kw: Any
    ) -> None:
        assert args[1:3] == ["-m", "gourmet.workers.worker"]
        assert "GOURMET_WORKER_SOCKETS" in kw["env"]
        assert not any(name.startswith("NOTIFY_") for name in kw["env"])
        worker = FakeService(self.clock, self.upstream)
        self.workers.append(worker)
        self.processes.append(FakeProcess(protocol, worker, 100 + len(self.processes)))

    def pump(self) -> None:
        while any([each.pump() for each in self.processes]):
            pass


def started(count: int = 2) -> tuple[Supervisor, FakeService, Spawner, Clock]:
    clock = Clock()
    service = FakeService(clock)
    spawner = Spawner(clock)
    supervisor = Supervisor(service, clock, count, spawn=spawner)
    supervisor.startService()
    spawner.pump()
    return supervisor, service, spawner, clock


def test_every_worker_starts_with_the_operators_changes_and_serves() -> None:
    clock = Clock()
    service = FakeService(clock)
    service.upstreams["b"].servers[1].admin_state = AdminState.DRAIN
    service.upstreams["b"].servers[0].set_weight(7)
    spawner = Spawner(clock)
    supervisor = Supervisor(service, clock, 2, spawn=spawner)
    ready = supervisor.all_ready()
    supervisor.startService()
    assert not ready.called
    spawner.pump()
    assert ready.called
    assert [each["pid"] for each in supervisor.view()["workers"]] == [100, 101]
    for worker in spawner.workers:
        first, second = worker.upstreams["b"].servers
        assert (first.weight, second.admin_state) == (7, AdminState.DRAIN)


def test_a_change_made_while_a_worker_starts_reaches_it_after_its_sync() -> None:
    clock = Clock()
    service = FakeService(clock)
    spawner = Spawner(clock)
    supervisor = Supervisor(service, clock, 2, spawn=spawner)
    supervisor.startService()
    # The Syncs are on their way, not answered yet.
    server = service.upstreams["b"].servers[0]
    server.set_weight(9)
    done = supervisor.server_changed("b", server)
    spawner.pump()
    assert done.called and supervisor.all_started()
    assert [w.upstreams["b"].servers[0].weight for w in spawner.workers] == [9, 9]


def test_a_change_is_answered_once_every_worker_applied_it() -> None:
    supervisor, service, spawner, _ = started()
    server = service.upstreams["b"].servers[0]
    server.set_weight(5)
    done = supervisor.server_changed("b", server)
    assert not done.called
    spawner.pump()
    assert done.called
    assert [w.upstreams["b"].servers[0].weight for w in spawner.workers] == [5, 5]


def test_passive_health_in_one_worker_takes_the_server_out_in_all() -> None:
    _, service, spawner, _ = started()
    one, two = spawner.workers
    one.upstreams["b"].servers[1].failed("connection refused")
    spawner.pump()
    for each in (service, two):
        health = each.upstreams["b"].servers[1].health
        assert health.state is Health.DOWN
        assert health.last_error == "connection refused"
    # Back up after a good trial in the other worker: up in all.
    health = two.upstreams["b"].servers[1].health
    health.down_until = 0.0
    two.upstreams["b"].servers[1].attempt_started()
    two.upstreams["b"].servers[1].succeeded()
    spawner.pump()
    for each in (service, one):
        assert each.upstreams["b"].servers[1].available()


def test_active_checks_are_the_supervisors_and_reach_every_worker() -> None:
    clock = Clock()
    service = FakeService(clock)
    checked = evolve(
        service.config.upstreams[0], health_check=HealthCheckConfig(rise=1, fall=1)
    )
    service.upstreams["b"].reconfigure(checked)
    down = service.upstreams["b"].servers[0].active_health
    assert down is not None
    down.record(CheckResult("L4CON", 0.001, detail="refused"))
    assert not down.up
    spawner = Spawner(clock, checked)
    supervisor = Supervisor(service, clock, 2, spawn=spawner)
    supervisor.startService()
    spawner.pump()
    # A worker that starts takes what the checks say so far...
    for worker in spawner.workers:
        health = worker.upstreams["b"].servers[0].active_health
        assert health is not None and not health.up
    # ...and each change after.
    down.record(CheckResult("L7OK", 0.001, 200))
    spawner.pump()
    for worker in spawner.workers:
        health = worker.upstreams["b"].servers[0].active_health
        assert health is not None and health.up
        assert worker.upstreams["b"].servers[0].available()


class Found:
    def __init__(self, *addresses: str) -> None:
        self.found = tuple(ProvidedServer(address) for address in addresses)


def test_what_the_supervisors_providers_find_reaches_every_worker() -> None:
    supervisor, service, spawner, _ = started()
    provided = evolve(service.config.upstreams[0], provider="file")
    for worker in spawner.workers:
        worker.discovery.update([provided])
    service.discovery.upstreams["b"] = Found(  # type: ignore[assignment]
        "127.0.0.1:9003", "127.0.0.1:9004"
    )
    supervisor.servers_found("b")
    spawner.pump()
    for worker in spawner.workers:
        assert [each.name for each in worker.upstreams["b"].servers] == [
            "127.0.0.1:9003",
            "127.0.0.1:9004",
        ]


def test_the_console_asks_the_workers_for_their_figures() -> None:
    supervisor, service, spawner, clock = started()
    for count, worker in zip((2, 3), spawner.workers):
        for _ in range(count):
            worker.upstreams["b"].servers[0].attempt_started()
    refreshed = ensureDeferred(supervisor.refresh())
    spawner.pump()
    assert refreshed.called
    assert service.upstreams["b"].servers[0].requests == 5
    # Between looks, every few seconds (systemd's status reads them).
    spawner.workers[0].upstreams["b"].servers[0].attempt_started()
    clock.advance(5)
    spawner.pump()
    assert service.upstreams["b"].servers[0].requests == 6
    first = service.upstreams["b"].servers[0]
    assert service.pools["b"].connection_counts(first.origin) == (0, 0)
    assert service.site.served_elsewhere == (0, 0)
    assert [each["requests"] for each in supervisor.view()["workers"]] == [3, 3]


def test_a_dead_worker_is_replaced_later_each_time_it_dies_quickly() -> None:
    supervisor, _, spawner, clock = started()
    spawner.processes[0].die(9)
    assert supervisor.restarts == 1
    assert len(spawner.processes) == 2
    clock.advance(0.5)
    assert len(spawner.processes) == 3
    spawner.pump()
    assert supervisor.all_started()
    spawner.processes[2].die(9)
    clock.advance(0.5)
    assert len(spawner.processes) == 3  # twice as long this time
    clock.advance(0.5)
    assert len(spawner.processes) == 4
    assert supervisor.restarts == 2


def test_a_reload_with_the_same_listeners_reloads_each_worker() -> None:
    supervisor, _, spawner, _ = started()
    done = supervisor.reloaded("SIGHUP")
    # Said done once every worker has taken the file, not before.
    assert not done.called
    spawner.pump()
    assert [each.reloads for each in spawner.workers] == [["SIGHUP"], ["SIGHUP"]]
    assert done.called
    assert len(spawner.processes) == 2


def test_stopping_signals_every_worker_and_kills_the_late_ones() -> None:
    supervisor, _, spawner, clock = started()
    stopped = supervisor.stop_workers(timeout=1.0)
    assert [each.signals for each in spawner.processes] == [["TERM"], ["TERM"]]
    spawner.processes[0].die(0)
    clock.advance(10)
    assert spawner.processes[1].signals == ["TERM", "KILL"]
    spawner.processes[1].die(9)
    assert stopped.called
    # Nothing is started again while stopping.
    clock.advance(60)
    assert len(spawner.processes) == 2


def test_a_worker_finds_its_sockets_by_key_and_endpoint() -> None:
    proxy = shared_name("server.listen[0]", "tcp:0")
    stream = shared_name("streams[0].listen", "tcp:0")
    environ = {
        ENVIRONMENT: encode(
            {proxy: (10, socket.AF_INET), stream: (11, socket.AF_INET6)}
        )
    }
    assert inherited_sockets(environ) == {
        proxy: (10, socket.AF_INET),
        stream: (11, socket.AF_INET6),
    }
    endpoint = inherited_endpoint(None, stream, environ)
    assert isinstance(endpoint, AdoptedStreamServerEndpoint)
    assert (endpoint.fileno, endpoint.addressFamily) == (11, socket.AF_INET6)
    # Not a worker, or a listener a reload adds: none.
    assert inherited_endpoint(None, stream, {}) is None
    assert (
        inherited_endpoint(None, shared_name("server.listen[1]", "tcp:0"), environ)
        is None
    )


def test_each_worker_listens_on_its_own_socket_of_a_reserved_address() -> None:
    endpoint = reserved_endpoint(None, "tcp:0:interface=127.0.0.1:backlog=7", 511)
    assert endpoint is not None
    assert (endpoint.host, endpoint.port, endpoint.backlog) == ("127.0.0.1", 0, 7)
    assert reserved_endpoint(None, "unix:/run/g.sock", 511) is None
    assert reserved_endpoint(None, "systemd:domain=INET:index=0", 511) is None
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    port = Mock(socket=held, reuseport_backlog=16)
    one, backlog = worker_socket(port)
    two, _ = worker_socket(port)
    try:
        address = held.getsockname()
        assert backlog == 16
        assert one.getsockname() == two.getsockname() == address
        # The address is taken for anyone without SO_REUSEPORT.
        other = socket.socket()
        with pytest.raises(OSError):
            other.bind(address)
        other.close()
        # A worker listens once it is about to serve: then it accepts.
        environ = {
            ENVIRONMENT: encode({"one": (one.fileno(), one.family)}, {"one": 16})
        }
        assert inherited_endpoint(None, "one", environ) is not None
        client = socket.create_connection(address, timeout=5)
        client.close()
    finally:
        for each in (held, one, two):
            each.close()


def test_a_reload_to_more_workers_retires_the_old_ones_once_the_new_serve() -> None:
    supervisor, service, spawner, _ = started()
    old = list(spawner.processes)
    service.config = evolve(
        service.config, frontend=evolve(service.config.frontend, workers=3)
    )
    done = supervisor.reloaded("SIGHUP")
    assert len(spawner.processes) == 5
    # Until the new ones serve, the old ones do.
    assert [each.signals for each in old] == [[], []]
    assert not done.called
    spawner.pump()
    assert supervisor.all_started() and len(supervisor.workers) == 3
    assert done.called
    assert [each.signals for each in old] == [["TERM"], ["TERM"]]
    # They end without being started again.
    for each in old:
        each.die(0)
    assert len(spawner.processes) == 5 and supervisor.restarts == 0
