"""
What Gourmet does when its upstream servers are slow, gone or unreachable,
in memory (:mod:`tests.memory`): the keep-alive timeout of pooled
connections, the response deadlines, passive health's ``fail_timeout``,
the retry of a request sent on a connection the server had closed, and
the connect timeout; each timed to the deadline on the reactor's clock,
with no sleep.
"""

from __future__ import annotations

from typing import List, Tuple

from tests.configs import config
from tests.memory import (
    OK,
    Client,
    Gourmets,
    MemoryGourmet,
    MemoryServer,
    UpstreamPeer,
    close,
    get,
    ok,
    post,
)

A = "192.0.2.10:8000"
B = "192.0.2.11:8000"


def proxy(
    gourmets: Gourmets, *servers: MemoryServer, settings: str = ""
) -> MemoryGourmet:
    """
    Gourmet in front of ``servers``, one upstream with those settings.
    """
    addresses = [server.address for server in servers]
    return gourmets(config(addresses, upstream_extra=settings), *servers)


def answered(gourmet: MemoryGourmet, count: int) -> List[bytes]:
    """
    The bodies of ``count`` GETs sent one after the other on one client
    connection (the servers answer with their names).
    """
    client = gourmet.connect()
    bodies = []
    for _ in range(count):
        client.send(get())
        bodies.append(client.response().body)
    return bodies


def log_fields(line: str) -> str:
    """
    The upstreams and their statuses in an access log line.
    """
    fields = line.split()
    return " ".join(
        f for f in fields if f.startswith(("upstream=", "upstream_status="))
    )


# -- pooled connections ---------------------------------------------------------


def test_an_idle_upstream_connection_is_closed_after_keepalive_timeout(
    gourmets: Gourmets,
) -> None:
    server = MemoryServer(A)
    gourmet = proxy(gourmets, server, settings="keepalive_timeout = 60")
    pool = gourmet.pool()
    client = gourmet.connect()
    client.send(get())
    assert client.response().status == 200
    (first,) = server.connections
    gourmet.advance(59.9)
    assert not first.closed and pool.idle_count() == 1
    gourmet.advance(0.1)
    assert first.closed and pool.idle_count() == 0
    # The next request opens a new connection; used again 30 s later, its
    # idle time starts again then.
    client.send(get())
    gourmet.advance(30)
    client.send(get())
    assert [client.response().status for _ in range(2)] == [200, 200]
    _, second = server.connections
    assert len(second.requests) == 2
    gourmet.advance(59.9)
    assert not second.closed and pool.idle_count() == 1
    gourmet.advance(0.1)
    assert second.closed and pool.idle_count() == 0


def test_idle_connections_beyond_keepalive_close_after_a_second(
    gourmets: Gourmets,
) -> None:
    # A burst's responses come back together, just before its clients'
    # next requests: the surplus stays for SURPLUS_GRACE, then the least
    # recently used of it closes.
    server = MemoryServer(A, then=None)
    gourmet = proxy(gourmets, server, settings="keepalive = 2")
    pool = gourmet.pool()
    clients = [gourmet.connect() for _ in range(3)]
    for client in clients:
        client.send(get())
    gourmet.advance(0)
    assert len(server.connections) == 3
    for peer in server.connections:
        peer.write(OK)
    gourmet.flush()
    assert [client.response().status for client in clients] == [200] * 3
    assert pool.idle_count() == 3
    # Taken again within the second: no new connection.
    clients[0].send(get())
    gourmet.advance(0)
    server.connections[-1].write(OK)
    gourmet.flush()
    assert clients[0].response().status == 200
    assert len(server.connections) == 3
    gourmet.advance(0.9)
    assert pool.idle_count() == 3
    gourmet.advance(0.1)
    assert pool.idle_count() == 2
    assert [peer.closed for peer in server.connections] == [True, False, False]


# -- response deadlines --------------------------------------------------------


def test_no_response_head_within_header_timeout_is_504(gourmets: Gourmets) -> None:
    server = MemoryServer(A, then=None)
    gourmet = proxy(gourmets, server, settings="header_timeout = 30\nread_timeout = 60")
    client = gourmet.connect()
    client.send(get())
    gourmet.advance(29.9)
    assert client.received == b""
    gourmet.advance(0.1)
    response = client.response()
    assert response.status == 504
    assert response.header(b"server") == b"Gourmet"
    # The connection that never answered is dropped, not pooled.
    (connection,) = server.connections
    assert connection.closed and gourmet.pool().idle_count() == 0
    assert log_fields(gourmet.access_log()[-1]) == f"upstream={A} upstream_status=504"
    # The client's connection is fine for the next request.
    assert not client.closed


def test_a_head_trickling_in_is_504_at_header_timeout(gourmets: Gourmets) -> None:
    server = MemoryServer(A, then=None)
    gourmet = proxy(gourmets, server, settings="header_timeout = 30\nread_timeout = 5")
    client = gourmet.connect()
    client.send(get())
    (connection,) = server.connections
    # Never silent for read_timeout, never done either.
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: ....................":
        gourmet.advance(1)
        if client.received:
            break
        connection.write(bytes([byte]))
    assert gourmet.reactor.seconds() == 30
    assert client.response().status == 504


