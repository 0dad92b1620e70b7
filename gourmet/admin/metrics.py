"""
Prometheus metrics, read from the same runtime state the proxy updates.

A custom collector builds the metric families at scrape time from the
upstreams' counters, so the request path pays nothing for metrics.  The
text is made by ``prometheus_client`` in the reactor's thread:
``prometheus_client.twisted.MetricsResource`` would run the collector in a
thread pool, reading counters while the reactor thread changes them, and it
binds the global reactor when imported.
"""

from __future__ import annotations

import math
import platform
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple, Type, Union

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

import gourmet
import twisted
from gourmet.admin.throttle import SignInThrottle
from gourmet.admin.views import Instance, ListenerInfo
from gourmet.cluster.member import ClusterMember
from gourmet.discovery.updates import ProvidedUpstream
from gourmet.frontend.channel import ClientStats
from gourmet.tcp.factory import StreamFactory
from gourmet.tls.certificates import Certificate
from gourmet.upstream.health import Health
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import Server, Upstream

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "failed")


#: The per-server figures that are one number each: name, type, help, and
#: how to read it from a server.
_Family = Type[Union[CounterMetricFamily, GaugeMetricFamily]]
_SERVER_FIGURES: Tuple[Tuple[str, _Family, str, Callable[[Server], float]], ...] = (
    (
        "gourmet_upstream_failures",
        CounterMetricFamily,
        "Failures counted against servers by passive health.",
        lambda server: server.failures,
    ),
    (
        "gourmet_upstream_active_requests",
        GaugeMetricFamily,
        "Requests in flight.",
        lambda server: server.active,
    ),
    (
        "gourmet_upstream_server_up",
        GaugeMetricFamily,
        "1 when passive health lets the server take requests, else 0.",
        lambda server: 0 if server.health.state is Health.DOWN else 1,
    ),
    (
        "gourmet_upstream_server_available",
        GaugeMetricFamily,
        "1 when health (passive, and active checks if any) lets the server"
        " take requests, else 0.",
        lambda server: 1 if server.available() else 0,
    ),
    (
        "gourmet_upstream_server_weight",
        GaugeMetricFamily,
        "The weight balancers use now (0 while draining or disabled).",
        lambda server: server.weight,
    ),
    (
        "gourmet_upstream_server_configured_weight",
        GaugeMetricFamily,
        "The weight in the configuration.",
        lambda server: server.configured_weight,
    ),
    (
        "gourmet_upstream_latency_ewma_seconds",
        GaugeMetricFamily,
        "Peak-sensitive moving average of the time to the response head"
        " (what p2c_ewma balances by; NaN before the first answer).",
        lambda server: _or_nan(server.latency_ewma),
    ),
    (
        "gourmet_upstream_retries",
        CounterMetricFamily,
        "Requests that failed on the server and were sent to another.",
        lambda server: server.stats.retries,
    ),
    (
        "gourmet_upstream_sent_bytes",
        CounterMetricFamily,
        "Request body bytes sent to the server.",
        lambda server: server.stats.bytes_sent,
    ),
    (
        "gourmet_upstream_received_bytes",
        CounterMetricFamily,
        "Response body bytes read from the server.",
        lambda server: server.stats.bytes_received,
    ),
)

_SERVER_LABELS = ["upstream", "server"]


def _or_nan(value: Optional[float]) -> float:
    return math.nan if value is None else value


