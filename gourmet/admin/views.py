"""
Upstreams and servers as the admin console and its JSON API show them:
plain dictionaries made from the runtime state at one moment.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from gourmet.upstream.health import Health
from gourmet.upstream.state import AdminState, Server, Upstream

#: Seconds of per-second history sent for the charts.
CHART_SECONDS = 120
#: Seconds over which the share of traffic and the request rate are taken.
RECENT_SECONDS = 60


def server_state(server: Server) -> str:
    """
    One word for what an operator most needs to know: ``disabled`` and
    ``drain`` (the operator's decisions) before ``down`` and ``trial``
    (passive health), else ``up``.
    """
    if server.admin_state is not AdminState.UP:
        return server.admin_state.value
    health = server.health.state
    return "up" if health is Health.UP else health.value


def _milliseconds(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 3)


def server_view(server: Server, upstream_recent: int) -> Dict[str, Any]:
    """
    One server as the API shows it.

    :param upstream_recent: its upstream's requests over the last minute,
        for the server's share.
    """
    health = server.health
    stats = server.stats
    recent = stats.requests.total(RECENT_SECONDS)
    return {
        "id": server.id,
        "address": server.name,
        "state": server_state(server),
        "health": health.state.value,
        "admin_state": server.admin_state.value,
        "down_since": health.down_since,
        "down_until": health.down_until,
        "last_error": health.last_error,
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
        },
        "requests_per_second": round(recent / RECENT_SECONDS, 3),
        "share": round(recent / upstream_recent, 4) if upstream_recent else None,
    }


def upstream_view(upstream: Upstream, locations: List[str]) -> Dict[str, Any]:
    """
    One upstream, its servers and its recent history, as the API shows it.

    :param locations: the patterns of the locations it serves.
    """
    stats = upstream.stats
    recent = stats.requests.total(RECENT_SECONDS)
    return {
        "name": upstream.name,
        "balancer": upstream.config.balancer,
        "panic": upstream.in_panic(),
        "panic_since": upstream.panic_since,
        "locations": locations,
        "servers": [server_view(server, recent) for server in upstream.servers],
        "history": {
            "seconds": CHART_SECONDS,
            "requests": stats.requests.series(CHART_SECONDS),
            "errors": stats.errors.series(CHART_SECONDS),
        },
    }
