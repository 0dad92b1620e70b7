"""
``provider = "dns"``: servers found in DNS, asked again when the answer's
TTL runs out (or every ``refresh`` seconds), through Twisted Names (never
the system's ``getaddrinfo``, which would block the reactor and hide TTLs).

    [upstreams.api]
    provider = "dns"
    name = "_http._tcp.api.service.consul"   # SRV: ports and weights in DNS
    resolvers = ["127.0.0.1:8600"]           # default: /etc/resolv.conf

    [upstreams.web]
    provider = "dns"
    name = "web.internal"                    # A and AAAA, all addresses
    port = 8080

Without ``port`` the name's SRV records give the servers (the lowest
priority value's targets, each at its SRV port and weight); with ``port``
its A and AAAA records do.  A lookup that fails leaves the servers as they
were (the sink keeps the last set) and is tried again on a backoff.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from attrs import evolve, frozen
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    TimeoutError,
    maybeDeferred,
)
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.client import Resolver
from twisted.names.error import (
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSServerError,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from gourmet.config.model import MAX_WEIGHT
from gourmet.discovery.provider import (
    IProviderFactory,
    IServerProvider,
    IServerSink,
    OptionError,
    ProvidedServer,
)

#: ``refresh = "ttl"`` asks again when the shortest TTL runs out, but never
#: sooner than this (a TTL of 0 would ask in a loop)...
TTL_FLOOR = 1.0
#: ...nor later than this (a day-long TTL would hide a change for a day).
TTL_CEILING = 300.0
#: After a failure, the next try comes this soon, then twice as late each
#: time, up to :data:`RETRY_CEILING`: a resolver that is back is seen soon,
#: one that stays down is not flooded.
RETRY_FLOOR = 1.0
RETRY_CEILING = 30.0
#: How many times a query goes to each resolver before it has failed.
TRIES = 2
#: SRV targets whose addresses are looked up at once, when the answer did
#: not give them (each query has a UDP socket of its own).
CONCURRENT_TARGETS = 16
#: Where the resolvers are when ``resolvers`` is not set, and what is used
#: when that file names none (as the C library does).
RESOLV_CONF = Path("/etc/resolv.conf")
DEFAULT_RESOLVER = ("127.0.0.1", 53)

Address = Tuple[str, int]

_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(\.(?!-)[A-Za-z0-9_-]{1,63})*\.?")
_MISSING = "no such name (NXDOMAIN)"
_FAILURES = (
    (DNSNameError, _MISSING),
    (DNSServerError, "the server failed (SERVFAIL)"),
    (DNSQueryRefusedError, "the server refused (REFUSED)"),
    (DNSFormatError, "the server found the query malformed (FORMERR)"),
    (DNSNotImplementedError, "the server does not implement it (NOTIMP)"),
)


@frozen
class DnsOptions:
    """
    What to ask and whom.

    :ivar port: None for SRV records, else the port of every A/AAAA address.
    :ivar resolvers: None: the nameservers of ``/etc/resolv.conf``.
    :ivar refresh: None: as the answer's TTL says; else seconds.
    :ivar resolver_timeout: seconds a query waits for an answer before it
        is sent again (to the next resolver, if there are several).
    """

    name: str
    port: Optional[int] = None
    resolvers: Optional[Tuple[Address, ...]] = None
    refresh: Optional[float] = None
    resolver_timeout: float = 2.0

    @property
    def srv(self) -> bool:
        return self.port is None


@implementer(IProviderFactory)
class DnsProviderFactory:
    """
    ``provider = "dns"``: ``name`` (required), ``port``, ``resolvers``,
    ``refresh`` and ``resolver_timeout``.
    """

    name = "dns"
    keys = frozenset({"name", "port", "resolvers", "refresh", "resolver_timeout"})

    def options(self, raw: Mapping[str, Any], directory: Path) -> DnsOptions:
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise OptionError(
                "name",
                'expected a DNS name, such as "_http._tcp.api.service.consul"'
                f' (SRV) or "api.internal" with port (A/AAAA), got {name!r}',
            )
        port = raw.get("port")
        if port is not None:
            port = _port("port", port)
            if name.startswith("_"):
                raise OptionError(
                    "port",
                    f"{name!r} is an SRV name, whose records give the ports:"
                    " remove port, or name the hosts' A/AAAA records",
                )
        resolvers = raw.get("resolvers")
        if resolvers is not None:
            resolvers = _resolvers(resolvers)
        return DnsOptions(
            name=name.rstrip(".") or name,
            port=port,
            resolvers=resolvers,
            refresh=_refresh(raw.get("refresh", "ttl")),
            resolver_timeout=_seconds(
                "resolver_timeout", raw.get("resolver_timeout", 2.0)
            ),
        )

    def provider(
        self, options: DnsOptions, upstream: str, reactor: Any
    ) -> ResolvedName:
        return ResolvedName(options, reactor)


FACTORY = DnsProviderFactory()


def _port(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(key, f"expected a port number, got {value!r}")
    if not 0 < value < 65536:
        raise OptionError(key, f"expected a port from 1 to 65535, got {value}")
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(key, f"expected seconds, got {value!r}")
    if not value > 0:
        raise OptionError(key, f"expected above 0, got {value!r}")
    return float(value)


def _refresh(value: Any) -> Optional[float]:
    if value == "ttl":
        return None
    if isinstance(value, str):
        raise OptionError("refresh", f'expected "ttl" or seconds, got {value!r}')
    return _seconds("refresh", value)


def _resolvers(value: Any) -> Tuple[Address, ...]:
    if not isinstance(value, list) or not value:
        raise OptionError(
            "resolvers", 'expected a list of addresses, such as ["127.0.0.1:53"]'
        )
    found = []
    for index, each in enumerate(value):
        try:
            found.append(_resolver(each))
        except ValueError as error:
            raise OptionError("resolvers", f"item {index + 1}: {error}") from None
    return tuple(found)


def _resolver(text: Any) -> Address:
    """
    ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address: the
    host must be an address, since resolving it would need a resolver.

    :raises ValueError: saying what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f'expected "address" or "address:port", got {text!r}')
    host, port = text, "53"
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<port>.*))?", text)
    if match:
        host, port = match["v6"], match["port"] or port
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"expected an IP address (a resolver is not looked up), got {text!r}"
        ) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected a port from 1 to 65535 in {text!r}")
    return host, int(port)


