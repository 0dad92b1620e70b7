"""
HTTP/2 to clients over TLS: Gourmet started in this process with a TLS
listener, real upstreams on loopback, and the h2 library as the client
(:mod:`tests.h2client`, in a thread, since the proxy and its upstreams
answer from this process's reactor).

What HTTP/1.1 clients are promised holds for each stream: routing,
balancing, streaming under the client's flow control, the limits and
checks of a request; and the HTTP/2 attacks the anchors defend against
(rapid reset, CONTINUATION floods, HPACK bombs, invalid pseudo-headers)
cost their own connection only.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.configs import config
from tests.conftest import RunningGourmet, listening_port
from tests.h2client import H2Client
from tests.test_tls_listeners import Authority
from tests.upstreams import UpstreamServer


async def start_h2(
    gourmet: Any,
    make_upstreams: Any,
    tmp_path: Path,
    names: Tuple[str, ...] = ("a",),
    server_extra: str = "",
) -> Tuple[List[UpstreamServer], RunningGourmet, int]:
    """
    Upstreams named ``names`` and Gourmet in front of them with a TLS
    listener for ``a.test``: the upstreams, Gourmet, and its TLS port.
    """
    Authority(tmp_path).issue("a", ["a.test"])
    servers = make_upstreams(*names)
    tls = (
        "tls_listen = ['tcp:0:interface=127.0.0.1']\n"
        f"{server_extra}\n"
        f"[[server.certificates]]\ncert = '{tmp_path}/a.pem'\n"
        f"key = '{tmp_path}/a.key'\n"
    )
    running = await gourmet(config(servers, server_extra=tls))
    (listener,) = [each for each in running.service.listeners if each.tls]
    return servers, running, listening_port(listener)


def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return deferToThread(function, *args)


@pytest_twisted.ensureDeferred
async def test_a_hundred_streams_on_one_connection_are_balanced(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    servers, _, port = await start_h2(gourmet, make_upstreams, tmp_path, ("a", "b"))

    def hundred() -> Any:
        client = H2Client(port)
        assert client.alpn == "h2"
        ids = [client.request(f"/n/{index}") for index in range(100)]
        answers = client.wait(ids)
        client.close()
        return answers

    answers = await in_thread(hundred)
    assert [each.status for each in answers.values()] == [200] * 100
    served = Counter(json.loads(each.body)["server"] for each in answers.values())
    assert served == {"a": 50, "b": 50}
    # Each stream got its own answer, and upstreams heard HTTPS over HTTP/2.
    uris = sorted(json.loads(each.body)["uri"] for each in answers.values())
    assert uris == sorted(f"/n/{index}" for index in range(100))
    seen = servers[0].seen[0]
    assert seen.header(b"x-forwarded-proto") == b"https"
    assert seen.header(b"via") == b"2 gourmet"
    assert seen.header(b"x-forwarded-host") == b"a.test"


@pytest_twisted.ensureDeferred
async def test_uploads_stream_and_a_body_over_the_limit_gets_413_on_its_stream(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    _, _, port = await start_h2(
        gourmet, make_upstreams, tmp_path, server_extra="max_body_size = '8m'"
    )
    body = bytes(range(256)) * (5 * 4096)  # 5 MiB, many windows' worth

    def upload() -> Any:
        client = H2Client(port)
        sent = client.request("/up", "POST", body=body)
        # Over the limit, with no length said: refused as the bytes pass it.
        big = client.request("/big", "POST", body=b"x" * (9 * 1024 * 1024))
        after = client.get("/after")
        answers = client.wait([sent, big])
        client.close()
        return answers[sent], answers[big], after

    sent, big, after = await in_thread(upload)
    assert sent.status == 200
    assert json.loads(sent.body)["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert big.status == 413
    assert after.status == 200
