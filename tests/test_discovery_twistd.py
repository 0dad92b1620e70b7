"""
Service discovery through a real ``twistd gourmet``: servers listed in a
file that an operator edits (inotify) join and leave the upstream while
requests run, none of which fails, and a broken edit changes nothing but
says why; a provider and a balancer written outside Gourmet's package
(``examples/plugins``) load by name from the configuration.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred

from tests.configs import ADMIN_LISTEN, LISTEN
from tests.processes import Twistd, start_twistd
from tests.rawhttp import sleep
from tests.test_proxy import json_body
from tests.upstreams import UpstreamServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "plugins"


def gourmet_config(upstream: str) -> str:
    return (
        f"[upstreams.api]\n{upstream}\n"
        f"[server]\n{LISTEN}\n"
        '[[server.locations]]\nlocation = "^/"\nupstream = "api"\n'
        f"[admin]\nlisten = '{ADMIN_LISTEN}'\n[log]\naccess_log = 'off'\n"
    )


def replace(path: Path, text: str) -> None:
    """
    Write ``path`` as editors and deploy tools do: a new file renamed over
    the old one.
    """
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def listing(*servers: UpstreamServer) -> str:
    return "".join(f'[[servers]]\npath = "{each.address}"\n' for each in servers)


class Traffic:
    """
    Requests one after another on ``clients`` loops until stopped: which
    server answered each, and anything that was not a 200.
    """

    def __init__(self, gourmet: Twistd, clients: int = 2) -> None:
        self.gourmet = gourmet
        self.answered: Counter[str] = Counter()
        self.failures: List[Any] = []
        self.running = True
        self.loops = [Deferred.fromCoroutine(self._loop()) for _ in range(clients)]

    async def _loop(self) -> None:
        while self.running:
            try:
                response = await self.gourmet.get("/")
                if response.code != 200:
                    self.failures.append((response.code, await response.text()))
                    continue
                self.answered[(await json_body(response))["server"]] += 1
            except Exception as error:  # any failure a client would see
                self.failures.append(repr(error))

    async def stop(self) -> None:
        self.running = False
        for loop in self.loops:
            await loop


async def until(what: str, condition: Callable[[], bool], seconds: float) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        await sleep(0.02)
    return time.monotonic() - began


async def api(gourmet: Twistd) -> Dict[str, Any]:
    response = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams/api", pool=gourmet.pool
    )
    return dict(await response.json())


async def gourmet_with(
    tmp_path: Path, processes: List[Twistd], upstream: str
) -> Twistd:
    """
    ``twistd gourmet`` running with ``upstream``'s keys in
    ``[upstreams.api]``, its console up.
    """
    return await start_twistd(tmp_path, processes, gourmet_config(upstream))


@pytest_twisted.ensureDeferred
async def test_servers_edited_in_a_file_join_and_leave_with_no_request_lost(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    servers = tmp_path / "servers.toml"
    servers.write_text(listing(a))
    gourmet = await gourmet_with(
        tmp_path, processes, 'provider = "file"\nfile = "servers.toml"'
    )
    traffic = Traffic(gourmet)
    try:
        await until("a answers", lambda: traffic.answered["a"] > 0, 10)
        replace(servers, listing(a, b))
        # inotify: the new server takes requests well within a second.
        joined = await until("b answers", lambda: traffic.answered["b"] > 0, 5)
        assert joined < 1.0, joined

        replace(servers, listing(b))
        await sleep(0.5)
        left = traffic.answered["a"]
        await until("more requests to b", lambda: traffic.answered["b"] > 50, 10)
        assert traffic.answered["a"] == left

        # A broken edit: the servers stay, and the console says why.
        replace(servers, listing(b) + '[[servers]]\npath = "ftp://x"\n')
        await until(
            "the error shown",
            lambda: "servers[1].path" in gourmet.stderr.read_text(),
            5,
        )
        view = await api(gourmet)
        assert "servers[1].path" in view["provider"]["last_error"]
        assert [each["address"] for each in view["servers"]] == [b.address]
        before = traffic.answered["b"]
        await until("b still answers", lambda: traffic.answered["b"] > before + 20, 10)
    finally:
        await traffic.stop()
    assert traffic.failures == []
    assert view["provider"]["name"] == "file"
    assert view["provider"]["updates"] == 3


@pytest_twisted.ensureDeferred
async def test_a_plugins_provider_and_balancer_load_by_name(
    tmp_path: Path,
    processes: List[Twistd],
    make_upstreams: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = make_upstreams("a", "b")
    path = os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    gourmet = await gourmet_with(
        tmp_path,
        processes,
        'provider = "listed"\nbalancer = "first_up"\n'
        f'addresses = ["{a.address}", "{b.address}"]',
    )
    answered: Counter[str] = Counter()
    for _ in range(10):
        response = await gourmet.get("/")
        answered[(await json_body(response))["server"]] += 1
    # first_up: every request to the first server while it is up.
    assert answered == {"a": 10}
    view = await api(gourmet)
    assert view["provider"]["name"] == "listed"
    assert [each["found"] for each in view["servers"]] == [
        {"listed": "0"},
        {"listed": "1"},
    ]
    log = gourmet.stderr.read_text()
    assert "provider 'listed' from a plugin" in log
    assert "balancer 'first_up' from a plugin" in log