class UpstreamCollector(Collector):
    """
    Every upstream's and server's figures, as metric families.
    """

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        pools: Optional[Mapping[str, ConnectionPool]] = None,
    ) -> None:
        self.upstreams = upstreams
        self.pools = pools or {}

    def _servers(self) -> Iterable[Tuple[List[str], Server, Optional[ConnectionPool]]]:
        for upstream in self.upstreams.values():
            pool = self.pools.get(upstream.name)
            for server in upstream.servers:
                yield [upstream.name, server.name], server, pool

    def collect(self) -> Iterable[Metric]:
        for name, kind, documentation, read in _SERVER_FIGURES:
            family = kind(name, documentation, labels=_SERVER_LABELS)
            for values, server, _ in self._servers():
                family.add_metric(values, read(server))
            yield family
        yield from self._by_kind()
        yield self._gourmet_responses()
        yield self._panics()
        yield self._hash_shares()
        yield self._response_times()
        yield from self._checks()

    def _checks(self) -> Iterable[Metric]:
        checked = [
            (values, server.active_health)
            for values, server, _ in self._servers()
            if server.active_health is not None
        ]
        figures = (
            (
                "gourmet_upstream_check_up",
                GaugeMetricFamily,
                "1 when active health checks let the server take requests.",
                lambda checks: 1 if checks.up else 0,
            ),
            (
                "gourmet_upstream_checks",
                CounterMetricFamily,
                "Active health checks made.",
                lambda checks: checks.checks,
            ),
            (
                "gourmet_upstream_check_failures",
                CounterMetricFamily,
                "Active health checks that failed.",
                lambda checks: checks.failed_checks,
            ),
            (
                "gourmet_upstream_check_downs",
                CounterMetricFamily,
                "Times active health checks took the server out.",
                lambda checks: checks.downs,
            ),
            (
                "gourmet_upstream_check_downtime_seconds",
                CounterMetricFamily,
                "Seconds active health checks kept the server out, in all.",
                lambda checks: checks.downtime,
            ),
            (
                "gourmet_upstream_check_last_change_seconds",
                GaugeMetricFamily,
                "When active health last took the server out or brought it back"
                " (Unix time; 0: never).",
                lambda checks: checks.last_change or 0,
            ),
        )
        for name, kind, documentation, read in figures:
            family = kind(name, documentation, labels=_SERVER_LABELS)
            for values, checks in checked:
                family.add_metric(values, read(checks))
            yield family
        last = GaugeMetricFamily(
            "gourmet_upstream_check_last_seconds",
            "How long the last active health check took, labelled with its"
            " result as HAProxy names it (L7OK, L7STS, L4TOUT, L4CON, ...)"
            " and the status it got.",
            labels=[*_SERVER_LABELS, "result", "status"],
        )
        for values, checks in checked:
            result = checks.last
            if result is not None:
                status = "" if result.status is None else str(result.status)
                last.add_metric([*values, result.code, status], result.seconds)
        yield last

    def _by_kind(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "gourmet_upstream_requests",
            "Requests sent to upstream servers, by status class of the answer "
            "(failed: no usable answer).",
            labels=[*_SERVER_LABELS, "code"],
        )
        errors = CounterMetricFamily(
            "gourmet_upstream_errors",
            "Failures by what the client saw: seen (it got an error) or hidden"
            " (a retry on another server answered it well).",
            labels=[*_SERVER_LABELS, "outcome"],
        )
        connections = GaugeMetricFamily(
            "gourmet_upstream_connections",
            "Connections to the server, idle (kept alive) or busy.",
            labels=[*_SERVER_LABELS, "state"],
        )
        for values, server, pool in self._servers():
            stats = server.stats
            for code in _STATUS_CLASSES:
                requests.add_metric([*values, code], stats.statuses.get(code, 0))
            errors.add_metric([*values, "seen"], stats.errors_seen)
            errors.add_metric([*values, "hidden"], stats.errors_hidden)
            if pool is not None:
                idle, busy = pool.connection_counts(server.origin)
                connections.add_metric([*values, "idle"], idle)
                connections.add_metric([*values, "busy"], busy)
        yield from (requests, errors, connections)

    def _gourmet_responses(self) -> Metric:
        family = CounterMetricFamily(
            "gourmet_upstream_gourmet_responses",
            "Gourmet's own answers for the upstream: 502 (no server could"
            " be reached), 503 (none available), 504 (none answered in time).",
            labels=["upstream", "code"],
        )
        for upstream in self.upstreams.values():
            for code in (502, 503, 504):
                count = upstream.stats.gourmet_statuses.get(code, 0)
                family.add_metric([upstream.name, str(code)], count)
        return family

    def _panics(self) -> Metric:
        family = GaugeMetricFamily(
            "gourmet_upstream_panic",
            "1 while too few servers are healthy (panic_threshold) and requests"
            " go to every server in rotation, else 0.",
            labels=["upstream"],
        )
        for upstream in self.upstreams.values():
            family.add_metric([upstream.name], 1 if upstream.in_panic() else 0)
        return family

    def _hash_shares(self) -> Metric:
        family = GaugeMetricFamily(
            "gourmet_upstream_hash_share",
            "The share of keys (0 to 1) a keyed balancer (hash) sends to the"
            " server now; only for upstreams with one.",
            labels=_SERVER_LABELS,
        )
        for upstream in self.upstreams.values():
            shares = upstream.hash_shares()
            for server, share in (shares or {}).items():
                family.add_metric([upstream.name, server.name], share)
        return family

    def _response_times(self) -> Metric:
        family = HistogramMetricFamily(
            "gourmet_upstream_response_seconds",
            "Time from sending a request upstream to its response head.",
            labels=["upstream"],
        )
        for upstream in self.upstreams.values():
            histogram = upstream.stats.response_time
            family.add_metric(
                [upstream.name],
                [(bound, float(count)) for bound, count in histogram.cumulative()],
                histogram.sum,
            )
        return family