def test_a_stall_after_the_head_cuts_the_response_at_read_timeout(
    gourmets: Gourmets,
) -> None:
    server = MemoryServer(
        A, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    gourmet = proxy(gourmets, server, settings="read_timeout = 30")
    client = gourmet.connect()
    client.send(get())
    gourmet.advance(29.9)
    assert not client.closed
    gourmet.advance(0.1)
    # Cut short: the client cannot take it for the whole response.
    assert client.closed
    response = client.response()
    assert (response.status, response.body) == (200, b"0123456789")
    assert not response.complete
    (connection,) = server.connections
    assert connection.closed
    assert gourmet.upstream().servers[0].active == 0


def test_a_get_the_first_server_is_silent_on_goes_to_the_next(
    gourmets: Gourmets,
) -> None:
    a, b = MemoryServer(A, then=None), MemoryServer(B, then=ok(b"b"))
    gourmet = proxy(gourmets, a, b, settings="read_timeout = 30")
    client = gourmet.connect()
    client.send(get())
    assert len(a.requests) == 1 and b.requests == []
    gourmet.advance(30)
    assert client.response().body == b"b"
    line = gourmet.access_log()[-1]
    assert log_fields(line) == f"upstream={A},{B} upstream_status=504,200"


# -- passive health: fail_timeout ------------------------------------------------


def test_a_server_out_after_a_failure_gets_one_trial_after_fail_timeout(
    gourmets: Gourmets,
) -> None:
    a, b = MemoryServer(A, then=ok(b"a")), MemoryServer(B, then=ok(b"b"))
    gourmet = proxy(gourmets, a, b, settings="fail_timeout = 10")
    server_a = gourmet.upstream().server(A)
    a.on_connect = "refuse"
    # a is first in the round: its refusal sends the request to b.
    assert answered(gourmet, 1) == [b"b"]
    assert a.attempts == 1 and server_a.health.state.value == "down"
    a.on_connect = "accept"
    gourmet.advance(9.9)
    assert answered(gourmet, 6) == [b"b"] * 6
    assert a.attempts == 1
    gourmet.advance(0.1)
    # fail_timeout has passed: one trial request, and while it is under
    # way no other request goes to a.
    a.script = [None]
    clients = [gourmet.connect() for _ in range(4)]
    for client in clients:
        client.send(get())
    assert len(a.requests) == 1
    (waiting,) = [client for client in clients if not client.received]
    assert [c.response().body for c in clients if c is not waiting] == [b"b"] * 3
    (trial,) = a.connections
    trial.write(ok(b"a"))
    gourmet.flush()
    assert waiting.response().body == b"a"
    assert server_a.health.state.value == "up"
    assert sorted(answered(gourmet, 4)) == [b"a", b"a", b"b", b"b"]


def test_a_failed_trial_keeps_the_server_out_for_another_fail_timeout(
    gourmets: Gourmets,
) -> None:
    a, b = MemoryServer(A), MemoryServer(B, then=ok(b"b"))
    gourmet = proxy(gourmets, a, b, settings="fail_timeout = 10")
    a.on_connect = "refuse"
    assert answered(gourmet, 1) == [b"b"]
    gourmet.advance(10)
    assert answered(gourmet, 2) == [b"b", b"b"]
    assert a.attempts == 2
    gourmet.advance(9.9)
    assert answered(gourmet, 4) == [b"b"] * 4
    assert a.attempts == 2
    gourmet.advance(0.1)
    assert answered(gourmet, 2) == [b"b", b"b"]
    assert a.attempts == 3


def test_every_server_down_is_503_without_connection_attempts(
    gourmets: Gourmets,
) -> None:
    a, b = MemoryServer(A), MemoryServer(B)
    a.on_connect = b.on_connect = "refuse"
    # With the panic threshold off: all down means nothing is tried.
    gourmet = proxy(gourmets, a, b, settings="fail_timeout = 10\npanic_threshold = 0")

    def burst(count: int) -> List[int]:
        """
        The statuses of ``count`` requests arriving together.
        """
        clients: List[Client] = [gourmet.connect() for _ in range(count)]
        for client in clients:
            client.write(get())
        gourmet.flush()
        return [client.response().status for client in clients]

    # The first request finds both down, and marks them so.
    assert burst(1) == [502]
    assert (a.attempts, b.attempts) == (1, 1)
    assert burst(100) == [503] * 100
    gourmet.advance(9.9)
    assert burst(100) == [503] * 100
    assert (a.attempts, b.attempts) == (1, 1)
    # After fail_timeout, one trial request per server: no storm.
    gourmet.advance(0.1)
    assert burst(100) == [502] * 2 + [503] * 98
    assert (a.attempts, b.attempts) == (2, 2)


# -- a kept connection the server closed -------------------------------------------


def test_a_get_on_a_connection_the_server_closed_is_sent_again(
    gourmets: Gourmets,
) -> None:
    server = MemoryServer(A, OK, close, OK)
    gourmet = proxy(gourmets, server)
    client = gourmet.connect()
    for _ in range(2):
        client.send(get())
        response = client.response()
        assert (response.status, response.body) == (200, b"ok")
    # The second request went on the kept connection, found it closed, and
    # went again, once, on a new one: the same request.
    first, second = server.connections
    assert len(first.requests) == 2 and second.requests == [first.requests[1]]
    upstream_server = gourmet.upstream().servers[0]
    assert upstream_server.failures == 0 and upstream_server.active == 0


def test_a_post_on_a_connection_the_server_closed_is_not_sent_again(
    gourmets: Gourmets,
) -> None:
    server = MemoryServer(A, OK, close, OK)
    gourmet = proxy(gourmets, server)
    client = gourmet.connect()
    client.send(get())
    assert client.response().status == 200
    client.send(post(b"pay once"))
    # It reached the server, which may have acted on it: never twice.
    assert client.response().status == 502
    assert [r.endswith(b"pay once") for r in server.requests] == [False, True]
    assert len(server.connections) == 1


def test_a_get_sent_again_that_fails_again_is_502(gourmets: Gourmets) -> None:
    server = MemoryServer(A, OK, close, close, OK)
    gourmet = proxy(gourmets, server)
    client = gourmet.connect()
    client.send(get())
    client.send(get())
    assert client.response().status == 200
    # The new connection closing too is the server failing, not a stale
    # connection: the request is not sent a third time.
    assert client.response().status == 502
    assert len(server.requests) == 3
    assert gourmet.upstream().servers[0].failures == 1


def test_a_get_is_sent_again_on_a_new_connection_when_every_kept_one_is_stale(
    gourmets: Gourmets,
) -> None:
    """
    A server that restarted closed all its kept connections, and Gourmet
    has not seen it yet: a GET is still answered.
    """
    server = MemoryServer(A)
    gourmet = proxy(gourmets, server)
    first, second = gourmet.connect(), gourmet.connect()
    first.write(get())
    second.write(get())
    gourmet.flush()
    assert [first.response().status, second.response().status] == [200, 200]
    assert gourmet.pool().idle_count() == 2
    kept = list(server.connections)

    def restarted(peer: UpstreamPeer) -> None:
        if peer in kept:
            peer.close()
        else:
            peer.write(OK)

    server.then = restarted
    first.send(get())
    assert first.response().status == 200
    assert gourmet.upstream().servers[0].failures == 0


def test_a_post_goes_to_the_next_server_only_if_it_never_reached_the_first(
    gourmets: Gourmets,
) -> None:
    def post_once(on_connect: str) -> Tuple[int, MemoryServer, MemoryServer]:
        """
        The status of a POST that a, first in the round, fails (by
        ``on_connect``, or by closing once it has read the request), and
        both servers.
        """
        a, b = MemoryServer(A, close), MemoryServer(B)
        a.on_connect = on_connect
        client = proxy(gourmets, a, b).connect()
        client.send(post(b"pay once"))
        return client.response().status, a, b

    # a read the POST and closed: it may have acted on it.
    status, a, b = post_once("accept")
    assert (status, len(a.requests), len(b.requests)) == (502, 1, 0)
    # a refused the connection: the POST never reached it.
    status, a, b = post_once("refuse")
    assert (status, a.attempts, len(b.requests)) == (200, 1, 1)


# -- connecting --------------------------------------------------------------------


def test_a_server_that_does_not_connect_in_time_is_skipped(
    gourmets: Gourmets,
) -> None:
    a, b = MemoryServer(A), MemoryServer(B, then=ok(b"b"))
    a.on_connect = "hang"
    gourmet = proxy(gourmets, a, b, settings="connect_timeout = 5")
    client = gourmet.connect()
    client.send(get())
    gourmet.advance(4.9)
    assert client.received == b"" and not a.hanging[0].stoppedConnecting
    gourmet.advance(0.1)
    assert client.response().body == b"b"
    # Gave up on the attempt: the connection will not turn up later.
    assert a.hanging[0].stoppedConnecting
    line = gourmet.access_log()[-1]
    assert log_fields(line) == f"upstream={A},{B} upstream_status=504,200"
    assert gourmet.upstream().server(A).health.last_error == "connect timed out"


def test_no_connection_within_connect_timeout_is_504(gourmets: Gourmets) -> None:
    server = MemoryServer(A)
    server.on_connect = "hang"
    gourmet = proxy(gourmets, server, settings="connect_timeout = 5")
    client = gourmet.connect()
    client.send(get())
    gourmet.advance(4.9)
    assert client.received == b""
    gourmet.advance(0.1)
    assert client.response().status == 504
    assert server.hanging[0].stoppedConnecting


def test_a_refused_connection_is_502(gourmets: Gourmets) -> None:
    server = MemoryServer(A)
    server.on_connect = "refuse"
    gourmet = proxy(gourmets, server)
    client = gourmet.connect()
    client.send(get())
    assert client.response().status == 502
    assert "connect failed" in gourmet.upstream().servers[0].health.last_error
