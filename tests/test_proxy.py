"""
The proxy end to end in this process: real upstream servers on loopback, a
real client, Gourmet in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.web.client import ResponseFailed

from tests.configs import LISTEN, config
from tests.rawhttp import sleep


async def json_body(response: Any) -> Any:
    return json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_reference_layout_routes_api_and_static(
    gourmet: Any, make_upstreams: Any
) -> None:
    api1, api2, static1 = make_upstreams("api1", "api2", "static1")
    running = await gourmet(
        f"""
[upstreams]
    [upstreams.backend]
        [[upstreams.backend.servers]]
            path="{api1.address}"
        [[upstreams.backend.servers]]
            path="{api2.address}"
    [upstreams.front]
        [[upstreams.front.servers]]
            path="{static1.address}"
[server]
    {LISTEN}
    [[server.locations]]
        location="api/(.+/?)"
        upstream="backend"
    [[server.locations]]
        location="static/.+/?"
        upstream="front"
"""
    )
    names = []
    for _ in range(4):
        response = await running.get("/api/users?x=1")
        assert response.code == 200
        body = await json_body(response)
        names.append(body["server"])
        assert body["uri"] == "/api/users?x=1"
    assert sorted(names) == ["api1", "api1", "api2", "api2"]
    response = await running.get("/static/app.js")
    assert (await json_body(response))["server"] == "static1"
    response = await running.get("/nowhere", headers={"Accept": "application/json"})
    assert response.code == 404
    assert (await json_body(response))["status"] == 404


@pytest_twisted.ensureDeferred
async def test_weights_5_1_1_split_50_10_10_smoothly(
    gourmet: Any, make_upstreams: Any
) -> None:
    servers = make_upstreams("a", "b", "c")
    running = await gourmet(config(servers, weights=[5, 1, 1]))
    order = []
    for _ in range(70):
        response = await running.get("/w")
        order.append((await json_body(response))["server"])
    assert Counter(order) == {"a": 50, "b": 10, "c": 10}
    assert "".join(order[:7]) == "aabacaa"


@pytest_twisted.ensureDeferred
async def test_status_headers_and_repeated_headers_pass_through(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config([server]))
    response = await running.get("/cookies")
    assert response.code == 201
    assert response.phrase == b"Made It"
    assert response.headers.getRawHeaders("set-cookie") == ["a=1", "b=2"]
    assert response.headers.getRawHeaders("x-custom") == ["kept"]
    assert response.headers.getRawHeaders("x-upstream") == ["one"]
    assert response.headers.getRawHeaders("server") != ["TwistedWeb"]
    assert await response.content() == b"cookies"


@pytest_twisted.ensureDeferred
async def test_a_form_post_and_its_query_reach_the_upstream_as_sent(
    gourmet: Any, make_upstreams: Any
) -> None:
    # Gourmet never parses a form or a query: not even a malformed one.
    (server,) = make_upstreams("one")
    running = await gourmet(config([server]))
    bodies = {
        "multipart/form-data; boundary=xyz": b"--xyz\r\nnot really multipart",
        "application/x-www-form-urlencoded": b"a=1&a=2&%zz=&b",
    }
    for content_type, body in bodies.items():
        response = await running.request(
            "POST",
            "/form?x=%zz&x=1;y",
            data=body,
            headers={"Content-Type": content_type},
        )
        assert response.code == 200
        answer = await json_body(response)
        assert answer["uri"] == "/form?x=%zz&x=1;y"
        assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest_twisted.ensureDeferred
async def test_post_body_and_forwarding_headers_reach_the_upstream(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config([server], server_extra="max_body_size = 0"))
    body = os.urandom(3 * 1024 * 1024 + 7)
    response = await running.request(
        "POST",
        "/upload?y=2",
        data=body,
        headers={
            "X-Forwarded-For": "198.51.100.7",
            "Connection": "X-Drop-Me",
            "X-Drop-Me": "secret",
            "Host": "shop.example",
        },
    )
    assert response.code == 200
    answer = await json_body(response)
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["method"] == "POST"
    seen = server.seen[-1]
    # The client is not a trusted proxy: its X-Forwarded-For is replaced.
    assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
    assert seen.header(b"x-real-ip") == b"127.0.0.1"
    assert seen.header(b"x-forwarded-proto") == b"http"
    assert seen.header(b"x-forwarded-host") == b"shop.example"
    assert seen.header(b"via") == b"1.1 gourmet"
    assert seen.header(b"host") == server.address.encode()
    assert seen.header(b"x-drop-me") is None


@pytest_twisted.ensureDeferred
async def test_preserve_host_passes_the_clients_host(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config([server], upstream_extra="preserve_host = true"))
    await (await running.get("/", headers={"Host": "shop.example"})).content()
    assert server.seen[-1].header(b"host") == b"shop.example"


@pytest_twisted.ensureDeferred
async def test_body_over_max_body_size_gets_413(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config([server], server_extra="max_body_size = 1000"))
    response = await running.request("POST", "/", data=b"x" * 1001)
    assert response.code == 413
    await response.content()
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_connections_to_upstreams_are_kept_alive(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config([server]))
    for _ in range(20):
        await (await running.get("/k")).content()
    assert len(server.seen) == 20
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_all_servers_down_gets_502_as_json_or_html(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    running = await gourmet(config([a, b], upstream_extra="panic_threshold = 0"))
    await a.stop()
    await b.stop()
    response = await running.get("/x", headers={"Accept": "application/json"})
    assert response.code == 502
    (request_id,) = response.headers.getRawHeaders("x-request-id")
    assert await json_body(response) == {
        "status": 502,
        "status_text": "Bad Gateway",
        "description": "The upstream server could not be reached.",
        "request_id": request_id,
    }
    # Both are marked down now: nothing is even tried.
    response = await running.get("/x", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.code == 503
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/html")
    assert b"503 Service Unavailable" in await response.content()


@pytest_twisted.ensureDeferred
async def test_failure_status_is_retried_elsewhere(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    extra = "fail_status = [503]\nretry_status = [503]"
    running = await gourmet(config([a, b], upstream_extra=extra))
    response = await running.get("/status/503")
    # a answered 503 and was taken out; b's 503 is the last try and passes.
    assert response.code == 503
    assert await response.content() == b"status 503 from b"
    assert [len(a.seen), len(b.seen)] == [1, 1]


@pytest_twisted.ensureDeferred
async def test_application_503s_take_no_server_out_by_default(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    running = await gourmet(config([a, b]))
    for _ in range(10):
        response = await running.get("/status/503")
        # The application's answer, not retried and not Gourmet's own 503.
        assert response.code == 503
        assert (await response.content()).startswith(b"status 503 from ")
    assert await running.answered_by("/hello", 4) == {"a": 2, "b": 2}
    assert [len(a.seen), len(b.seen)] == [7, 7]


@pytest_twisted.ensureDeferred
async def test_with_fail_status_the_panic_threshold_keeps_serving(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    running = await gourmet(config([a, b], upstream_extra="fail_status = [503]"))
    with capturedLogs() as events:
        for _ in range(2):
            assert (await running.get("/status/503")).code == 503
        # Both servers are down now; refusing everything is the one sure
        # outage, so both still take requests.
        assert await running.answered_by("/hello", 4) == {"a": 2, "b": 2}
    upstream = running.upstream("backend")
    assert [server.health.state.value for server in upstream.servers] == [
        "down",
        "down",
    ]
    said = [formatEvent(event) for event in events if "upstream_panic" in event]
    assert said == [
        "upstream backend in panic: 0 of 2 servers healthy, fewer than 50%:"
        " balancing over all of them"
    ]


@pytest_twisted.ensureDeferred
async def test_retry_status_tries_another_server_within_tries(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b, c = make_upstreams("a", "b", "c")
    extra = "retry_status = [503]\ntries = 2"
    running = await gourmet(config([a, b, c], upstream_extra=extra))
    response = await running.get("/status/503")
    assert response.code == 503
    await response.content()
    # Two tries in all; the second answer goes to the client.
    assert sorted([len(a.seen), len(b.seen), len(c.seen)]) == [0, 1, 1]
    # A retried status is not a failure unless fail_status says so.
    upstream = running.upstream("backend")
    assert len(upstream.candidates()) == 3
    assert sum(server.failures for server in upstream.servers) == 0


@pytest_twisted.ensureDeferred
async def test_post_is_not_replayed_after_reaching_a_server(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    running = await gourmet(config([a, b]))
    response = await running.request("POST", "/status/502", data=b"pay once")
    assert response.code == 502
    assert len(a.seen) + len(b.seen) == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.ensureDeferred
async def test_client_disconnects_close_upstream_connections(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("one")
    running = await gourmet(config([server]))
    request = b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n"
    await (await running.get("/warm")).content()
    before = _open_fds()
    rounds = 1000
    for _ in range(rounds):
        client = socket.create_connection(("127.0.0.1", running.port))
        client.sendall(request)
        client.setblocking(False)
        received = b""
        while len(received) < 1000:
            await sleep(0.0005)
            with contextlib.suppress(BlockingIOError):
                received += client.recv(65536)
        client.close()
    for _ in range(200):
        if server.streams_cut == rounds:
            break
        await sleep(0.01)
    assert server.streams_cut == rounds
    assert running.upstream("backend").servers[0].active == 0
    await sleep(0.05)
    assert _open_fds() <= before + 2


@pytest_twisted.ensureDeferred
async def test_upstream_read_timeout_gets_504(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("slow")
    running = await gourmet(config([server], upstream_extra="read_timeout = 0.3"))
    response = await running.get("/slow/5", headers={"Accept": "application/json"})
    assert response.code == 504
    assert (await json_body(response))["status_text"] == "Gateway Timeout"


@pytest_twisted.ensureDeferred
async def test_upstream_dying_mid_response_never_looks_complete(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("dies")
    running = await gourmet(config([server]))
    response = await running.get("/big/50000000")
    assert response.code == 200
    received = []

    def collect(data: bytes) -> None:
        received.append(len(data))
        if len(received) == 1:
            reactor.callLater(0, lambda: Deferred.fromCoroutine(server.stop()))

    with pytest.raises(ResponseFailed):
        await treq.collect(response, collect)
    assert 0 < sum(received) < 50_000_000
