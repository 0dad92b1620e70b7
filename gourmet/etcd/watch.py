"""
Every key under a prefix, read whole, then watched from the revision after
the read (etcd's ``/v3/kv/range`` and ``/v3/watch``), so that each put and
delete is told as it happens.

A watch that breaks (etcd restarted, the connection lost) resumes from the
revision after the last change seen, on the next endpoint, after a backoff,
so no change is missed; one whose revision was compacted meanwhile reads
every key again.
"""

from __future__ import annotations

import base64
import random
from typing import Any, List, Optional, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from gourmet.etcd.gateway import (
    EtcdSaid,
    Gateway,
    JSONLines,
    message_of,
    sign_in,
    why_lost,
)
from gourmet.etcd.options import EtcdOptions

#: Seconds before the first retry after a failure; each failure in a row
#: doubles it, up to :data:`MAX_BACKOFF`.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 3.0
#: Seconds a watch must have run for its end to count as a new trouble,
#: not one more of a series (the backoff starts again from the first).
STEADY = 1.0


@frozen
class KeyValue:
    """
    One key as etcd changed it: its ``value``, None once deleted, and the
    revision of that change.
    """

    key: bytes
    value: Optional[bytes]
    mod_revision: int


class IPrefixSink(Interface):
    """
    What a :class:`PrefixWatch` tells.
    """

    def received(changes: Sequence[KeyValue], whole: bool) -> None:
        """
        Keys changed, in etcd's order; ``whole``: these are every key
        there is (a read), the others are gone.
        """

    def failed(reason: str) -> None:
        """
        Every endpoint failed in a round: what is known may be stale.
        """

    def live() -> None:
        """
        A watch runs: what was told is etcd's state now.
        """


def b64(data: bytes) -> str:
    """
    ``data`` as etcd's JSON carries bytes.
    """
    return base64.b64encode(data).decode("ascii")


def range_end(prefix: bytes) -> bytes:
    """
    The end of the range of keys that start with ``prefix`` (etcdctl's
    ``--prefix``): the prefix with its last byte below 0xff incremented.
    """
    for index in range(len(prefix) - 1, -1, -1):
        if prefix[index] < 0xFF:
            return prefix[:index] + bytes([prefix[index] + 1])
    # All 0xff: every key from the prefix on.
    return b"\0"


def prefix_range(prefix: bytes) -> Any:
    """
    The ``key`` and ``range_end`` of etcd's requests for every key under
    ``prefix``.
    """
    return {"key": b64(prefix), "range_end": b64(range_end(prefix))}


class _Compacted(EtcdSaid):
    """
    The watch's revision is gone from etcd's history: read everything again.
    """


