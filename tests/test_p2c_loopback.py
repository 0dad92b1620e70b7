"""
Over real loopback sockets, with each upstream a process of its own,
``p2c_ewma`` keeps a slow server's share and the tail latency down, and
gives the server its share back when it recovers.
"""

from __future__ import annotations

import math
import platform
from collections import Counter
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import HTTPConnectionPool

from tests.configs import config
from tests.processes import Twistd, UpstreamProcess


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


@pytest.mark.skipif(
    platform.python_implementation() == "PyPy",
    reason=(
        "on PyPy the upstream processes, twistd and this client pause for "
        "their JIT and GC: a 2 ms answer's p99 is 15-30 ms here, so the 20 ms "
        "server is not ten times slower as measured (the balancer itself is "
        "checked on PyPy by tests/test_p2c_ewma.py, on a Clock)"
    ),
)
@pytest_twisted.ensureDeferred
async def test_over_loopback_a_slow_server_gets_little_and_its_share_back(
    delayed_upstreams: List[UpstreamProcess], tmp_path: Path
) -> None:
    """
    Three real upstreams on loopback, one answering in 20 ms, two in 2 ms,
    behind a real ``twistd gourmet`` with ``p2c_ewma`` (a process of its own,
    so that what it measures is not this client's work, nor on PyPy this
    process's JIT): the slow one gets under 5% of
    the requests and the p99 of all of them stays within twice the fast
    servers' p99; once it answers in 2 ms too, its share comes back within
    a bounded number of requests.  ``ewma_decay = 3`` so that this takes
    seconds: the default 10 s gives smaller shares, 3 times slower to
    recover (as the Clock tests above show).
    """
    text = config(
        delayed_upstreams, upstream_extra='balancer = "p2c_ewma"\newma_decay = 3'
    )
    path = tmp_path / "gourmet.toml"
    path.write_text(text + "[log]\naccess_log = 'off'\n")
    running = Twistd(path)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    try:
        await running.ready()
        # Every server answered a few times first, as in steady traffic.
        await load(running.url + SLOW, pool, 2000, concurrency=2)
        # A single stall of a fast server (a 60 ms answer on a machine
        # other work shares) makes it look slower than the slow one for a
        # few seconds, and the slow one then rightly gets some of its
        # requests: one of up to three rounds must show both the slow
        # server's share under 5% (least_conn gives it 10 to 12% here,
        # round_robin a third) and the tail of all within twice the fast
        # servers'.
        rounds = []
        for _ in range(3):
            results = await load(running.url + SLOW, pool, 1000, concurrency=2)
            counts = Counter(name for name, _ in results)
            fast_times = [seconds for name, seconds in results if name != "slow"]
            tail, fast_tail = p99([s for _, s in results]), p99(fast_times)
            rounds.append((counts, tail, fast_tail))
            if counts["slow"] < 50 and tail <= 2 * fast_tail:
                break
        assert counts["slow"] < 50 and tail <= 2 * fast_tail, rounds

        shares: List[float] = []
        for _ in range(20):  # at most 20 rounds of 300 requests
            window = await load(running.url + FAST, pool, 300, concurrency=2)
            shares.append(sum(name == "slow" for name, _ in window) / 300)
            if shares[-1] >= 0.2:
                break
        assert shares[-1] >= 0.2, shares
    finally:
        await pool.closeCachedConnections()
        running.stop()
