"""
The client limits of ``[server]`` in memory (:mod:`tests.memory`): the
deadlines for the head and the body, the idle timeout of a kept-alive
connection and the number of connections, each timed to the deadline on
the reactor's clock, with no sleep.
"""

from __future__ import annotations

import json

import pytest

from tests.configs import config
from tests.memory import Gourmets, MemoryGourmet, MemoryServer, get, post

SERVER = "192.0.2.10:8000"


@pytest.fixture
def server() -> MemoryServer:
    return MemoryServer(SERVER)


def proxy(gourmets: Gourmets, server: MemoryServer, settings: str) -> MemoryGourmet:
    """
    Gourmet in front of ``server``, with those ``[server]`` settings.
    """
    return gourmets(config([server.address], server_extra=settings), server)


# -- the head ----------------------------------------------------------------


def test_an_unfinished_head_gets_408_at_header_timeout(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10")
    client = gourmet.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: exa")
    gourmet.advance(9.9)
    assert (client.received, client.closed) == (b"", False)
    gourmet.advance(0.1)
    client.assert_refused(408)
    assert server.attempts == 0


def test_a_head_trickling_in_gets_408_though_bytes_keep_coming(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10")
    client = gourmet.connect()
    client.send(b"GET / HTTP/1.1\r\n")
    for _ in range(9):
        gourmet.advance(1)
        client.send(b"X-Trickle: y\r\n")
    assert not client.closed
    # Ten seconds for the whole head, however busy the client looks.
    gourmet.advance(1)
    client.assert_refused(408)
    assert server.attempts == 0


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10")
    client = gourmet.connect()
    assert gourmet.service.site.open_connections == 1
    gourmet.advance(9.9)
    assert not client.closed
    gourmet.advance(0.1)
    # Nothing asked, nothing answered: a preconnecting browser is not
    # shown an error.
    assert client.received == b""
    assert client.closed
    assert gourmet.service.site.open_connections == 0


def test_a_connection_silent_after_a_blank_line_gets_408(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10")
    client = gourmet.connect()
    client.send(b"\r\n")
    gourmet.advance(10)
    client.assert_refused(408)


def test_header_timeout_starts_again_for_each_request(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10")
    client = gourmet.connect()
    # Idle for longer than the header timeout between requests: that is
    # not a slow head.
    for _ in range(2):
        client.send(get())
        assert client.response().status == 200
        gourmet.advance(30)
    assert not client.closed
    client.send(b"GET / HTTP/1.1\r\n")
    gourmet.advance(9.9)
    assert not client.closed
    gourmet.advance(0.1)
    client.assert_refused(408)
    assert len(server.requests) == 2


# -- the body ----------------------------------------------------------------

BODY_LIMITS = "header_timeout = 10\nbody_min_rate = 1024"


def test_a_body_slower_than_body_min_rate_gets_408(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, BODY_LIMITS)
    client = gourmet.connect()
    client.send(
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100000\r\n\r\n"
    )
    # 1000 bytes a second: close to 1024, but below it.  The rate is first
    # checked after a grace of header_timeout.
    for _ in range(9):
        gourmet.advance(1)
        client.send(b"x" * 1000)
    assert not client.closed
    gourmet.advance(1)
    client.assert_refused(408)
    assert server.attempts == 0


def test_a_body_that_stops_after_a_fast_start_gets_408_when_its_average_falls(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, BODY_LIMITS)
    client = gourmet.connect()
    client.send(
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100000\r\n\r\n"
        + b"x" * 20480
    )
    # 20480 bytes are 1024 bytes a second for 20 seconds, averaged since
    # the head: the body is on time until then, and late just after.
    gourmet.advance(20)
    assert not client.closed
    gourmet.advance(0.25)
    client.assert_refused(408)
    assert server.attempts == 0


def test_a_body_at_body_min_rate_reaches_the_upstream(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, BODY_LIMITS)
    client = gourmet.connect()
    body = b"y" * 2048 * 20
    request = post(body)
    head_length = len(request) - len(body)
    client.send(request[:head_length])
    # 2048 bytes a second for 20 seconds, past several checks of the rate.
    for second in range(20):
        gourmet.advance(1)
        client.send(body[second * 2048 : (second + 1) * 2048])
    assert client.response().status == 200
    (received,) = server.requests
    assert received.endswith(b"\r\n\r\n" + body)


# -- between requests ----------------------------------------------------------


def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "idle_timeout = 75")
    client = gourmet.connect()
    client.send(get())
    assert client.response().status == 200
    gourmet.advance(74.9)
    assert not client.closed
    gourmet.advance(0.1)
    # Closed without a word: the client asked for nothing.
    assert client.received == b""
    assert client.closed


def test_a_request_moves_the_idle_timeout(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "idle_timeout = 75")
    client = gourmet.connect()
    client.send(get())
    gourmet.advance(70)
    client.send(get())
    assert [client.response().status for _ in range(2)] == [200, 200]
    gourmet.advance(74.9)
    assert not client.closed
    gourmet.advance(0.1)
    assert client.closed


def test_a_response_slower_than_idle_timeout_is_not_cut_by_it(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    server.then = None  # the test answers
    gourmet = proxy(gourmets, server, "idle_timeout = 5")
    client = gourmet.connect()
    client.send(get())
    gourmet.advance(30)
    assert not client.closed
    (upstream,) = server.connections
    upstream.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
    gourmet.flush()
    assert client.response().body == b"slow"
    # The idle time starts once the response is sent.
    gourmet.advance(4.9)
    assert not client.closed
    gourmet.advance(0.1)
    assert client.closed


# -- connections -------------------------------------------------------------


def test_connections_over_max_connections_are_refused(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "max_connections = 3")
    held = [gourmet.connect() for _ in range(3)]
    extra = gourmet.connect()
    gourmet.flush()
    extra.assert_refused(503)
    assert gourmet.service.site.open_connections == 3
    held.pop().close()
    assert gourmet.service.site.open_connections == 2
    fresh = gourmet.connect()
    fresh.send(get())
    assert fresh.response().status == 200
    assert len(server.requests) == 1


# -- the admin console's listener ------------------------------------------------

ADMIN = (
    '\n[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n'
    'token = "a-token-of-twenty-chars"\nmax_connections = 2\n'
)


def console(gourmets: Gourmets, server: MemoryServer) -> MemoryGourmet:
    return gourmets(config([server.address]) + ADMIN, server)


def test_a_console_client_trickling_its_head_gets_408(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = console(gourmets, server)
    client = gourmet.connect(gourmet.service.admin_site)
    client.send(b"GET /api/upstreams HTTP/1.1\r\n")
    for _ in range(9):
        gourmet.advance(1)
        client.send(b"X")
    gourmet.advance(1)
    # [server] header_timeout (10 s) holds on the console too.
    client.assert_refused_in_json(408)


def test_a_huge_console_body_gets_413_before_credentials(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = console(gourmets, server)
    client = gourmet.connect(gourmet.service.admin_site)
    client.send(
        b"PATCH /api/upstreams/backend/servers/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
    )
    gourmet.flush()
    # At once, from the head alone: no byte of the body is read or kept.
    document = client.assert_refused_in_json(413)
    assert document["description"] == "body larger than 65536 bytes"


def test_console_connections_over_its_limit_are_refused_the_proxy_serves(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = console(gourmets, server)
    admin_site = gourmet.service.admin_site
    held = [gourmet.connect(admin_site) for _ in range(2)]
    extra = gourmet.connect(admin_site)
    gourmet.flush()
    extra.assert_refused_in_json(503)
    assert len(held) == admin_site.open_connections  # type: ignore[union-attr]
    proxied = gourmet.connect()
    proxied.send(get())
    assert proxied.response().status == 200


def test_each_listener_counts_its_connections_and_gourmets_own_answers(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    """
    The console's listeners panel: client connections against the limit,
    and what Gourmet refused or answered itself, per listener.
    """
    gourmet = console(gourmets, server)
    admin_site = gourmet.service.admin_site
    held = gourmet.connect()
    held.send(b"GET / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: x\r\n\r\n")
    gourmet.flush()
    held.assert_refused(400)
    idle = gourmet.connect()
    refused = gourmet.connect(admin_site)
    refused.send(b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 70000\r\n\r\n")
    gourmet.flush()
    refused.assert_refused_in_json(413)
    api = gourmet.connect(admin_site)
    api.send(b"GET /api/upstreams HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    gourmet.flush()
    response = api.response()
    assert response.status == 200
    proxy, admin = json.loads(response.body)["listeners"]
    assert idle is not None
    assert (proxy["name"], proxy["connections"], proxy["refusals"]) == (
        "proxy",
        1,
        {"400": 1},
    )
    assert (admin["name"], admin["connections"], admin["max_connections"]) == (
        "admin",
        1,
        2,
    )
    assert admin["refusals"] == {"413": 1}
