"""
Hop-by-hop headers never cross the proxy; forwarding headers say who asked,
and what a client says about that is believed only from a trusted proxy.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import pytest

from gourmet._twisted.headers import (
    CheckedHeaders,
)
from gourmet.http.forwarding import (
    TrustedProxies,
    forwardable,
    forwarded_element,
    parse_ip,
    upstream_request_headers,
)


def test_forwardable_drops_hop_by_hop_and_connection_named() -> None:
    headers = [
        (b"Connection", b"keep-alive, X-Secret"),
        (b"Connection", b"Foo"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Checksum"),
        (b"X-Secret", b"1"),
        (b"Foo", b"2"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert forwardable(headers) == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def forward(
    headers: Sequence[Tuple[bytes, bytes]],
    client_ip: bytes = b"127.0.0.1",
    trusted: Sequence[str] = (),
) -> Dict[bytes, List[bytes]]:
    grouped: Dict[bytes, List[bytes]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    result, _ = upstream_request_headers(
        grouped.items(),
        client_ip=client_ip,
        scheme=b"http",
        via=b"1.1 gourmet",
        trusted=TrustedProxies(trusted),
    )
    sent: Dict[bytes, List[bytes]] = {}
    for name, value in result:
        sent.setdefault(name, []).append(value)
    return sent


SPOOFED = [
    (b"Host", b"shop.example"),
    (b"X-Forwarded-For", b"203.0.113.9"),
    (b"X-Real-Ip", b"6.6.6.6"),
    (b"X-Forwarded-Proto", b"https"),
    (b"X-Forwarded-Host", b"evil.example"),
    (b"Forwarded", b"for=6.6.6.6;proto=https"),
    (b"Via", b"1.1 edge"),
    (b"Accept", b"*/*"),
]


def test_an_untrusted_clients_forwarding_headers_are_replaced() -> None:
    assert forward(SPOOFED) == {
        b"Accept": [b"*/*"],
        b"X-Forwarded-For": [b"127.0.0.1"],
        b"X-Real-IP": [b"127.0.0.1"],
        b"X-Forwarded-Proto": [b"http"],
        b"X-Forwarded-Host": [b"shop.example"],
        b"Forwarded": [b"for=127.0.0.1;proto=http;host=shop.example"],
        b"Via": [b"1.1 edge, 1.1 gourmet"],
    }


def test_a_trusted_proxys_forwarding_headers_are_appended_to() -> None:
    assert forward(SPOOFED, trusted=["127.0.0.0/8"]) == {
        b"Accept": [b"*/*"],
        b"X-Forwarded-For": [b"203.0.113.9, 127.0.0.1"],
        b"X-Real-IP": [b"203.0.113.9"],
        b"X-Forwarded-Proto": [b"https"],
        b"X-Forwarded-Host": [b"evil.example"],
        b"Forwarded": [
            b"for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=shop.example"
        ],
        b"Via": [b"1.1 edge, 1.1 gourmet"],
    }


def test_a_trusted_proxy_fills_in_what_it_did_not_say() -> None:
    sent = forward(
        [(b"Host", b"a"), (b"X-Forwarded-Proto", b"https")], trusted=["127.0.0.1"]
    )
    assert sent[b"X-Forwarded-Proto"] == [b"https"]
    assert sent[b"X-Forwarded-Host"] == [b"a"]


def test_a_trusted_proxy_without_forwarding_headers_is_the_client() -> None:
    sent = forward([(b"Host", b"a")], client_ip=b"10.1.2.3", trusted=["10.0.0.0/8"])
    assert sent[b"X-Forwarded-For"] == [b"10.1.2.3"]
    assert sent[b"X-Real-IP"] == [b"10.1.2.3"]
    assert sent[b"X-Forwarded-Proto"] == [b"http"]


@pytest.mark.parametrize(
    ("forwarded_for", "real_ip"),
    [
        # Right to left past trusted proxies: the first untrusted address.
        ([b"198.51.100.1, 203.0.113.5, 10.0.0.7"], b"203.0.113.5"),
        # Over several header lines too.
        ([b"198.51.100.1", b"203.0.113.5", b"10.0.0.7, 10.0.0.8"], b"203.0.113.5"),
        # Every address trusted: the left-most.
        ([b"10.9.9.9, 10.0.0.7"], b"10.9.9.9"),
        # Garbage stops the walk at the proxy that passed it on.
        ([b"198.51.100.1, not-an-ip, 10.0.0.7"], b"10.0.0.7"),
        ([b"junk"], b"10.0.0.1"),
    ],
)
def test_real_ip_walks_from_the_right_past_trusted_proxies(
    forwarded_for: List[bytes], real_ip: bytes
) -> None:
    headers = [(b"X-Forwarded-For", value) for value in forwarded_for]
    sent = forward(headers, client_ip=b"10.0.0.1", trusted=["10.0.0.0/8"])
    assert sent[b"X-Real-IP"] == [real_ip]
    assert sent[b"X-Forwarded-For"] == [b", ".join([*forwarded_for, b"10.0.0.1"])]


def test_a_peer_outside_the_trusted_networks_is_not_believed() -> None:
    sent = forward(
        [(b"X-Forwarded-For", b"1.2.3.4")],
        client_ip=b"192.0.2.1",
        trusted=["10.0.0.0/8", "::1"],
    )
    assert sent[b"X-Forwarded-For"] == [b"192.0.2.1"]
    assert sent[b"X-Real-IP"] == [b"192.0.2.1"]


def test_trusted_networks_ignore_host_bits_and_mapped_addresses() -> None:
    trusted = TrustedProxies(["10.1.2.3/8", "2001:db8::/32"])
    assert trusted.trusts(parse_ip(b"10.200.0.1"))
    assert trusted.trusts(parse_ip(b"::ffff:10.0.0.1"))
    assert trusted.trusts(parse_ip(b"2001:db8::5"))
    assert not trusted.trusts(parse_ip(b"11.0.0.1"))
    assert not trusted.trusts(parse_ip(b"unix"))
    assert not TrustedProxies()


def test_expect_is_not_forwarded() -> None:
    sent = forward([(b"Expect", b"100-continue"), (b"Accept", b"*/*")])
    assert b"Expect" not in sent and sent[b"Accept"] == [b"*/*"]


@pytest.mark.parametrize(
    ("client_ip", "host", "element"),
    [
        (b"192.0.2.1", b"a.example", b"for=192.0.2.1;proto=http;host=a.example"),
        (b"2001:db8::1", None, b'for="[2001:db8::1]";proto=http'),
        (b"unix", b"a:8080", b'for=unknown;proto=http;host="a:8080"'),
        (b"192.0.2.1", b'a"b\\', b'for=192.0.2.1;proto=http;host="a\\"b\\\\"'),
    ],
)
def test_forwarded_element(
    client_ip: bytes, host: bytes | None, element: bytes
) -> None:
    assert forwarded_element(client_ip, b"http", host) == element


def test_checked_headers_are_twisted_headers_in_their_canonical_case() -> None:
    """
    What the proxy needs of Twisted's Headers when it adds the upstream's
    checked values directly: found under any case, kept in order with
    repeats, written out in Twisted's canonical case.
    """
    headers = CheckedHeaders()
    headers.add_checked(b"set-cookie", b"a=1")
    headers.add_checked(b"Content-Type", b"text/plain")
    headers.add_checked(b"SET-COOKIE", b"b=2")
    headers.add_checked(b"etag", b'"x"')
    assert headers.getRawHeaders(b"Set-Cookie") == [b"a=1", b"b=2"]
    assert headers.hasHeader(b"content-type") and headers.hasHeader(b"ETAG")
    assert list(headers.getAllRawHeaders()) == [
        (b"Set-Cookie", [b"a=1", b"b=2"]),
        (b"Content-Type", [b"text/plain"]),
        (b"ETag", [b'"x"']),
    ]
    headers.setRawHeaders(b"content-type", [b"text/html"])
    assert headers.getRawHeaders(b"Content-Type") == [b"text/html"]
