"""
The operator's view of an incident, as the console's API gives it, on the
reactor's clock (:mod:`tests.memory`): the current rate beside the
minute's, failures that reached clients told apart from those a retry hid,
Gourmet's own 502s, bytes, up and down since when, and the pool's
connections.
"""

from __future__ import annotations

from typing import Any, Dict

from prometheus_client.parser import text_string_to_metric_families

from gourmet import __version__ as gourmet_version
from gourmet.admin.views import upstream_view
from tests.configs import config
from tests.memory import Gourmets, MemoryGourmet, MemoryServer, get, ok, post

A = "192.0.2.10:8000"
B = "192.0.2.11:8000"


def view(gourmet: MemoryGourmet) -> Dict[str, Any]:
    """
    The upstream as ``GET /api/upstreams`` shows it now.
    """
    return upstream_view(gourmet.upstream(), [], gourmet.pool())


def server(document: Dict[str, Any], address: str) -> Dict[str, Any]:
    (found,) = [each for each in document["servers"] if each["address"] == address]
    return found


def status(gourmet: MemoryGourmet) -> int:
    """
    The status of one GET.
    """
    client = gourmet.connect()
    client.send(get())
    return client.response().status


def test_failures_a_retry_hid_are_told_from_those_clients_saw(
    gourmets: Gourmets,
) -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nb"
    a, b = MemoryServer(A), MemoryServer(B, then=closing)
    settings = "max_fail = 0"  # both stay up: each request tries both
    gourmet = gourmets(config([A, B], upstream_extra=settings), a, b)
    a.on_connect = "refuse"
    # Round robin starts with a: refused, so the request goes on to b.
    assert status(gourmet) == 200
    b.on_connect = "refuse"
    assert status(gourmet) == 502
    gourmet.advance(1)
    document = view(gourmet)
    # Three failures: one a retry hid (the client got b's 200), two in the
    # request whose client got Gourmet's 502.
    assert document["errors"] == {"last_minute": 3, "seen": 2, "hidden": 1}
    assert document["gourmet_statuses"] == {"502": 1}
    first, second = server(document, A), server(document, B)
    assert first["errors"] == {"seen": 1, "hidden": 1}
    assert second["errors"] == {"seen": 1, "hidden": 0}
    # The second request tried b first (round robin), then a: each server
    # failed one request that went on to the other, and a's refusal was
    # the one that became the 502.
    assert (first["retries"], second["retries"]) == (1, 1)
    assert first["gourmet_statuses"] == {"502": 1}
    assert second["gourmet_statuses"] == {}


def test_the_current_rate_shows_a_stop_the_minute_average_hides(
    gourmets: Gourmets,
) -> None:
    a = MemoryServer(A)
    gourmet = gourmets(config([A]), a)
    for _ in range(10):
        for _ in range(6):
            assert status(gourmet) == 200
        gourmet.advance(1)
    rate = view(gourmet)["rate"]
    assert rate == {"current": 6.0, "minute": 1.0, "peak": 6}
    # The server stops getting traffic: within five seconds the current
    # rate says so; the minute's average still remembers it.
    gourmet.advance(5)
    document = view(gourmet)
    assert document["rate"] == {"current": 0.0, "minute": 1.0, "peak": 6}
    assert server(document, A)["rate"]["current"] == 0.0


def test_bytes_each_way_and_the_pools_connections(gourmets: Gourmets) -> None:
    a = MemoryServer(A, ok(b"x" * 1000), None)
    gourmet = gourmets(config([A]), a)
    client = gourmet.connect()
    client.send(post(b"y" * 300))
    assert client.response().body == b"x" * 1000
    row = server(view(gourmet), A)
    assert row["bytes"] == {"sent": 300, "received": 1000}
    assert row["pool"] == {"idle": 1, "busy": 0}
    # The next request takes the kept connection, and a does not answer.
    waiting = gourmet.connect()
    waiting.send(get())
    assert server(view(gourmet), A)["pool"] == {"idle": 0, "busy": 1}


def test_up_since_and_down_since(gourmets: Gourmets) -> None:
    a, b = MemoryServer(A), MemoryServer(B)
    gourmet = gourmets(config([A, B], upstream_extra="fail_timeout = 10"), a, b)
    started = gourmet.reactor.seconds()
    gourmet.advance(100)
    assert server(view(gourmet), A)["up_since"] == started
    a.on_connect = "refuse"
    assert status(gourmet) == 200
    row = server(view(gourmet), A)
    assert (row["up_since"], row["down_since"]) == (None, started + 100)
    a.on_connect = "accept"
    gourmet.advance(10)
    # The trial request brings it back up, from now.
    assert [status(gourmet) for _ in range(2)] == [200, 200]
    row = server(view(gourmet), A)
    assert (row["up_since"], row["down_since"]) == (started + 110, None)


def test_the_metrics_say_the_same(gourmets: Gourmets) -> None:
    a, b = MemoryServer(A), MemoryServer(B, then=ok(b"b"))
    admin = '\n[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n'
    gourmet = gourmets(config([A, B]) + admin, a, b)
    a.on_connect = "refuse"
    assert status(gourmet) == 200
    client = gourmet.connect(gourmet.service.admin_site)
    client.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    response = client.response()
    assert response.status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.values()))): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }

    def value(name: str, *labels: str) -> float:
        return samples[(name, tuple(sorted(labels)))]

    assert value("gourmet_upstream_retries_total", "backend", A) == 1
    assert value("gourmet_upstream_errors_total", "backend", A, "hidden") == 1
    assert value("gourmet_upstream_errors_total", "backend", A, "seen") == 0
    assert value("gourmet_upstream_received_bytes_total", "backend", B) == 1
    assert value("gourmet_upstream_connections", "backend", B, "idle") == 1
    assert value("gourmet_client_connections", "admin") == 1
    assert value("gourmet_client_max_connections", "admin") == 256
    (info,) = [key for key in samples if key[0] == "gourmet_build_info"]
    assert gourmet_version in info[1]
