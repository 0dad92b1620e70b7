"""
The PROXY protocol header codec: the examples of HAProxy's specification
(doc/proxy-protocol.txt) read as it says, what Gourmet writes read back by
Twisted's own parsers (an independent reader), and hostile input refused
with a reason, within bounds.
"""

from __future__ import annotations

import struct
from ipaddress import ip_address
from typing import Optional

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from gourmet.net.proxy_header import (
    MAX_V1_HEADER,
    MAX_V2_HEADER,
    V2_SIGNATURE,
    InvalidProxyHeader,
    ProxyHeader,
    encode_v1,
    encode_v2,
    parse,
    starts_like_a_header,
)

FULL_V6 = ":".join(["ffff"] * 8)


def v2(command: int, family: int, block: bytes, length: Optional[int] = None) -> bytes:
    """
    A v2 header laid out as the specification's ``struct proxy_hdr_v2``.
    """
    if length is None:
        length = len(block)
    return V2_SIGNATURE + struct.pack("!BBH", command, family, length) + block


# The specification's examples, v1 (section 2.1).
SPEC_V1 = [
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(("192.168.0.1", 56324), ("192.168.0.11", 443), 47, 1),
    ),
    (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ProxyHeader(("255.255.255.255", 65535), ("255.255.255.255", 65535), 56, 1),
    ),
    (
        f"PROXY TCP6 {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(),
        ProxyHeader((FULL_V6, 65535), (FULL_V6, 65535), 104, 1),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(None, None, 15, 1)),
    (
        f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(),
        ProxyHeader(None, None, 107, 1),
    ),
]


@pytest.mark.parametrize("line, header", SPEC_V1)
def test_spec_v1_examples(line: bytes, header: ProxyHeader) -> None:
    assert parse(line) == header


def test_spec_example_before_an_http_request() -> None:
    request = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + request
    header = parse(data)
    assert header is not None
    assert header.source == ("192.168.0.1", 56324)
    assert data[header.length :] == request


def test_spec_v2_addresses() -> None:
    # TCP over IPv4 (\x21 \x11, 12 bytes), as the structs of section 2.2 say.
    ipv4 = v2(
        0x21, 0x11, bytes([192, 168, 0, 1, 192, 168, 0, 11]) + b"\xdc\x04\x01\xbb"
    )
    assert parse(ipv4) == ProxyHeader(
        ("192.168.0.1", 56324), ("192.168.0.11", 443), 28, 2
    )
    # TCP over IPv6 (\x21 \x21, 36 bytes).
    ipv6 = v2(
        0x21,
        0x21,
        b"\x20\x01\x0d\xb8"
        + bytes(11)
        + b"\x01"
        + bytes(15)
        + b"\x01"
        + b"\x00\x50\x01\xbb",
    )
    assert parse(ipv6) == ProxyHeader(("2001:db8::1", 80), ("::1", 443), 52, 2)


def test_v2_local_keeps_the_connections_addresses() -> None:
    # A health check: LOCAL, UNSPEC, no addresses; and LOCAL with a block,
    # which the receiver must skip rather than assume empty.
    assert parse(v2(0x20, 0x00, b"")) == ProxyHeader(None, None, 16, 2)
    block = bytes(12)
    assert parse(v2(0x20, 0x11, block) + b"GET") == ProxyHeader(None, None, 28, 2)


def test_v2_unspec_and_unix_keep_the_connections_addresses() -> None:
    assert parse(v2(0x21, 0x00, b"")) == ProxyHeader(None, None, 16, 2)
    unix = b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")
    assert parse(v2(0x21, 0x31, unix)) == ProxyHeader(None, None, 232, 2)


def test_v2_tlvs_are_skipped() -> None:
    tlvs = b"\x05\x00\x04abcd" + b"\x04\x00\x00"  # UNIQUE_ID, then NOOP
    data = v2(
        0x21, 0x11, bytes([203, 0, 113, 7, 10, 0, 0, 1]) + b"\x30\x39\x00\x50" + tlvs
    )
    header = parse(data + b"rest")
    assert header == ProxyHeader(("203.0.113.7", 12345), ("10.0.0.1", 80), len(data), 2)


@pytest.mark.parametrize(
    "source, destination, v1, v2_family",
    [
        (("203.0.113.7", 51000), ("10.0.0.1", 8080), b"TCP4", 0x11),
        (("2001:db8::7", 51000), ("::1", 8080), b"TCP6", 0x21),
        # Mixed families: IPv4 as IPv4-mapped IPv6, as HAProxy sends them.
        (("203.0.113.7", 1), ("::1", 2), b"TCP6", 0x21),
    ],
)
def test_encoders_round_trip(
    source: tuple[str, int], destination: tuple[str, int], v1: bytes, v2_family: int
) -> None:
    line = encode_v1(source, destination)
    assert line.split(b" ")[1] == v1
    binary = encode_v2(source, destination)
    assert binary[13] == v2_family
    for data, version in ((line, 1), (binary, 2)):
        header = parse(data + b"GET / HTTP/1.1\r\n")
        assert header is not None
        assert header.version == version and header.length == len(data)
        # Mixed families were sent IPv4-mapped: read back as IPv4.
        assert (header.source, header.destination) == (source, destination)


