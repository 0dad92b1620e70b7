"""
``[server] workers = 2`` on a real ``twistd -n gourmet``: the supervisor
and its two worker processes, real upstreams on loopback, and what an
operator sees in the console.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest_twisted
import treq
from twisted.internet.defer import DeferredList, ensureDeferred

from tests.processes import Twistd
from tests.processes import start_twistd as start
from tests.rawhttp import sleep
from tests.test_operations import (
    authorized,
    body,
    config_text,
    counts,
    exited,
    servers_seen,
    wait_for_log,
)

TWO = "workers = 2\n"
#: Requests sent at once: enough for both workers to take some.
AT_ONCE = 20


async def console(gourmet: Twistd) -> Dict[str, Any]:
    response = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams", pool=gourmet.pool
    )
    assert response.code == 200
    document: Dict[str, Any] = await response.json()
    return document


async def workers_seen(gourmet: Twistd) -> List[Dict[str, Any]]:
    """
    The workers the console lists, once both serve.
    """
    for _ in range(400):
        workers = (await console(gourmet))["workers"]
        if len(workers["workers"]) == 2 and all(
            each["ready"] for each in workers["workers"]
        ):
            listed: List[Dict[str, Any]] = workers["workers"]
            return listed
        await sleep(0.05)
    raise AssertionError(f"the workers did not all serve: {workers}")


async def served(gourmet: Twistd, count: int) -> List[str]:
    """
    The servers that answered ``count`` GETs of ``/``, :data:`AT_ONCE` at
    a time, each on a new connection (which either worker may accept).
    """
    names: List[str] = []
    while len(names) < count:
        batch = min(AT_ONCE, count - len(names))
        answers = await DeferredList(
            [ensureDeferred(body(gourmet, "/")) for _ in range(batch)],
            consumeErrors=True,
        )
        for ok, answer in answers:
            assert ok, answer
            names.append(json.loads(answer)["server"])
    return names


async def two_workers(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> Tuple[Twistd, Any, Any]:
    """
    Gourmet with two workers in front of two upstream servers, ``a`` and
    ``b``, of weight 1.
    """
    a, b = make_upstreams("a", "b")
    text = config_text({a.address: 1, b.address: 1}, extra=TWO)
    return await start(tmp_path, processes, text), a, b


def per_worker(workers: List[Dict[str, Any]]) -> Dict[int, int]:
    return {each["index"]: each["requests"] for each in workers}


@pytest_twisted.ensureDeferred
async def test_requests_spread_over_both_workers_and_the_console_sums_them(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    gourmet, a, b = await two_workers(tmp_path, processes, make_upstreams)
    workers = await workers_seen(gourmet)
    assert len({each["pid"] for each in workers}) == 2
    assert os.getpid() not in {each["pid"] for each in workers}
    names = await served(gourmet, 200)
    assert counts(names) == {"a": 100, "b": 100} or abs(names.count("a") - 100) <= 2
    after = per_worker(await workers_seen(gourmet))
    # Both took a share; the console counts each request once.
    assert sum(after.values()) == 200
    assert min(after.values()) > 0, after
    seen = await servers_seen(gourmet)
    assert seen[a.address]["requests"] + seen[b.address]["requests"] == 200
    assert seen[a.address]["requests"] == names.count("a")
    assert seen[a.address]["statuses"] == {"2xx": names.count("a")}
    # Each worker keeps its own connections to a: at least one each, idle.
    assert seen[a.address]["pool"]["idle"] >= 2
    response = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/metrics", pool=gourmet.pool
    )
    metrics = await response.text()
    assert "gourmet_workers 2.0" in metrics
    # Summed over the workers, not counted per worker.
    total = [
        line
        for line in metrics.splitlines()
        if line.startswith("gourmet_upstream_requests_total{")
    ]
    assert sum(float(line.split()[-1]) for line in total) == 200


@pytest_twisted.ensureDeferred
async def test_a_change_applies_in_both_workers_before_the_api_answers(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    gourmet, _a, b = await two_workers(tmp_path, processes, make_upstreams)
    before = per_worker(await workers_seen(gourmet))
    ids = {
        address: server["id"]
        for address, server in (await servers_seen(gourmet)).items()
    }
    response = await treq.patch(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams/b/servers/"
        + ids[b.address],
        json={"weight": 3},
        headers=authorized(),
        pool=gourmet.pool,
    )
    assert response.code == 200
    await response.content()
    # Right after the answer: 3 to b for 1 to a, in each worker (smooth
    # weighted round robin is exact over each worker's cycles of 4).
    names = await served(gourmet, 400)
    assert abs(names.count("b") - 300) <= 4, counts(names)
    after = per_worker(await workers_seen(gourmet))
    assert all(after[index] > before[index] for index in after), (before, after)
    # A drain: not one more request to b, from either worker.
    response = await treq.patch(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams/b/servers/"
        + ids[b.address],
        json={"state": "drain"},
        headers=authorized(),
        pool=gourmet.pool,
    )
    assert response.code == 200
    await response.content()
    assert counts(await served(gourmet, 400)) == {"a": 400}


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_replaced_and_the_other_keeps_serving(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    (a,) = make_upstreams("a")
    gourmet = await start(tmp_path, processes, config_text({a.address: 1}, extra=TWO))
    first, second = await workers_seen(gourmet)
    os.kill(first["pid"], signal.SIGKILL)
    log = await wait_for_log(gourmet, "died (signal 9)")
    assert f"worker 1 (pid {first['pid']}) died (signal 9)" in log
    # Not one request fails while it is down: the other worker takes them.
    assert counts(await served(gourmet, 100)) == {"a": 100}
    for _ in range(400):
        document = (await console(gourmet))["workers"]
        workers = document["workers"]
        if len(workers) == 2 and all(each["ready"] for each in workers):
            break
        await sleep(0.05)
    assert document["restarts"] == 1
    replaced, kept = workers
    assert kept["pid"] == second["pid"]
    assert replaced["pid"] not in (first["pid"], second["pid"])
    # The new one serves too.
    await served(gourmet, 200)
    assert min(per_worker(await workers_seen(gourmet)).values()) > 0
    response = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/metrics", pool=gourmet.pool
    )
    assert "gourmet_worker_restarts_total 1.0" in await response.text()


@pytest_twisted.ensureDeferred
async def test_a_server_down_in_one_worker_is_down_in_all(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    gourmet, _a, b = await two_workers(tmp_path, processes, make_upstreams)
    await workers_seen(gourmet)
    await b.stop()
    # One request at a time until one tried b: it failed there and was
    # retried on a.
    for _ in range(10):
        assert json.loads(await body(gourmet, "/"))["server"] == "a"
        if (await servers_seen(gourmet))[b.address]["failures"]:
            break
    # The console says down once every worker has it down.
    for _ in range(200):
        if (await servers_seen(gourmet))[b.address]["state"] == "down":
            break
        await sleep(0.05)
    assert (await servers_seen(gourmet))[b.address]["state"] == "down"
    assert counts(await served(gourmet, 200)) == {"a": 200}
    after = per_worker(await workers_seen(gourmet))
    assert min(after.values()) > 0
    # The first failure was the only one: no other worker tried b.
    assert (await servers_seen(gourmet))[b.address]["failures"] == 1


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_every_worker_and_sigterm_stops_them_gracefully(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    gourmet, a, b = await two_workers(tmp_path, processes, make_upstreams)
    workers = await workers_seen(gourmet)
    (tmp_path / "gourmet.toml").write_text(
        config_text({a.address: 3, b.address: 1}, extra=TWO)
    )
    gourmet.process.send_signal(signal.SIGHUP)
    await wait_for_log(gourmet, "gourmet reloaded")
    # The same workers, each on the new weights.
    assert [each["pid"] for each in await workers_seen(gourmet)] == [
        each["pid"] for each in workers
    ]
    for _ in range(100):
        names = await served(gourmet, 40)
        if names.count("a") == 30:
            break
        await sleep(0.05)
    assert abs(names.count("a") - 30) <= 2, counts(names)
    # A graceful stop: the requests in flight in both workers finish.
    slow = [ensureDeferred(body(gourmet, "/slow/1.5")) for _ in range(AT_ONCE)]
    while sum(seen.uri.startswith(b"/slow") for seen in [*a.seen, *b.seen]) < AT_ONCE:
        await sleep(0.02)
    gourmet.process.send_signal(signal.SIGTERM)
    results = await DeferredList(slow, consumeErrors=True)
    assert [ok for ok, _ in results] == [True] * AT_ONCE
    assert await exited(gourmet, 15) == 0
    for each in workers:
        assert not os.path.exists(f"/proc/{each['pid']}")


@pytest_twisted.ensureDeferred
async def test_workers_stop_when_their_supervisor_is_killed(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    gourmet, _, _ = await two_workers(tmp_path, processes, make_upstreams)
    workers = await workers_seen(gourmet)
    gourmet.process.send_signal(signal.SIGKILL)
    # No orphan keeps serving the port.
    for _ in range(200):
        if not any(os.path.exists(f"/proc/{each['pid']}") for each in workers):
            break
        await sleep(0.05)
    assert not any(os.path.exists(f"/proc/{each['pid']}") for each in workers)
    assert "the supervisor is gone: stopping" in gourmet.stderr.read_text()
