"""
Active health checks and slow start through a real ``twistd gourmet`` over
loopback: a server whose ``/health`` answers 503 while its other paths
answer 200 is taken out with no client traffic at all, comes back after
``rise`` good checks, the console's API and ``/metrics`` say why, and its
share of real requests then ramps over ``slow_start``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.configs import ADMIN_LISTEN, config
from tests.rawhttp import sleep

INTERVAL = 0.5
RISE = 2
FALL = 3
SLOW_START = 4.0
#: How far Gourmet's own timing may stray on a busy machine.
SLACK = 0.3


class Backend(Resource):
    """
    A server whose ``/health`` answers ``health`` and whose other paths
    answer 200 with its name; it counts both kinds of request.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.health = 200
        self.checks = 0
        self.requests = 0
        self.address = ""

    def render_GET(self, request: Any) -> bytes:
        if request.path == b"/health":
            self.checks += 1
            request.setResponseCode(self.health)
            return b"health"
        self.requests += 1
        return self.name.encode()


async def wait_for(
    what: str, read: Callable[[], Any], ok: Callable[[Any], bool], seconds: float
) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = await read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r}")
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_failing_health_endpoint_takes_a_server_out_and_slow_start_brings_it_back(
    twistd_on: Any,
) -> None:
    steady, flaky = Backend("steady"), Backend("flaky")
    ports = []
    for backend in (steady, flaky):
        site: Any = Site(backend)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        address: Any = port.getHost()
        backend.address = f"127.0.0.1:{address.port}"
    try:
        await _run(twistd_on, steady, flaky)
    finally:
        for port in ports:
            await maybeDeferred(port.stopListening)


async def _run(twistd_on: Any, steady: Backend, flaky: Backend) -> None:
    upstream = (
        f"slow_start = {SLOW_START}\n"
        "[upstreams.backend.health_check]\n"
        f'path = "/health"\ninterval = {INTERVAL}\ntimeout = 0.4\n'
        f"rise = {RISE}\nfall = {FALL}\n"
    )
    text = config([steady, flaky], upstream_extra=upstream)
    text += f"[admin]\nlisten = '{ADMIN_LISTEN}'\n[log]\naccess_log = 'off'\n"
    gourmet = await twistd_on(text)
    console = f"http://127.0.0.1:{gourmet.admin_port}"

    async def flaky_view() -> Dict[str, Any]:
        response = await treq.get(f"{console}/api/upstreams/backend", pool=gourmet.pool)
        servers = (await response.json())["servers"]
        (view,) = [each for each in servers if each["address"] == flaky.address]
        return view

    # Checked, and healthy, before any client asks anything.
    await wait_for(
        "checks passing",
        flaky_view,
        lambda view: (
            view["checks"]["checks"] >= 2
            and view["checks"]["last"].startswith("L7OK 200 in ")
        ),
        10,
    )
    # /health fails while every other path would still answer 200.
    flaky.health = 503
    failing_since = time.time()
    down = await wait_for(
        "taken out", flaky_view, lambda view: view["state"] == "down", 15
    )
    assert down["down_by"] == ["active"]
    assert down["checks"]["last"].startswith("L7STS 503 in ")
    assert down["checks"]["downs"] == 1
    took = down["checks"]["last_change"] - failing_since
    assert took <= (FALL + 1) * INTERVAL + SLACK, took
    # No client traffic: checks alone found it.
    assert flaky.requests == steady.requests == 0
    metrics = await treq.get(f"{console}/metrics", pool=gourmet.pool)
    text = (await metrics.content()).decode()
    labels = f'server="{flaky.address}",status="503",upstream="backend"'
    assert f'gourmet_upstream_check_last_seconds{{result="L7STS",{labels}}}' in text
    assert f'gourmet_upstream_check_up{{server="{flaky.address}"' in text

    # Back after rise good checks, then ramped up by slow start.
    flaky.health = 200
    healthy_since = time.time()
    up = await wait_for("back up", flaky_view, lambda view: view["state"] == "up", 15)
    back_at = up["checks"]["last_change"]
    assert back_at - healthy_since >= (RISE - 1) * INTERVAL * 0.9
    assert back_at - healthy_since <= (RISE + 1) * INTERVAL + SLACK
    assert up["checks"]["last"].startswith("L7OK 200 in ")
    assert up["checks"]["downtime"] > 0
    assert up["slow_start"] is not None and up["slow_start"] < 1

    answered: List[Tuple[float, str]] = []
    while time.time() < back_at + SLOW_START + 1.5:
        response = await gourmet.get("/anything")
        answered.append((time.time() - back_at, (await response.content()).decode()))
    assert (await flaky_view())["slow_start"] is None

    def share(start: float, end: float) -> float:
        names = [name for when, name in answered if start <= when < end]
        assert len(names) >= 20, (start, end, len(names))
        return names.count("flaky") / len(names)

    # Two servers of weight 1: full share 1/2, ramping linearly from 5%.
    first, last, after = (
        share(0, SLOW_START / 4),
        share(SLOW_START * 3 / 4, SLOW_START),
        share(SLOW_START + 0.2, SLOW_START + 1.5),
    )
    assert first < 0.2, answered
    assert 0.25 < last < 0.6, answered
    assert first < last
    assert 0.4 <= after <= 0.6, answered
