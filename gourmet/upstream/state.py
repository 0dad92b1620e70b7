"""
Runtime state of upstreams and their servers: the weight an operator set,
whether a server is draining or disabled, its health and its counters.  Each
object points at its frozen configuration; the proxy and (later) the admin
console read and change the same objects, so a change applies to the very
next request.
"""

from __future__ import annotations

import enum
import random
import re
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gourmet.config.model import MAX_WEIGHT, UpstreamConfig, UpstreamServerConfig
from gourmet.upstream.balancers import BALANCERS, IBalancer, IKeyedBalancer
from gourmet.upstream.checks import ActiveHealth
from gourmet.upstream.hashing import hash64
from gourmet.upstream.health import PassiveHealth
from gourmet.upstream.stats import ServerStats, UpstreamStats
from gourmet.upstream.sticky import StickyTokens

#: The share of its weight a server in slow start begins with.
SLOW_START_FLOOR = 0.05


class AdminState(enum.Enum):
    """
    What an operator decided for a server.
    """

    UP = "up"
    #: No new requests; those in flight finish.
    DRAIN = "drain"
    #: Out of rotation entirely.
    DISABLED = "disabled"


class Server:
    """
    One upstream server as it runs.

    :ivar active: requests in flight to it.
    :ivar requests: requests sent to it, in all.
    :ivar failures: failures counted against it, in all.
    """

    log = Logger()

    def __init__(
        self,
        config: UpstreamServerConfig,
        health: PassiveHealth,
        server_id: str,
        upstream_stats: UpstreamStats,
        clock: IReactorTime,
    ) -> None:
        self.config = config
        self.origin = config.origin
        self.name = config.path
        self.id = server_id
        self.health = health
        self._admin_state = AdminState.UP
        self.weight_override: Optional[int] = None
        self.active = 0
        self.requests = 0
        self.failures = 0
        self.stats = ServerStats(clock)
        self._upstream_stats = upstream_stats
        self._clock = clock
        #: What active health checks say; None when its upstream has none.
        self.active_health: Optional[ActiveHealth] = None
        #: When a reload added it, or an operator enabled it again after
        #: disabling it (None: neither since start-up), for slow start.
        self.added_at: Optional[float] = None

    @property
    def admin_state(self) -> AdminState:
        """
        What the operator says: up, draining or disabled.
        """
        return self._admin_state

    @admin_state.setter
    def admin_state(self, state: AdminState) -> None:
        # Back from maintenance, a server ramps up as one back from a
        # failure does (HAProxy's slowstart after "ready"); back from a
        # drain it never stopped being warm.
        if self._admin_state is AdminState.DISABLED and state is AdminState.UP:
            self.added_at = self._clock.seconds()
        self._admin_state = state

    @property
    def configured_weight(self) -> int:
        return self.config.weight

    @property
    def weight(self) -> int:
        """
        The weight balancers use now: the operator's if set, else the
        configured one; 0 while draining or disabled.
        """
        if self.admin_state is not AdminState.UP:
            return 0
        if self.weight_override is not None:
            return self.weight_override
        return self.config.weight

    def available(self) -> bool:
        """
        Whether health lets the server take a request now: passive health
        and, when it is checked, active health.
        """
        checks = self.active_health
        return (checks is None or checks.up) and self.health.available()

    def slow_start_share(self, window: float) -> float:
        """
        The share of its weight the server gets now: from
        :data:`SLOW_START_FLOOR` up to 1, in proportion to the time since it
        came back up (passive or active health) or a reload added it, over
        ``window`` seconds.
        """
        checks = self.active_health
        times = (
            self.added_at,
            self.health.recovered_at,
            None if checks is None else checks.recovered_at,
        )
        since = max((each for each in times if each is not None), default=None)
        if window <= 0 or since is None:
            return 1.0
        elapsed = self._clock.seconds() - since
        return 1.0 if elapsed >= window else max(SLOW_START_FLOOR, elapsed / window)

    @property
    def latency_ewma(self) -> Optional[float]:
        """
        The peak-sensitive moving average of its response times, in
        seconds, decayed to now; None before its first answer.
        """
        return self.stats.ewma.estimate()

    def reconfigure(
        self, config: UpstreamServerConfig, server_id: str, alone: bool
    ) -> None:
        """
        Take a reload's configuration of this same address.

        :param alone: whether it is its upstream's only server, which
            passive health never takes out.
        """
        self.config = config
        self.id = server_id
        self.health.reconfigure(0 if alone else config.max_fail, config.fail_timeout)

    def set_weight(self, weight: Optional[int]) -> None:
        """
        Override the configured weight; None goes back to it.
        """
        if weight is not None and not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be from 0 to {MAX_WEIGHT}, got {weight}")
        self.weight_override = weight

    def attempt_started(self) -> None:
        self.active += 1
        self.requests += 1
        self.health.request_started()
        self.stats.requests.add()
        self._upstream_stats.requests.add()

    def responded(self, status: int, seconds: float) -> None:
        """
        A response head arrived, ``seconds`` after the attempt started.
        """
        stats = self.stats
        stats.statuses[f"{status // 100}xx"] += 1
        stats.latency.add(seconds)
        stats.ewma.observe(seconds)
        self._upstream_stats.response_time.observe(seconds)

    def succeeded(self) -> None:
        """
        The server answered (with a status that is not a failure).
        """
        self.health.succeeded()

    def failed(self, error: str, responded: bool = True) -> None:
        """
        Count a failure against the server: a connect error, timeout, reset,
        invalid response or failure status, described by ``error``.

        :param responded: whether a response head arrived (and was counted
            by :meth:`responded`); if not, the request counts as failed.
        """
        self.failures += 1
        self.health.failed(error)
        self.stats.ewma.penalize()
        self.stats.errors.add()
        self._upstream_stats.errors.add()
        if not responded:
            self.stats.statuses["failed"] += 1

    def retried(self) -> None:
        """
        A request that failed here goes to another server.
        """
        self.stats.retries += 1

    def failures_settled(self, seen: bool) -> None:
        """
        A request that failed here has its answer: ``seen`` when its
        client got an error, else a retry elsewhere hid the failure.
        """
        if seen:
            self.stats.errors_seen += 1
            self._upstream_stats.errors_seen.add()
        else:
            self.stats.errors_hidden += 1
            self._upstream_stats.errors_hidden.add()

    def attempt_finished(self) -> None:
        """
        The request is no longer in flight to the server, with or without a
        verdict (the client may have left, or a stale keep-alive connection
        was replaced).
        """
        self.active -= 1
        self.health.cancelled()


