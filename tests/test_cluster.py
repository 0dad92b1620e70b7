"""
``[cluster]``'s logic without etcd: keys and values as etcd keeps them,
settings from other instances applied to this one's servers (and only to
servers of the same upstream and address), a change made here waiting
until etcd has it, and losing to another instance's that came first; and
the ``[cluster]`` table's errors, which name the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from gourmet.cluster.member import ClusterMember
from gourmet.cluster.records import (
    InstanceKey,
    InstanceRecord,
    ServerKey,
    Setting,
    instance_key,
    parse_key,
    server_key,
)
from gourmet.cluster.shared import SharedState
from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import CLUSTER_PREFIX, ClusterConfig
from gourmet.etcd.watch import KeyValue
from gourmet.upstream.state import AdminState, Upstream
from tests.configs import config

PREFIX = CLUSTER_PREFIX
ADDRESSES = ["127.0.0.1:9001", "127.0.0.1:9002"]


def state() -> tuple[SharedState, Upstream, Clock]:
    clock = Clock()
    loaded = parse_config(config(ADDRESSES), "gourmet.toml")
    (upstream,) = [Upstream(each, clock) for each in loaded.upstreams]
    return SharedState(PREFIX, {"backend": upstream}), upstream, clock


def setting(
    state: AdminState = AdminState.DRAIN,
    weight: Optional[int] = None,
    who: str = "alice",
    instance: str = "other",
) -> Setting:
    return Setting(weight, state, who, instance, 1000.0)


def put(
    address: str, value: Setting, revision: int, upstream: str = "backend"
) -> KeyValue:
    return KeyValue(server_key(PREFIX, upstream, address), value.to_json(), revision)


def states(upstream: Upstream) -> List[str]:
    return [server.admin_state.value for server in upstream.servers]


def test_keys_name_the_upstream_and_the_address_and_come_back() -> None:
    key = server_key(PREFIX, "api v2", "https://[::1]:8443/x")
    assert key == b"/gourmet/cluster/servers/api%20v2/https:%2F%2F[::1]:8443%2Fx"
    assert parse_key(PREFIX, key) == ServerKey("api v2", "https://[::1]:8443/x")
    assert parse_key(PREFIX, instance_key(PREFIX, "web-1:8081")) == InstanceKey(
        "web-1:8081"
    )
    assert parse_key(PREFIX, b"/gourmet/cluster/other") is None
    assert parse_key(PREFIX, b"/elsewhere/servers/a/b") is None


def test_a_setting_survives_its_json_and_bad_values_say_why() -> None:
    written = setting(AdminState.DISABLED, weight=7)
    assert Setting.from_json(written.to_json()) == written
    for value, why in [
        (b"drain", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"state": "off"}', '"state": expected up, drain or disabled'),
        (b'{"state": "up", "weight": 5000}', '"weight": expected 0 to 1000'),
        (b'{"state": "up", "weight": 1}', '"who": expected a string'),
    ]:
        with pytest.raises(ValueError, match=why):
            Setting.from_json(value)
    record = InstanceRecord("one", "127.0.0.1:8081", 12, "0.9", 1.0, 2.0)
    assert InstanceRecord.from_json(record.to_json()) == record


def test_settings_from_etcd_apply_to_the_servers_of_that_address() -> None:
    shared, upstream, _ = state()
    applied = shared.received(
        [
            put(ADDRESSES[1], setting(AdminState.DRAIN), 5),
            # Servers this instance does not have: nothing happens.
            put("127.0.0.1:9999", setting(AdminState.DISABLED), 6),
            put(ADDRESSES[0], setting(AdminState.DISABLED), 7, upstream="other"),
        ],
        True,
    )
    assert states(upstream) == ["up", "drain"]
    assert [(each.upstream, each.server.name) for each in applied] == [
        ("backend", ADDRESSES[1])
    ]
    assert applied[0].before == (None, AdminState.UP)
    # The same setting again (the echo of a write) changes nothing.
    assert shared.received([put(ADDRESSES[1], setting(), 8)], False) == []
    # A weight, then back to the configured one.
    shared.received([put(ADDRESSES[0], setting(AdminState.UP, weight=9), 9)], False)
    assert upstream.servers[0].weight == 9
    shared.received([put(ADDRESSES[0], setting(AdminState.UP), 10)], False)
    assert upstream.servers[0].weight == 1


def test_a_bad_value_is_left_out_with_its_key_in_the_log() -> None:
    shared, upstream, _ = state()
    bad = KeyValue(server_key(PREFIX, "backend", ADDRESSES[0]), b"{", 3)
    with capturedLogs() as events:
        assert shared.received([bad, put(ADDRESSES[1], setting(), 4)], True) != []
    text = "\n".join(formatEvent(event) for event in events)
    assert f"etcd key {PREFIX}servers/backend/{ADDRESSES[0]} is left out: not JSON" in (
        text
    )
    assert states(upstream) == ["up", "drain"]


def test_instances_come_and_go_with_their_keys() -> None:
    shared, _, _ = state()
    record = InstanceRecord("two", None, 12, "0.9", 1.0, 2.0)
    key = instance_key(PREFIX, "two")
    shared.received([KeyValue(key, record.to_json(), 3)], False)
    assert list(shared.instances) == ["two"]
    # The lease expired: etcd deletes the key.
    shared.received([KeyValue(key, None, 4)], False)
    assert shared.instances == {}


def test_a_change_made_here_waits_and_is_written_over_the_revision_seen() -> None:
    shared, upstream, _ = state()
    shared.received([put(ADDRESSES[0], setting(AdminState.UP, weight=3), 5)], True)
    server = upstream.servers[0]
    server.admin_state = AdminState.DISABLED
    mine = Setting.of(server, "bob", "here", 1001.0)
    key = shared.changed_here("backend", mine, server.name)
    assert shared.pending[key].base == 5
    # Another change here before the first is written: still over 5.
    server.admin_state = AdminState.DRAIN
    later = Setting.of(server, "bob", "here", 1002.0)
    shared.changed_here("backend", later, server.name)
    assert shared.pending[key].base == 5
    # Meanwhile etcd says what another instance set: the change here stands
    # until etcd decides.
    assert shared.received([put(ADDRESSES[0], setting(AdminState.UP), 6)], False) == []
    assert server.admin_state is AdminState.DRAIN
    # The first written: the later one goes over its revision.
    shared.written(key, mine, 7)
    assert shared.pending[key].base == 7
    shared.written(key, later, 8)
    assert shared.pending == {}
    assert shared.settings[key].revision == 8


def test_a_change_made_here_loses_to_another_that_came_first() -> None:
    shared, upstream, _ = state()
    server = upstream.servers[1]
    server.admin_state = AdminState.DISABLED
    key = shared.changed_here(
        "backend", Setting.of(server, "bob", "here", 1.0), server.name
    )
    theirs = put(ADDRESSES[1], setting(AdminState.DRAIN, who="carol"), 9)
    lost, applied = shared.refused(key, theirs)
    assert lost is not None and lost.who == "bob"
    assert [each.setting.who for each in applied] == ["carol"]
    assert server.admin_state is AdminState.DRAIN
    assert shared.pending == {}


def test_a_change_over_a_key_deleted_meanwhile_is_written_again() -> None:
    shared, upstream, _ = state()
    server = upstream.servers[1]
    key = shared.changed_here(
        "backend", Setting.of(server, "bob", "here", 1.0), server.name
    )
    shared.pending[key] = shared.pending[key].__class__(shared.pending[key].setting, 4)
    assert shared.refused(key, None) == (None, [])
    assert shared.pending[key].base == 0


def test_servers_added_later_get_their_settings() -> None:
    shared, upstream, _ = state()
    added = "127.0.0.1:9003"
    shared.received([put(added, setting(AdminState.DISABLED), 3)], True)
    grown = parse_config(config([*ADDRESSES, added]), "gourmet.toml")
    upstream.reconfigure(grown.upstreams[0])
    assert states(upstream) == ["up", "up", "up"]
    assert [each.server.name for each in shared.reapply()] == [added]
    assert states(upstream) == ["up", "up", "disabled"]


CLUSTERED = config(ADDRESSES) + "[cluster]\n{options}\n"


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ('prefix = "/x/"', "etcd", "missing key: expected etcd's URLs"),
        ('etcd = "http://127.0.0.1:2379"', "etcd", "expected a list"),
        ('etcd = ["127.0.0.1:2379"]', "etcd", "expected http://host:port"),
        ('etcd = ["http://e:2379"]\nprefix = "/x"', "prefix", 'ending in "/"'),
        ('etcd = ["http://e:2379"]\nname = "a b"', "name", "expected a name"),
        ('etcd = ["http://e:2379"]\nlease_ttl = 1', "lease_ttl", "from 2 to 3600"),
        ('etcd = ["http://e:2379"]\nusername = "u"', "password", "go together"),
        ('etcd = ["http://e:2379"]\nttl = 5', "ttl", "unknown key"),
    ],
)
def test_cluster_errors_name_the_key(options: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(CLUSTERED.format(options=options), "gourmet.toml")
    assert raised.value.key == f"cluster.{key}"
    assert message in raised.value.message


def test_cluster_defaults() -> None:
    loaded = parse_config(
        CLUSTERED.format(options='etcd = ["http://127.0.0.1:2379/"]'), "gourmet.toml"
    )
    cluster = loaded.cluster
    assert cluster.enabled
    assert cluster.etcd == ("http://127.0.0.1:2379",)
    assert (cluster.prefix, cluster.name, cluster.lease_ttl) == (PREFIX, None, 5)
    assert not parse_config(config(ADDRESSES), "gourmet.toml").cluster.enabled
    assert json.loads(setting().to_json())["state"] == "drain"


def test_the_example_files_cluster_table_loads_uncommented() -> None:
    example = (Path(__file__).parents[1] / "etc" / "gourmet.toml").read_text()
    table = example[example.index("# [cluster]") :]
    uncommented = "\n".join(line.replace("#", "", 1) for line in table.splitlines())
    kept = [
        line for line in uncommented.splitlines() if not line.strip().startswith("#")
    ]
    loaded = parse_config(config(ADDRESSES) + "\n".join(kept) + "\n", "gourmet.toml")
    assert loaded.cluster.etcd == ("http://127.0.0.1:2379",)
    assert (loaded.cluster.name, loaded.cluster.lease_ttl) == ("web-1", 5)
    assert loaded.cluster.username == "gourmet"


def test_a_member_stopped_before_its_watch_is_set_up_stops_cleanly() -> None:
    """
    Stopped (twistd shutting down) while etcd has not answered yet: the
    stop completes, with no error, rather than failing on the watch that
    was never set up.
    """
    reactor = MemoryReactorClock()
    cluster = ClusterConfig(etcd=("http://127.0.0.1:2379",), prefix=PREFIX)
    member = ClusterMember(cluster, {}, reactor, lambda: None)
    member.startService()
    assert reactor.tcpClients, "the member did not try to reach etcd"
    results: List[object] = []
    member.stopService().addBoth(results.append)
    assert results == [None]
    assert not member.running
