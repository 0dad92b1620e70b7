"""
Gourmet run for months: a graceful stop on SIGTERM, a reload on SIGHUP
and from the console, and the access log reopened on SIGUSR1, each on a
real ``twistd -n gourmet`` with real upstreams on loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any, Collection, Dict, List

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers

from tests.configs import ADMIN_LISTEN as LISTEN
from tests.processes import Twistd, with_test_workers
from tests.processes import start_twistd as start
from tests.rawhttp import RawClient, sleep

TOKEN = "operations-token-of-some-length"


def authorized() -> Headers:
    return Headers({"Authorization": [f"Bearer {TOKEN}"]})


def config_text(
    servers: Dict[str, int], *, extra: str = "", locations: str = ""
) -> str:
    """
    One upstream ``b`` of ``servers`` (address: weight) at ``/``, and the
    console with a token.
    """
    text = "[upstreams.b]\n"
    for address, weight in servers.items():
        text += f"[[upstreams.b.servers]]\npath='{address}'\nweight={weight}\n"
    return with_test_workers(
        text
        + f"[server]\nlisten=['{LISTEN}']\n{extra}"
        + locations
        + "[[server.locations]]\nlocation='/'\nupstream='b'\n"
        + "[log]\naccess_log='access.log'\n"
        + f"[admin]\nlisten='{LISTEN}'\ntoken='{TOKEN}'\n"
    )


async def exited(gourmet: Twistd, within: float) -> int:
    """
    The exit status, waited for without blocking the reactor (the
    upstreams of the test run in it).
    """
    deadline = time.monotonic() + within
    while gourmet.process.poll() is None:
        assert time.monotonic() < deadline, gourmet.stderr.read_text()
        await sleep(0.05)
    return gourmet.process.returncode


async def stops_soon_after(gourmet: Twistd, signal_number: int) -> None:
    """
    Gourmet, sent ``signal_number``, exits with 0 within seconds, not after
    the requests in flight (which take 30 s).
    """
    started = time.monotonic()
    gourmet.process.send_signal(signal_number)
    assert await exited(gourmet, 10) == 0
    assert time.monotonic() - started < 5


async def body(gourmet: Twistd, path: str) -> str:
    response = await gourmet.get(path)
    assert response.code == 200, response.code
    return (await response.text()).strip()


async def served_by(gourmet: Twistd, count: int) -> List[str]:
    """
    The servers that answered ``count`` GETs of ``/`` one after the other.
    """
    return [json.loads(await body(gourmet, "/"))["server"] for _ in range(count)]


async def wait_for_log(gourmet: Twistd, text: str, within: float = 10) -> str:
    deadline = time.monotonic() + within
    while text not in (log := gourmet.stderr.read_text()):
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        await sleep(0.05)
    return log


def logged(tmp_path: Path, request_and_status: str) -> int:
    """
    The access log's lines with ``request_and_status``.
    """
    return sum(request_and_status in line for line in access_lines(tmp_path))


def access_lines(tmp_path: Path, name: str = "access.log") -> List[str]:
    path = tmp_path / name
    return path.read_text().splitlines() if path.exists() else []


# -- a graceful stop ---------------------------------------------------------------


async def under_way(gourmet: Twistd, server: Any, count: int) -> List[Any]:
    """
    ``count`` requests that take 30 s, once ``server`` has them all.
    """
    slow = [ensureDeferred(body(gourmet, "/slow/30")) for _ in range(count)]
    while len(server.seen) < count:
        await sleep(0.02)
    return slow


async def all_cut(requests: List[Any]) -> None:
    """
    Each of ``requests`` failed: its response was cut.
    """
    for ok, failure in await DeferredList(requests, consumeErrors=True):
        assert not ok and isinstance(failure, Failure)
        assert failure.check(ResponseFailed)


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_the_requests_in_flight_finish(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    (server,) = make_upstreams("a")
    gourmet = await start(tmp_path, processes, config_text({server.address: 1}))
    # A kept-alive connection with nothing in flight: closed at once.
    idle = RawClient(gourmet.port)
    await idle.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await idle.read_response()).startswith(b"HTTP/1.1 200")
    slow = [ensureDeferred(body(gourmet, "/slow/1.5")) for _ in range(20)]
    while len(server.seen) < 21:
        await sleep(0.02)
    gourmet.process.send_signal(signal.SIGTERM)
    await wait_for_log(gourmet, "waiting up to 30.0s for the requests")
    # Closed without waiting for the others.
    assert await idle.read_until_closed(timeout=1) == b""
    assert idle.closed
    idle.close()
    # New connections are refused from now on.
    refused = socket.socket()
    assert refused.connect_ex(("127.0.0.1", gourmet.port)) != 0
    refused.close()
    results = await DeferredList(slow, consumeErrors=True)
    assert [ok for ok, _ in results] == [True] * 20
    assert await exited(gourmet, 10) == 0
    assert "every request in flight was answered" in gourmet.stderr.read_text()
    assert logged(tmp_path, '"GET /slow/1.5 HTTP/1.1" 200') == 20


@pytest_twisted.ensureDeferred
async def test_requests_longer_than_shutdown_timeout_are_cut_and_logged(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    (server,) = make_upstreams("a")
    text = config_text({server.address: 1}, extra="shutdown_timeout = 0.5\n")
    gourmet = await start(tmp_path, processes, text)
    slow = await under_way(gourmet, server, 3)
    await stops_soon_after(gourmet, signal.SIGTERM)
    await all_cut(slow)
    log = gourmet.stderr.read_text()
    # One line per process that had some (with workers, each says its own).
    cut = re.findall(r"cut (\d+) client connections still open after 0\.5s", log)
    assert sum(map(int, cut)) == 3, cut
    # Each cut request is in the access log, as one its client left (499).
    assert logged(tmp_path, '"GET /slow/30 HTTP/1.1" 499') == 3


@pytest_twisted.ensureDeferred
async def test_a_second_sigterm_stops_at_once(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    (server,) = make_upstreams("a")
    gourmet = await start(tmp_path, processes, config_text({server.address: 1}))
    slow = await under_way(gourmet, server, 1)
    gourmet.process.send_signal(signal.SIGTERM)
    await wait_for_log(gourmet, "waiting up to")
    await stops_soon_after(gourmet, signal.SIGTERM)
    assert "cut 1 client connections on a second signal" in gourmet.stderr.read_text()
    await all_cut(slow)


# -- reloading -----------------------------------------------------------------------


async def reload_by_console(gourmet: Twistd) -> Any:
    response = await treq.post(
        f"http://127.0.0.1:{gourmet.admin_port}/api/reload",
        headers=authorized(),
        pool=gourmet.pool,
    )
    return response.code, await response.json()


async def servers_seen(gourmet: Twistd) -> Dict[str, Dict[str, Any]]:
    response = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams", pool=gourmet.pool
    )
    document = await response.json()
    (upstream,) = [each for each in document["upstreams"] if each["name"] == "b"]
    return {server["address"]: server for server in upstream["servers"]}


def counts(names: Collection[str]) -> Dict[str, int]:
    return {name: list(names).count(name) for name in sorted(set(names))}


@pytest.mark.one_process
@pytest_twisted.ensureDeferred
async def test_sighup_applies_weights_servers_and_locations(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    a, b, c, d = make_upstreams("a", "b", "c", "d")
    gourmet = await start(
        tmp_path, processes, config_text({a.address: 1, b.address: 1})
    )
    # Round robin: a, b, a, b, a, then b gets the slow request, and is
    # answering it when the reload removes it.
    assert await served_by(gourmet, 5) == ["a", "b", "a", "b", "a"]
    in_flight = ensureDeferred(body(gourmet, "/slow/1"))
    while not any(seen.uri.startswith(b"/slow") for seen in b.seen):
        await sleep(0.02)
    new_location = (
        "[upstreams.d]\n[[upstreams.d.servers]]\n"
        f"path='{d.address}'\n"
        "[[server.locations]]\nlocation='^/new/'\nupstream='d'\n"
    )
    text = config_text({a.address: 3, c.address: 1}, locations=new_location)
    (tmp_path / "gourmet.toml").write_text(text)
    gourmet.process.send_signal(signal.SIGHUP)
    log = await wait_for_log(gourmet, "gourmet reloaded")
    assert "for SIGHUP: 2 upstreams, 3 servers, 2 locations" in log
    assert counts(await served_by(gourmet, 8)) == {"a": 6, "c": 2}
    assert json.loads(await body(gourmet, "/new/x"))["server"] == "d"
    # The request in flight finished, on the server it started on.
    assert await in_flight == "late from b"
    assert sorted(await servers_seen(gourmet)) == sorted([a.address, c.address])


@pytest.mark.one_process
@pytest_twisted.ensureDeferred
async def test_an_invalid_file_changes_nothing(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    gourmet = await start(
        tmp_path, processes, config_text({a.address: 1, b.address: 1})
    )
    config = tmp_path / "gourmet.toml"
    config.write_text(config_text({a.address: -1}))
    gourmet.process.send_signal(signal.SIGHUP)
    log = await wait_for_log(gourmet, "nothing changed")
    line = f"gourmet: {config}: upstreams.b.servers[0].weight:"
    (logged,) = [each for each in log.splitlines() if line in each]
    assert "(reload for SIGHUP refused: nothing changed)" in logged
    assert counts(await served_by(gourmet, 4)) == {"a": 2, "b": 2}
    code, document = await reload_by_console(gourmet)
    assert code == 400
    assert document["description"].startswith(line)
    assert counts(await served_by(gourmet, 4)) == {"a": 2, "b": 2}


@pytest_twisted.ensureDeferred
async def test_a_console_reload_keeps_the_operators_changes_and_is_listed(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    gourmet = await start(
        tmp_path, processes, config_text({a.address: 1, b.address: 1})
    )
    before = await servers_seen(gourmet)
    response = await treq.patch(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams/b/servers/"
        + before[b.address]["id"],
        json={"weight": 3},
        headers=authorized(),
        pool=gourmet.pool,
    )
    assert response.code == 200
    await response.content()
    # The file changes a's weight; the operator's weight for b stays.
    (tmp_path / "gourmet.toml").write_text(config_text({a.address: 2, b.address: 1}))
    code, document = await reload_by_console(gourmet)
    assert code == 200
    reloaded = document["reloaded"]
    assert reloaded["kind"] == "reload"
    assert reloaded["who"].startswith("token from 127.0.0.1")
    after = await servers_seen(gourmet)
    assert (after[a.address]["weight"], after[a.address]["weight_overridden"]) == (
        2,
        False,
    )
    assert (after[b.address]["weight"], after[b.address]["configured_weight"]) == (
        3,
        1,
    )
    assert counts(await served_by(gourmet, 5)) == {"a": 2, "b": 3}
    # A reload cannot be undone from the console: the file says what it is.
    response = await treq.post(
        f"http://127.0.0.1:{gourmet.admin_port}/api/changes/undo",
        headers=authorized(),
        pool=gourmet.pool,
    )
    assert response.code == 409
    await response.content()


@pytest_twisted.ensureDeferred
async def test_listeners_added_and_removed_and_one_in_use_fails_the_reload(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    (a,) = make_upstreams("a")
    gourmet = await start(tmp_path, processes, config_text({a.address: 1}))
    path = tmp_path / "proxy.sock"
    config = tmp_path / "gourmet.toml"
    with_socket = config_text({a.address: 1}).replace(
        f"listen=['{LISTEN}']", f"listen=['{LISTEN}', 'unix:{path}']"
    )
    config.write_text(with_socket)
    gourmet.process.send_signal(signal.SIGHUP)
    await wait_for_log(gourmet, "gourmet reloaded")
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    client.close()
    # A port in use: the whole reload fails, the socket stays open.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = with_socket.replace(
        f"'unix:{path}'", f"'unix:{path}', 'tcp:{taken.getsockname()[1]}'"
    )
    config.write_text(busy.replace("weight=1", "weight=5"))
    gourmet.process.send_signal(signal.SIGHUP)
    log = await wait_for_log(gourmet, "nothing changed")
    assert "server.listen[2]: cannot listen" in log
    taken.close()
    assert (await servers_seen(gourmet))[a.address]["configured_weight"] == 1
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    client.close()
    # Removed from the file: closed.
    config.write_text(config_text({a.address: 1}))
    gourmet.process.send_signal(signal.SIGHUP)
    await wait_for_log(gourmet, "listening on 127.0.0.1")
    while path.exists():
        await sleep(0.02)
    assert await served_by(gourmet, 1) == ["a"]


# -- log rotation -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sigusr1_reopens_the_access_log(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    (a,) = make_upstreams("a")
    gourmet = await start(tmp_path, processes, config_text({a.address: 1}))
    await served_by(gourmet, 3)
    # logrotate moves the file away; Gourmet still writes to it until told.
    (tmp_path / "access.log").rename(tmp_path / "access.log.1")
    await served_by(gourmet, 2)
    gourmet.process.send_signal(signal.SIGUSR1)
    await wait_for_log(gourmet, "reopening the access log")
    await served_by(gourmet, 4)
    gourmet.process.send_signal(signal.SIGTERM)
    assert await exited(gourmet, 10) == 0
    assert len(access_lines(tmp_path, "access.log.1")) == 5
    assert len(access_lines(tmp_path)) == 4


@pytest_twisted.ensureDeferred
async def test_reloads_under_keep_alive_load_lose_no_request(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    """
    Ten reloads, alternating two files (weights, b out and c in), while
    four clients send requests on kept connections: none fails, and each
    file's split holds between reloads.  (benchmarks/reload_soak.py does
    hundreds, and prints the memory and descriptors.)
    """
    a, b, c = make_upstreams("a", "b", "c")
    files = [
        config_text({a.address: 1, b.address: 1}),
        config_text({a.address: 3, c.address: 1}),
    ]
    gourmet = await start(tmp_path, processes, files[0])
    pool = HTTPConnectionPool(reactor, persistent=True)
    failures: List[str] = []
    answered: List[str] = []
    stop = False

    async def client() -> None:
        while not stop and len(answered) < 100_000:
            try:
                response = await treq.get(gourmet.url + "/", pool=pool)
                answered.append(json.loads(await response.content())["server"])
            except Exception as error:
                failures.append(repr(error))

    clients = [ensureDeferred(client()) for _ in range(4)]
    descriptors = []
    try:
        for number in range(1, 11):
            (tmp_path / "gourmet.toml").write_text(files[number % 2])
            gourmet.process.send_signal(signal.SIGHUP)
            while gourmet.stderr.read_text().count("gourmet reloaded") < number:
                await sleep(0.02)
            await sleep(0.1)  # requests started before it finish
            del answered[:]
            await sleep(0.3)
            expected = {"a", "b"} if number % 2 == 0 else {"a", "c"}
            assert set(answered) == expected, (number, counts(answered))
            if number in (2, 10):
                descriptors.append(len(os.listdir(f"/proc/{gourmet.process.pid}/fd")))
    finally:
        stop = True
        await DeferredList(clients)
        await pool.closeCachedConnections()
    assert failures == []
    # After the same file, as many descriptors (kept connections vary by one
    # or two with the load), not one more per reload.
    first, last = descriptors
    assert last <= first + 2, descriptors


@pytest_twisted.ensureDeferred
async def test_a_reload_changes_who_may_use_the_console(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    (a,) = make_upstreams("a")
    text = config_text({a.address: 1})
    gourmet = await start(tmp_path, processes, text)
    new_token = "a-new-token-after-the-reload"
    (tmp_path / "gourmet.toml").write_text(text.replace(TOKEN, new_token))
    code, _ = await reload_by_console(gourmet)
    assert code == 200
    # The old token no longer changes anything; the new one does.
    code, document = await reload_by_console(gourmet)
    assert (code, document["description"]) == (401, "The credentials are not valid.")
    response = await treq.post(
        f"http://127.0.0.1:{gourmet.admin_port}/api/reload",
        headers=Headers({"Authorization": [f"Bearer {new_token}"]}),
        pool=gourmet.pool,
    )
    assert response.code == 200
    await response.content()
