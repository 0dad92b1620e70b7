"""
``[cluster]`` through real ``twistd gourmet`` processes sharing Debian's
etcd on loopback (tests/etcd.py): a drain made in one console applies in
the other within a second, and the traffic of both follows it; with etcd
stopped both keep serving with their last state, their consoles say etcd
is unreachable, and a change made meanwhile applies where it was made and
reaches the other once etcd is back; the instances list each other, and
one killed leaves the list once its lease expires; and a member signs in
to an etcd with authentication on, and revokes its lease as it stops.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.web.http_headers import Headers

from gourmet.cluster.member import ClusterMember
from gourmet.cluster.records import Setting, instance_key, server_key
from gourmet.config.load import parse_config
from gourmet.config.model import ClusterConfig
from gourmet.etcd.watch import b64
from gourmet.upstream.state import AdminState, Upstream
from tests.configs import ADMIN_LISTEN, LISTEN, config
from tests.etcd import Etcd
from tests.processes import Twistd, start_twistd
from tests.rawhttp import sleep
from tests.test_discovery_twistd import Traffic, until
from tests.test_operations import counts
from tests.test_workers import per_worker, served, workers_seen
from tests.upstreams import UpstreamServer

TOKEN = "cluster-test-token-0123456789"
PREFIX = "/gourmet/test-cluster/"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    server = Etcd(tmp_path)
    yield server
    pytest_twisted.blockon(Deferred.fromCoroutine(server.close()))


def cluster_config(
    etcd: Etcd, *servers: UpstreamServer, name: str, workers: int = 1
) -> str:
    listed = "".join(
        f'[[upstreams.api.servers]]\npath = "{each.address}"\n' for each in servers
    )
    return (
        f"[upstreams.api]\n{listed}"
        f"[server]\n{LISTEN}\nworkers = {workers}\n"
        '[[server.locations]]\nlocation = "^/"\nupstream = "api"\n'
        f"[admin]\nlisten = '{ADMIN_LISTEN}'\ntoken = '{TOKEN}'\n"
        "[log]\naccess_log = 'off'\n"
        f'[cluster]\netcd = ["{etcd.url}"]\nprefix = "{PREFIX}"\n'
        f'name = "{name}"\nlease_ttl = 2\n'
    )


async def instance(
    tmp_path: Path,
    processes: List[Twistd],
    etcd: Etcd,
    name: str,
    *servers: UpstreamServer,
    workers: int = 1,
) -> Twistd:
    directory = tmp_path / name
    directory.mkdir()
    config = cluster_config(etcd, *servers, name=name, workers=workers)
    return await start_twistd(directory, processes, config)


def admin_url(gourmet: Twistd, path: str) -> str:
    return f"http://127.0.0.1:{gourmet.admin_port}{path}"


async def everything(gourmet: Twistd) -> Dict[str, Any]:
    response = await treq.get(admin_url(gourmet, "/api/upstreams"), pool=gourmet.pool)
    assert response.code == 200
    return dict(await response.json())


async def change(gourmet: Twistd, server: UpstreamServer, **body: Any) -> Any:
    """
    ``body`` sent to ``server``'s controls in ``gourmet``'s console.
    """
    (server_id,) = [
        each["id"]
        for each in await servers(gourmet)
        if each["address"] == server.address
    ]
    response = await treq.patch(
        admin_url(gourmet, f"/api/upstreams/api/servers/{server_id}"),
        data=json.dumps(body).encode(),
        headers=Headers(
            {
                "Authorization": [f"Bearer {TOKEN}"],
                "Content-Type": ["application/json"],
            }
        ),
        pool=gourmet.pool,
    )
    answer = await response.json()
    assert response.code == 200, answer
    return answer


async def servers(gourmet: Twistd) -> List[Dict[str, Any]]:
    (upstream,) = (await everything(gourmet))["upstreams"]
    return list(upstream["servers"])


async def state_of(gourmet: Twistd, address: str) -> str:
    (state,) = [
        each["admin_state"]
        for each in await servers(gourmet)
        if each["address"] == address
    ]
    return str(state)


async def state_within(
    gourmet: Twistd, address: str, state: str, seconds: float
) -> float:
    """
    Seconds until ``gourmet``'s console shows the server at ``address`` in
    ``state``.
    """
    seen: Dict[str, str] = {}

    async def look() -> bool:
        for each in await servers(gourmet):
            seen[each["address"]] = each["admin_state"]
        return seen.get(address) == state

    return await until_async(f"{address} {state} (seen {seen})", look, seconds)


async def until_async(what: str, condition: Any, seconds: float) -> float:
    """
    Seconds (of real time) until the coroutine ``condition()`` is true.
    """
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < seconds, f"{what}: not within {seconds} s"
        await sleep(0.05)
    return time.monotonic() - began


async def listed(gourmet: Twistd) -> List[str]:
    cluster = (await everything(gourmet))["cluster"]
    return [each["name"] for each in cluster["instances"]]


@pytest_twisted.ensureDeferred
async def test_a_drain_in_one_console_applies_in_the_other_within_a_second(
    tmp_path: Path, etcd: Etcd, processes: List[Twistd], make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    one = await instance(tmp_path, processes, etcd, "one", a, b)
    two = await instance(tmp_path, processes, etcd, "two", a, b)
    await until_async(
        "both listed in both",
        lambda: _both_listed(one, two),
        10,
    )
    traffic = [Traffic(one), Traffic(two)]
    try:
        await until(
            "both servers answer through both",
            lambda: all(t.answered["a"] and t.answered["b"] for t in traffic),
            10,
        )
        answer = await change(one, b, state="drain")
        assert answer["admin_state"] == "drain"
        # Seen in the other's console within a second (polled every 50 ms).
        assert await state_within(two, b.address, "drain", 1.0) < 1.0
        await sleep(0.3)
        stopped = [t.answered["b"] for t in traffic]
        await until(
            "more requests through both",
            lambda: all(t.answered["a"] > 40 + t.answered["b"] for t in traffic),
            10,
        )
        # No request went to the drained server since, through either.
        assert [t.answered["b"] for t in traffic] == stopped
    finally:
        for loops in traffic:
            await loops.stop()
    assert [t.failures for t in traffic] == [[], []]
    # The other's console says where the change came from.
    latest = (await everything(two))["changes"][0]
    assert latest["instance"] == "one"
    assert latest["who"] == "token"
    assert latest["server"] == b.address
    assert latest["description"] == "state up -> drain"
    own = (await everything(one))["changes"][0]
    assert own["instance"] == "one"

    # Undone in the other console: back in rotation in both.
    response = await treq.post(
        admin_url(two, "/api/changes/undo"),
        headers=Headers({"Authorization": [f"Bearer {TOKEN}"]}),
        pool=two.pool,
    )
    assert response.code == 200
    assert await state_within(one, b.address, "up", 1.0) < 1.0


@pytest_twisted.ensureDeferred
async def test_a_drain_from_another_instance_reaches_every_worker(
    tmp_path: Path, etcd: Etcd, processes: List[Twistd], make_upstreams: Any
) -> None:
    """
    With ``workers = 2`` the supervisor is the cluster's member (its
    workers are not instances of their own), and a setting it takes from
    another instance reaches both workers.
    """
    a, b = make_upstreams("a", "b")
    one = await instance(tmp_path, processes, etcd, "one", a, b)
    two = await instance(tmp_path, processes, etcd, "two", a, b, workers=2)
    await until_async("both listed in both", lambda: _both_listed(one, two), 10)
    assert sorted(await listed(two)) == ["one", "two"]
    traffic = Traffic(two)
    try:
        await until("b answers through two", lambda: traffic.answered["b"] > 0, 10)
        await change(one, b, state="drain")
        assert await state_within(two, b.address, "drain", 1.0) < 1.0
        await sleep(0.3)
        stopped = traffic.answered["b"]
        await until(
            "more requests through two",
            lambda: traffic.answered["a"] > 100 + traffic.answered["b"],
            10,
        )
        # Neither worker sent another request to the drained server.
        assert traffic.answered["b"] == stopped
    finally:
        await traffic.stop()
    assert traffic.failures == []
    # A worker started after the change (one killed and replaced) takes it
    # from the supervisor: the replacement sends nothing to b either.
    first, _ = await workers_seen(two)
    os.kill(first["pid"], signal.SIGKILL)
    for _ in range(400):
        now = await workers_seen(two)
        if first["pid"] not in {each["pid"] for each in now}:
            break
        await sleep(0.05)
    else:
        raise AssertionError("the killed worker was not replaced")
    before = per_worker(now)
    assert set(counts(await served(two, 200))) == {"a"}
    after = per_worker(await workers_seen(two))
    assert all(after[index] > before[index] for index in after)


async def _both_listed(one: Twistd, two: Twistd) -> bool:
    return await listed(one) == ["one", "two"] and await listed(two) == ["one", "two"]


@pytest_twisted.ensureDeferred
async def test_without_etcd_both_keep_serving_and_catch_up_when_it_is_back(
    tmp_path: Path, etcd: Etcd, processes: List[Twistd], make_upstreams: Any
) -> None:
    a, b, c = make_upstreams("a", "b", "c")
    one = await instance(tmp_path, processes, etcd, "one", a, b, c)
    two = await instance(tmp_path, processes, etcd, "two", a, b, c)
    await until_async("both listed", lambda: _both_listed(one, two), 10)
    await change(one, c, state="disabled")
    await state_within(two, c.address, "disabled", 1.0)

    etcd.stop()
    for each in (one, two):
        await until_async(
            "the console says etcd is unreachable",
            lambda each=each: _unreachable(each),
            10,
        )
    cluster = (await everything(one))["cluster"]
    assert cluster["last_error"].startswith("etcd unreachable: ")
    assert cluster["connected"] is False
    metrics = await (await treq.get(admin_url(one, "/metrics"), pool=one.pool)).text()
    assert "gourmet_cluster_connected 0.0" in metrics

    # Both serve with the last state: c stays out of rotation.
    traffic = [Traffic(one), Traffic(two)]
    try:
        await until(
            "requests through both",
            lambda: all(sum(t.answered.values()) > 30 for t in traffic),
            10,
        )
        # A change made meanwhile applies where it was made, and waits.
        await change(one, b, state="drain")
        assert (await everything(one))["cluster"]["pending"] == 1
        assert await state_of(two, b.address) == "up"
        assert [t.answered["c"] for t in traffic] == [0, 0]
        assert [t.failures for t in traffic] == [[], []]
    finally:
        for loops in traffic:
            await loops.stop()

    # etcd back: the change made meanwhile reaches the other; one made
    # after applies in both.
    await etcd.restart()
    await state_within(two, b.address, "drain", 10)
    assert not await _unreachable(one)
    await change(two, c, state="up")
    assert await state_within(one, c.address, "up", 1.0) < 1.0
    assert (await everything(one))["cluster"]["pending"] == 0
    log = one.stderr.read_text()
    assert "keeps serving with the last state it knew" in log
    assert "etcd is reachable again; 1 changes made here meanwhile" in log


async def _unreachable(gourmet: Twistd) -> bool:
    cluster = (await everything(gourmet))["cluster"]
    return cluster["connected"] is False and cluster["last_error"] is not None


@pytest_twisted.ensureDeferred
async def test_instances_list_each_other_and_one_killed_leaves_after_its_lease(
    tmp_path: Path, etcd: Etcd, processes: List[Twistd], make_upstreams: Any
) -> None:
    (a,) = make_upstreams("a")
    one = await instance(tmp_path, processes, etcd, "one", a)
    two = await instance(tmp_path, processes, etcd, "two", a)
    three = await instance(tmp_path, processes, etcd, "three", a)
    everyone = ["one", "three", "two"]
    for each in (one, two, three):
        await until_async(
            "all listed", lambda each=each: _listed_as(each, everyone), 10
        )
    cluster = (await everything(one))["cluster"]
    (me,) = [each for each in cluster["instances"] if each["self"]]
    assert me["name"] == "one"
    assert me["admin"] == f"127.0.0.1:{one.admin_port}"
    assert cluster["connected"] is True

    # A reload keeps the cluster; one that changes [cluster] is refused.
    assert (await reload(one))[0] == 200
    one.config.write_text(
        one.config.read_text().replace("lease_ttl = 2", "lease_ttl = 3")
    )
    code, answer = await reload(one)
    assert code == 400
    assert "cluster: changing [cluster] needs a restart" in answer["description"]
    assert await listed(two) == everyone

    # Stopped: it revokes its lease and leaves at once.
    two.stop()
    await until_async("two gone", lambda: _listed_as(one, ["one", "three"]), 2)
    # Killed: it leaves once its lease (2 s) expires.
    three.process.send_signal(signal.SIGKILL)
    three.process.wait()
    waited = await until_async("three gone", lambda: _listed_as(one, ["one"]), 6)
    assert waited > 0.5


async def reload(gourmet: Twistd) -> Any:
    response = await treq.post(
        admin_url(gourmet, "/api/reload"),
        headers=Headers({"Authorization": [f"Bearer {TOKEN}"]}),
        pool=gourmet.pool,
    )
    return response.code, await response.json()


async def _listed_as(gourmet: Twistd, names: List[str]) -> bool:
    return await listed(gourmet) == names


@pytest_twisted.ensureDeferred
async def test_a_member_signs_in_to_an_etcd_with_authentication_on(
    etcd: Etcd,
) -> None:
    await etcd.enable_authentication("root-password")
    cluster = ClusterConfig(
        etcd=(etcd.url,),
        prefix=PREFIX,
        name="signed-in",
        lease_ttl=2,
        username="root",
        password="root-password",
    )
    member = ClusterMember(cluster, {}, reactor, lambda: None)
    member.startService()
    try:
        # Listed (its heartbeat written, as the signed-in member) and
        # watching (signed in for the watch too), which may come in either
        # order: the first read of the keys comes before the watch's start.
        await until(
            "listed and watching",
            lambda: member.connected and list(member.state.instances) == ["signed-in"],
            10,
        )
        assert member.view()["instances"][0]["admin"] is None
    finally:
        await member.stopService()
    # Stopped: the lease is revoked, and the key with it.
    answer = await etcd.call(
        "/v3/kv/range",
        {"key": base64.b64encode(instance_key(PREFIX, "signed-in")).decode()},
    )
    assert "kvs" not in answer


@pytest_twisted.ensureDeferred
async def test_two_instances_of_one_name_are_told(etcd: Etcd) -> None:
    cluster = ClusterConfig(etcd=(etcd.url,), prefix=PREFIX, name="twin", lease_ttl=2)
    with capturedLogs() as events:
        first = ClusterMember(cluster, {}, reactor, lambda: "127.0.0.1:1")
        first.startService()
        await sleep(0.01)
        second = ClusterMember(cluster, {}, reactor, lambda: "127.0.0.1:2")
        second.startService()
        try:
            await until(
                "the log says so",
                lambda: any(
                    "another instance is named twin too" in formatEvent(each)
                    for each in events
                ),
                10,
            )
        finally:
            await first.stopService()
            await second.stopService()
    text = "\n".join(formatEvent(each) for each in events)
    assert "give each its own [cluster] name" in text


@pytest_twisted.ensureDeferred
async def test_a_change_over_a_stale_revision_loses_to_the_one_in_etcd(
    etcd: Etcd,
) -> None:
    """
    A change made here over a revision another instance's write has passed
    (as when etcd was away) is refused by etcd's compare, and the other's
    setting applies here too.
    """
    loaded = parse_config(config(["127.0.0.1:9001", "127.0.0.1:9002"]), "t.toml")
    upstream = Upstream(loaded.upstreams[0], reactor)
    cluster = ClusterConfig(etcd=(etcd.url,), prefix=PREFIX, name="here", lease_ttl=2)
    member = ClusterMember(cluster, {"backend": upstream}, reactor, lambda: None)
    member.startService()
    try:
        await until("connected", lambda: member.connected, 10)
        # As if etcd were away: the heartbeat, which retries pending writes
        # while etcd is reachable, must not write this change before the
        # other instance's (live, below, is etcd's return).
        member.failed("etcd away (the test)")
        server = upstream.servers[1]
        # Made here over no key (revision 0), not written yet...
        server.admin_state = AdminState.DISABLED
        key = member.state.changed_here(
            "backend", Setting.of(server, "bob", "here", 1.0), server.name
        )
        # ...while another instance writes the same server.
        theirs = Setting(None, AdminState.DRAIN, "carol", "there", 2.0)
        etcd_key = server_key(PREFIX, "backend", server.name).decode()
        await etcd.put(etcd_key, theirs.to_json().decode())
        await until("seen", lambda: key in member.state.settings, 5)
        assert server.admin_state is AdminState.DISABLED
        with capturedLogs() as events:
            member.live()
            await until("decided", lambda: not member.state.pending, 5)
        assert server.admin_state.value == "drain"
        assert member.lost == 1
        text = "\n".join(formatEvent(each) for each in events)
        assert (
            "bob's change of backend/127.0.0.1:9002 here is not shared: carol on"
            " there changed it first" in text
        )
        # A change over the revision seen now is written.
        server.admin_state = AdminState.UP
        member.share("backend", server, "bob")
        await until("written", lambda: not member.state.pending, 5)
        answer = await etcd.call("/v3/kv/range", {"key": b64(etcd_key.encode())})
        written = Setting.from_json(base64.b64decode(answer["kvs"][0]["value"]))
        assert (written.state, written.who) == (AdminState.UP, "bob")
    finally:
        await member.stopService()
