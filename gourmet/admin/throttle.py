"""
Failed sign-ins to the admin console, counted per client address, and the
wait that follows too many of them: a password guesser gets 429 with a
``Retry-After`` that doubles with each further failure, while everyone
else signs in as usual.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import List, Optional

from twisted.internet.interfaces import IReactorTime

#: Failures an address may make before it must wait.
FREE_FAILURES = 5
#: The longest wait, in seconds.
MAX_WAIT = 60.0
#: Seconds without a failure after which an address starts afresh.
FORGET_AFTER = 600.0
#: Addresses remembered at most; the oldest are forgotten first.
MAX_ADDRESSES = 10_000


class SignInThrottle:
    """
    Failed sign-ins per client address.

    :ivar failures: failed credential checks, in all.
    :ivar throttled: requests refused with 429, in all.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # address -> [failures, time of the last, time it may try again]
        self._addresses: OrderedDict[str, List[float]] = OrderedDict()
        self.failures = 0
        self.throttled = 0

    def retry_after(self, address: str) -> Optional[int]:
        """
        Whole seconds ``address`` must still wait before its credentials
        are checked again; None when it may try now.
        """
        record = self._addresses.get(address)
        if record is None:
            return None
        wait = record[2] - self._clock.seconds()
        if wait <= 0:
            return None
        self.throttled += 1
        return max(math.ceil(wait), 1)

    def failed(self, address: str) -> None:
        """
        Count a failed check from ``address``: once it has made
        :data:`FREE_FAILURES`, it must wait 1, 2, 4... seconds before each
        next check, at most :data:`MAX_WAIT`.
        """
        self.failures += 1
        now = self._clock.seconds()
        record = self._addresses.pop(address, None)
        if record is None or now - record[1] > FORGET_AFTER:
            record = [0.0, now, now]
        record[0] += 1
        record[1] = now
        over = record[0] - FREE_FAILURES
        if over >= 0:
            record[2] = now + min(2.0**over, MAX_WAIT)
        self._addresses[address] = record
        if len(self._addresses) > MAX_ADDRESSES:
            self._addresses.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """
        ``address`` signed in: its failures are forgotten.
        """
        self._addresses.pop(address, None)
