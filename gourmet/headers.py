"""
What a proxy must do to headers on the way through: drop hop-by-hop
headers in both directions (RFC 9110, 7.6.1) and say who the client was.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Set, Tuple

HeaderList = List[Tuple[bytes, bytes]]

#: Headers that describe one connection, never forwarded.  Content-Length
#: is not hop-by-hop, but Gourmet frames each message itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

#: Set by Gourmet for the upstream, replacing what a client sent.
_REPLACED = frozenset(
    {b"host", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-proto"}
)


def connection_tokens(values: Iterable[bytes]) -> Set[bytes]:
    """
    The header names listed in every ``Connection`` line, lower-cased.
    """
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def forwardable(headers: Sequence[Tuple[bytes, bytes]]) -> HeaderList:
    """
    ``headers`` without the hop-by-hop ones and those their ``Connection``
    lines name.
    """
    named = connection_tokens(v for n, v in headers if n.lower() == b"connection")
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in named
    ]


def upstream_request_headers(
    client_headers: Iterable[Tuple[bytes, Sequence[bytes]]],
    *,
    client_ip: bytes,
    scheme: bytes,
    via: bytes,
) -> Tuple[HeaderList, bytes | None]:
    """
    The headers to send upstream for a client's request, without ``Host``
    (it depends on the server chosen).

    ``X-Forwarded-For`` and ``Via`` get the client and Gourmet appended,
    ``X-Real-IP``, ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` are set.

    :param client_headers: as :meth:`twisted.web.http_headers.Headers.getAllRawHeaders`
        gives them.
    :return: the headers, and the client's Host header (None if absent).
    """
    flat = [(name, value) for name, values in client_headers for value in values]
    kept = forwardable(flat)
    headers: HeaderList = []
    host = None
    forwarded_for: List[bytes] = []
    via_chain: List[bytes] = []
    for name, value in kept:
        lower = name.lower()
        if lower in _REPLACED:
            if lower == b"host":
                host = value
        elif lower == b"x-forwarded-for":
            forwarded_for.append(value)
        elif lower == b"via":
            via_chain.append(value)
        else:
            headers.append((name, value))
    forwarded_for.append(client_ip)
    via_chain.append(via)
    headers.append((b"X-Forwarded-For", b", ".join(forwarded_for)))
    headers.append((b"X-Real-IP", client_ip))
    headers.append((b"X-Forwarded-Proto", scheme))
    if host is not None:
        headers.append((b"X-Forwarded-Host", host))
    headers.append((b"Via", b", ".join(via_chain)))
    return headers, host
