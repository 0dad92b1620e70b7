"""
Balancers: the policies that choose which server gets a request.

A balancer is any object providing :class:`IBalancer`.  Adding one is a
class and a name::

    @register_balancer("first")
    @implementer(IBalancer)
    class First:
        def __init__(self, rng: random.Random) -> None:
            pass

        def pick(self, candidates):
            return candidates[0]

after which ``balancer = "first"`` is valid in an upstream's configuration.

A balancer that chooses by something of the request (a hash of the
client's address, a header, a cookie) provides :class:`IKeyedBalancer` as
well; the upstream checks once, when it makes the balancer, which of the
two to call, so balancers that know nothing of keys keep working as they
were.
"""

from __future__ import annotations

import random
from typing import (
    TYPE_CHECKING,
    Callable,
    Dict,
    List,
    Optional,
    Protocol,
    Sequence,
    TypeVar,
)

from zope.interface import Interface, implementer

from gourmet.upstream.hashing import RingCache, hash64, load_bound

if TYPE_CHECKING:
    from gourmet.config.model import UpstreamConfig


class Candidate(Protocol):
    """
    What a balancer may read of a server: its current weight (above 0: drained
    and unavailable servers are never offered), its requests in flight, and
    the peak-sensitive moving average of its response times in seconds,
    decayed to now (None before its first answer; a failure counts as a slow
    answer).
    """

    @property
    def weight(self) -> int: ...

    @property
    def active(self) -> int: ...

    @property
    def latency_ewma(self) -> Optional[float]: ...


C = TypeVar("C", bound=Candidate)


class KeyedCandidate(Candidate, Protocol):
    """
    What a keyed balancer may read of a server besides: ``id``, which stays
    the same for as long as the server's address does (reloads and
    restarts included), for a hash to be placed by.
    """

    @property
    def id(self) -> str: ...


K = TypeVar("K", bound=KeyedCandidate)


class IBalancer(Interface):
    """
    Chooses one server among those that may take a request now.
    """

    def pick(candidates: Sequence[C]) -> C:
        """
        Return one of ``candidates``, which is never empty.  The same
        sequence of servers, in the same order, is offered every time while
        nothing changes, so a balancer may keep state per server.
        """


class IKeyedBalancer(IBalancer):
    """
    A balancer that chooses by a key taken from each request, such as
    ``balancer = "hash"``.  Its ``pick`` is used only when a request has no
    key.
    """

    def configure(config: UpstreamConfig) -> None:
        """
        Called once, after the balancer is made, with its upstream's
        configuration (``hash_key``, ``hash_balance_factor``).
        """

    def pick_keyed(candidates: Sequence[K], key: bytes) -> K:
        """
        Return one of ``candidates`` (never empty) for a request whose key
        is ``key``.
        """

    def shares(candidates: Sequence[K]) -> List[float]:
        """
        The share of keys each of ``candidates`` gets (fractions summing to
        1, in their order), for the console and ``/metrics``.
        """


BalancerFactory = Callable[[random.Random], IBalancer]

#: Every balancer by the name configurations use for it.
BALANCERS: Dict[str, BalancerFactory] = {}

_F = TypeVar("_F", bound=BalancerFactory)


def register_balancer(name: str) -> Callable[[_F], _F]:
    """
    Make a balancer class available to configurations under ``name``.
    The class is called with a :class:`random.Random`.
    """

    def register(factory: _F) -> _F:
        BALANCERS[name] = factory
        return factory

    return register


@register_balancer("round_robin")
@implementer(IBalancer)
class SmoothRoundRobin:
    """
    Weighted round robin as nginx does it: weights 5, 1, 1 interleave as
    a a b a c a a, never a a a a a b c.  Each pick adds every candidate's
    weight to its running score, takes the highest, and lowers the winner
    by the sum of the weights.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._score: Dict[int, int] = {}

    def pick(self, candidates: Sequence[C]) -> C:
        score = self._score
        total = 0
        best = candidates[0]
        best_score = None
        for candidate in candidates:
            key = id(candidate)
            weight = candidate.weight
            current = score.get(key, 0) + weight
            score[key] = current
            total += weight
            if best_score is None or current > best_score:
                best, best_score = candidate, current
        score[id(best)] -= total
        return best


@register_balancer("random")
@implementer(IBalancer)
class WeightedRandom:
    """
    Each candidate with a chance proportional to its weight.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[C]) -> C:
        if len(candidates) == 1:
            return candidates[0]
        return self._rng.choices(candidates, [c.weight for c in candidates])[0]


