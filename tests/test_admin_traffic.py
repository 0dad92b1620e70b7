"""
Changes made through the admin API steer real traffic: Gourmet in this
process, real upstream servers on loopback, the console on its own port.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Union

import pytest_twisted
import treq

from tests.configs import ADMIN_LISTEN, config
from tests.rawhttp import sleep
from tests.upstreams import UpstreamServer

TOKEN = "a-token-of-twenty-chars"
HEADERS: Dict[Union[bytes, str], Union[bytes, str]] = {
    "Authorization": f"Bearer {TOKEN}",
    "Content-Type": "application/json",
}


#: The console with a token, and no access log.
ADMIN = f"""
[log]
access_log = "off"
[admin]
listen = "{ADMIN_LISTEN}"
token = "{TOKEN}"
"""


async def patch(running: Any, server: UpstreamServer, change: Any) -> Any:
    server_id = server.address.replace(":", "-")
    response = await treq.request(
        "PATCH",
        f"{running.admin_url}/api/upstreams/backend/servers/{server_id}",
        data=json.dumps(change).encode(),
        headers=HEADERS,
        pool=running.pool,
    )
    assert response.code == 200, await response.text()
    return await response.json()


@pytest_twisted.ensureDeferred
async def test_weight_3_to_1_splits_traffic_300_100(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    running = await gourmet(config([a, b]) + ADMIN)
    assert await running.answered_by("/x", 40) == {"a": 20, "b": 20}
    changed = await patch(running, a, {"weight": 3})
    assert (changed["weight"], changed["configured_weight"]) == (3, 1)
    answered = await running.answered_by("/x", 400)
    assert 285 <= answered["a"] <= 315, answered
    assert answered["a"] + answered["b"] == 400


@pytest_twisted.ensureDeferred
async def test_weight_0_lets_in_flight_requests_finish(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    running = await gourmet(config([a, b]) + ADMIN)
    # Round robin sends the first request to a, the second (slow) one to b.
    await running.answered_by("/x", 1)
    slow = running.get("/slow/0.5")
    for _ in range(100):
        if b.seen:
            break
        await sleep(0.01)
    assert b.seen, "the slow request did not reach b"
    await patch(running, b, {"weight": 0})
    assert await running.answered_by("/x", 20) == {"a": 20}
    response = await slow
    assert response.code == 200
    assert await response.text() == "late from b"
