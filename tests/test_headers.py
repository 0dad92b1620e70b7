"""
Hop-by-hop headers never cross the proxy; forwarding headers say who asked.
"""

from __future__ import annotations

from gourmet.headers import forwardable, upstream_request_headers


def test_forwardable_drops_hop_by_hop_and_connection_named() -> None:
    headers = [
        (b"Connection", b"keep-alive, X-Secret"),
        (b"Connection", b"Foo"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Secret", b"1"),
        (b"Foo", b"2"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert forwardable(headers) == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_forwarding_headers_are_appended_and_set() -> None:
    headers, host = upstream_request_headers(
        [
            (b"Host", [b"shop.example"]),
            (b"X-Forwarded-For", [b"203.0.113.9"]),
            (b"X-Real-Ip", [b"6.6.6.6"]),
            (b"X-Forwarded-Proto", [b"https"]),
            (b"Via", [b"1.1 edge"]),
            (b"Accept", [b"*/*"]),
        ],
        client_ip=b"127.0.0.1",
        scheme=b"http",
        via=b"1.1 gourmet",
    )
    assert host == b"shop.example"
    assert dict(headers) == {
        b"Accept": b"*/*",
        b"X-Forwarded-For": b"203.0.113.9, 127.0.0.1",
        b"X-Real-IP": b"127.0.0.1",
        b"X-Forwarded-Proto": b"http",
        b"X-Forwarded-Host": b"shop.example",
        b"Via": b"1.1 edge, 1.1 gourmet",
    }
