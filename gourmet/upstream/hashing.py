"""
Consistent hashing: a ring of virtual nodes, weighted, with bounded loads.

Each server owns points on a 64-bit ring, hashed from its id and the
point's number, as many as its share of the weights asks for (160 for a
server of average weight, Ketama's figure).  A key goes to the owner of the
first point at or after the key's own hash.  A server that leaves takes its
points with it, so only the keys that fell on them move, each to the next
point's owner; when it comes back, its points (the same ones: they are
hashed from its id) take them back.  Removing one of N servers of equal
weight therefore moves about 1/N of the keys and nothing else.

A ring rather than Maglev: Maglev's table spreads keys a little more evenly
and looks a key up in O(1), but when a server leaves it also moves a few
keys between servers that stayed, and its table is rebuilt in full on every
change; the ring moves none of those keys, lets bounded loads walk on to
the next server naturally, and a lookup is one ``bisect`` either way.

Bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with
Bounded Loads", 2016, as Envoy's and HAProxy's ``hash_balance_factor``):
with a factor ``c``, a server takes a new request only while its requests
in flight are below ``ceil(c * (in_flight + 1) * weight / total_weight)``;
otherwise the walk goes on along the ring to the next server that is.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

#: Points on the ring for a server of average weight.
POINTS_PER_SERVER = 160


def hash64(data: bytes) -> int:
    """
    A stable 64-bit hash of ``data``: the same in every process and on every
    Python (``hash()`` is salted per process).
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """
    The points of some servers, each named by a stable id, with weights.

    :param members: ``(id, weight)`` of each server, weights above 0.
    """

    def __init__(self, members: Sequence[Tuple[str, int]]) -> None:
        total = sum(weight for _, weight in members) or 1
        mean = total / max(len(members), 1)
        points: List[Tuple[int, int]] = []
        for index, (member_id, weight) in enumerate(members):
            count = max(1, round(POINTS_PER_SERVER * weight / mean))
            name = member_id.encode("utf-8")
            points.extend(
                (hash64(b"%s#%d" % (name, number)), index) for number in range(count)
            )
        points.sort()
        self._hashes = [point for point, _ in points]
        self._owners = [owner for _, owner in points]
        self.size = len(members)

    def walk(self, key_hash: int) -> Iterator[int]:
        """
        The members in the order a key whose hash is ``key_hash`` tries
        them: the owner of the first point at or after it, then each new
        owner met going on around the ring.
        """
        hashes, owners = self._hashes, self._owners
        start = bisect.bisect_left(hashes, key_hash)
        seen: Set[int] = set()
        count = len(owners)
        for step in range(count):
            owner = owners[(start + step) % count]
            if owner not in seen:
                yield owner
                seen.add(owner)
                if len(seen) == self.size:
                    return

    def first(self, key_hash: int) -> int:
        """
        The member a key whose hash is ``key_hash`` belongs to.
        """
        index = bisect.bisect_left(self._hashes, key_hash)
        return self._owners[index % len(self._owners)]

    def shares(self) -> List[float]:
        """
        Each member's fraction of the ring: the share of keys it gets.
        """
        hashes, owners = self._hashes, self._owners
        shares = [0.0] * self.size
        if not hashes:
            return shares
        span = 1 << 64
        previous = hashes[-1] - span
        for point, owner in zip(hashes, owners):
            shares[owner] += (point - previous) / span
            previous = point
        return shares


def load_bound(factor: float, in_flight: int, weight: int, total_weight: int) -> int:
    """
    The most requests in flight a server of ``weight`` may have and still
    take one more, with ``in_flight`` in flight over all servers.
    """
    return math.ceil(factor * (in_flight + 1) * weight / total_weight)


class RingCache:
    """
    The ring for the servers offered last, rebuilt only when they change
    (a server goes down, comes back, is drained or reweighted).
    """

    def __init__(self) -> None:
        self._members: Optional[Tuple[Tuple[str, int], ...]] = None
        self._ring = Ring(())
        # Rings recently built: a server that flaps back finds its ring.
        self._recent: Dict[Tuple[Tuple[str, int], ...], Ring] = {}

    def ring(self, members: Tuple[Tuple[str, int], ...]) -> Ring:
        if members != self._members:
            ring = self._recent.get(members)
            if ring is None:
                if len(self._recent) >= 8:
                    self._recent.clear()
                ring = self._recent[members] = Ring(members)
            self._members, self._ring = members, ring
        return self._ring
