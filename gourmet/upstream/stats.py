"""
Traffic figures kept as requests pass, cheap to update and read on demand
by the admin console and the metrics: counts per second over the last few
minutes, recent response times, and a response-time histogram.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet.interfaces import IReactorTime

#: Seconds of per-second history kept (the console's chart).
HISTORY_SECONDS = 300
#: Seconds the current rate is taken over, and the minute's.
CURRENT_SECONDS = 5
MINUTE = 60
#: Response times kept for the recent average and percentile.
LATENCY_SAMPLES = 256
#: Histogram bucket bounds in seconds (Prometheus's defaults, extended).
BUCKETS: Tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Seconds over which a response time's weight in a server's moving average
#: falls to 1/e (Finagle's and Linkerd's ``decayTime``).
EWMA_DECAY_SECONDS = 10.0
#: A failure counts as a response at least this slow (or twice the
#: estimate, if more): a server that fails fast must not look fast.
FAILURE_SECONDS = 0.5


class PerSecond:
    """
    Event counts for each of the last ``span`` seconds, in a ring: adding is
    a few operations, and seconds nobody counted in read as zero.
    """

    def __init__(self, clock: IReactorTime, span: int = HISTORY_SECONDS) -> None:
        self._clock = clock
        self._span = span
        self._counts = [0] * span
        self._seconds = [-1] * span

    def add(self, count: int = 1) -> None:
        second = int(self._clock.seconds())
        slot = second % self._span
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._counts[slot] = 0
        self._counts[slot] += count

    def series(self, seconds: int) -> List[int]:
        """
        The counts of the last ``seconds`` whole seconds, oldest first; the
        current, unfinished second is left out.
        """
        now = int(self._clock.seconds())
        result = []
        for second in range(now - seconds, now):
            slot = second % self._span
            result.append(self._counts[slot] if self._seconds[slot] == second else 0)
        return result

    def total(self, seconds: int) -> int:
        return sum(self.series(seconds))

    def counts(self) -> Dict[int, int]:
        """
        The counts of the seconds in the ring that counted anything, by
        second (the unfinished current one too): what a worker process
        tells its supervisor.
        """
        now = int(self._clock.seconds())
        return {
            second: count
            for second, count in zip(self._seconds, self._counts)
            if count and now - self._span < second <= now
        }

    def load(self, counts: Mapping[int, int]) -> None:
        """
        Hold ``counts`` (by second, as :meth:`counts` gives them) instead
        of what it counted: the supervisor's sum of its workers' figures.
        """
        self._counts = [0] * self._span
        self._seconds = [-1] * self._span
        for second, count in counts.items():
            slot = second % self._span
            self._seconds[slot] = second
            self._counts[slot] = count

    def rates(self) -> Tuple[float, float, int]:
        """
        Events per second now (the last :data:`CURRENT_SECONDS`), over the
        last minute, and in the busiest second of that minute: a server
        that stopped seconds ago shows it at once, not a minute later.
        """
        minute = self.series(MINUTE)
        current = sum(minute[-CURRENT_SECONDS:]) / CURRENT_SECONDS
        return current, sum(minute) / MINUTE, max(minute)


class RecentLatency:
    """
    The last ``size`` response times, for an average and a percentile that
    follow what the server does now rather than since it started.
    """

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self._size = size
        self._samples: List[float] = []
        self._next = 0

    def add(self, seconds: float) -> None:
        if len(self._samples) < self._size:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % self._size

    def __len__(self) -> int:
        return len(self._samples)

    def samples(self) -> List[float]:
        return list(self._samples)

    def load(self, samples: Sequence[float]) -> None:
        """
        Hold ``samples`` (several workers' together: the size grows to
        take them all).
        """
        self._samples = list(samples)
        self._size = max(len(self._samples), LATENCY_SAMPLES)
        self._next = 0

    def mean(self) -> Optional[float]:
        samples = self._samples
        return sum(samples) / len(samples) if samples else None

    def percentile(self, fraction: float) -> Optional[float]:
        """
        The nearest-rank percentile: ``percentile(0.95)`` is a time no more
        than 5% of the samples exceed.
        """
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = max(math.ceil(fraction * len(ordered)), 1)
        return ordered[rank - 1]


class PeakEwma:
    """
    Finagle's peak-sensitive moving average of a server's response times:
    a response slower than the estimate replaces it at once, so one slow
    answer is noticed by the very next pick; a faster one is averaged in
    with a weight that grows with the time since the last, so a burst of
    fast answers does not hide a slowdown and one answer after a long quiet
    counts for much.  Without answers the estimate decays toward 0, over
    ``decay`` seconds, so that a server that was slow is tried again.

    It reads the clock it is given, never the system's.
    """

    def __init__(self, clock: IReactorTime, decay: float = EWMA_DECAY_SECONDS) -> None:
        self._clock = clock
        self.decay = decay
        self._value = 0.0
        self._stamp = 0.0
        #: Responses (and failures) observed: 0 while the server is cold.
        self.samples = 0

    def _decayed(self, now: float) -> Tuple[float, float]:
        """
        The estimate at ``now`` and the weight the past has left in it.
        """
        elapsed = max(now - self._stamp, 0.0)
        weight = math.exp(-elapsed / self.decay) if self.decay > 0 else 0.0
        return self._value * weight, weight

    def observe(self, seconds: float) -> None:
        now = self._clock.seconds()
        current, weight = self._decayed(now)
        if self.samples == 0 or seconds >= current:
            self._value = seconds
        else:
            self._value = current * weight + seconds * (1.0 - weight)
        self._stamp = now
        self.samples += 1

    def penalize(self) -> None:
        """
        Count a failure as a slow response.
        """
        self.observe(max(2 * (self.estimate() or 0.0), FAILURE_SECONDS))

    def load(self, value: Optional[float]) -> None:
        """
        Hold ``value`` as the estimate now (None: nothing observed).
        """
        self._value = value or 0.0
        self._stamp = self._clock.seconds()
        self.samples = 0 if value is None else 1

    def estimate(self) -> Optional[float]:
        """
        The estimate now, in seconds; None before anything was observed.
        """
        if not self.samples:
            return None
        return self._decayed(self._clock.seconds())[0]


class Histogram:
    """
    Cumulative-on-read response-time histogram, as Prometheus exposes it.
    """

    def __init__(self, bounds: Sequence[float] = BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def counts(self) -> List[int]:
        """
        The observations in each bucket (not cumulative), ``+Inf``'s last.
        """
        return list(self._counts)

    def load(self, counts: Sequence[int], total: float) -> None:
        """
        Hold ``counts`` (as :meth:`counts` gives them) summing to ``total``
        seconds.
        """
        self._counts = list(counts)
        self.count = sum(counts)
        self.sum = total

    def cumulative(self) -> List[Tuple[str, int]]:
        """
        ``(upper bound, observations at or below it)`` pairs, ``+Inf`` last.
        """
        result = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self._counts):
            running += count
            result.append((bound, running))
        return result


class ServerStats:
    """
    What one server did lately and in all.

    :ivar statuses: responses by status class (``"2xx"``...), and
        ``"failed"`` for requests that got no usable response.
    :ivar gourmet_statuses: Gourmet's own answers (502, 504) to requests
        whose last try failed on this server.
    :ivar retries: requests that failed here and were sent to another
        server.
    :ivar errors_seen: failures here in requests whose client got an error.
    :ivar errors_hidden: failures here in requests that a retry on another
        server answered well: the client never knew.
    :ivar bytes_sent: request body bytes sent to the server.
    :ivar bytes_received: response body bytes read from it.
    :ivar ewma: its response times' peak-sensitive moving average, which
        ``p2c_ewma`` balances by.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.requests = PerSecond(clock)
        self.errors = PerSecond(clock)
        self.latency = RecentLatency()
        self.ewma = PeakEwma(clock)
        self.statuses: Counter[str] = Counter()
        self.gourmet_statuses: Counter[int] = Counter()
        self.retries = 0
        self.errors_seen = 0
        self.errors_hidden = 0
        self.bytes_sent = 0
        self.bytes_received = 0


class UpstreamStats:
    """
    The same for a whole upstream, plus its response-time histogram.

    :ivar errors_hidden: failures per second that a retry hid from the
        client (counted when the good answer came).
    :ivar errors_seen: failures per second in requests whose client got an
        error.
    :ivar gourmet_statuses: Gourmet's own answers (502, 503, 504) to the
        upstream's requests.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.requests = PerSecond(clock)
        self.errors = PerSecond(clock)
        self.errors_hidden = PerSecond(clock)
        self.errors_seen = PerSecond(clock)
        self.response_time = Histogram()
        self.gourmet_statuses: Counter[int] = Counter()
