"""
A worker process's traffic figures, as it tells them to its supervisor,
and their sum, which the supervisor's console and ``/metrics`` show.

A snapshot is plain JSON-able data: per upstream, its counts per second
(by second), its response-time histogram and Gourmet's own answers; per
server, its counters, counts per second, recent response times and
moving average.  Counts add up; recent response times are pooled; the
moving averages are averaged.  A worker that died is remembered by its
last snapshot (its requests in flight less), so the totals do not drop.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional

from gourmet.upstream.state import Server, Upstream
from gourmet.upstream.stats import PerSecond

__all__ = [
    "apply_snapshot",
    "apply_stream_counts",
    "merge_snapshots",
    "requests_in",
    "stream_counts",
    "take_snapshot",
]

#: A snapshot: upstream name to its figures.
Snapshot = Dict[str, Dict[str, Any]]

#: The per-second series of an upstream, and of a server.
_UPSTREAM_SERIES = ("requests", "errors", "errors_hidden", "errors_seen")
_SERVER_SERIES = ("requests_per_second", "errors_per_second")
#: Server counters that add up.
_SERVER_COUNTS = (
    "requests",
    "failures",
    "active",
    "retries",
    "errors_seen",
    "errors_hidden",
    "bytes_sent",
    "bytes_received",
)


def _series(per_second: PerSecond) -> Dict[str, int]:
    # JSON keys are strings.
    return {str(second): count for second, count in per_second.counts().items()}


def _server_snapshot(server: Server, pool: Optional[Any]) -> Dict[str, Any]:
    stats = server.stats
    idle, busy = (0, 0) if pool is None else pool.connection_counts(server.origin)
    return {
        "pool": [idle, busy],
        "requests": server.requests,
        "failures": server.failures,
        "active": server.active,
        "retries": stats.retries,
        "errors_seen": stats.errors_seen,
        "errors_hidden": stats.errors_hidden,
        "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_received,
        "statuses": dict(stats.statuses),
        "gourmet_statuses": {str(k): v for k, v in stats.gourmet_statuses.items()},
        "requests_per_second": _series(stats.requests),
        "errors_per_second": _series(stats.errors),
        "latency": stats.latency.samples(),
        "ewma": [server.latency_ewma] if server.latency_ewma is not None else [],
    }


def take_snapshot(
    upstreams: Iterable[Upstream], pools: Optional[Mapping[str, Any]] = None
) -> Snapshot:
    """
    What ``upstreams`` counted in this process, and the connections their
    ``pools`` hold.
    """
    snapshot: Snapshot = {}
    for upstream in upstreams:
        pool = None if pools is None else pools.get(upstream.name)
        stats = upstream.stats
        snapshot[upstream.name] = {
            **{name: _series(getattr(stats, name)) for name in _UPSTREAM_SERIES},
            "histogram": stats.response_time.counts(),
            "histogram_sum": stats.response_time.sum,
            "gourmet_statuses": {str(k): v for k, v in stats.gourmet_statuses.items()},
            "servers": {
                server.name: _server_snapshot(server, pool)
                for server in upstream.servers
            },
        }
    return snapshot


def _add_counts(into: Dict[str, Any], figures: Mapping[str, Any]) -> None:
    for key, value in figures.items():
        into[key] = into.get(key, 0) + value


def _merge_server(into: Dict[str, Any], server: Mapping[str, Any]) -> None:
    for name in _SERVER_COUNTS:
        into[name] = into.get(name, 0) + server[name]
    for name in ("statuses", "gourmet_statuses", *_SERVER_SERIES):
        _add_counts(into.setdefault(name, {}), server[name])
    pool = into.setdefault("pool", [0, 0])
    into["pool"] = [a + b for a, b in zip(pool, server.get("pool", [0, 0]))]
    into.setdefault("latency", []).extend(server["latency"])
    into.setdefault("ewma", []).extend(server["ewma"])


def merge_snapshots(snapshots: Iterable[Snapshot]) -> Snapshot:
    """
    The sum of several workers' snapshots.
    """
    merged: Snapshot = {}
    for snapshot in snapshots:
        for name, upstream in snapshot.items():
            into = merged.setdefault(name, {"servers": {}})
            for series in (*_UPSTREAM_SERIES, "gourmet_statuses"):
                _add_counts(into.setdefault(series, {}), upstream[series])
            histogram = into.setdefault("histogram", [0] * len(upstream["histogram"]))
            into["histogram"] = [
                a + b for a, b in zip(histogram, upstream["histogram"])
            ]
            into["histogram_sum"] = (
                into.get("histogram_sum", 0.0) + upstream["histogram_sum"]
            )
            for server_name, server in upstream["servers"].items():
                _merge_server(into["servers"].setdefault(server_name, {}), server)
    return merged


def retired(snapshot: Snapshot) -> Snapshot:
    """
    The last snapshot of a worker that is gone: its counts stay, but it
    has no request in flight and no recent response time any more.
    """
    return {
        name: {
            **upstream,
            "servers": {
                server_name: {
                    **server,
                    "active": 0,
                    "pool": [0, 0],
                    "latency": [],
                    "ewma": [],
                }
                for server_name, server in upstream["servers"].items()
            },
        }
        for name, upstream in snapshot.items()
    }


def requests_in(snapshot: Snapshot) -> int:
    """
    The requests sent to upstream servers that ``snapshot`` counted.
    """
    return sum(
        server["requests"]
        for upstream in snapshot.values()
        for server in upstream["servers"].values()
    )


def _by_second(series: Mapping[str, int]) -> Dict[int, int]:
    return {int(second): count for second, count in series.items()}


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def apply_snapshot(
    upstreams: Mapping[str, Upstream],
    snapshot: Snapshot,
    pools: Optional[Mapping[str, Any]] = None,
) -> None:
    """
    Make ``upstreams`` (the supervisor's, which serve no request) hold the
    figures of ``snapshot``, and their ``pools`` the workers' connection
    counts; servers it does not name hold nothing.
    """
    for name, upstream in upstreams.items():
        figures = snapshot.get(name, {})
        pool = None if pools is None else pools.get(name)
        if pool is not None:
            pool.elsewhere = {
                server.origin: tuple(
                    figures.get("servers", {}).get(server.name, {}).get("pool", (0, 0))
                )
                for server in upstream.servers
            }
        stats = upstream.stats
        for series in _UPSTREAM_SERIES:
            getattr(stats, series).load(_by_second(figures.get(series, {})))
        histogram = figures.get("histogram")
        if histogram is not None:
            stats.response_time.load(histogram, figures["histogram_sum"])
        stats.gourmet_statuses = Counter(
            {int(k): v for k, v in figures.get("gourmet_statuses", {}).items()}
        )
        servers = figures.get("servers", {})
        for server in upstream.servers:
            _apply_server(server, servers.get(server.name, {}))


def _apply_server(server: Server, figures: Mapping[str, Any]) -> None:
    stats = server.stats
    server.requests = figures.get("requests", 0)
    server.failures = figures.get("failures", 0)
    server.active = figures.get("active", 0)
    stats.retries = figures.get("retries", 0)
    stats.errors_seen = figures.get("errors_seen", 0)
    stats.errors_hidden = figures.get("errors_hidden", 0)
    stats.bytes_sent = figures.get("bytes_sent", 0)
    stats.bytes_received = figures.get("bytes_received", 0)
    stats.statuses = Counter(figures.get("statuses", {}))
    stats.gourmet_statuses = Counter(
        {int(k): v for k, v in figures.get("gourmet_statuses", {}).items()}
    )
    stats.requests.load(_by_second(figures.get("requests_per_second", {})))
    stats.errors.load(_by_second(figures.get("errors_per_second", {})))
    stats.latency.load(figures.get("latency", []))
    stats.ewma.load(_mean(figures.get("ewma", [])))


#: A stream's counts: its ``listen`` string to its figures.
StreamFigures = Dict[str, Dict[str, int]]
_STREAM_COUNTS = ("connections", "active", "failed", "received", "sent")


def stream_counts(factories: Iterable[Any]) -> StreamFigures:
    """
    What each ``[[streams]]`` listener carried in this process.
    """
    return {
        factory.config.listen: {
            name: getattr(factory.counts, name) for name in _STREAM_COUNTS
        }
        for factory in factories
    }


def merge_stream_counts(figures: Iterable[StreamFigures]) -> StreamFigures:
    """
    The sum of several workers' stream counts.
    """
    merged: StreamFigures = {}
    for each in figures:
        for listen, counts in each.items():
            _add_counts(merged.setdefault(listen, {}), counts)
    return merged


def retired_streams(figures: StreamFigures) -> StreamFigures:
    """
    A gone worker's stream counts: none of its connections is open.
    """
    return {listen: {**counts, "active": 0} for listen, counts in figures.items()}


def apply_stream_counts(factories: Iterable[Any], figures: StreamFigures) -> None:
    """
    Make the supervisor's stream factories hold ``figures``.
    """
    for factory in factories:
        counts = figures.get(factory.config.listen, {})
        for name in _STREAM_COUNTS:
            setattr(factory.counts, name, counts.get(name, 0))


#: What a worker's proxy site counted of its clients.
ClientFigures = Dict[str, Any]
_CLIENT_COUNTERS = ("refusals", "headers_dropped", "protocol_errors")


def client_figures(site: Any) -> ClientFigures:
    """
    The client-side figures of a worker's proxy site: its refusals, headers
    dropped, HTTP/2 errors, and connections open now.
    """
    stats = site.client_stats
    return {
        **{
            name: {str(k): v for k, v in getattr(stats, name).items()}
            for name in _CLIENT_COUNTERS
        },
        "connections": site.open_connections,
        "http2_connections": site.http2_connections,
    }


def merge_client_figures(figures: Iterable[ClientFigures]) -> ClientFigures:
    merged: ClientFigures = {name: {} for name in _CLIENT_COUNTERS}
    merged.update(connections=0, http2_connections=0)
    for each in figures:
        for name in _CLIENT_COUNTERS:
            _add_counts(merged[name], each.get(name, {}))
        merged["connections"] += each.get("connections", 0)
        merged["http2_connections"] += each.get("http2_connections", 0)
    return merged


def retired_client(figures: ClientFigures) -> ClientFigures:
    """
    A gone worker's client figures: none of its connections is open.
    """
    return {**figures, "connections": 0, "http2_connections": 0}


def apply_client_figures(site: Any, figures: ClientFigures) -> None:
    """
    Make the supervisor's proxy site (which serves no client) show
    ``figures``.
    """
    stats = site.client_stats
    stats.refusals = Counter({int(k): v for k, v in figures["refusals"].items()})
    stats.headers_dropped = Counter(figures["headers_dropped"])
    stats.protocol_errors = Counter(figures["protocol_errors"])
    site.served_elsewhere = (figures["connections"], figures["http2_connections"])