class PrefixWatch:
    """
    The keys under ``options.prefix``: read whole, then watched from the
    revision after the read, and after each break from the one after the
    last change seen.

    :ivar revision: the revision up to which every change is known; None
        before the first read and after a compaction.
    :ivar watching: whether a watch runs now.
    """

    log = Logger()

    def __init__(self, options: EtcdOptions, what: str, reactor: Any) -> None:
        """
        :param what: what the keys are, for the log (``upstream api``).
        """
        self._options = options
        self._what = what
        self._reactor = reactor
        self._prefix = options.prefix.encode("utf-8")
        self._gateway = Gateway(reactor, options.dial_timeout)
        self._random = random.Random()
        self._sink: Optional[IPrefixSink] = None
        self.revision: Optional[int] = None
        self.watching = False
        self._turn = 0
        self._failures = 0
        self._errors: List[str] = []
        self._live_since: Optional[float] = None
        self._session: Optional[Deferred[None]] = None
        self._stream: Optional[JSONLines] = None
        self._retry: Any = None

    def start(self, sink: IPrefixSink) -> None:
        self._sink = sink
        self._connect()

    def stop(self) -> Deferred[None]:
        """
        Stop watching: fires once the watch's connection is closed (at
        once when no watch was set up yet).
        """
        self._sink = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        stream, self._stream = self._stream, None
        if self._session is not None:
            self._session.cancel()
        if stream is not None:
            closed: Deferred[None] = stream.closed
            return closed
        return succeed(None)

    # -- One session: a read if needed, then a watch until it ends.

    def _connect(self) -> None:
        self._retry = None
        if self._sink is None:
            return
        endpoint = self._options.endpoints[self._turn % len(self._options.endpoints)]
        self._session = Deferred.fromCoroutine(self._run(endpoint))
        self._session.addErrback(self._ended, endpoint)

    async def _run(self, endpoint: str) -> None:
        self._live_since = None
        if self._options.username is not None:
            # A token for each session: one from before a break may have
            # expired, or been given by another member.
            await sign_in(self._gateway, endpoint, self._options)
        if self.revision is None:
            await self._read(endpoint)
        await self._watch(endpoint)

    def _ended(self, failure: Failure, endpoint: str) -> None:
        self._session = None
        self.watching = False
        if self._sink is None:
            # Stopped: what ended the session was the stop.
            return
        if failure.check(_Compacted):
            self.log.info(
                "{what}: etcd {endpoint}: {reason}; reading every key again",
                what=self._what,
                endpoint=endpoint,
                reason=failure.getErrorMessage(),
            )
            self.revision = None
            self._retry = self._reactor.callLater(0, self._connect)
            return
        reason = why_lost(failure)
        if self._live_since is not None:
            # A watch that ran: etcd went away, or the connection did.
            if self._reactor.seconds() - self._live_since >= STEADY:
                self._failures = 0
            self.log.info(
                "{what}: etcd {endpoint}: the watch ended ({reason});"
                " resuming from revision {revision}",
                what=self._what,
                endpoint=endpoint,
                reason=reason,
                revision=(self.revision or 0) + 1,
            )
        else:
            self._errors.append(f"{endpoint}: {reason}")
            if len(self._errors) >= len(self._options.endpoints):
                # Once a round of the endpoints failed, not at each one.
                self._sink.failed("etcd unreachable: " + "; ".join(self._errors))
                self._errors = []
        self._failures += 1
        self._turn += 1
        self._retry = self._reactor.callLater(self._backoff(), self._connect)

    def _backoff(self) -> float:
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(self._failures - 1, 16))
        # Gourmets that lost the same etcd do not all come back at once.
        return delay * self._random.uniform(0.8, 1.0)

    # -- The full read.

    async def _read(self, endpoint: str) -> None:
        answer = await self._gateway.call(
            endpoint, "/v3/kv/range", prefix_range(self._prefix)
        )
        revision = _int(answer["header"]["revision"])
        changes = [key_value(kv) for kv in answer.get("kvs", ())]
        self.revision = revision
        if self._sink is not None:
            self._sink.received(changes, True)

    # -- The watch.

    async def _watch(self, endpoint: str) -> None:
        assert self.revision is not None
        create = {
            **prefix_range(self._prefix),
            "start_revision": str(self.revision + 1),
        }
        stream = await self._gateway.stream(
            endpoint, "/v3/watch", {"create_request": create}, self._watched
        )
        self._stream = stream
        try:
            await stream.done
        finally:
            self._stream = None
        if stream.error is not None:
            raise stream.error
        raise EtcdSaid("the watch's stream ended: " + why_lost(stream.reason))

    def _watched(self, message: Any) -> None:
        if "result" not in message:
            # An error in the stream, such as "transport is closing" from
            # an etcd shutting down.
            raise EtcdSaid("etcd said: " + message_of(message))
        result = message["result"]
        compacted = _int(result.get("compact_revision", 0))
        if compacted:
            raise _Compacted(
                f"revision {(self.revision or 0) + 1} was compacted"
                f" (etcd keeps from {compacted} on)"
            )
        if result.get("canceled"):
            raise EtcdSaid(
                "the watch was canceled: " + str(result.get("cancel_reason", ""))
            )
        if result.get("created"):
            self._created()
        changes = []
        for event in result.get("events", ()):
            change = key_value(event["kv"])
            if event.get("type") == "DELETE":
                change = KeyValue(change.key, None, change.mod_revision)
            changes.append(change)
            # Not the response header's revision: while catching up, etcd
            # may give it ahead of the events sent so far.
            self.revision = max(self.revision or 0, change.mod_revision)
        if changes and self._sink is not None:
            self._sink.received(changes, False)

    def _created(self) -> None:
        self._live_since = self._reactor.seconds()
        self._errors = []
        self.watching = True
        if self._sink is not None:
            self._sink.live()


def key_value(kv: Any) -> KeyValue:
    """
    One of etcd's ``kvs`` entries.
    """
    return KeyValue(
        base64.b64decode(kv["key"]),
        base64.b64decode(kv.get("value", "")),
        _int(kv.get("mod_revision", 0)),
    )


def _int(value: Any) -> int:
    # etcd's JSON gives 64-bit integers as strings.
    return int(value)
