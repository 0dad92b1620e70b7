"""
Active health checks: Gourmet asks each server of an upstream that has a
``[upstreams.NAME.health_check]`` table, every ``interval`` seconds, whether
it is well (an HTTP ``GET`` of ``path``, or a TCP connect), whether or not
clients send it anything.

HAProxy's semantics for ``rise`` and ``fall``: a server that is up goes down
after ``fall`` consecutive failed checks, and one that is down comes back
after ``rise`` consecutive good ones.  A server starts up, but one failure
from down until its first check passes (HAProxy's default ``init-state``), so
a server that is dead at start-up or when a reload adds it is out after its
first check rather than after ``fall``.

Results are named as HAProxy names them in its stats: ``L7OK 200 in 1 ms``,
``L7STS 503 in 2 ms``, ``L7RSP`` (not HTTP), ``L7TOUT`` (no answer within
``timeout``), ``L6TOUT``/``L6RSP`` (the TLS handshake), ``L4TOUT`` and
``L4CON`` (no connection), ``L4OK`` for a TCP check.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, Iterable, List, Optional

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.config.model import HealthCheckConfig
from gourmet.config.origin import Origin
from gourmet.http.response import ResponseHead
from gourmet.upstream.connection import (
    IResponseReceiver,
    ReadTimeout,
    UpstreamConnection,
    UpstreamRequest,
)
from gourmet.upstream.pool import OneProtocol, connect_error, origin_endpoint

#: Response body bytes a check reads at most before it closes the connection.
MAX_CHECK_BODY = 16 * 1024
#: How far each interval may stray from ``interval``, either way, so that
#: checks started together drift apart.
JITTER = 0.1
#: The User-Agent of checks, so that a server's log can tell them apart.
USER_AGENT = b"Gourmet-health-check"


@frozen
class CheckResult:
    """
    The outcome of one check.

    :ivar code: HAProxy's short name for it: ``L7OK``, ``L7STS``, ``L7RSP``,
        ``L7TOUT``, ``L6TOUT``, ``L6RSP``, ``L4TOUT``, ``L4CON`` or ``L4OK``.
    :ivar seconds: from the start of the check to its outcome.
    :ivar status: the response's status, for ``L7OK`` and ``L7STS``.
    :ivar detail: what went wrong, in words, for a failure.
    """

    code: str
    seconds: float
    status: Optional[int] = None
    detail: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.code in ("L7OK", "L4OK")

    def __str__(self) -> str:
        text = self.code
        if self.status is not None:
            text += f" {self.status}"
        if self.code.endswith("TOUT"):
            return text
        text += f" in {round(self.seconds * 1000)} ms"
        if self.detail:
            text += f": {self.detail}"
        return text


class ActiveHealth:
    """
    What active checks say of one server: the rise/fall state machine and
    its record.

    :ivar up: whether checks let the server take requests.
    :ivar checks: checks done, in all; ``failed_checks`` of them failed.
    :ivar downs: times checks took the server out.
    :ivar last: the last check's result; None before the first.
    :ivar last_change: when ``up`` last changed; None: never.
    :ivar recovered_at: when checks last brought the server back up.
    """

    log = Logger()

    def __init__(self, name: str, clock: IReactorTime, rise: int, fall: int) -> None:
        self.name = name
        self._clock = clock
        self.rise = rise
        self.fall = fall
        self.up = True
        # HAProxy's health counter: from 0 to rise + fall - 1, up from
        # ``rise``; starting at ``rise``, the first failure takes it out.
        self._health = rise
        self.checks = 0
        self.failed_checks = 0
        self.downs = 0
        self._downtime = 0.0
        self.down_since: Optional[float] = None
        self.last_change: Optional[float] = None
        self.recovered_at: Optional[float] = None
        self.last: Optional[CheckResult] = None
        #: Told ``up`` when this process's checks take the server out or
        #: bring it back (a supervisor passes it on to its workers).
        self.on_change: Optional[Callable[[bool], None]] = None

    def checked_elsewhere(self, up: bool) -> None:
        """
        Another process's checks (a worker's supervisor's) took the server
        out or brought it back: so it is here, without a check of its own.
        """
        if up is self.up:
            return
        now = self._clock.seconds()
        self.up = up
        self.last_change = now
        if up:
            self._downtime += now - (self.down_since or now)
            self.down_since = None
            self.recovered_at = now
        else:
            self.downs += 1
            self.down_since = now

    def reconfigure(self, rise: int, fall: int) -> None:
        """
        A reload's ``rise`` and ``fall``, keeping whether the server is up.
        """
        self.rise, self.fall = rise, fall
        top = rise + fall - 1
        self._health = top if self.up else min(self._health, rise - 1)

    @property
    def downtime(self) -> float:
        """
        Seconds checks have kept the server out, in all (its current
        stretch too).
        """
        if self.down_since is None:
            return self._downtime
        return self._downtime + self._clock.seconds() - self.down_since

    def record(self, result: CheckResult) -> None:
        """
        Count a check's ``result``, taking the server out or bringing it
        back as ``rise`` and ``fall`` say.
        """
        self.checks += 1
        self.last = result
        top = self.rise + self.fall - 1
        if result.ok:
            if self.up:
                self._health = top
                return
            self._health += 1
            if self._health >= self.rise:
                self._health = top
                self._change(up=True, result=result)
            return
        self.failed_checks += 1
        if not self.up:
            self._health = 0
        elif self._health > self.rise:
            self._health -= 1
        else:
            self._health = 0
            self._change(up=False, result=result)

    def _change(self, up: bool, result: CheckResult) -> None:
        now = self._clock.seconds()
        self.up = up
        self.last_change = now
        if up:
            seconds = now - (self.down_since or now)
            self._downtime += seconds
            self.down_since = None
            self.recovered_at = now
            self.log.info(
                "server {server} back up after {seconds:.1f}s: health check {result}",
                server=self.name,
                seconds=seconds,
                result=str(result),
                server_up=True,
            )
            if self.on_change is not None:
                self.on_change(True)
            return
        self.downs += 1
        self.down_since = now
        self.log.warn(
            "server {server} down: health check {result}",
            server=self.name,
            result=str(result),
            server_down=True,
        )
        if self.on_change is not None:
            self.on_change(False)


@implementer(IResponseReceiver)
class _HttpCheck:
    """
    One check in flight: a connection, then (for ``type = "http"``) one
    ``GET`` with ``Connection: close``, all within ``timeout``.
    """

    def __init__(
        self,
        reactor: Any,
        origin: Origin,
        check: HealthCheckConfig,
        trust_root: Any = None,
    ) -> None:
        self._reactor = reactor
        self._origin = origin
        self._check = check
        self._trust_root = trust_root
        self.result: Deferred[CheckResult] = Deferred(lambda _: self._cancel())
        self._started = reactor.seconds()
        self._head: Optional[ResponseHead] = None
        self._read = 0
        self._connection = UpstreamConnection(
            origin, reactor, self._ignore, self._ignore
        )
        self._connecting: Optional[Deferred[Any]] = None
        self._timer: Optional[IDelayedCall] = None

    @staticmethod
    def _ignore(connection: UpstreamConnection) -> None:
        pass

    def start(self) -> Deferred[CheckResult]:
        check = self._check
        endpoint = origin_endpoint(
            self._reactor, self._origin, check.timeout, self._trust_root
        )
        self._timer = self._reactor.callLater(check.timeout, self._timed_out)
        connecting = endpoint.connect(OneProtocol(self._connection))
        self._connecting = connecting
        connecting.addCallback(lambda _: self._connection.ready)
        connecting.addCallbacks(self._connected, self._not_connected)
        return self.result

    # -- the outcome ------------------------------------------------------

    def _done(self, code: str, status: Optional[int] = None, detail: str = "") -> None:
        if self.result.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        seconds = self._reactor.seconds() - self._started
        self.result.callback(CheckResult(code, seconds, status, detail or None))

    def _timed_out(self) -> None:
        connection = self._connection
        if self._head is not None:
            # It answered; only the body is slow, which a check does not wait for.
            self._verdict(self._head)
        elif connection.transport is None:
            self._done("L4TOUT")
        elif not connection.ready.called:
            self._done("L6TOUT")
        else:
            self._done("L7TOUT")
        self._stop()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._stop()

    def _stop(self) -> None:
        connecting = self._connecting
        if connecting is not None and not connecting.called:
            connecting.cancel()
        if self._connection.transport is not None:
            self._connection.abort()

    # -- connecting -------------------------------------------------------

    def _connected(self, _: object) -> None:
        if self.result.called:
            self._stop()
            return
        check = self._check
        if check.type == "tcp":
            self._done("L4OK")
            self._connection.close()
            return
        host = check.host.encode("idna") if check.host else self._origin.host_header
        request = UpstreamRequest(
            b"GET",
            check.path.encode("ascii"),
            [
                (b"Host", host),
                (b"User-Agent", USER_AGENT),
                (b"Connection", b"close"),
            ],
        )
        self._connection.send(request, self, check.timeout)

    def _not_connected(self, reason: Failure) -> None:
        if self.result.called:
            return
        error = connect_error(reason).value
        # Connected but the TLS handshake failed: HAProxy's layer 6.
        tls = self._origin.is_tls and self._connection.transport is not None
        self._done("L6RSP" if tls else "L4CON", detail=str(error))

    # -- the response (IResponseReceiver) ---------------------------------

    def response_head(self, head: ResponseHead) -> None:
        self._head = head

    def response_data(self, data: bytes) -> None:
        self._read += len(data)
        if self._read > MAX_CHECK_BODY and self._head is not None:
            self._verdict(self._head)
            self._connection.abort()

    def response_end(self) -> None:
        if self._head is not None:
            self._verdict(self._head)

    def response_failed(self, reason: Failure) -> None:
        if self._head is not None:
            self._verdict(self._head)
        elif reason.check(ReadTimeout):
            self._done("L7TOUT")
        else:
            # Not HTTP, or the connection closed before a whole head.
            self._done("L7RSP", detail=str(reason.value))

    def response_upgraded(self, head: ResponseHead, data: bytes) -> None:
        self._connection.abort()
        self._done("L7RSP", detail="switched protocols")

    def _verdict(self, head: ResponseHead) -> None:
        status = head.status
        if self._check.healthy_status(status):
            self._done("L7OK", status)
        else:
            self._done("L7STS", status)


def check_server(
    reactor: Any, origin: Origin, check: HealthCheckConfig, trust_root: Any = None
) -> Deferred[CheckResult]:
    """
    Check ``origin`` once as ``check`` says; the result never fails, and
    comes within ``check.timeout`` seconds.

    :param trust_root: for ``https`` servers, the certificate authorities
        trusted (the platform's by default), as for requests.
    """
    return _HttpCheck(reactor, origin, check, trust_root).start()


class _Checker:
    """
    The checks of one server: one at a time, every ``interval`` (with
    jitter) from the start of one to the start of the next.
    """

    def __init__(self, checks: HealthChecks, upstream: Any, server: Any) -> None:
        self._checks = checks
        self.upstream = upstream
        self.server = server
        self._call: Optional[IDelayedCall] = None
        self._in_flight: Optional[Deferred[CheckResult]] = None
        self._started = 0.0
        self.stopped = False

    def schedule(self, delay: float) -> None:
        if not self.stopped:
            self._call = self._checks.reactor.callLater(delay, self._run)

    def _run(self) -> None:
        self._call = None
        check = self.upstream.config.health_check
        health = self.server.active_health
        if check is None or health is None:
            return
        reactor = self._checks.reactor
        self._started = reactor.seconds()
        try:
            running = self._checks.probe(reactor, self.server.origin, check)
        except Exception:
            # LoopingCall's lesson: a check that raises must not stop checking.
            self._checks.log.failure(
                "health check of {server}", server=self.server.name
            )
            self.schedule(self._checks.next_interval(check.interval))
            return
        self._in_flight = running
        running.addCallback(self._finished, health)
        running.addErrback(self._broken)

    def _broken(self, failure: Failure) -> None:
        self._in_flight = None
        if not failure.check(CancelledError):
            self._checks.log.failure(
                "health check of {server}", failure, server=self.server.name
            )

    def _finished(self, result: CheckResult, health: ActiveHealth) -> None:
        self._in_flight = None
        if self.stopped:
            return
        health.record(result)
        check = self.upstream.config.health_check
        if check is None:
            return
        elapsed = self._checks.reactor.seconds() - self._started
        self.schedule(max(0.0, self._checks.next_interval(check.interval) - elapsed))

    def stop(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._in_flight is not None:
            self._in_flight.cancel()


class HealthChecks:
    """
    The active checks of every server whose upstream asks for them.

    :meth:`update` follows the upstreams (at start-up and after each
    reload): a server that stays keeps its checker and its record, a new
    one gets its first check at a random point of its first interval (so
    that checks spread), one that went away is no longer checked.

    :param reactor: ``IReactorTime`` (and ``IReactorTCP`` for the real
        probe).
    :param probe: makes one check, as :func:`check_server`; a test's own.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        probe: Any = check_server,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.reactor = reactor
        self.probe = probe
        self._rng = rng or random.Random()
        self._checkers: Dict[int, _Checker] = {}

    def next_interval(self, interval: float) -> float:
        return interval * self._rng.uniform(1 - JITTER, 1 + JITTER)

    def update(self, upstreams: Iterable[Any]) -> None:
        """
        Check the servers of ``upstreams`` that have a health check.
        """
        wanted: Dict[int, _Checker] = {}
        for upstream in upstreams:
            check = upstream.config.health_check
            if check is None:
                continue
            for server in upstream.servers:
                if server.active_health is None:
                    continue
                checker = self._checkers.pop(id(server), None)
                if checker is None or checker.server is not server:
                    checker = _Checker(self, upstream, server)
                    checker.schedule(self._rng.uniform(0, check.interval))
                checker.upstream = upstream
                wanted[id(server)] = checker
        for gone in self._checkers.values():
            gone.stop()
        self._checkers = wanted

    def stop(self) -> None:
        """
        Check no more; a check in flight is abandoned.
        """
        for checker in self._checkers.values():
            checker.stop()
        self._checkers = {}

    def checked(self) -> List[Any]:
        """
        The servers being checked.
        """
        return [checker.server for checker in self._checkers.values()]