class Upstream:
    """
    A group of servers and the balancer that spreads requests over them.

    :ivar panic_since: when requests began to be balanced over every server
        in rotation, healthy or not (see :meth:`candidates`); None while
        they are not.
    """

    log = Logger()

    def __init__(
        self,
        config: UpstreamConfig,
        clock: IReactorTime,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.name = config.name
        self.stats = UpstreamStats(clock)
        self._clock = clock
        self._rng = rng or random.Random()
        self.panic_since: Optional[float] = None
        self.servers: List[Server] = []
        #: Told ``(server, down, seconds, error)`` when passive health in
        #: this process takes a server out or brings it back.
        self.health_hook: Optional[Callable[[Server, bool, float, str], None]] = None
        #: Told ``(server, up)`` when active checks in this process take a
        #: server out or bring it back.
        self.check_hook: Optional[Callable[[Server, bool], None]] = None
        self.sticky_tokens = StickyTokens(config.name, config.sticky_secret)
        self.reconfigure(config)

    def reconfigure(self, config: UpstreamConfig) -> List[Server]:
        """
        Take ``config`` (a reload's) for the next request: a server whose
        address stays keeps its health, figures and the operator's weight
        and state; new ones start up; a fresh balancer.

        :return: the servers no longer in it: those in flight to them
            finish, and none is sent there again.
        """
        # Slow start is for servers that come back or that a reload (or a
        # provider) adds beside others, not for the first ones: none to
        # ramp up against (HAProxy's choice at start-up).
        ramp = bool(self.servers)
        kept: Dict[str, List[Server]] = {}
        for server in self.servers:
            kept.setdefault(server.name, []).append(server)
        # nginx: a server alone in its group is never considered unavailable.
        alone = len(config.servers) == 1
        ids = server_ids([server.path for server in config.servers])
        servers = []
        for server_config, server_id in zip(config.servers, ids):
            same = kept.get(server_config.path)
            if same:
                server = same.pop(0)
                server.reconfigure(server_config, server_id, alone)
            else:
                server = self._new_server(server_config, server_id, alone)
                if not ramp:
                    server.added_at = None
            self._reconfigure_checks(server, config)
            server.stats.ewma.decay = config.ewma_decay
            servers.append(server)
        self.config = config
        self.servers = servers
        # The old one's state names servers that may be gone.
        balancer = BALANCERS[config.balancer](self._rng)
        self.balancer: IBalancer = balancer
        #: The same balancer when it chooses by key, checked once here.
        self.keyed: Optional[IKeyedBalancer] = None
        if IKeyedBalancer.providedBy(balancer):
            self.keyed = balancer
            self.keyed.configure(config)
        self.sticky_tokens.rekey(config.sticky_secret)
        return [server for left in kept.values() for server in left]

    def _new_server(
        self, config: UpstreamServerConfig, server_id: str, alone: bool
    ) -> Server:
        health = PassiveHealth(
            f"{self.name}/{config.path}",
            self._clock,
            max_fail=0 if alone else config.max_fail,
            fail_timeout=config.fail_timeout,
        )
        server = Server(config, health, server_id, self.stats, self._clock)
        server.added_at = self._clock.seconds()

        def changed(down: bool, seconds: float, error: str) -> None:
            hook = self.health_hook
            if hook is not None:
                hook(server, down, seconds, error)

        health.on_change = changed
        return server

    def _reconfigure_checks(self, server: Server, config: UpstreamConfig) -> None:
        check = config.health_check
        if check is None:
            server.active_health = None
        elif server.active_health is None:
            server.active_health = ActiveHealth(
                f"{self.name}/{server.name}", self._clock, check.rise, check.fall
            )

            def changed(up: bool) -> None:
                hook = self.check_hook
                if hook is not None:
                    hook(server, up)

            server.active_health.on_change = changed
        else:
            server.active_health.reconfigure(check.rise, check.fall)

    def in_rotation(self) -> Tuple[List[Server], List[Server]]:
        """
        The servers an operator has in rotation (weight above 0, neither
        draining nor disabled), and those of them health (passive, and
        active when checked) lets take requests now.
        """
        rotation = [server for server in self.servers if server.weight > 0]
        healthy = [server for server in rotation if server.available()]
        return rotation, healthy

    def in_panic(self) -> bool:
        """
        Whether fewer than ``panic_threshold`` percent of the servers in
        rotation are healthy, so that requests go to all of them.
        """
        rotation, healthy = self.in_rotation()
        return self._panics(len(rotation), len(healthy))

    def _panics(self, rotation: int, healthy: int) -> bool:
        """
        Whether the upstream is in a panic; a change is noted and logged
        by whoever sees it first, a request or the console.
        """
        panic = healthy * 100 < self.config.panic_threshold * rotation
        if panic is not (self.panic_since is not None):
            self._panic_changed(panic, rotation, healthy)
        return panic

    def candidates(self, exclude: Collection[Server] = ()) -> List[Server]:
        """
        The servers that may take a request now, leaving out ``exclude``.

        In a panic (Envoy's word: too few servers healthy, see
        ``panic_threshold``) passive health is ignored: the servers marked
        down are more likely to be fine than the whole site is to be
        unwanted, and refusing every request is the one certain outage.
        """
        rotation, healthy = self.in_rotation()
        servers = rotation if self._panics(len(rotation), len(healthy)) else healthy
        return [server for server in servers if server not in exclude]

    def _ramped(
        self, servers: List[Server], key: Optional[bytes] = None
    ) -> List[Server]:
        """
        ``servers`` less those in slow start that sit this pick out: each is
        offered in its share of picks, so its share of requests under any
        balancer is its weight's times that share.  Never none; not in a
        panic.  With a hash ``key`` the draw is the key's own, so a key
        stays put while the share grows and moves to the server once,
        rather than flapping between it and the next on the ring.
        """
        window = self.config.slow_start
        if window <= 0 or self.panic_since is not None:
            return servers
        offered = [
            server
            for server in servers
            if (share := server.slow_start_share(window)) >= 1.0
            or self._draw(server, key) < share
        ]
        return offered or servers

    def _draw(self, server: Server, key: Optional[bytes]) -> float:
        if key is None:
            return self._rng.random()
        return hash64(key + b"\0" + server.id.encode()) / 2.0**64

    def _panic_changed(self, panic: bool, rotation: int, healthy: int) -> None:
        if panic:
            self.panic_since = self._clock.seconds()
            self.log.warn(
                "upstream {upstream} in panic: {healthy} of {servers} servers"
                " healthy, fewer than {threshold}%: balancing over all of them",
                upstream=self.name,
                healthy=healthy,
                servers=rotation,
                threshold=self.config.panic_threshold,
                upstream_panic=True,
            )
            return
        self.log.info(
            "upstream {upstream} out of panic after {seconds:.1f}s:"
            " {healthy} of {servers} servers healthy",
            upstream=self.name,
            seconds=self._clock.seconds() - (self.panic_since or 0.0),
            healthy=healthy,
            servers=rotation,
            upstream_panic=False,
        )
        self.panic_since = None

    def pick(
        self,
        exclude: Collection[Server] = (),
        key: Optional[bytes] = None,
        sticky: Optional[bytes] = None,
    ) -> Optional[Server]:
        """
        Choose a server for a request, leaving out ``exclude`` (the servers
        this request already tried); None when none may take it.

        :param key: the request's ``hash_key``, for a keyed balancer.
        :param sticky: the request's sticky cookie: the server it names,
            if it may take the request, before the balancer's choice.
        """
        candidates = self.candidates(exclude)
        if not candidates:
            return None
        if sticky is not None:
            # Before slow start thins the servers: a client it keeps on a
            # ramping server stays there.
            token = self.sticky_tokens.token
            for server in candidates:
                if token(server.name) == sticky:
                    return server
        if key is not None and self.keyed is not None:
            return self.keyed.pick_keyed(self._ramped(candidates, key), key)
        return self.balancer.pick(self._ramped(candidates))

    def hash_shares(self) -> Optional[Dict[Server, float]]:
        """
        For a keyed balancer, each server's share of the keys now (0 for
        one out of rotation or down); None for other balancers.
        """
        if self.keyed is None:
            return None
        shares = dict.fromkeys(self.servers, 0.0)
        candidates = self.candidates()
        if candidates:
            shares.update(zip(candidates, self.keyed.shares(candidates)))
        return shares

    def try_next(
        self,
        tried: List[Server],
        tries_left: int,
        key: Optional[bytes] = None,
        sticky: Optional[bytes] = None,
    ) -> Optional[Server]:
        """
        The server for the next try of a request (or a TCP stream's
        connection) that has tried ``tried``, if ``tries_left`` allows one
        and a server may take it: appended to ``tried``, its attempt
        counted as started, and the try before counted as retried.
        ``key`` and ``sticky`` are :meth:`pick`'s.
        """
        server = self.pick(tried, key, sticky) if tries_left > 0 else None
        if server is None:
            return None
        if tried:
            tried[-1].retried()
        tried.append(server)
        server.attempt_started()
        return server

    def server(self, name: str) -> Server:
        """
        The server whose ``id`` or address is ``name``.
        """
        for server in self.servers:
            if name in (server.id, server.name):
                return server
        raise KeyError(name)


def describe(before: Dict[str, Any], after: Dict[str, Any]) -> str:
    """
    ``state up -> drain``: what changed between two settings.
    """
    changes = [
        f"{key} {before[key]} -> {after[key]}"
        for key in before
        if before[key] != after[key]
    ]
    return ", ".join(changes) or "nothing"


def settings_view(
    server: Server, weight: Optional[int], state: AdminState
) -> Dict[str, Any]:
    """
    A server's weight (the configured one unless overridden) and state.
    """
    return {
        "weight": server.configured_weight if weight is None else weight,
        "state": state.value,
    }


def server_ids(paths: List[str]) -> List[str]:
    """
    Ids for servers that are safe in a URL and stay the same as long as the
    configuration does: the address with other characters turned into
    ``-`` (``https://api:8443`` is ``https-api-8443``), numbered when two
    servers would get the same one.
    """
    ids: List[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9._]+", "-", path).strip("-") or "server"
        candidate, number = base, 1
        while candidate in ids:
            number += 1
            candidate = f"{base}-{number}"
        ids.append(candidate)
    return ids