class ClientCollector(Collector):
    """
    What Gourmet did to clients' requests on their way in.
    """

    def __init__(self, stats: ClientStats) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        dropped = CounterMetricFamily(
            "gourmet_client_headers_dropped",
            "Request header lines dropped, by reason (underscore: a name with"
            " '_', see underscores_in_headers).",
            labels=["reason"],
        )
        for reason in ("underscore",):
            dropped.add_metric([reason], self.stats.headers_dropped[reason])
        yield dropped


class SignInCollector(Collector):
    """
    Failed sign-ins to the console, and the requests refused for them.
    """

    def __init__(self, throttle: SignInThrottle) -> None:
        self.throttle = throttle

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "gourmet_admin_failed_signins",
            "Credentials the admin console refused (wrong password or token).",
            value=self.throttle.failures,
        )
        yield CounterMetricFamily(
            "gourmet_admin_throttled_requests",
            "Admin requests refused with 429 after too many failed sign-ins.",
            value=self.throttle.throttled,
        )


class ListenerCollector(Collector):
    """
    Client connections and Gourmet's own answers, per listener.
    """

    def __init__(self, listeners: Callable[[], Iterable[ListenerInfo]]) -> None:
        self.listeners = listeners

    def collect(self) -> Iterable[Metric]:
        connections = GaugeMetricFamily(
            "gourmet_client_connections",
            "Client connections open.",
            labels=["listener"],
        )
        limit = GaugeMetricFamily(
            "gourmet_client_max_connections",
            "Client connections allowed (0: no limit).",
            labels=["listener"],
        )
        refusals = CounterMetricFamily(
            "gourmet_own_responses",
            "Gourmet's own answers to clients (refusals and errors), by status.",
            labels=["listener", "code"],
        )
        http2 = GaugeMetricFamily(
            "gourmet_client_http2_connections",
            "Client connections open that speak HTTP/2.",
            labels=["listener"],
        )
        http2_errors = CounterMetricFamily(
            "gourmet_client_http2_errors",
            "HTTP/2 connections closed for what their client did, by reason"
            " (protocol: broke HTTP/2; rapid_reset: reset most of its streams;"
            " unread: did not read what it asked for).",
            labels=["listener", "reason"],
        )
        for listener in self.listeners():
            site = listener.site
            connections.add_metric([listener.name], site.open_connections)
            limit.add_metric([listener.name], site.frontend.max_connections)
            for code, count in sorted(site.client_stats.refusals.items()):
                refusals.add_metric([listener.name, str(code)], count)
            http2.add_metric([listener.name], site.http2_connections)
            errors = site.client_stats.protocol_errors
            for reason in ("protocol", "rapid_reset", "unread"):
                http2_errors.add_metric([listener.name, reason], errors[reason])
        yield from (connections, limit, refusals, http2, http2_errors)


