"""
The PROXY protocol's header, versions 1 and 2, as HAProxy's specification
(``doc/proxy-protocol.txt``) defines it: the first bytes of a TCP connection
by which a load balancer tells the server behind it the address of the
client it is relaying.

Pure Python with no Twisted, so that any connection can use it: the
encoders give the bytes to write first on a connection to a server, and
`parse` reads a header from the bytes received so far, incrementally (it
answers `None` until it has the whole header) and within bounds (a v1 line
of at most 107 bytes, a v2 header of at most `MAX_V2_HEADER` bytes).

Addresses are ``(host, port)`` pairs, ``host`` an IPv4 or IPv6 address in
its usual text form (``"203.0.113.7"``, ``"2001:db8::1"``).  A header read
with an IPv4 address mapped into IPv6 (``::ffff:203.0.113.7``, as HAProxy
sends an IPv4 client that connected over IPv6) gives the IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Optional, Tuple, Union

__all__ = [
    "MAX_V1_HEADER",
    "MAX_V2_HEADER",
    "V2_SIGNATURE",
    "Address",
    "InvalidProxyHeader",
    "ProxyHeader",
    "encode_v1",
    "encode_v2",
    "parse",
    "starts_like_a_header",
]

#: ``(host, port)``.
Address = Tuple[str, int]

#: The longest v1 line, its CRLF included (the specification's bound:
#: ``PROXY UNKNOWN`` and two full IPv6 addresses and ports).
MAX_V1_HEADER = 107
#: The largest v2 header accepted, its 16 fixed bytes included.  The format
#: allows 65,551; what load balancers send (addresses, then TLVs such as
#: AWS's VPC endpoint ID, a TLS client's version and certificate name) fits
#: in far less.
MAX_V2_HEADER = 4096

#: The 12 bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_V2_UNSPEC = 0x00
_V2_TCP4 = 0x11
_V2_UDP4 = 0x12
_V2_TCP6 = 0x21
_V2_UDP6 = 0x22
_V2_UNIX_STREAM = 0x31
_V2_UNIX_DGRAM = 0x32
#: The address block's length for each family and transport.
_V2_ADDRESS_LENGTHS = {
    _V2_UNSPEC: 0,
    _V2_TCP4: 12,
    _V2_UDP4: 12,
    _V2_TCP6: 36,
    _V2_UDP6: 36,
    _V2_UNIX_STREAM: 216,
    _V2_UNIX_DGRAM: 216,
}
_V2_FIXED = struct.Struct("!12sBBH")
_V2_IPV4 = struct.Struct("!4s4sHH")
_V2_IPV6 = struct.Struct("!16s16sHH")

#: A port in decimal, without heading zeroes (the specification forbids
#: them, lest they be read as octal).
_PORT = re.compile(rb"(?:0|[1-9][0-9]{0,4})\Z")


class InvalidProxyHeader(ValueError):
    """
    The bytes are not a valid PROXY protocol header; the message says why.
    """


@dataclass(frozen=True)
class ProxyHeader:
    """
    A PROXY protocol header read from a connection.

    :ivar source: the client's address, or `None` when the header gives none
        (v1 ``UNKNOWN``, v2 ``LOCAL``, or a family other than TCP or UDP over
        IPv4 or IPv6): the connection's own address stands then.
    :ivar destination: the address the client connected to, `None` likewise.
    :ivar length: how many bytes the header took: what follows is the
        connection's own data.
    :ivar version: 1 or 2.
    """

    source: Optional[Address]
    destination: Optional[Address]
    length: int
    version: int


_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def _ip(host: str) -> Optional[_IP]:
    """
    ``host`` as an address, without an IPv6 zone; `None` when it is not
    one (a name, a unix path).
    """
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _pair(
    source: Optional[Address], destination: Optional[Address]
) -> Optional[Tuple[_IP, int, _IP, int]]:
    """
    Both addresses of one family, as a header carries them, or `None` when
    either is missing or not an IP address and port.  When one is IPv4 and
    the other IPv6, the IPv4 one is given as IPv4-mapped IPv6, as HAProxy
    does.
    """
    if source is None or destination is None:
        return None
    source_ip, destination_ip = _ip(source[0]), _ip(destination[0])
    if source_ip is None or destination_ip is None:
        return None
    if not all(0 <= port <= 65535 for port in (source[1], destination[1])):
        return None
    if source_ip.version != destination_ip.version:
        source_ip, destination_ip = (
            ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip
            for ip in (source_ip, destination_ip)
        )
    return source_ip, source[1], destination_ip, destination[1]


def encode_v1(source: Optional[Address], destination: Optional[Address]) -> bytes:
    """
    The v1 (text) header saying that the client at ``source`` connected to
    ``destination``: ``PROXY TCP4 ...`` or ``PROXY TCP6 ...``, or ``PROXY
    UNKNOWN`` when either is `None` or not an IP address (a unix socket).
    """
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    source_ip, source_port, destination_ip, destination_port = pair
    family = "TCP4" if source_ip.version == 4 else "TCP6"
    return (
        f"PROXY {family} {source_ip} {destination_ip}"
        f" {source_port} {destination_port}\r\n"
    ).encode("ascii")


def encode_v2(source: Optional[Address], destination: Optional[Address]) -> bytes:
    """
    The v2 (binary) header saying that the client at ``source`` connected to
    ``destination`` over TCP: command ``PROXY``, family IPv4 or IPv6, no
    TLVs; or command ``LOCAL`` with no address when either is `None` or not
    an IP address.
    """
    pair = _pair(source, destination)
    if pair is None:
        return _V2_FIXED.pack(V2_SIGNATURE, _V2_LOCAL, _V2_UNSPEC, 0)
    source_ip, source_port, destination_ip, destination_port = pair
    if source_ip.version == 4:
        family, addresses = _V2_TCP4, _V2_IPV4
    else:
        family, addresses = _V2_TCP6, _V2_IPV6
    block = addresses.pack(
        source_ip.packed, destination_ip.packed, source_port, destination_port
    )
    return _V2_FIXED.pack(V2_SIGNATURE, _V2_PROXY, family, len(block)) + block


def starts_like_a_header(data: bytes) -> Optional[bool]:
    """
    Whether ``data``, the first bytes of a connection, start with a PROXY
    protocol header's signature (v1's ``PROXY `` or v2's 12 bytes): `True`
    or `False`, or `None` while too few bytes have come to tell.
    """
    for signature in (_V1_PREFIX, V2_SIGNATURE):
        if data[: len(signature)] == signature[: len(data)]:
            return True if len(data) >= len(signature) else None
    return False


def parse(data: bytes) -> Optional[ProxyHeader]:
    """
    Read the PROXY protocol header (v1 or v2) that ``data``, the bytes
    received so far on a connection, starts with.

    :return: the header, whose ``length`` says where the connection's own
        data begins; or `None` when ``data`` may be the start of a header
        and more bytes are needed.
    :raise InvalidProxyHeader: when ``data`` does not start with a valid
        header, or with a header larger than the bounds.
    """
    if data[:12] == V2_SIGNATURE[: len(data)] and data[:1] == b"\r":
        return _parse_v2(data)
    if data[:6] == _V1_PREFIX[: len(data)] and data[:1] == b"P":
        return _parse_v1(data)
    if not data:
        return None
    raise InvalidProxyHeader(
        f"no PROXY protocol header: the connection starts with {data[:16]!r}"
    )


def _parse_v1(data: bytes) -> Optional[ProxyHeader]:
    end = data.find(b"\n", 0, MAX_V1_HEADER)
    if end == -1:
        if len(data) >= MAX_V1_HEADER:
            raise InvalidProxyHeader(f"PROXY v1 line longer than {MAX_V1_HEADER} bytes")
        if b"\r" in data[:-1]:
            raise InvalidProxyHeader("PROXY v1 line with a CR not before LF")
        return None
    if data[end - 1 : end] != b"\r":
        raise InvalidProxyHeader("PROXY v1 line ends with LF, not CRLF")
    line = data[: end - 1]
    if b"\r" in line:
        raise InvalidProxyHeader("PROXY v1 line with a CR not before LF")
    fields = line.split(b" ")
    length = end + 1
    if fields[1:2] == [b"UNKNOWN"]:
        # The specification has receivers ignore whatever follows UNKNOWN.
        return ProxyHeader(None, None, length, 1)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise InvalidProxyHeader(
            f"PROXY v1 line is not 'PROXY TCP4|TCP6 SOURCE DESTINATION"
            f" SOURCE_PORT DESTINATION_PORT' nor 'PROXY UNKNOWN': {line!r}"
        )
    version = 4 if fields[1] == b"TCP4" else 6
    source_ip = _v1_address(fields[2], version)
    destination_ip = _v1_address(fields[3], version)
    source_port = _v1_port(fields[4])
    destination_port = _v1_port(fields[5])
    return ProxyHeader(
        (source_ip, source_port), (destination_ip, destination_port), length, 1
    )


def _v1_address(text: bytes, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        raise InvalidProxyHeader(
            f"PROXY v1 TCP{version} with {text!r}, not an IPv{version} address"
        )
    return _text(ip)


def _text(ip: _IP) -> str:
    """
    ``ip`` as text; an IPv4 address mapped into IPv6 (as a sender writes
    an IPv4 client connected to an IPv6 address) as the IPv4 one.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _v1_port(text: bytes) -> int:
    port = int(text) if _PORT.match(text) else 65536
    if port > 65535:
        raise InvalidProxyHeader(f"PROXY v1 port {text!r} is not 0 to 65535")
    return port


