"""
Upstreams and servers as the admin console and its JSON API show them:
plain dictionaries made from the runtime state at one moment.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Dict, List, Mapping, Optional, Sequence

from attrs import frozen

import gourmet
import twisted
from gourmet.discovery.updates import ProvidedUpstream
from gourmet.frontend.site import GourmetSite
from gourmet.tcp.factory import StreamFactory
from gourmet.tls.certificates import Certificate
from gourmet.upstream.health import Health
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import AdminState, Server, Upstream
from gourmet.upstream.stats import PerSecond

#: Seconds of per-second history sent for the charts.
CHART_SECONDS = 120
#: Seconds over which the share of traffic and the request rate are taken.
RECENT_SECONDS = 60


def server_state(server: Server) -> str:
    """
    One word for what an operator most needs to know: ``disabled`` and
    ``drain`` (the operator's decisions) before ``down`` and ``trial``
    (passive health) and ``down`` (active checks), else ``up``.
    """
    if server.admin_state is not AdminState.UP:
        return server.admin_state.value
    health = server.health.state
    if health is Health.UP and not down_by(server):
        return "up"
    return "down" if health is Health.UP else health.value


def down_by(server: Server) -> List[str]:
    """
    What takes the server out now: ``passive`` health, ``active`` checks,
    both or neither.
    """
    checks = server.active_health
    causes = [] if server.health.state is Health.UP else ["passive"]
    return causes if checks is None or checks.up else [*causes, "active"]


def checks_view(server: Server) -> Optional[Dict[str, Any]]:
    """
    What active checks say of the server, in HAProxy's words; None when
    its upstream has none.
    """
    checks = server.active_health
    if checks is None:
        return None
    last = checks.last
    return {
        "up": checks.up,
        "last": None if last is None else str(last),
        "last_code": None if last is None else last.code,
        "last_status": None if last is None else last.status,
        "last_ms": None if last is None else _milliseconds(last.seconds),
        "checks": checks.checks,
        "failed": checks.failed_checks,
        "downs": checks.downs,
        "downtime": round(checks.downtime, 3),
        "down_since": checks.down_since,
        "last_change": checks.last_change,
    }


def _milliseconds(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 3)


def rate_view(counts: PerSecond) -> Dict[str, float]:
    """
    Requests per second now (the last 5 s), over the minute, and in the
    minute's busiest second.
    """
    current, minute, peak = counts.rates()
    return {"current": round(current, 3), "minute": round(minute, 3), "peak": peak}


def _by_status(counts: Mapping[int, int]) -> Dict[str, int]:
    return {str(status): count for status, count in sorted(counts.items())}


def stream_view(stream: StreamFactory) -> Dict[str, Any]:
    """
    One TCP stream as the API shows it: its settings, where it listens,
    its client connections and the bytes each way.
    """
    config, counts = stream.config, stream.counts
    return {
        "listen": config.listen,
        "address": stream.address(),
        "upstream": config.upstream,
        "proxy_protocol": config.proxy_protocol,
        "idle_timeout": config.idle_timeout,
        "connections": {
            "active": counts.active,
            "total": counts.connections,
            "failed": counts.failed,
        },
        "bytes": {"received": counts.received, "sent": counts.sent},
    }


def server_view(
    server: Server,
    upstream_recent: int,
    pool: Optional[ConnectionPool] = None,
    slow_start: float = 0.0,
) -> Dict[str, Any]:
    """
    One server as the API shows it.

    :param upstream_recent: its upstream's requests over the last minute,
        for the server's share.
    :param pool: its upstream's connections, for the idle and busy ones.
    :param slow_start: its upstream's ``slow_start``, for the share of its
        weight it is ramping through (``slow_start``: None when full).
    """
    health = server.health
    stats = server.stats
    recent = stats.requests.total(RECENT_SECONDS)
    share = server.slow_start_share(slow_start)
    return {
        "id": server.id,
        "address": server.name,
        "state": server_state(server),
        "health": health.state.value,
        "admin_state": server.admin_state.value,
        "down_since": health.down_since,
        "down_until": health.down_until,
        "last_error": health.last_error,
        "down_by": down_by(server),
        "checks": checks_view(server),
        "slow_start": None if share >= 1.0 else round(share, 3),
        "weight": server.weight,
        "configured_weight": server.configured_weight,
        "weight_overridden": server.weight_override is not None,
        "weight_override": server.weight_override,
        "active": server.active,
        "requests": server.requests,
        "failures": server.failures,
        "statuses": dict(stats.statuses),
        "latency_ms": {
            "mean": _milliseconds(stats.latency.mean()),
            "p95": _milliseconds(stats.latency.percentile(0.95)),
            "samples": len(stats.latency),
            "ewma": _milliseconds(server.latency_ewma),
        },
        "requests_per_second": round(recent / RECENT_SECONDS, 3),
        "share": round(recent / upstream_recent, 4) if upstream_recent else None,
        "rate": rate_view(stats.requests),
        "gourmet_statuses": _by_status(stats.gourmet_statuses),
        "retries": stats.retries,
        "errors": {"seen": stats.errors_seen, "hidden": stats.errors_hidden},
        "bytes": {"sent": stats.bytes_sent, "received": stats.bytes_received},
        "up_since": health.up_since,
        "pool": _pool_view(server, pool),
    }


def _pool_view(server: Server, pool: Optional[ConnectionPool]) -> Dict[str, int]:
    if pool is None:
        return {"idle": 0, "busy": 0}
    idle, busy = pool.connection_counts(server.origin)
    return {"idle": idle, "busy": busy}


def upstream_view(
    upstream: Upstream,
    locations: List[str],
    pool: Optional[ConnectionPool] = None,
    provided: Optional[ProvidedUpstream] = None,
) -> Dict[str, Any]:
    """
    One upstream, its servers and its recent history, as the API shows it.

    :param locations: the patterns of the locations it serves.
    :param pool: its connections.
    :param provided: its provider, when its servers are found.
    """
    stats = upstream.stats
    recent = stats.requests.total(RECENT_SECONDS)
    servers = [
        server_view(server, recent, pool, upstream.config.slow_start)
        for server in upstream.servers
    ]
    hash_shares = upstream.hash_shares()
    for view, server in zip(servers, upstream.servers):
        # A keyed balancer's view: the share of keys each server gets now.
        view["hash_share"] = (
            None if hash_shares is None else round(hash_shares[server], 4)
        )
        # What its provider said of it (a pod's name, a zone), if found.
        view["found"] = (
            None if provided is None else provided.metadata.get(server.name, {})
        )
    return {
        "name": upstream.name,
        "balancer": upstream.config.balancer,
        "hash_key": upstream.config.hash_key,
        "hash_balance_factor": upstream.config.hash_balance_factor,
        "sticky_cookie": upstream.config.sticky_cookie,
        "panic": upstream.in_panic(),
        "panic_since": upstream.panic_since,
        "locations": locations,
        "provider": provider_view(upstream, provided),
        "slow_start": upstream.config.slow_start,
        "health_check": upstream.config.health_check is not None,
        "servers": servers,
        "rate": rate_view(stats.requests),
        "errors": {
            "last_minute": stats.errors.total(RECENT_SECONDS),
            "seen": stats.errors_seen.total(RECENT_SECONDS),
            "hidden": stats.errors_hidden.total(RECENT_SECONDS),
        },
        "gourmet_statuses": _by_status(stats.gourmet_statuses),
        "history": {
            "seconds": CHART_SECONDS,
            "requests": stats.requests.series(CHART_SECONDS),
            "errors": stats.errors.series(CHART_SECONDS),
        },
    }


def provider_view(
    upstream: Upstream, provided: Optional[ProvidedUpstream]
) -> Dict[str, Any]:
    """
    Where an upstream's servers come from and, for a provider, what it
    said last: ``last_error`` while it fails (its servers stay).
    """
    if provided is None:
        return {"name": upstream.config.provider}
    return {
        "name": upstream.config.provider,
        "updates": provided.updates,
        "errors": provided.errors,
        "last_update": provided.last_update,
        "last_error": provided.last_error,
        "error_since": provided.error_since,
    }


@frozen
class Instance:
    """
    Which Gourmet this is: what an operator checks first after a deploy.

    :ivar started: when it started, in the clock's seconds.
    :ivar config_file: the configuration's absolute path (or its source's
        name when it was not a file).
    """

    started: float
    config_file: str

    @classmethod
    def here(cls, started: float, source: str) -> Instance:
        """
        This process, started at ``started`` from the configuration ``source``.
        """
        path = os.path.abspath(source) if os.path.isfile(source) else source
        return cls(started, path)

    def view(self, now: float) -> Dict[str, Any]:
        """
        The instance as the API shows it, ``now``.
        """
        return {
            "version": gourmet.__version__,
            "started": self.started,
            "uptime": round(now - self.started, 3),
            "config_file": self.config_file,
            "pid": os.getpid(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "twisted": twisted.__version__,
        }


@frozen
class ListenerInfo:
    """
    One site Gourmet listens for clients with, and where.
    """

    name: str
    addresses: Sequence[str]
    site: GourmetSite


def listener_view(listener: ListenerInfo) -> Dict[str, Any]:
    """
    A listener as the API shows it: its client connections against its
    limit (0: none), and Gourmet's own answers by status.
    """
    site = listener.site
    return {
        "name": listener.name,
        "addresses": list(listener.addresses),
        "connections": site.open_connections,
        "max_connections": site.frontend.max_connections,
        "refusals": _by_status(site.client_stats.refusals),
        "http2_connections": site.http2_connections,
        "http2_errors": dict(site.client_stats.protocol_errors),
    }


def certificate_view(certificate: Certificate, default: bool) -> Dict[str, Any]:
    """
    A certificate TLS listeners serve, as the API shows it: its file, the
    names it is for, when it stops being valid (seconds since the epoch),
    and whether clients asking for no name (or another) get it.
    """
    return {
        "file": certificate.cert_file,
        "key_file": certificate.key_file,
        "names": list(certificate.names),
        "not_before": certificate.not_before.timestamp(),
        "not_after": certificate.not_after.timestamp(),
        "default": default,
    }
