"""
``balancer = "hash"`` end to end: requests through real loopback upstreams
keep to one server per key, and a TCP stream's clients per address.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, DefaultDict, Set

import pytest_twisted

from tests.configs import config
from tests.streams import TcpServer, greetings
from tests.test_proxy import json_body
from tests.test_streams import stream_config, stream_port


@pytest_twisted.ensureDeferred
async def test_each_key_keeps_to_one_server_and_no_key_goes_round_robin(
    gourmet: Any, make_upstreams: Any
) -> None:
    servers = make_upstreams("a", "b", "c")
    extra = 'balancer = "hash"\nhash_key = "header:X-User"'
    running = await gourmet(config(servers, upstream_extra=extra))
    seen: DefaultDict[str, Set[str]] = defaultdict(set)
    for _ in range(3):
        for user in range(30):
            response = await running.get("/", headers={"X-User": f"user{user}"})
            seen[f"user{user}"].add((await json_body(response))["server"])
    assert all(len(answered) == 1 for answered in seen.values())
    # Thirty keys reach every server.
    assert set().union(*seen.values()) == {"a", "b", "c"}
    without: Counter[str] = Counter()
    for _ in range(6):
        response = await running.get("/")
        without[(await json_body(response))["server"]] += 1
    assert without == {"a": 2, "b": 2, "c": 2}


@pytest_twisted.ensureDeferred
async def test_a_streams_client_keeps_to_one_server(gourmet: Any, started: Any) -> None:
    tcp = [started(TcpServer(greeting=name)) for name in (b"a", b"b", b"c")]
    extra = 'balancer = "hash"\nhash_key = "ip"'
    text = stream_config([server.address for server in tcp], upstream_extra=extra)
    running = await gourmet(text)
    seen = await greetings(stream_port(running), 9)
    # Every connection comes from 127.0.0.1: one server takes them all.
    assert list(seen.values()) == [9]
