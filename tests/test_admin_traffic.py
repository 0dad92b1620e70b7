"""
Changes made through the admin API steer real traffic: Gourmet in this
process, real upstream servers on loopback, the console on its own port.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Union

import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.web.http_headers import Headers

from gourmet.admin.auth import PasswordThreads
from gourmet.admin.passwords import hash_password
from tests.configs import ADMIN_LISTEN, config
from tests.rawhttp import sleep
from tests.test_admin_api import basic
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


@pytest_twisted.ensureDeferred
async def test_password_checks_do_not_stall_the_proxy(
    gourmet: Any, make_upstreams: Any
) -> None:
    """
    Wrong passwords are checked by scrypt in threads of their own: proxied
    requests go on meanwhile, and do not wait for the checks.
    """
    (server,) = make_upstreams("a")
    hashed = hash_password("the-right-one")
    running = await gourmet(
        config([server])
        + f'[log]\naccess_log = "off"\n[admin]\nlisten = "{ADMIN_LISTEN}"\n'
        + f'[admin.users]\nalice = "{hashed}"\n'
    )
    await (await running.get("/warm")).content()
    finished: List[str] = []

    async def guess(number: int) -> None:
        response = await treq.get(
            f"{running.admin_url}/api/upstreams",
            headers=Headers({"Authorization": [basic("alice", f"guess-{number}")]}),
            pool=running.pool,
        )
        await response.content()
        finished.append(str(response.code))

    async def proxied() -> None:
        response = await running.get("/x")
        await response.content()
        finished.append(f"proxied {response.code}")

    # Four guesses (under the five free ones): four scrypt runs, two at a
    # time, about 0.1 s; the proxied request takes a few milliseconds.
    guesses = [ensureDeferred(guess(number)) for number in range(4)]
    await sleep(0.005)  # the guesses are in the threads now
    await ensureDeferred(proxied())
    await gatherResults(guesses)
    assert finished[0] == "proxied 200", finished
    assert sorted(finished[1:]) == ["401"] * 4


def test_the_password_threads_stop_once_however_often_asked() -> None:
    """
    A stop after a stop (twistd's shutdown after a test's, say) is no error:
    Twisted's thread pool raises AlreadyQuit for a second stop.
    """
    threads = PasswordThreads()
    threads.startService()
    assert threads.pool.started
    threads.stopService()
    threads.stopService()
    assert not threads.pool.started
