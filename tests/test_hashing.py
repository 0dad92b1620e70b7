"""
``balancer = "hash"``: consistent hashing on a weighted ring, with bounded
loads; pure logic, no reactor (health on a ``Clock``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Dict, List, Sequence

from zope.interface import implementer
from zope.interface.verify import verifyObject

from gourmet.admin.metrics import UpstreamCollector
from gourmet.admin.views import upstream_view
from gourmet.upstream.balancers import (
    BALANCERS,
    C,
    ConsistentHash,
    IBalancer,
    IKeyedBalancer,
)
from gourmet.upstream.state import AdminState, Upstream
from tests.test_balancers import FakeServer as Peer
from tests.test_upstreams import make, take_down

KEYS = [b"client-%d" % n for n in range(10_000)]


def peers(count: int, weights: Sequence[int] = ()) -> List[Peer]:
    return [Peer(f"10.0.0.{n}:80", weights[n] if weights else 1) for n in range(count)]


def placement(balancer: ConsistentHash, candidates: List[Peer]) -> Dict[bytes, str]:
    return {key: balancer.pick_keyed(candidates, key).id for key in KEYS}


def test_the_hash_balancer_is_registered_and_keyed() -> None:
    balancer = BALANCERS["hash"](random.Random(1))
    assert verifyObject(IKeyedBalancer, balancer)
    assert verifyObject(IBalancer, balancer)


def test_keys_spread_evenly_over_five_servers() -> None:
    servers = peers(5)
    counts = Counter(placement(ConsistentHash(), servers).values())
    assert len(counts) == 5
    # 2,000 each ideally; 160 points a server keep each within 25%.
    assert all(1500 <= count <= 2500 for count in counts.values()), counts


def test_removing_one_of_five_moves_only_its_keys_adding_it_restores_them() -> None:
    balancer = ConsistentHash()
    servers = peers(5)
    before = placement(balancer, servers)
    gone = servers[2]
    after = placement(balancer, [s for s in servers if s is not gone])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert len(moved) <= 0.25 * len(KEYS)
    # Only the removed server's keys moved, and they went to the others.
    assert all(before[key] == gone.id for key in moved)
    assert {after[key] for key in moved} <= {s.id for s in servers} - {gone.id}
    assert placement(balancer, servers) == before


def test_adding_a_sixth_server_takes_about_a_sixth_from_the_others() -> None:
    balancer = ConsistentHash()
    servers = peers(6)
    before = placement(balancer, servers[:5])
    after = placement(balancer, servers)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == servers[5].id for key in moved)
    assert 0.10 * len(KEYS) <= len(moved) <= 0.25 * len(KEYS)


def test_weights_set_the_share_of_keys() -> None:
    servers = peers(3, weights=[2, 1, 1])
    counts = Counter(placement(ConsistentHash(), servers).values())
    assert 0.42 <= counts[servers[0].id] / len(KEYS) <= 0.58, counts
    shares = ConsistentHash().shares(servers)
    assert math.isclose(sum(shares), 1.0)
    assert 0.42 <= shares[0] <= 0.58


def _load(balancer: ConsistentHash, servers: List[Peer], keys: List[bytes]) -> None:
    """
    Pick a server for each key in turn, every request staying in flight.
    """
    for key in keys:
        balancer.pick_keyed(servers, key).active += 1


def _hot_keys() -> List[bytes]:
    # A third of all requests carry one key; the rest are spread.
    rng = random.Random(7)
    keys = [b"hot" if rng.random() < 1 / 3 else rng.choice(KEYS) for _ in KEYS]
    return keys


def test_without_bounded_loads_a_hot_key_overloads_its_server() -> None:
    servers = peers(5)
    _load(ConsistentHash(), servers, _hot_keys())
    mean = len(KEYS) / 5
    assert max(s.active for s in servers) > 1.25 * mean


def test_with_bounded_loads_no_server_exceeds_the_factor_over_the_mean() -> None:
    for factor in (1.25, 1.0, 2.0):
        servers = peers(5)
        balancer = ConsistentHash()
        balancer.balance_factor = factor
        _load(balancer, servers, _hot_keys())
        mean = len(KEYS) / 5
        assert max(s.active for s in servers) <= math.ceil(factor * mean), factor
        assert sum(s.active for s in servers) == len(KEYS)


def test_bounded_loads_respect_weights() -> None:
    servers = peers(3, weights=[3, 1, 1])
    balancer = ConsistentHash()
    balancer.balance_factor = 1.25
    _load(balancer, servers, _hot_keys())
    for server in servers:
        share = len(KEYS) * server.weight / 5
        assert server.active <= math.ceil(1.25 * share)


def test_with_bounded_loads_an_idle_upstream_keeps_keys_where_they_hash() -> None:
    servers = peers(5)
    balancer = ConsistentHash()
    plain = placement(balancer, servers)
    balancer.balance_factor = 1.25
    assert placement(balancer, servers) == plain


def hash_upstream(extra: str = "") -> Upstream:
    upstream, _ = make(5, 'balancer = "hash"\nhash_key = "ip"\n' + extra)
    return upstream


def routes(upstream: Upstream) -> Dict[bytes, str]:
    picks = {}
    for key in KEYS[:2000]:
        server = upstream.pick(key=key)
        assert server is not None
        picks[key] = server.name
    return picks


def test_a_down_servers_keys_go_to_the_others_and_come_back() -> None:
    upstream, clock = make(5, 'balancer = "hash"\nhash_key = "ip"\n')
    before = routes(upstream)
    down = upstream.servers[1]
    take_down([down])
    during = routes(upstream)
    moved = {key for key in before if before[key] != during[key]}
    assert moved == {key for key in before if before[key] == down.name}
    assert down.name not in during.values()
    clock.advance(down.config.fail_timeout + 1)
    assert routes(upstream) == before


def test_a_drained_servers_keys_move_and_return_when_it_is_up() -> None:
    upstream = hash_upstream()
    before = routes(upstream)
    drained = upstream.servers[3]
    drained.admin_state = AdminState.DRAIN
    during = routes(upstream)
    assert drained.name not in during.values()
    assert all(
        during[key] == before[key] for key in before if before[key] != drained.name
    )
    drained.admin_state = AdminState.UP
    assert routes(upstream) == before


def test_a_retry_goes_to_the_next_server_on_the_ring() -> None:
    upstream = hash_upstream()
    first = upstream.pick(key=b"10.1.2.3")
    assert first is not None
    second = upstream.pick([first], key=b"10.1.2.3")
    assert second is not None and second is not first


def test_a_request_without_its_key_goes_round_robin() -> None:
    upstream = hash_upstream()
    picked = [upstream.pick() for _ in range(10)]
    assert Counter(server.name for server in picked if server) == {
        server.name: 2 for server in upstream.servers
    }


def test_hash_shares_for_the_console() -> None:
    upstream = hash_upstream()
    shares = upstream.hash_shares()
    assert shares is not None
    assert math.isclose(sum(shares.values()), 1.0)
    assert all(0.1 < share < 0.3 for share in shares.values())
    upstream.servers[0].admin_state = AdminState.DISABLED
    shares = upstream.hash_shares()
    assert shares is not None
    assert shares[upstream.servers[0]] == 0.0
    assert math.isclose(sum(shares.values()), 1.0)
    assert hash_upstream_round_robin().hash_shares() is None


def hash_upstream_round_robin() -> Upstream:
    upstream, _ = make(2)
    return upstream


def test_balancers_without_keys_are_called_as_before() -> None:
    @implementer(IBalancer)
    class First:
        def __init__(self, rng: random.Random) -> None:
            pass

        def pick(self, candidates: Sequence[C]) -> C:
            return candidates[0]

    BALANCERS["first_for_test"] = First
    try:
        upstream, _ = make(3, 'balancer = "first_for_test"')
        server = upstream.pick(key=b"ignored")
        assert server is upstream.servers[0]
        assert upstream.keyed is None
    finally:
        del BALANCERS["first_for_test"]


def test_the_console_and_metrics_show_each_servers_share_of_keys() -> None:
    upstream = hash_upstream("hash_balance_factor = 1.25")
    view = upstream_view(upstream, [])
    assert (view["balancer"], view["hash_key"]) == ("hash", "ip")
    assert view["hash_balance_factor"] == 1.25
    shares = [server["hash_share"] for server in view["servers"]]
    assert math.isclose(sum(shares), 1.0, abs_tol=0.001)
    families = {
        family.name: family
        for family in UpstreamCollector({"backend": upstream}).collect()
    }
    samples = families["gourmet_upstream_hash_share"].samples
    assert len(samples) == 5
    assert math.isclose(sum(sample.value for sample in samples), 1.0)
    assert samples[0].labels == {"upstream": "backend", "server": "127.0.0.1:9001"}
    # Other balancers have no share of keys.
    plain = upstream_view(hash_upstream_round_robin(), [])
    assert {server["hash_share"] for server in plain["servers"]} == {None}
