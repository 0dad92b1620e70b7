"""
Balancers choose servers in the proportions and order users expect.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import List, Optional

import attrs
import pytest
from zope.interface.verify import verifyObject

from gourmet.upstream.balancers import (
    BALANCERS,
    IBalancer,
    LeastConnections,
    SmoothRoundRobin,
    WeightedRandom,
)


@attrs.define(eq=False)
class FakeServer:
    """A candidate: just what a balancer reads."""

    name: str
    weight: int = 1
    active: int = 0
    latency_ewma: Optional[float] = None

    @property
    def id(self) -> str:
        """A keyed balancer's name for it."""
        return self.name


def servers(*weights: int) -> List[FakeServer]:
    return [FakeServer(chr(ord("a") + i), w) for i, w in enumerate(weights)]


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_registered_balancer_provides_the_interface(name: str) -> None:
    assert verifyObject(IBalancer, BALANCERS[name](random.Random(1)))


def test_smooth_round_robin_interleaves_like_nginx() -> None:
    candidates = servers(5, 1, 1)
    balancer = SmoothRoundRobin()
    order = "".join(balancer.pick(candidates).name for _ in range(7))
    assert order == "aabacaa"


def test_smooth_round_robin_gives_each_its_weight_over_a_cycle() -> None:
    candidates = servers(5, 1, 1)
    balancer = SmoothRoundRobin()
    counts = Counter(balancer.pick(candidates).name for _ in range(70))
    assert counts == {"a": 50, "b": 10, "c": 10}


def test_round_robin_equal_weights_take_turns() -> None:
    candidates = servers(1, 1, 1)
    balancer = SmoothRoundRobin()
    assert [balancer.pick(candidates).name for _ in range(6)] == list("abcabc")


def test_round_robin_follows_a_weight_change_at_once() -> None:
    candidates = servers(1, 1)
    balancer = SmoothRoundRobin()
    for _ in range(10):
        balancer.pick(candidates)
    candidates[0].weight = 3
    counts = Counter(balancer.pick(candidates).name for _ in range(400))
    assert counts == {"a": 300, "b": 100}


def test_weighted_random_follows_weights() -> None:
    candidates = servers(3, 1)
    balancer = WeightedRandom(random.Random(7))
    counts = Counter(balancer.pick(candidates).name for _ in range(4000))
    assert 2850 <= counts["a"] <= 3150


def test_least_conn_prefers_fewest_active_for_weight() -> None:
    a, b, c = servers(1, 2, 1)
    a.active, b.active, c.active = 2, 3, 1
    # a: 2/1, b: 3/2, c: 1/1
    assert LeastConnections().pick([a, b, c]) is c


def test_least_conn_breaks_ties_round_robin_by_weight() -> None:
    candidates = servers(2, 1)
    balancer = LeastConnections()
    counts = Counter(balancer.pick(candidates).name for _ in range(30))
    assert counts == {"a": 20, "b": 10}