def test_an_independent_reader_reads_what_gourmet_writes() -> None:
    """
    Twisted's PROXY parsers (twisted.protocols.haproxy) read Gourmet's
    headers as the same addresses.
    """
    cases = [
        (("203.0.113.7", 51000), ("127.0.0.1", 8080), IPv4Address),
        (("2001:db8::7", 51000), ("::1", 8080), IPv6Address),
    ]
    for source, destination, kind in cases:
        for info in (
            V1Parser.parse(encode_v1(source, destination)[:-2]),
            V2Parser.parse(encode_v2(source, destination)),
        ):
            # Twisted's v2 parser writes IPv6 addresses uncompressed.
            read_source, read_destination = info.source, info.destination
            assert isinstance(read_source, (IPv4Address, IPv6Address))
            assert isinstance(read_destination, (IPv4Address, IPv6Address))
            assert type(read_source) is type(read_destination) is kind
            assert (ip_address(read_source.host), read_source.port) == (
                ip_address(source[0]),
                source[1],
            )
            assert (ip_address(read_destination.host), read_destination.port) == (
                ip_address(destination[0]),
                destination[1],
            )


def test_unknown_addresses_encode_as_unknown_and_local() -> None:
    for source, destination in [
        (None, ("127.0.0.1", 80)),
        (("/run/gourmet.sock", 0), ("127.0.0.1", 80)),
        (("127.0.0.1", 80), None),
    ]:
        assert encode_v1(source, destination) == b"PROXY UNKNOWN\r\n"
        assert encode_v2(source, destination) == V2_SIGNATURE + b"\x20\x00\x00\x00"
        assert parse(encode_v2(source, destination)) == ProxyHeader(None, None, 16, 2)


def test_ipv6_zone_is_left_out() -> None:
    line = encode_v1(("fe80::1%eth0", 1), ("fe80::2%eth0", 2))
    assert line == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"


def test_need_more_until_the_whole_header() -> None:
    for data in [
        encode_v1(("203.0.113.7", 51000), ("10.0.0.1", 8080)),
        encode_v2(("2001:db8::7", 51000), ("::1", 8080)),
    ]:
        for end in range(len(data)):
            assert parse(data[:end]) is None, data[:end]
        assert parse(data) is not None


def test_starts_like_a_header() -> None:
    assert starts_like_a_header(b"PROXY TCP4 ") is True
    assert starts_like_a_header(V2_SIGNATURE) is True
    assert starts_like_a_header(b"PRO") is None
    assert starts_like_a_header(b"\r\n\r\n") is None
    assert starts_like_a_header(b"") is None
    assert starts_like_a_header(b"GET / HTTP/1.1\r\n") is False
    assert starts_like_a_header(b"\x16\x03\x01") is False  # a TLS ClientHello
    assert starts_like_a_header(b"\r\n\r\nGET") is False


HOSTILE = [
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00", "no PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF, not CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not before LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 example.com 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "not 0 to 65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "not 0 to 65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", "not 0 to 65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "not 0 to 65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "not 0 to 65535"),
    (b"PROXY TCP6 \xff::1 ::1 1 2\r\n", "not an IPv6 address"),
    # Oversize: no CRLF in the first 107 bytes.
    (b"PROXY UNKNOWN " + b"f" * 100, "longer than 107 bytes"),
    (f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 655356\r\n".encode(), "longer than 107"),
    # v2: bad version, command, family, lengths.
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
    (V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "unknown address family"),
    (V2_SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12), "unknown address family"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "needs 12 bytes of addresses"),
    (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "needs 36 bytes of addresses"),
    (V2_SIGNATURE + b"\x21\x31\x00\x24" + bytes(36), "needs 216 bytes"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "more than 4096"),
    (V2_SIGNATURE + b"\x20\x00\xff\xff", "more than 4096"),
]


@pytest.mark.parametrize("data, reason", HOSTILE)
def test_hostile_headers_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidProxyHeader, match=reason.replace("|", r"\|")):
        parse(data)


def test_bounds_are_decided_early() -> None:
    # An oversize v2 length is refused from its 16 fixed bytes, before the
    # body it announces; a v1 line at its bound with no LF is refused at 107.
    assert (
        parse(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_HEADER - 16))
        is None
    )
    with pytest.raises(InvalidProxyHeader):
        parse(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_HEADER - 15))
    assert parse(b"PROXY " + b"x" * (MAX_V1_HEADER - 7)) is None
    with pytest.raises(InvalidProxyHeader):
        parse(b"PROXY " + b"x" * (MAX_V1_HEADER - 6))


def test_header_repr_names_the_addresses() -> None:
    assert "203.0.113.7" in repr(ProxyHeader(("203.0.113.7", 1), None, 10, 1))