def _parse_v2(data: bytes) -> Optional[ProxyHeader]:
    if len(data) < _V2_FIXED.size:
        return None
    _, command, family, block_length = _V2_FIXED.unpack_from(data)
    if command >> 4 != 2:
        raise InvalidProxyHeader(f"PROXY v2 signature with version {command >> 4}")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise InvalidProxyHeader(f"PROXY v2 with unknown command {command & 0xF}")
    length = _V2_FIXED.size + block_length
    if length > MAX_V2_HEADER:
        raise InvalidProxyHeader(
            f"PROXY v2 header of {length} bytes, more than {MAX_V2_HEADER}"
        )
    address_length = _V2_ADDRESS_LENGTHS.get(family)
    if command == _V2_PROXY:
        if address_length is None:
            raise InvalidProxyHeader(
                f"PROXY v2 with unknown address family and protocol {family:#04x}"
            )
        if block_length < address_length:
            raise InvalidProxyHeader(
                f"PROXY v2 family {family:#04x} needs {address_length} bytes of"
                f" addresses, the header has {block_length}"
            )
    if len(data) < length:
        return None
    if command == _V2_LOCAL:
        # The balancer's own connection (a health check): its addresses are
        # the connection's, whatever the block says.
        return ProxyHeader(None, None, length, 2)
    source: Optional[Address] = None
    destination: Optional[Address] = None
    if family in (_V2_TCP4, _V2_UDP4):
        raw_source, raw_destination, source_port, destination_port = (
            _V2_IPV4.unpack_from(data, _V2_FIXED.size)
        )
        source = (str(ipaddress.IPv4Address(raw_source)), source_port)
        destination = (str(ipaddress.IPv4Address(raw_destination)), destination_port)
    elif family in (_V2_TCP6, _V2_UDP6):
        raw_source, raw_destination, source_port, destination_port = (
            _V2_IPV6.unpack_from(data, _V2_FIXED.size)
        )
        source = (_text(ipaddress.IPv6Address(raw_source)), source_port)
        destination = (_text(ipaddress.IPv6Address(raw_destination)), destination_port)
    # UNSPEC and unix sockets: no address Gourmet can use; TLVs after the
    # addresses are skipped.
    return ProxyHeader(source, destination, length, 2)
