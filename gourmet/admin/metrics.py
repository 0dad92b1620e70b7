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

from typing import Iterable, Mapping, Optional

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

from gourmet.admin.throttle import SignInThrottle
from gourmet.frontend.channel import ClientStats
from gourmet.upstream.health import Health
from gourmet.upstream.state import Upstream

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "failed")


class UpstreamCollector(Collector):
    """
    Every upstream's and server's figures, as metric families.
    """

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = upstreams

    def collect(self) -> Iterable[Metric]:
        labels = ["upstream", "server"]
        requests = CounterMetricFamily(
            "gourmet_upstream_requests",
            "Requests sent to upstream servers, by status class of the answer "
            "(failed: no usable answer).",
            labels=[*labels, "code"],
        )
        failures = CounterMetricFamily(
            "gourmet_upstream_failures",
            "Failures counted against servers by passive health.",
            labels=labels,
        )
        active = GaugeMetricFamily(
            "gourmet_upstream_active_requests", "Requests in flight.", labels=labels
        )
        up = GaugeMetricFamily(
            "gourmet_upstream_server_up",
            "1 when passive health lets the server take requests, else 0.",
            labels=labels,
        )
        weight = GaugeMetricFamily(
            "gourmet_upstream_server_weight",
            "The weight balancers use now (0 while draining or disabled).",
            labels=labels,
        )
        configured = GaugeMetricFamily(
            "gourmet_upstream_server_configured_weight",
            "The weight in the configuration.",
            labels=labels,
        )
        for upstream in self.upstreams.values():
            for server in upstream.servers:
                values = [upstream.name, server.name]
                for code in _STATUS_CLASSES:
                    count = server.stats.statuses.get(code, 0)
                    requests.add_metric([*values, code], count)
                failures.add_metric(values, server.failures)
                active.add_metric(values, server.active)
                healthy = server.health.state is not Health.DOWN
                up.add_metric(values, 1 if healthy else 0)
                weight.add_metric(values, server.weight)
                configured.add_metric(values, server.configured_weight)
        yield from (requests, failures, active, up, weight, configured)
        yield self._panics()
        yield self._response_times()

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


def metrics_registry(
    upstreams: Mapping[str, Upstream],
    client_stats: Optional[ClientStats] = None,
    throttle: Optional[SignInThrottle] = None,
) -> CollectorRegistry:
    """
    A registry of Gourmet's own (not the process-wide default one, so that
    two services in one process, as in tests, do not collide).
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(UpstreamCollector(upstreams))
    if client_stats is not None:
        registry.register(ClientCollector(client_stats))
    if throttle is not None:
        registry.register(SignInCollector(throttle))
    return registry


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
