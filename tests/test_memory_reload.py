"""
What a reload does to the running state, in memory (:mod:`tests.memory`):
servers that stay keep their health and the operator's settings, servers
removed finish their requests and lose their kept connections, and new
limits, header rules and trusted proxies apply to the next request.
"""

from __future__ import annotations

from gourmet.config.load import parse_config
from gourmet.reload import Reload
from tests.configs import config
from tests.memory import (
    CLIENT_HOST,
    Gourmets,
    MemoryGourmet,
    MemoryServer,
    get,
    ok,
    post,
)

A = "192.0.2.10:8000"
B = "192.0.2.11:8000"
C = "192.0.2.12:8000"


def reload(gourmet: MemoryGourmet, text: str) -> None:
    """
    Apply ``text`` as a reload of its file would.
    """
    change = Reload(gourmet.service, parse_config(text, "memory.toml"))
    change.prepare()
    change.apply()
    gourmet.flush()


def bodies(gourmet: MemoryGourmet, count: int) -> list[bytes]:
    client = gourmet.connect()
    answers = []
    for _ in range(count):
        client.send(get())
        answers.append(client.response().body)
    client.close()
    return answers


def test_a_removed_server_finishes_its_request_and_loses_its_connections(
    gourmets: Gourmets,
) -> None:
    a = MemoryServer(A, then=ok(b"a"))
    b = MemoryServer(B, None, then=ok(b"b"))  # b leaves the first unanswered
    gourmet = gourmets(config([A, B]), a, b)
    assert bodies(gourmet, 1) == [b"a"]
    waiting = gourmet.connect()
    waiting.send(get())
    assert len(b.requests) == 1
    assert bodies(gourmet, 2) == [b"a", b"b"]  # b's second connection
    pool = gourmet.pool()
    assert pool.connection_counts(gourmet.upstream().server(B).origin) == (1, 1)
    reload(gourmet, config([A, C]))
    # b's idle connection is closed at once; the busy one stays.
    assert pool.connection_counts(gourmet.upstream("backend").servers[0].origin) == (
        1,
        0,
    )
    (first, second) = b.connections
    assert (first.closed, second.closed) == (False, True)
    first.write(ok(b"late b"))
    gourmet.flush()
    assert waiting.response().body == b"late b"
    # Answered, b's connection is not kept: the server is gone.
    assert first.closed
    c = MemoryServer(C, then=ok(b"c"))
    gourmet.servers[C] = c
    assert sorted(bodies(gourmet, 4)) == [b"a", b"a", b"c", b"c"]


def test_a_server_that_stays_keeps_its_health_and_the_operators_weight(
    gourmets: Gourmets,
) -> None:
    a, b = MemoryServer(A, then=ok(b"a")), MemoryServer(B, then=ok(b"b"))
    gourmet = gourmets(config([A, B], upstream_extra="fail_timeout = 30"), a, b)
    b.on_connect = "refuse"
    # Round robin: a, then b, refused: the request goes on to a.
    assert bodies(gourmet, 2) == [b"a", b"a"]
    server_a = gourmet.upstream().server(A)
    server_a.set_weight(5)
    server_b = gourmet.upstream().server(B)
    assert server_b.health.state.value == "down"
    reload(gourmet, config([A, B], weights=[2, 4], upstream_extra="fail_timeout = 30"))
    upstream = gourmet.upstream()
    assert upstream.server(A) is server_a and upstream.server(B) is server_b
    assert (server_a.weight, server_a.configured_weight) == (5, 2)
    assert server_b.configured_weight == 4
    # Still down: the reload did not forget b's failure.
    assert server_b.health.state.value == "down"
    assert bodies(gourmet, 3) == [b"a"] * 3


def test_new_limits_apply_to_the_next_request(gourmets: Gourmets) -> None:
    a = MemoryServer(A, then=ok(b"a"))
    gourmet = gourmets(config([A]), a)
    kept = gourmet.connect()
    kept.send(post(b"x" * 2000))
    assert kept.response().status == 200
    reload(gourmet, config([A], server_extra="max_body_size = 1000"))
    # On the same kept connection, the next request meets the new limit.
    kept.send(post(b"x" * 2000))
    assert kept.response().status == 413


def test_a_removed_upstream_keeps_no_connection(gourmets: Gourmets) -> None:
    a, b = MemoryServer(A, then=ok(b"a")), MemoryServer(B, then=ok(b"b"))
    two = config([A]) + (
        f"\n[upstreams.other]\n[[upstreams.other.servers]]\npath = '{B}'\n"
    )
    two = two.replace(
        "[[server.locations]]",
        "[[server.locations]]\nlocation = '^/other'\nupstream = 'other'\n"
        "[[server.locations]]",
        1,
    )
    gourmet = gourmets(two, a, b)
    client = gourmet.connect()
    client.send(get(b"/other"))
    assert client.response().body == b"b"
    pool = gourmet.pool("other")
    assert pool.idle_count() == 1
    reload(gourmet, config([A]))
    assert pool.idle_count() == 0
    assert set(gourmet.service.upstreams) == {"backend"}
    client.send(get(b"/other"))
    assert client.response().body == b"a"


def test_reloads_leave_no_timer_behind(gourmets: Gourmets) -> None:
    a, b, c = (MemoryServer(x, then=ok(x.encode())) for x in (A, B, C))
    gourmet = gourmets(config([A, B]), a, b, c)
    files = [config([A, B]), config([A, C], weights=[3, 1])]
    bodies(gourmet, 4)
    timers = len(gourmet.reactor.getDelayedCalls())
    for number in range(20):
        reload(gourmet, files[number % 2])
        bodies(gourmet, 4)
    assert len(gourmet.reactor.getDelayedCalls()) == timers


def test_a_reload_changes_header_rules_and_whose_request_ids_are_kept(
    gourmets: Gourmets,
) -> None:
    a = MemoryServer(A)
    rules = 'request_headers = {{ set = {{ "X-Env" = "{}" }} }}\n'
    gourmet = gourmets(config([A]) + rules.format("staging"), a)
    kept = gourmet.connect()
    sent_id = b"X-Request-ID: lb-0042\r\n"
    kept.send(get(headers=sent_id))
    assert kept.response().status == 200
    assert b"X-Env: staging\r\n" in a.requests[-1]
    assert sent_id not in a.requests[-1]  # the client is no trusted proxy yet
    trusting = f'trusted_proxies = ["{CLIENT_HOST}"]'
    reload(gourmet, config([A], server_extra=trusting) + rules.format("prod"))
    # On the same kept connection, the next request meets the new rules.
    kept.send(get(headers=sent_id))
    response = kept.response()
    assert response.header(b"x-request-id") == b"lb-0042"
    assert b"X-Env: prod\r\n" in a.requests[-1]
    assert sent_id in a.requests[-1]
