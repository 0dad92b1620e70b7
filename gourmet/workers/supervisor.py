"""
The supervisor of ``[server] workers = N``: it starts N worker processes
(:mod:`gourmet.workers.worker`) on the listening sockets it opened, keeps
them in step, and replaces one that dies.

The supervisor is the Gourmet service of the configuration as it runs in
one process (listeners, console, active checks, providers, systemd),
except that its proxy and stream listeners do not accept: the workers
do, each on an ``SO_REUSEPORT`` socket of its own for a ``tcp:`` address
(:mod:`gourmet.workers.reuseport`), all on one inherited socket for a
``unix:`` or ``systemd:`` one; the kernel hands each new connection to
one of them.  An operator's change in the console is
applied in every worker before the API answers; passive health that takes
a server out in one worker takes it out in all; the console shows the sum
of the workers' figures, asked for at each look.  A reload is applied by
each worker too, or, when it opens or closes listeners, starts new workers
on the new sockets while the old ones finish what they have.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    gatherResults,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gourmet.discovery.updates import Discovery, found_as_data
from gourmet.listener import Listener
from gourmet.upstream.state import Server, Upstream
from gourmet.workers.commands import (
    COMMANDS_IN,
    COMMANDS_OUT,
    Reload,
    ReopenLogs,
    ServerChecked,
    ServerHealth,
    Servers,
    SetServer,
    Snapshot,
    Sync,
)
from gourmet.workers.inherited import ENVIRONMENT, encode, shared_name
from gourmet.workers.process import RestartPolicy, WorkerProcess, how_it_ended
from gourmet.workers.reuseport import is_reserved, worker_socket
from gourmet.workers.snapshot import (
    ClientFigures,
    StreamFigures,
    apply_client_figures,
    apply_snapshot,
    apply_stream_counts,
    merge_client_figures,
    merge_snapshots,
    merge_stream_counts,
    retired,
    retired_client,
    retired_streams,
)
from gourmet.workers.snapshot import (
    Snapshot as Figures,
)

__all__ = ["Supervisor"]

#: The first descriptor number a worker gets its listening sockets on.
FIRST_SOCKET = 10
#: Seconds between two sums of the workers' figures when nobody looks.
REFRESH_SECONDS = 5.0
#: Seconds the console waits for a worker's figures.
SNAPSHOT_SECONDS = 2.0
#: Seconds beyond ``shutdown_timeout`` a stopping worker gets before it
#: is killed.
KILL_GRACE = 5.0
#: Variables a worker must not see: systemd's are the supervisor's.
_NOT_PASSED = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")


class Supervised(Protocol):
    """
    What the supervisor serves: :class:`gourmet.service.GourmetService`.
    """

    upstreams: Dict[str, Upstream]
    #: Each upstream's connection pool: the workers' counts are shown there.
    pools: Dict[str, Any]
    listeners: List[Listener]
    #: The ``[[streams]]``: their ``factories``, with their counts.
    streams: Any
    #: The providers, and the sets they found.
    discovery: Discovery
    #: The proxy's site: the workers' client figures are shown on it.
    site: Any

    @property
    def config(self) -> Any:
        """
        The configuration running now.
        """

    def shared_listeners(self) -> List[Listener]:
        """
        The listeners the workers accept on: the proxy's and the streams'.
        """


class Supervisor(Service):
    """
    Starts ``count`` workers on ``gourmet``'s shared listeners, and keeps
    them in step with it.

    :param spawn: ``reactor.spawnProcess``, or a fake in tests.
    """

    log = Logger()

    def __init__(
        self,
        gourmet: Supervised,
        reactor: Any,
        count: int,
        policy: Optional[RestartPolicy] = None,
        spawn: Optional[Callable[..., Any]] = None,
        executable: str = sys.executable,
    ) -> None:
        self.gourmet = gourmet
        self.reactor = reactor
        self.count = count
        self.policy = policy or RestartPolicy()
        self._spawn_process = spawn or reactor.spawnProcess
        self.executable = executable
        self.workers: Dict[int, WorkerProcess] = {}
        #: Workers told to stop by a reload, finishing what they have.
        self.old: List[WorkerProcess] = []
        #: Workers that died and were started again, in all.
        self.restarts = 0
        self._retired: Figures = {}
        self._retired_streams: StreamFigures = {}
        self._retired_clients: ClientFigures = {}
        self._sockets: Dict[str, Tuple[int, socket.AddressFamily]] = {}
        self._fds: Dict[int, int] = {}
        self._reserved: Dict[str, Any] = {}
        self._own: Dict[int, Dict[str, socket.socket]] = {}
        self._all_ready: List[Deferred[None]] = []
        self._stopping = False
        self._pending: Dict[int, Any] = {}
        self._refreshing = LoopingCall(lambda: ensureDeferred(self._refresh_quietly()))
        self._refreshing.clock = reactor

    # -- starting -------------------------------------------------------

    def _share_sockets(self) -> None:
        """
        Stop the supervisor accepting on its proxy and stream listeners,
        and note their sockets for the workers: one shared by all, or, for
        an address reserved for ``SO_REUSEPORT`` (a ``tcp:`` one), one per
        worker (:mod:`gourmet.workers.reuseport`).
        """
        shared: Dict[str, Tuple[int, socket.AddressFamily]] = {}
        fds: Dict[int, int] = {}
        reserved: Dict[str, Any] = {}
        for listener in self.gourmet.shared_listeners():
            port = listener.port
            if port is None:
                continue
            name = shared_name(listener.key, listener.description)
            port.stopReading()  # type: ignore[attr-defined]
            if is_reserved(port):
                reserved[name] = port
                continue
            child = FIRST_SOCKET + len(fds)
            fds[child] = port.fileno()  # type: ignore[attr-defined]
            shared[name] = (child, port.socket.family)  # type: ignore[attr-defined]
        self._sockets, self._fds, self._reserved = shared, fds, reserved

    def _own_sockets(self, index: int) -> Dict[str, socket.socket]:
        """
        Worker ``index``'s own sockets on the reserved addresses, made
        when it first needs them (and again after it died).
        """
        own = self._own.setdefault(index, {})
        for name, port in self._reserved.items():
            if name not in own:
                own[name], _ = worker_socket(port)
        return own

    def _backlogs(self) -> Dict[str, int]:
        return {name: port.reuseport_backlog for name, port in self._reserved.items()}

    def _close_own(self, index: Optional[int] = None) -> None:
        """
        Close the supervisor's copies of worker ``index``'s own sockets
        (of every worker's, without one): connections the kernel still
        queues there would wait for nobody.
        """
        indexes = list(self._own) if index is None else [index]
        for each in indexes:
            for made in self._own.pop(each, {}).values():
                made.close()

    def startService(self) -> None:
        super().startService()
        self._wire()
        self._share_sockets()
        # systemd's status line reads the sums between console looks.
        self._refreshing.start(REFRESH_SECONDS, now=False)
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(_NOT_PASSED)
        }
        sockets = dict(self._sockets)
        fds = dict(self._fds)
        for name, made in self._own_sockets(index).items():
            child = FIRST_SOCKET + len(fds)
            fds[child] = made.fileno()
            sockets[name] = (child, made.family)
        env[ENVIRONMENT] = encode(sockets, self._backlogs())
        worker = WorkerProcess(self, index, self.reactor.seconds())
        self.workers[index] = worker
        child_fds: Dict[int, Any] = {
            0: "w",
            1: 1,
            2: 2,
            COMMANDS_IN: "w",
            COMMANDS_OUT: "r",
            **fds,
        }
        config = self.gourmet.config
        self._spawn_process(
            worker,
            self.executable,
            [
                self.executable,
                "-m",
                "gourmet.workers.worker",
                "--config",
                os.path.abspath(config.source),
                "--index",
                str(index),
            ],
            env=env,
            childFDs=child_fds,
        )

    def worker_started(self, worker: WorkerProcess) -> None:
        """
        Give a new worker the operators' changes so far; it serves once it
        has taken them.
        """
        # After the providers' first answers, as one process waits for them.
        first = self.gourmet.discovery.first_answers()
        first.addCallback(lambda _: self._sync(worker))
        first.addCallbacks(lambda _: self._ready(worker), lambda failure: None)

    def _sync(self, worker: WorkerProcess) -> Deferred[Any]:
        provided = {
            name: found_as_data(running.found)
            for name, running in self.gourmet.discovery.upstreams.items()
            if running.found is not None
        }
        return worker.call(
            Sync,
            servers=json.dumps(self._settings()),
            provided=zlib.compress(json.dumps(provided).encode("utf-8")),
        )

    def servers_found(self, upstream: str) -> None:
        """
        A provider of the supervisor's found a new set of servers for
        ``upstream``: every worker takes it.
        """
        running = self.gourmet.discovery.upstreams.get(upstream)
        if running is None or running.found is None:
            return
        data = json.dumps(found_as_data(running.found)).encode("utf-8")
        self._broadcast(Servers, upstream=upstream, servers=zlib.compress(data))

    def _ready(self, worker: WorkerProcess) -> None:
        worker.ready = True
        self.log.info(
            "worker {index} (pid {pid}) serving", index=worker.index, pid=worker.pid
        )
        if self.all_started():
            waiting, self._all_ready = self._all_ready, []
            for each in waiting:
                each.callback(None)

    def all_started(self) -> bool:
        """
        Whether every worker serves.
        """
        return len(self.workers) == self.count and all(
            each.ready for each in self.workers.values()
        )

    def all_ready(self) -> Deferred[None]:
        """
        Fires once every worker serves (systemd's READY=1 waits for it).
        """
        if self.all_started():
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._all_ready.append(waiting)
        return waiting

    def _settings(
        self,
    ) -> Dict[str, Dict[str, Tuple[Optional[int], str, Optional[bool]]]]:
        return {
            name: {
                server.name: (
                    server.weight_override,
                    server.admin_state.value,
                    None if server.active_health is None else server.active_health.up,
                )
                for server in upstream.servers
            }
            for name, upstream in self.gourmet.upstreams.items()
        }

    def _wire(self) -> None:
        """
        Have what active checks find told to every worker (again after a
        reload, whose new upstreams have no hook).
        """
        for upstream in self.gourmet.upstreams.values():
            upstream.check_hook = self._checked_hook(upstream.name)

    def _checked_hook(self, upstream: str) -> Callable[[Server, bool], None]:
        def checked(server: Server, up: bool) -> None:
            self._broadcast(ServerChecked, upstream=upstream, server=server.name, up=up)

        return checked

    # -- a worker that ends ---------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        self._retired = merge_snapshots([self._retired, retired(worker.figures)])
        self._retired_streams = merge_stream_counts(
            [self._retired_streams, retired_streams(worker.streams)]
        )
        self._retired_clients = merge_client_figures(
            [self._retired_clients, retired_client(worker.clients)]
        )
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if worker in self.old:
            self.old.remove(worker)
        if self._stopping or not self.running or worker.retiring:
            self.log.info(
                "worker {index} (pid {pid}) stopped ({how})",
                index=worker.index,
                pid=worker.pid,
                how=how_it_ended(reason),
            )
            return
        # The connections its own sockets queued are lost with it; new ones
        # go to the other workers' until it is back.
        self._close_own(worker.index)
        ran = self.reactor.seconds() - worker.started
        delay = self.policy.delay(worker.index, ran)
        self.restarts += 1
        how = how_it_ended(reason)
        self.log.error(
            "worker {index} (pid {pid}) died ({how}) after {ran:.1f}s: its"
            " connections are lost; starting it again in {delay:.1f}s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            ran=ran,
            delay=delay,
            worker_died=True,
        )
        self._pending[worker.index] = self.reactor.callLater(
            delay, self._spawn, worker.index
        )

    # -- keeping them in step ----------------------------------------------

    def _ready_workers(
        self, but: Optional[WorkerProcess] = None
    ) -> List[WorkerProcess]:
        return [
            each for each in self.workers.values() if each.ready and each is not but
        ]

    def _broadcast(
        self, command: Any, but: Optional[WorkerProcess] = None, **arguments: Any
    ) -> Deferred[Any]:
        # Starting ones too: a change made after a worker's Sync went out
        # reaches it after the Sync (AMP keeps the order), before it serves.
        calls = [
            each.call(command, **arguments).addErrback(self._not_answered, each)
            for each in self.workers.values()
            if each.connected and each is not but
        ]
        return DeferredList(calls, consumeErrors=True)

    def _not_answered(self, failure: Failure, worker: WorkerProcess) -> None:
        # A worker that died meanwhile gets the change in its successor's
        # Sync; one that is alive and failed says why here.
        if worker.pid is not None and worker.ready:
            self.log.failure(
                "worker {index} did not take a change", failure, index=worker.index
            )

    def server_changed(self, upstream: str, server: Server) -> Deferred[Any]:
        """
        Give every worker an operator's change to ``server``; fires once
        each has applied it.
        """
        return self._broadcast(
            SetServer,
            upstream=upstream,
            server=server.name,
            weight=server.weight_override,
            state=server.admin_state.value,
        )

    def health_reported(
        self,
        origin: WorkerProcess,
        upstream: str,
        server: str,
        down: bool,
        seconds: float,
        error: str,
    ) -> None:
        """
        Passive health in ``origin`` took a server out or brought it back:
        so it is here and in every other worker.
        """
        told = self._broadcast(
            ServerHealth,
            but=origin,
            upstream=upstream,
            server=server,
            down=down,
            seconds=seconds,
            error=error,
        )
        # The console says it once every worker has it.
        told.addCallback(
            lambda _: self._apply_health(upstream, server, down, seconds, error)
        )

    def _apply_health(
        self, upstream: str, server: str, down: bool, seconds: float, error: str
    ) -> None:
        state = self.gourmet.upstreams.get(upstream)
        if state is None:
            return
        try:
            found = state.server(server)
        except KeyError:
            return
        if down:
            found.health.taken_out_elsewhere(seconds, error)
        else:
            found.health.back_up_elsewhere()

    async def refresh(self) -> None:
        """
        Ask every worker for its figures, and make the supervisor's
        upstreams (which the console and /metrics read) hold their sum.
        """
        workers = self._ready_workers()
        answers = await DeferredList(
            [
                each.call(Snapshot).addTimeout(SNAPSHOT_SECONDS, self.reactor)
                for each in workers
            ],
            consumeErrors=True,
        )
        for worker, (ok, answer) in zip(workers, answers):
            if ok:
                worker.figures = _decoded(answer["upstreams"])
                worker.streams = json.loads(zlib.decompress(answer["streams"]))
                worker.clients = json.loads(zlib.decompress(answer["clients"]))
        alive = [*self.workers.values(), *self.old]
        figures = [self._retired, *(each.figures for each in alive)]
        apply_snapshot(
            self.gourmet.upstreams, merge_snapshots(figures), self.gourmet.pools
        )
        streams = [self._retired_streams, *(each.streams for each in alive)]
        apply_stream_counts(
            self.gourmet.streams.factories, merge_stream_counts(streams)
        )
        clients = [self._retired_clients, *(each.clients for each in alive)]
        apply_client_figures(self.gourmet.site, merge_client_figures(clients))

    async def _refresh_quietly(self) -> None:
        # A LoopingCall whose call fails never runs again.
        try:
            await self.refresh()
        except Exception:
            self.log.failure("cannot sum the workers' figures")

    def view(self) -> Dict[str, Any]:
        """
        The workers as the console shows them.
        """
        return {
            "count": self.count,
            "restarts": self.restarts,
            "workers": [self.workers[index].view() for index in sorted(self.workers)],
        }

    # -- reloading ----------------------------------------------------------

    def reloaded(self, who: str) -> Deferred[None]:
        """
        The supervisor reloaded its configuration: so do the workers, or,
        when the shared listeners changed, new workers start on them and
        the old ones finish what they have.  Fires once every worker
        serves on the new configuration.
        """
        before = {*self._sockets, *self._reserved}
        self._wire()
        self._share_sockets()
        count = self.gourmet.config.frontend.workers
        if {*self._sockets, *self._reserved} == before and count == self.count:
            answers = []
            for worker in self._ready_workers():
                answer = worker.call(Reload, who=who)
                answer.addCallback(self._worker_reloaded, worker)
                answer.addErrback(self._not_answered, worker)
                answers.append(answer)
            return gatherResults(answers).addCallback(lambda _: None)
        self.log.info(
            "listeners or workers changed: starting {count} new workers;"
            " the old ones serve until they do, then finish what they have",
            count=count,
        )
        for pending in self._pending.values():
            pending.cancel()
        self._pending = {}
        retiring = list(self.workers.values())
        for worker in retiring:
            worker.retiring = True
            self.old.append(worker)
        self.workers = {}
        # The old workers' own sockets: closed once the new workers serve
        # (the old workers hold their copies until they stop).
        old_sockets, self._own = self._own, {}
        self.count = count
        for index in range(1, count + 1):
            self._spawn(index)
        self.all_ready().addCallback(self._retire, retiring, old_sockets)
        return self.all_ready()

    def _retire(
        self,
        _: object,
        workers: List[WorkerProcess],
        sockets: Dict[int, Dict[str, socket.socket]],
    ) -> None:
        """
        New workers serve: the old ones stop accepting and finish.
        """
        self.log.info(
            "the new workers serve: the {count} old ones finish what they have",
            count=len(workers),
        )
        for worker in workers:
            worker.signal("TERM")
        for own in sockets.values():
            for made in own.values():
                made.close()

    def _worker_reloaded(
        self, answer: Mapping[str, Any], worker: WorkerProcess
    ) -> Deferred[Any]:
        # Upstreams the reload made anew start as the file says: give them
        # the operators' changes and the checks' verdicts again.
        synced = self._sync(worker).addErrback(self._not_answered, worker)
        if answer.get("error"):
            self.log.error(
                "worker {index} could not reload: {error}",
                index=worker.index,
                error=answer["error"],
            )
        return synced

    def reopen_logs(self) -> Deferred[Any]:
        """
        Have every worker reopen the access log (SIGUSR1); fires once each
        has.
        """
        return self._broadcast(ReopenLogs)

    # -- stopping -----------------------------------------------------------

    def stop_workers(self, timeout: float) -> Deferred[Any]:
        """
        Stop every worker gracefully (SIGTERM): each stops accepting and
        lets its requests finish; one still running ``timeout`` seconds
        later is killed.  Fires once all have exited.
        """
        self._stopping = True
        if self._refreshing.running:
            self._refreshing.stop()
        for pending in self._pending.values():
            pending.cancel()
        self._pending = {}
        workers = [*self.workers.values(), *self.old]
        for worker in workers:
            worker.signal("TERM")
        # Nothing new queues for workers that are stopping.
        self._close_own()
        kill = self.reactor.callLater(timeout + KILL_GRACE, self._kill, workers)
        done = DeferredList([each.ended for each in workers])

        def stopped(result: Any) -> Any:
            if kill.active():
                kill.cancel()
            return result

        return done.addBoth(stopped)

    def _kill(self, workers: List[WorkerProcess]) -> None:
        for worker in workers:
            if not worker.ended.called:
                self.log.warn(
                    "worker {index} did not stop: killing it", index=worker.index
                )
                worker.signal("KILL")

    def stop_now(self) -> None:
        """
        A second signal: the workers cut their requests in flight.
        """
        for worker in [*self.workers.values(), *self.old]:
            worker.signal("TERM")

    def stopService(self) -> Any:
        super().stopService()
        if self._stopping:
            return None
        return self.stop_workers(self.gourmet.config.frontend.shutdown_timeout)


def _decoded(items: List[bytes]) -> Figures:
    figures: Figures = {}
    for item in items:
        figures.update(json.loads(zlib.decompress(item)))
    return figures
