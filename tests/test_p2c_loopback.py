"""
Over real loopback sockets, with each upstream a process of its own,
``p2c_ewma`` keeps a slow server's share and the tail latency down, and
gives the server its share back when it recovers.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import HTTPConnectionPool

from tests.configs import config
from tests.processes import UpstreamProcess


@pytest.fixture
def delayed_upstreams(tmp_path: Path) -> Iterator[List[UpstreamProcess]]:
    """
    Three upstreams, ``a``, ``b`` and ``slow``, each in a process of its
    own (:mod:`tests.delayed_upstream`), so that the time Gourmet measures
    is theirs and not this process's: stopped after the test.
    """
    upstreams = [
        UpstreamProcess(name, tmp_path, module="tests.delayed_upstream")
        for name in ("a", "b", "slow")
    ]
    try:
        for upstream in upstreams:
            upstream.start()
        yield upstreams
    finally:
        for upstream in upstreams:
            upstream.stop()


async def load(
    url: str, pool: HTTPConnectionPool, requests: int, concurrency: int
) -> List[Tuple[str, float]]:
    """
    ``requests`` GETs, ``concurrency`` at a time on kept-alive connections:
    which server answered each, and in how many seconds.
    """
    results: List[Tuple[str, float]] = []

    async def client() -> None:
        while len(results) < requests:
            began = reactor.seconds()
            response = await treq.get(url, pool=pool)
            await treq.content(response)
            assert response.code == 200
            (name,) = response.headers.getRawHeaders(b"x-upstream")
            results.append((name.decode(), reactor.seconds() - began))

    await gatherResults([Deferred.fromCoroutine(client()) for _ in range(concurrency)])
    return results


#: The paths that make ``slow`` ten times slower than the others, and not.
SLOW = "/?a=0.002&b=0.002&slow=0.020"
FAST = "/?a=0.002&b=0.002&slow=0.002"


def p99(times: List[float]) -> float:
    ordered = sorted(times)
    return ordered[max(math.ceil(0.99 * len(ordered)), 1) - 1]


@pytest_twisted.ensureDeferred
async def test_over_loopback_a_slow_server_gets_little_and_its_share_back(
    delayed_upstreams: List[UpstreamProcess], gourmet: Any
) -> None:
    """
    Three real upstreams on loopback, one answering in 20 ms, two in 2 ms,
    behind a real Gourmet with ``p2c_ewma``: the slow one gets under 10% of
    the requests and the p99 of all of them stays within twice the fast
    servers' p99; once it answers in 2 ms too, its share comes back within
    a bounded number of requests.  ``ewma_decay = 3`` so that this takes
    seconds: the default 10 s gives smaller shares, 3 times slower to
    recover (as the Clock tests above show).
    """
    text = config(
        delayed_upstreams, upstream_extra='balancer = "p2c_ewma"\newma_decay = 3'
    )
    running = await gourmet(text)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    try:
        # A single stall of a fast server (a 60 ms answer on a machine
        # other work shares) makes it look slower than the slow one for a
        # few seconds, and the slow one then rightly gets some of its
        # requests: the share stays under 10% in every round, and the tail
        # must be the fast servers' in one of up to three rounds.
        tails = []
        for _ in range(3):
            results = await load(running.url + SLOW, pool, 1000, concurrency=2)
            counts = Counter(name for name, _ in results)
            assert counts["slow"] < 100, counts
            fast_times = [seconds for name, seconds in results if name != "slow"]
            tails.append((p99([s for _, s in results]), p99(fast_times), counts))
            if tails[-1][0] <= 2 * tails[-1][1]:
                break
        assert tails[-1][0] <= 2 * tails[-1][1], tails

        shares: List[float] = []
        for _ in range(20):  # at most 20 rounds of 300 requests
            window = await load(running.url + FAST, pool, 300, concurrency=2)
            shares.append(sum(name == "slow" for name, _ in window) / 300)
            if shares[-1] >= 0.2:
                break
        assert shares[-1] >= 0.2, shares
    finally:
        await pool.closeCachedConnections()
