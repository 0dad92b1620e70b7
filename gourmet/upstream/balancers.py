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
"""

from __future__ import annotations

import random
from typing import Callable, Dict, Protocol, Sequence, TypeVar

from zope.interface import Interface, implementer


class Candidate(Protocol):
    """
    What a balancer may read of a server: its current weight (above 0: drained
    and unavailable servers are never offered) and its requests in flight.
    """

    @property
    def weight(self) -> int: ...

    @property
    def active(self) -> int: ...


C = TypeVar("C", bound=Candidate)


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