def system_resolvers(path: Path = RESOLV_CONF) -> Tuple[Address, ...]:
    """
    The ``nameserver`` lines of ``path``, read again at each lookup so that
    a change (DHCP, a VPN) is followed; the local one if it names none.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    found = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            host = words[1].split("%")[0]  # an IPv6 zone is not ours to use
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            found.append((host, 53))
    return tuple(found) or (DEFAULT_RESOLVER,)


@frozen
class Answer:
    """
    What one lookup found: the servers, sorted (DNS servers rotate their
    records, which must not look like a change), and the shortest TTL.
    """

    servers: Tuple[ProvidedServer, ...]
    ttl: int


class LookupFailed(Exception):
    """
    A lookup that says nothing about the servers: the reason says why.
    """


@implementer(IServerProvider)
class ResolvedName:
    """
    One upstream's name, looked up at start, again when its TTL (or
    ``refresh``) runs out, and on a backoff after a failure.

    :param reactor: does the lookups (UDP, TCP when an answer is
        truncated) and times them out.
    :param clock: schedules the next lookup; the reactor unless a test
        drives it.
    :param resolv_conf: where the resolvers are when the options name none.
    """

    log = Logger()

    def __init__(
        self,
        options: DnsOptions,
        reactor: Any,
        clock: Any = None,
        resolv_conf: Path = RESOLV_CONF,
    ) -> None:
        self._options = options
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._resolv_conf = resolv_conf
        self._sink: Optional[IServerSink] = None
        self._resolver: Optional[Resolver] = None
        self._servers: Tuple[Address, ...] = ()
        self._next: Any = None
        self._retry = RETRY_FLOOR
        #: The lookup under way, if any.
        self.looking: Optional[Deferred[Any]] = None

    def start(self, sink: IServerSink) -> None:
        self._sink = sink
        self._look_up()

    def stop(self) -> None:
        """
        Nothing more reaches the sink.  A lookup in flight ends by itself
        within its timeout (Twisted's queries cannot be cancelled cleanly);
        its answer is dropped.
        """
        self._sink = None
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._close()

    def _look_up(self) -> None:
        self._next = None
        # Whatever goes wrong becomes a failure, retried: a timer's call
        # that raised would end the lookups for good.
        looking = maybeDeferred(
            lambda: look_up(self._options, self._current_resolver())
        )
        self.looking = looking
        looking.addCallbacks(self._found, self._failed)

    def _found(self, answer: Answer) -> None:
        self.looking = None
        if self._sink is None:
            return
        self._retry = RETRY_FLOOR
        # Scheduled first: whatever the sink does, the lookups go on.
        self._schedule(self._refresh_after(answer.ttl))
        self._sink.servers(answer.servers)

    def _failed(self, failure: Failure) -> None:
        self.looking = None
        if self._sink is None:
            return
        delay = min(self._retry, self._longest_wait())
        self._retry = min(self._retry * 2, self._longest_wait())
        self._schedule(delay)
        self._sink.failed(self._reason(failure))

    def _schedule(self, delay: float) -> None:
        self._next = self._clock.callLater(delay, self._look_up)

    def _refresh_after(self, ttl: int) -> float:
        if self._options.refresh is not None:
            return self._options.refresh
        return min(max(float(ttl), TTL_FLOOR), TTL_CEILING)

    def _longest_wait(self) -> float:
        # A retry never waits longer than a good answer would.
        refresh = self._options.refresh
        return RETRY_CEILING if refresh is None else min(RETRY_CEILING, refresh)

    def _reason(self, failure: Failure) -> str:
        what = "SRV" if self._options.srv else "A/AAAA"
        reason = describe(failure, self._servers, self._options)
        return f"{self._options.name} {what}: {reason}"

    def _current_resolver(self) -> Resolver:
        """
        A resolver for the configured servers, or for those of
        ``/etc/resolv.conf`` as they are now (a new one when they change).
        """
        servers = self._options.resolvers or system_resolvers(self._resolv_conf)
        if self._resolver is None or servers != self._servers:
            if self._resolver is not None:
                self.log.info(
                    "{name}: resolvers now {servers}",
                    name=self._options.name,
                    servers=", ".join(_written(each) for each in servers),
                )
            self._close()
            self._servers = servers
            self._resolver = Resolver(servers=list(servers), reactor=self._reactor)
        return self._resolver

    def _close(self) -> None:
        # A truncated answer is asked again over TCP, and Twisted keeps
        # that connection for later queries.
        if self._resolver is not None:
            for connection in list(self._resolver.connections):
                connection.transport.loseConnection()


def look_up(options: DnsOptions, resolver: Resolver) -> Deferred[Answer]:
    """
    The servers ``options`` name, as ``resolver`` finds them now.
    """
    timeout = (options.resolver_timeout,) * TRIES
    lookup = _Lookup(resolver, timeout, DeferredSemaphore(CONCURRENT_TARGETS))
    if options.srv:
        return Deferred.fromCoroutine(lookup.services(options.name))
    assert options.port is not None
    return Deferred.fromCoroutine(lookup.hosts(options.name, options.port))


@frozen
class _Lookup:
    """
    The queries of one lookup, all through one resolver and timeout.
    """

    resolver: Resolver
    timeout: Tuple[float, ...]
    targets_at_once: DeferredSemaphore

    async def hosts(self, name: str, port: int) -> Answer:
        found, ttl = await self.addresses(name, missing=LookupFailed(_MISSING))
        if not found:
            raise LookupFailed("no A or AAAA records")
        servers = [
            ProvidedServer(_written((address, port)), metadata={"name": name})
            for address in found
        ]
        return Answer(_sorted(servers), ttl)

    async def services(self, name: str) -> Answer:
        answers, _, additional = await self.resolver.lookupService(
            name, timeout=self.timeout
        )
        records = [each for each in answers if each.type == dns.SRV]
        if not records:
            raise LookupFailed("no SRV records")
        best = min(each.payload.priority for each in records)
        chosen = [each for each in records if each.payload.priority == best]
        # RFC 2782: a target of "." says the service is decidedly not there.
        chosen = [each for each in chosen if _text(each.payload.target.name)]
        given = _given_addresses(additional)
        targets = sorted({_text(each.payload.target.name).lower() for each in chosen})
        missing = [each for each in targets if each not in given]
        looked_up = await _all(
            [self.targets_at_once.run(self._target, each) for each in missing]
        )
        given.update(zip(missing, looked_up))
        ttl = min([each.ttl for each in records] + [given[each][1] for each in targets])
        found = _srv_servers([each.payload for each in chosen], given)
        if chosen and not found:
            raise LookupFailed(
                f"none of its {len(targets)} targets has an A or AAAA record"
            )
        return Answer(_sorted(found), ttl)

    def _target(self, name: str) -> Deferred[Tuple[Tuple[str, ...], int]]:
        return Deferred.fromCoroutine(self.addresses(name))

    async def addresses(
        self, name: str, missing: Optional[Exception] = None
    ) -> Tuple[Tuple[str, ...], int]:
        """
        Every A and AAAA address of ``name`` and their shortest TTL.  A
        name that does not exist has none (a stale SRV target), or raises
        ``missing``; any other failure fails the whole lookup, rather than
        drop servers that may still be there.
        """
        results = await DeferredList(
            [
                self.resolver.lookupAddress(name, timeout=self.timeout),
                self.resolver.lookupIPV6Address(name, timeout=self.timeout),
            ],
            consumeErrors=True,
        )
        addresses: List[str] = []
        ttls: List[int] = []
        absent = 0
        for ok, result in results:
            if not ok:
                if not result.check(DNSNameError):
                    result.raiseException()
                absent += 1
                continue
            for record in result[0]:
                if record.type in (dns.A, dns.AAAA):
                    addresses.append(_address(record.payload))
                    ttls.append(record.ttl)
        if missing is not None and absent == len(results):
            raise missing
        return tuple(addresses), min(ttls, default=int(TTL_CEILING))


async def _all(deferreds: Sequence[Deferred[Any]]) -> List[Any]:
    """
    The results of ``deferreds``; the first failure raised.
    """
    results = await DeferredList(list(deferreds), consumeErrors=True)
    for ok, result in results:
        if not ok:
            result.raiseException()
    return [result for _, result in results]


def _srv_servers(
    records: Sequence[Any], given: Mapping[str, Tuple[Tuple[str, ...], int]]
) -> List[ProvidedServer]:
    """
    A server for each address of each record's target, at the record's
    port and weight; two records naming one address make one server with
    both shares.
    """
    found: Dict[str, ProvidedServer] = {}
    for record, weight in zip(records, srv_weights([each.weight for each in records])):
        target = _text(record.target.name)
        metadata = {
            "target": target,
            "priority": str(record.priority),
            "srv_weight": str(record.weight),
        }
        for address in given[target.lower()][0]:
            written = _written((address, record.port))
            before = found.get(written)
            if before is None:
                found[written] = ProvidedServer(written, weight, metadata=metadata)
            else:
                share = min(MAX_WEIGHT, weight + (before.weight or 0))
                found[written] = evolve(before, weight=share)
    return list(found.values())


def srv_weights(weights: Sequence[int]) -> List[int]:
    """
    Gourmet's weights (1 to 1000) for SRV weights (0 to 65535): as they
    are, scaled down when one is above 1000, and at least 1 (SRV weight 0
    means "no preference" in RFC 2782, while Gourmet's 0 drains a server).
    """
    top = max(weights, default=0)
    scale = min(1.0, MAX_WEIGHT / top) if top else 1.0
    return [max(1, round(weight * scale)) for weight in weights]


def _given_addresses(
    additional: Iterable[Any],
) -> Dict[str, Tuple[Tuple[str, ...], int]]:
    """
    The A and AAAA records a server added to its SRV answer, by name
    (Consul and most authoritative servers do): no second lookup needed.
    """
    found: Dict[str, Tuple[Tuple[str, ...], int]] = {}
    for record in additional:
        if record.type in (dns.A, dns.AAAA):
            name = _text(record.name.name).lower()
            addresses, ttl = found.get(name, ((), record.ttl))
            found[name] = (
                (*addresses, _address(record.payload)),
                min(ttl, record.ttl),
            )
    return found


def _address(payload: Any) -> str:
    if isinstance(payload, dns.Record_A):
        return str(payload.dottedQuad())
    return socket.inet_ntop(socket.AF_INET6, payload.address)


def _written(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(name: bytes) -> str:
    return name.decode("ascii", "replace").rstrip(".")


def _sorted(servers: Iterable[ProvidedServer]) -> Tuple[ProvidedServer, ...]:
    return tuple(sorted(servers, key=lambda each: each.address))


def describe(failure: Failure, servers: Sequence[Address], options: DnsOptions) -> str:
    """
    A failed lookup in an operator's words.
    """
    if failure.check(LookupFailed):
        return str(failure.value)
    for kind, words in _FAILURES:
        if failure.check(kind):
            return words
    if failure.check(TimeoutError, dns.DNSQueryTimeoutError):
        return (
            f"no answer from {', '.join(_written(each) for each in servers)}"
            f" ({TRIES} tries of {options.resolver_timeout:g} s each)"
        )
    if failure.check(ConnectError):
        return f"cannot reach the resolver over TCP: {failure.value}"
    return f"lookup failed: {failure.getErrorMessage()}"