class InstanceCollector(Collector):
    """
    Which Gourmet this is, and since when.
    """

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "gourmet_build_info",
            "1, labelled with Gourmet's, Python's and Twisted's versions.",
            labels=["version", "python", "twisted"],
        )
        python = f"{platform.python_implementation()} {platform.python_version()}"
        info.add_metric([gourmet.__version__, python, twisted.__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "gourmet_start_time_seconds",
            "When this Gourmet started, in seconds since the epoch.",
            value=self.instance.started,
        )


class CertificateCollector(Collector):
    """
    When each certificate TLS listeners serve expires, by name.
    """

    def __init__(self, certificates: Callable[[], Iterable[Certificate]]) -> None:
        self.certificates = certificates

    def collect(self) -> Iterable[Metric]:
        expiry = GaugeMetricFamily(
            "gourmet_certificate_expiry_seconds",
            "When the certificate served for the name stops being valid, in"
            " seconds since the epoch.",
            labels=["file", "name"],
        )
        for certificate in self.certificates():
            not_after = certificate.not_after.timestamp()
            for name in certificate.names:
                expiry.add_metric([certificate.cert_file, name], not_after)
        yield expiry


def _families(
    labels: List[str],
    figures: Iterable[Tuple[str, _Family, str, Callable[[Any], float]]],
    rows: List[Tuple[List[str], Any]],
) -> Iterable[Metric]:
    """
    A metric family per figure, with a sample per row (its label values,
    and what the figure reads).
    """
    for name, kind, documentation, read in figures:
        family = kind(name, documentation, labels=labels)
        for values, item in rows:
            family.add_metric(values, read(item))
        yield family


_PROVIDER_FIGURES: Tuple[Tuple[str, _Family, str, Callable[[Any], float]], ...] = (
    (
        "gourmet_provider_updates",
        CounterMetricFamily,
        "Sets of servers the provider found.",
        lambda provided: provided.updates,
    ),
    (
        "gourmet_provider_errors",
        CounterMetricFamily,
        "Times the provider failed (its servers stayed).",
        lambda provided: provided.errors,
    ),
    (
        "gourmet_provider_failing",
        GaugeMetricFamily,
        "1 while the provider's latest attempt failed.",
        lambda provided: float(provided.last_error is not None),
    ),
    (
        "gourmet_provider_last_update_seconds",
        GaugeMetricFamily,
        "When the provider last found a set (Unix time; NaN: never).",
        lambda provided: _or_nan(provided.last_update),
    ),
)


class ProviderCollector(Collector):
    """
    Each provider's sets of servers received and failures, by ``upstream``
    and ``provider``, and whether it is failing now.
    """

    def __init__(self, providers: Callable[[], Mapping[str, ProvidedUpstream]]) -> None:
        self.providers = providers

    def collect(self) -> Iterable[Metric]:
        rows = [
            ([name, provided.config.provider], provided)
            for name, provided in sorted(self.providers().items())
        ]
        return _families(["upstream", "provider"], _PROVIDER_FIGURES, rows)


_STREAM_FIGURES: Tuple[Tuple[str, _Family, str, Callable[[Any], float]], ...] = (
    (
        "gourmet_stream_connections",
        CounterMetricFamily,
        "Client connections accepted by the stream.",
        lambda counts: counts.connections,
    ),
    (
        "gourmet_stream_active_connections",
        GaugeMetricFamily,
        "Client connections of the stream open now.",
        lambda counts: counts.active,
    ),
    (
        "gourmet_stream_failed_connections",
        CounterMetricFamily,
        "Client connections closed because no server could be connected to.",
        lambda counts: counts.failed,
    ),
    (
        "gourmet_stream_received_bytes",
        CounterMetricFamily,
        "Bytes received from the stream's clients.",
        lambda counts: counts.received,
    ),
    (
        "gourmet_stream_sent_bytes",
        CounterMetricFamily,
        "Bytes sent to the stream's clients.",
        lambda counts: counts.sent,
    ),
)


class StreamCollector(Collector):
    """
    Each TCP stream's connections and bytes, by ``stream`` (its ``listen``
    string) and ``upstream``; the bytes per server are in the upstream
    figures with the HTTP bodies'.
    """

    def __init__(self, streams: Callable[[], Iterable[StreamFactory]]) -> None:
        self.streams = streams

    def collect(self) -> Iterable[Metric]:
        rows = [
            ([stream.config.listen, stream.config.upstream], stream.counts)
            for stream in self.streams()
        ]
        return _families(["stream", "upstream"], _STREAM_FIGURES, rows)


class ClusterCollector(Collector):
    """
    This instance in ``[cluster]``: whether etcd is reachable, the
    instances listed, and the console's changes shared.
    """

    def __init__(self, cluster: ClusterMember) -> None:
        self.cluster = cluster

    def collect(self) -> Iterable[Metric]:
        cluster = self.cluster
        yield GaugeMetricFamily(
            "gourmet_cluster_connected",
            "1 while the cluster's keys in etcd are watched; 0 while etcd is"
            " unreachable and the last state known is kept.",
            value=float(cluster.connected),
        )
        yield GaugeMetricFamily(
            "gourmet_cluster_instances",
            "Instances whose heartbeat is in etcd, this one included.",
            value=len(cluster.state.instances),
        )
        yield GaugeMetricFamily(
            "gourmet_cluster_pending_changes",
            "Changes made in this console not written to etcd yet.",
            value=len(cluster.state.pending),
        )
        yield CounterMetricFamily(
            "gourmet_cluster_applied_changes",
            "Settings from other instances' consoles applied here.",
            value=cluster.applied,
        )
        yield CounterMetricFamily(
            "gourmet_cluster_lost_changes",
            "Changes made here that another instance's change overrode.",
            value=cluster.lost,
        )


def metrics_registry(
    upstreams: Mapping[str, Upstream],
    client_stats: Optional[ClientStats] = None,
    throttle: Optional[SignInThrottle] = None,
    *,
    pools: Optional[Mapping[str, ConnectionPool]] = None,
    listeners: Optional[Callable[[], Iterable[ListenerInfo]]] = None,
    instance: Optional[Instance] = None,
    certificates: Optional[Callable[[], Iterable[Certificate]]] = None,
    streams: Optional[Callable[[], Iterable[StreamFactory]]] = None,
    providers: Optional[Callable[[], Mapping[str, ProvidedUpstream]]] = None,
    cluster: Optional[ClusterMember] = None,
    workers: Optional[Callable[[], Optional[Mapping[str, Any]]]] = None,
) -> CollectorRegistry:
    """
    A registry of Gourmet's own (not the process-wide default one, so that
    two services in one process, as in tests, do not collide).
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(UpstreamCollector(upstreams, pools))
    if listeners is not None:
        registry.register(ListenerCollector(listeners))
    if instance is not None:
        registry.register(InstanceCollector(instance))
    if certificates is not None:
        registry.register(CertificateCollector(certificates))
    if streams is not None:
        registry.register(StreamCollector(streams))
    if providers is not None:
        registry.register(ProviderCollector(providers))
    if cluster is not None:
        registry.register(ClusterCollector(cluster))
    if workers is not None:
        registry.register(WorkerCollector(workers))
    if client_stats is not None:
        registry.register(ClientCollector(client_stats))
    if throttle is not None:
        registry.register(SignInCollector(throttle))
    return registry


class WorkerCollector(Collector):
    """
    The worker processes of ``[server] workers``: how many serve, the
    requests each sent upstream, and how many died and were replaced.
    """

    def __init__(self, workers: Callable[[], Optional[Mapping[str, Any]]]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        view = self._workers()
        if view is None:
            return
        serving = GaugeMetricFamily(
            "gourmet_workers", "Worker processes serving now.", labels=[]
        )
        serving.add_metric([], sum(1 for each in view["workers"] if each["ready"]))
        yield serving
        restarts = CounterMetricFamily(
            "gourmet_worker_restarts",
            "Worker processes that died and were started again.",
        )
        restarts.add_metric([], view["restarts"])
        yield restarts
        requests = CounterMetricFamily(
            "gourmet_worker_upstream_requests",
            "Requests each worker process sent to upstream servers.",
            labels=["worker"],
        )
        for each in view["workers"]:
            requests.add_metric([str(each["index"])], each["requests"])
        yield requests


class MetricsResource(Resource):
    """
    ``GET /metrics``: the registry in the format the scraper asks for.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self.registry)