@register_balancer("least_conn")
@implementer(IBalancer)
class LeastConnections:
    """
    The candidate with the fewest requests in flight for its weight; ties go
    round robin by weight, as in nginx.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._tie_breaker = SmoothRoundRobin()

    def pick(self, candidates: Sequence[C]) -> C:
        # Compare active/weight by cross-multiplying, to stay in integers.
        best = [candidates[0]]
        for candidate in candidates[1:]:
            ours = candidate.active * best[0].weight
            theirs = best[0].active * candidate.weight
            if ours < theirs:
                best = [candidate]
            elif ours == theirs:
                best.append(candidate)
        if len(best) == 1:
            return best[0]
        return self._tie_breaker.pick(best)


#: The cost of a server that has not answered yet but has a request in
#: flight: above any measured one, so that a new server gets one request to
#: measure it (its cost is 0 while idle) and no flood before it answers.
COLD_COST = 1e6


def ewma_cost(candidate: Candidate) -> float:
    """
    What sending one more request to ``candidate`` is expected to cost:
    its response-time average times its requests in flight plus this one,
    for its weight (Finagle's and Linkerd's peak EWMA load).
    """
    latency = candidate.latency_ewma
    if latency is None:
        if candidate.active == 0:
            return 0.0
        return COLD_COST + candidate.active / candidate.weight
    return latency * (candidate.active + 1) / candidate.weight


@register_balancer("p2c_ewma")
@implementer(IBalancer)
class PeakEwmaTwoChoices:
    """
    Power of two random choices by latency: two different candidates drawn
    at random, and the one with the lower :func:`ewma_cost` wins.  A slow
    server loses most draws; the randomness keeps a fast one from being
    flooded by every pick at once, and lets a server that slowed down be
    tried again as its estimate decays.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[C]) -> C:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1
        one, other = candidates[first], candidates[second]
        return other if ewma_cost(other) < ewma_cost(one) else one


@register_balancer("hash")
@implementer(IKeyedBalancer)
class ConsistentHash:
    """
    Consistent hashing of each request's key (``hash_key``) onto a ring of
    the servers, weighted, with bounded loads when ``hash_balance_factor``
    is set (see :mod:`gourmet.upstream.hashing`).  A request without a key
    goes round robin, as nginx's ``hash`` does with an empty key.
    """

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._rings = RingCache()
        self._fallback = SmoothRoundRobin()
        self.balance_factor = 0.0

    def configure(self, config: UpstreamConfig) -> None:
        self.balance_factor = config.hash_balance_factor

    def pick(self, candidates: Sequence[C]) -> C:
        return self._fallback.pick(candidates)

    def pick_keyed(self, candidates: Sequence[K], key: bytes) -> K:
        ring = self._rings.ring(tuple((c.id, c.weight) for c in candidates))
        key_hash = hash64(key)
        factor = self.balance_factor
        if not factor or len(candidates) == 1:
            return candidates[ring.first(key_hash)]
        in_flight = sum(candidate.active for candidate in candidates)
        total_weight = sum(candidate.weight for candidate in candidates)
        for index in ring.walk(key_hash):
            candidate = candidates[index]
            bound = load_bound(factor, in_flight, candidate.weight, total_weight)
            if candidate.active < bound:
                return candidate
        # Unreachable while the bounds add up to more than in_flight, as
        # they do for a factor of at least 1; the key's own server else.
        return candidates[ring.first(key_hash)]

    def shares(self, candidates: Sequence[K]) -> List[float]:
        return self._rings.ring(tuple((c.id, c.weight) for c in candidates)).shares()
