"""
A real authoritative DNS server on loopback for tests: Twisted Names' own
(``DNSServerFactory``), answering over UDP and TCP on one port from a zone
the test edits while it runs.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

from twisted.internet import reactor as _reactor
from twisted.internet.defer import fail, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.names import dns
from twisted.names.authority import FileAuthority
from twisted.names.server import DNSServerFactory

#: How many times a free port for UDP and TCP together is looked for.
LISTEN_TRIES = 20
#: The largest answer sent over UDP (RFC 1035, without EDNS).
UDP_SIZE = 512


class Zone(FileAuthority):
    """
    The records of ``origin`` and below, by name, as the test sets them.

    :ivar additional: whether an SRV answer carries its targets' addresses
        in the additional section (Consul's does; Twisted's stock one not).
    :ivar failing: answer every query with SERVFAIL.
    :ivar queries: ``(name, type)`` of every query answered.
    """

    def __init__(self, origin: str = "test") -> None:
        self.origin = origin.encode("ascii")
        self.additional = True
        self.failing = False
        self.queries: List[Tuple[str, int]] = []
        super().__init__(None)

    def loadFile(self, filename: Any) -> None:
        soa = dns.Record_SOA(
            mname=b"ns." + self.origin, rname=b"root." + self.origin, ttl=1
        )
        soa.minimum = soa.expire = 1
        # FileAuthority declares both None until a zone file is read.
        self.soa = (self.origin, soa)  # type: ignore[assignment]
        self.by_name: Dict[bytes, List[Any]] = {}
        self.records = self.by_name  # type: ignore[assignment]

    def set(self, name: str, *records: Any) -> None:
        """
        ``name``'s records, replacing those it had; none removes the name.
        """
        key = name.encode("ascii").lower()
        if records:
            self.by_name[key] = list(records)
        else:
            self.by_name.pop(key, None)

    def add(self, name: str, record: Any) -> None:
        self.by_name.setdefault(name.encode("ascii").lower(), []).append(record)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        self.queries.append((name.decode("ascii"), type))
        if self.failing:
            return fail(RuntimeError("the test's zone fails (SERVFAIL)"))
        return super()._lookup(name, cls, type, timeout)

    def _additionalRecords(
        self, answer: Any, authority: Any, ttl: Any
    ) -> Iterator[Any]:
        yield from super()._additionalRecords(answer, authority, ttl)
        if not self.additional:
            return
        for record in answer:
            if record.type == dns.SRV:
                target = record.payload.target.name
                for each in self.by_name.get(target.lower(), ()):
                    if each.TYPE in (dns.A, dns.AAAA):
                        yield dns.RRHeader(target, each.TYPE, dns.IN, each.ttl, each)

    def asked(self, type: int) -> int:
        """
        How many queries of ``type`` the zone has answered.
        """
        return sum(1 for _, each in self.queries if each == type)


def srv(
    target: str, port: int, weight: int = 1, priority: int = 0, ttl: int = 5
) -> Any:
    # "." is the root, whose name has no label.
    name = b"" if target == "." else target.encode("ascii")
    return dns.Record_SRV(priority, weight, port, name, ttl=ttl)


def a(address: str, ttl: int = 5) -> Any:
    return dns.Record_A(address, ttl=ttl)


def aaaa(address: str, ttl: int = 5) -> Any:
    return dns.Record_AAAA(address, ttl=ttl)


class UdpProtocol(dns.DNSDatagramProtocol):
    """
    Answers over UDP as RFC 1035 servers give them: one that does not fit
    512 bytes is sent empty with the TC bit, for the client to ask again
    over TCP (Twisted's own server sends any size).
    """

    def writeMessage(self, message: Any, address: Any) -> None:
        if len(message.toStr()) > UDP_SIZE:
            message.answers, message.authority, message.additional = [], [], []
            message.trunc = True
        super().writeMessage(message, address)


class DnsServer:
    """
    ``zone`` served on 127.0.0.1, UDP and TCP on one port (a resolver asks
    again over TCP on the port it used for UDP); stopped and started again
    on that same port, as a restarted server would be.
    """

    def __init__(self, zone: Zone, reactor: Any = _reactor) -> None:
        self.zone = zone
        self.reactor = reactor
        self.factory = DNSServerFactory(authorities=[zone])
        self.port_number = 0
        self._ports: List[Any] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port_number}"

    def start(self) -> None:
        for _ in range(LISTEN_TRIES):
            udp = self.reactor.listenUDP(
                self.port_number,
                UdpProtocol(self.factory),
                interface="127.0.0.1",
            )
            port = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(port, self.factory, interface="127.0.0.1")
            except CannotListenError:
                # Another program has that TCP port: a new pair, unless
                # this is a restart, whose port is fixed.
                udp.stopListening()
                if self.port_number:
                    raise
                continue
            self.port_number = port
            self._ports = [udp, tcp]
            return
        raise AssertionError(f"no free UDP and TCP port in {LISTEN_TRIES} tries")

    async def stop(self) -> None:
        ports, self._ports = self._ports, []
        await gatherResults([maybeDeferred(each.stopListening) for each in ports])
        for protocol in list(self.factory.connections):
            protocol.transport.abortConnection()
