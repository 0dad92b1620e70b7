"""
``provider = "etcd"``: servers kept as keys under a prefix in etcd, one key
a server, its value JSON; read whole, then watched, over etcd's v3
HTTP/JSON gateway (``/v3/kv/range``, ``/v3/watch``).

    [upstreams.api]
    provider = "etcd"
    endpoints = ["http://10.0.0.2:2379", "http://10.0.0.3:2379"]
    prefix = "/gourmet/upstreams/api/"

    # etcdctl put /gourmet/upstreams/api/a '{"address": "10.0.0.5:8080"}'
    # etcdctl put /gourmet/upstreams/api/b '{"address": "10.0.0.6:8080", "weight": 2}'

``dial_timeout`` bounds connecting and each answer but the watch's;
``username`` and ``password``, for an etcd with authentication on, get a
token at each connection.

A watch that breaks (etcd restarted, the connection lost) resumes from the
revision after the last change seen, on the next endpoint, after a
backoff, so no change is missed; one whose revision was compacted
meanwhile reads every key again.  A key whose value is not a server is
left out, with an error in the log, and the others are applied.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.config.model import MAX_WEIGHT
from gourmet.config.origin import parse_origin
from gourmet.discovery.etcd_gateway import (
    EtcdSaid,
    Gateway,
    JSONLines,
    message_of,
    why_lost,
)
from gourmet.discovery.provider import (
    IProviderFactory,
    IServerProvider,
    IServerSink,
    OptionError,
    ProvidedServer,
)

#: Seconds before the first retry after a failure; each failure in a row
#: doubles it, up to :data:`MAX_BACKOFF`.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 3.0
#: Seconds a watch must have run for its end to count as a new trouble,
#: not one more of a series (the backoff starts again from the first).
STEADY = 1.0


@frozen
class EtcdOptions:
    """
    Where etcd is and which keys are the upstream's servers.

    :ivar dial_timeout: seconds to connect and get an answer's head (the
        whole answer, but for the watch's).
    :ivar username: with :ivar password:, who Gourmet is to an etcd with
        authentication on; None: no one.
    """

    endpoints: Tuple[str, ...]
    prefix: str
    dial_timeout: float = 5.0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)


@implementer(IProviderFactory)
class EtcdProviderFactory:
    """
    ``provider = "etcd"``: ``endpoints`` and ``prefix`` (required),
    ``dial_timeout``, ``username`` and ``password``.
    """

    name = "etcd"
    keys = frozenset({"endpoints", "prefix", "dial_timeout", "username", "password"})

    def options(self, raw: Mapping[str, Any], directory: Path) -> EtcdOptions:
        endpoints = raw.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            raise OptionError(
                "endpoints",
                'expected a list of etcd URLs, such as ["http://127.0.0.1:2379"]',
            )
        for endpoint in endpoints:
            _check_endpoint(endpoint)
        prefix = raw.get("prefix")
        if not isinstance(prefix, str) or not prefix:
            raise OptionError(
                "prefix",
                'expected the keys\' prefix, such as "/gourmet/upstreams/api/"',
            )
        timeout = raw.get("dial_timeout", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise OptionError("dial_timeout", f"expected seconds, got {timeout!r}")
        if not timeout > 0:
            raise OptionError("dial_timeout", f"expected above 0, got {timeout!r}")
        username, password = _credentials(raw)
        return EtcdOptions(
            tuple(each.rstrip("/") for each in endpoints),
            prefix,
            float(timeout),
            username,
            password,
        )

    def provider(self, options: EtcdOptions, upstream: str, reactor: Any) -> EtcdWatch:
        return EtcdWatch(options, upstream, reactor)


FACTORY = EtcdProviderFactory()


def _credentials(raw: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    username, password = raw.get("username"), raw.get("password")
    for key, value in (("username", username), ("password", password)):
        if value is not None and (not isinstance(value, str) or not value):
            raise OptionError(key, "expected a string")
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise OptionError(missing, "username and password go together")
    return username, password


def _check_endpoint(endpoint: object) -> None:
    if not isinstance(endpoint, str):
        raise OptionError("endpoints", f"expected URLs, got {endpoint!r}")
    url = urlsplit(endpoint)
    try:
        # urllib checks the port only when asked for it.
        port = url.port
    except ValueError as error:
        raise OptionError("endpoints", f"{endpoint!r}: {error}") from None
    if url.scheme not in ("http", "https") or not url.hostname or port == 0:
        raise OptionError(
            "endpoints",
            f"expected http://host:port or https://host:port, got {endpoint!r}",
        )
    if url.path.strip("/") or url.query or url.fragment:
        raise OptionError(
            "endpoints", f"expected no path: Gourmet adds /v3/..., got {endpoint!r}"
        )


# -- What etcd's keys say ------------------------------------------------------


def _b64(data: bytes) -> str:
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


def server_of(key: str, value: bytes) -> ProvidedServer:
    """
    The server one key's value names: ``{"address": "10.0.0.5:8080",
    "weight": 2}``, the weight optional.

    :raises ValueError: saying what is wrong with it.
    """
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError(
            'not JSON: expected {"address": "host:port", "weight": 1}'
        ) from None
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object, {"address": "host:port"}')
    address = data.get("address")
    if not isinstance(address, str) or not address:
        raise ValueError('no "address": expected {"address": "host:port"}')
    parse_origin(address)
    weight = data.get("weight")
    if weight is not None and (
        isinstance(weight, bool)
        or not isinstance(weight, int)
        or not 0 <= weight <= MAX_WEIGHT
    ):
        raise ValueError(f'"weight": expected 0 to {MAX_WEIGHT}, got {weight!r}')
    return ProvidedServer(address=address, weight=weight, metadata={"etcd_key": key})


class _Compacted(EtcdSaid):
    """
    The watch's revision is gone from etcd's history: read everything again.
    """


# -- The provider --------------------------------------------------------------


@implementer(IServerProvider)
class EtcdWatch:
    """
    One upstream's keys: read whole, then watched from the revision after
    the read, and after each break from the one after the last change seen.

    :ivar revision: the revision up to which every change is known; None
        before the first read and after a compaction.
    """

    log = Logger()

    def __init__(self, options: EtcdOptions, upstream: str, reactor: Any) -> None:
        self._options = options
        self._upstream = upstream
        self._reactor = reactor
        self._prefix = options.prefix.encode("utf-8")
        self._gateway = Gateway(reactor, options.dial_timeout)
        self._random = random.Random()
        self._sink: Optional[IServerSink] = None
        self._servers: Dict[bytes, ProvidedServer] = {}
        self.revision: Optional[int] = None
        self._turn = 0
        self._failures = 0
        self._errors: List[str] = []
        self._failing = False
        self._live_since: Optional[float] = None
        self._session: Optional[Deferred[None]] = None
        self._stream: Optional[JSONLines] = None
        self._retry: Any = None

    def start(self, sink: IServerSink) -> None:
        self._sink = sink
        self._connect()

    def stop(self) -> Any:
        self._sink = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        stream, self._stream = self._stream, None
        if self._session is not None:
            self._session.cancel()
        if stream is not None:
            return stream.closed
        return None

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
            self._gateway.token = None
            credentials = {
                "name": self._options.username,
                "password": self._options.password,
            }
            answer = await self._gateway.call(
                endpoint, "/v3/auth/authenticate", credentials
            )
            self._gateway.token = str(answer["token"])
        if self.revision is None:
            await self._read(endpoint)
        await self._watch(endpoint)

    def _ended(self, failure: Failure, endpoint: str) -> None:
        self._session = None
        if self._sink is None:
            # Stopped: what ended the session was the stop.
            return
        if failure.check(_Compacted):
            self.log.info(
                "upstream {upstream}: etcd {endpoint}: {reason}; reading every"
                " key again",
                upstream=self._upstream,
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
                "upstream {upstream}: etcd {endpoint}: the watch ended ({reason});"
                " resuming from revision {revision}",
                upstream=self._upstream,
                endpoint=endpoint,
                reason=reason,
                revision=(self.revision or 0) + 1,
            )
        else:
            self._errors.append(f"{endpoint}: {reason}")
            if len(self._errors) >= len(self._options.endpoints):
                # Once a round of the endpoints failed, not at each one.
                self._failing = True
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
        request = {
            "key": _b64(self._prefix),
            "range_end": _b64(range_end(self._prefix)),
        }
        answer = await self._gateway.call(endpoint, "/v3/kv/range", request)
        revision = _int(answer["header"]["revision"])
        servers: Dict[bytes, ProvidedServer] = {}
        for kv in answer.get("kvs", ()):
            key, server = self._decode(kv)
            if server is not None:
                servers[key] = server
        self._servers = servers
        self.revision = revision
        self._publish()

    # -- The watch.

    async def _watch(self, endpoint: str) -> None:
        assert self.revision is not None
        create = {
            "key": _b64(self._prefix),
            "range_end": _b64(range_end(self._prefix)),
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
        events = result.get("events", ())
        for event in events:
            self._changed(event)
        if events:
            self._publish()

    def _created(self) -> None:
        self._live_since = self._reactor.seconds()
        self._errors = []
        if self._failing and self._sink is not None:
            # Said again so that the upstream no longer shows the failure.
            self._failing = False
            self._sink.servers(self._found())

    def _changed(self, event: Any) -> None:
        kv = event["kv"]
        revision = _int(kv["mod_revision"])
        if event.get("type") == "DELETE":
            self._servers.pop(base64.b64decode(kv["key"]), None)
        else:
            key, server = self._decode(kv)
            if server is None:
                self._servers.pop(key, None)
            else:
                self._servers[key] = server
        # Not the response header's revision: while catching up, etcd may
        # give it ahead of the events sent so far.
        self.revision = max(self.revision or 0, revision)

    # -- Keys to servers.

    def _decode(self, kv: Any) -> Tuple[bytes, Optional[ProvidedServer]]:
        key = base64.b64decode(kv["key"])
        name = key.decode("utf-8", "replace")
        try:
            return key, server_of(name, base64.b64decode(kv.get("value", "")))
        except ValueError as error:
            # One bad key must not stop the others, nor empty the upstream.
            self.log.error(
                "upstream {upstream}: etcd key {key} is left out: {error}",
                upstream=self._upstream,
                key=name,
                error=str(error),
            )
            return key, None

    def _found(self) -> List[ProvidedServer]:
        found: Dict[str, ProvidedServer] = {}
        for key in sorted(self._servers):
            server = self._servers[key]
            kept = found.setdefault(server.address, server)
            if kept is not server:
                self.log.error(
                    "upstream {upstream}: etcd key {key} is left out: {address}"
                    " is already {other}'s",
                    upstream=self._upstream,
                    key=server.metadata["etcd_key"],
                    address=server.address,
                    other=kept.metadata["etcd_key"],
                )
        return list(found.values())

    def _publish(self) -> None:
        if self._sink is not None:
            self._failing = False
            self._sink.servers(self._found())


def _int(value: Any) -> int:
    # etcd's JSON gives 64-bit integers as strings.
    return int(value)
