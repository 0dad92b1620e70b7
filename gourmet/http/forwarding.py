"""
What a proxy must do to headers on the way through: drop hop-by-hop
headers in both directions (RFC 9110, 7.6.1) and say who the client was,
believing what earlier proxies said about it only when they are trusted.
"""

from __future__ import annotations

import ipaddress
from typing import (
    AbstractSet,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from gourmet.http.tokens import TOKEN, connection_tokens, lower_name

HeaderList = List[Tuple[bytes, bytes]]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

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

#: The headers in which Gourmet tells a server who the client was and how
#: the request came: always Gourmet's own (added to, from a trusted proxy).
FORWARDING = frozenset(
    {
        b"forwarded",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)

#: Request headers Gourmet drops.  ``Expect``: twisted.web has answered
#: ``100 Continue`` and read the whole body already, and the body goes
#: upstream with the request at once, so a server must not wait to be asked.
#: ``X-Real-IP``: always Gourmet's own.
_DROPPED = frozenset({b"expect", b"x-real-ip"})

#: What the proxy in front said about the client's request; kept only from
#: a trusted proxy, otherwise Gourmet's own.
_FROM_PROXY = frozenset({b"x-forwarded-host", b"x-forwarded-proto"})


class TrustedProxies:
    """
    The proxies in front of Gourmet (``[server] trusted_proxies``) whose
    ``X-Forwarded-For`` and ``Forwarded`` headers are believed.

    :param networks: addresses or CIDR networks; host bits are ignored.
    """

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(
            ipaddress.ip_network(network, strict=False) for network in networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: Optional[IPAddress]) -> bool:
        if address is None:
            return False
        return any(address in network for network in self.networks)


def parse_ip(text: bytes) -> Optional[IPAddress]:
    """
    The address ``text`` holds, or None if it is not one.  An IPv4 address
    mapped into IPv6 (as a dual-stack listener reports it) is the IPv4 one.
    """
    try:
        address = ipaddress.ip_address(text.strip().decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def forwardable(
    headers: Sequence[Tuple[bytes, bytes]],
    named: Optional[AbstractSet[bytes]] = None,
) -> HeaderList:
    """
    ``headers`` without the hop-by-hop ones and those their ``Connection``
    lines name.

    :param named: the tokens of those ``Connection`` lines, when known.
    """
    if named is None:
        named = connection_tokens(
            v for n, v in headers if lower_name(n) == b"connection"
        )
    kept = []
    for name, value in headers:
        lower = lower_name(name)
        if lower not in HOP_BY_HOP and lower not in named:
            kept.append((name, value))
    return kept


def upstream_request_headers(
    client_headers: Iterable[Tuple[bytes, Sequence[bytes]]],
    *,
    client_ip: bytes,
    scheme: bytes,
    via: bytes,
    trusted: Optional[TrustedProxies] = None,
) -> Tuple[HeaderList, Optional[bytes]]:
    """
    The headers to send upstream for a client's request, without ``Host``
    (it depends on the server chosen).

    ``Via`` gets Gourmet appended.  What a client says about where a request
    came from (``X-Forwarded-For``, ``X-Real-IP``, ``Forwarded``,
    ``X-Forwarded-Host``, ``X-Forwarded-Proto``) is replaced with what
    Gourmet saw, unless the client is a trusted proxy: then
    ``X-Forwarded-For`` and ``Forwarded`` are appended to, its
    ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` are kept, and
    ``X-Real-IP`` is the right-most address in ``X-Forwarded-For`` that is
    not a trusted proxy (nginx's ``real_ip_recursive``).

    :param client_headers: as :meth:`twisted.web.http_headers.Headers.getAllRawHeaders`
        gives them.
    :param client_ip: the address of the connection's peer.
    :param trusted: the proxies whose forwarding headers are believed.
    :return: the headers, and the client's Host header (None if absent).
    """
    flat = [(name, value) for name, values in client_headers for value in values]
    headers: HeaderList = []
    host = None
    forwarded_for: List[bytes] = []
    forwarded: List[bytes] = []
    from_proxy: HeaderList = []
    via_chain: List[bytes] = []
    for name, value in forwardable(flat):
        lower = lower_name(name)
        if lower == b"host":
            host = value
        elif lower == b"x-forwarded-for":
            forwarded_for.append(value)
        elif lower == b"forwarded":
            forwarded.append(value)
        elif lower == b"via":
            via_chain.append(value)
        elif lower in _FROM_PROXY:
            from_proxy.append((name, value))
        elif lower not in _DROPPED:
            headers.append((name, value))
    via_chain.append(via)
    peer = parse_ip(client_ip) if trusted else None
    if trusted is not None and trusted.trusts(peer):
        real_ip = _real_ip(forwarded_for, client_ip, trusted)
        forwarded_for.append(client_ip)
        told = {name.lower() for name, _ in from_proxy}
        from_proxy += [
            (name, value)
            for name, value in _forwarded_host_and_proto(scheme, host)
            if name.lower() not in told
        ]
    else:
        real_ip = client_ip
        forwarded_for = [client_ip]
        forwarded = []
        from_proxy = _forwarded_host_and_proto(scheme, host)
    forwarded.append(forwarded_element(client_ip, scheme, host))
    headers.append((b"X-Forwarded-For", b", ".join(forwarded_for)))
    headers.append((b"X-Real-IP", real_ip))
    headers.extend(from_proxy)
    headers.append((b"Forwarded", b", ".join(forwarded)))
    headers.append((b"Via", b", ".join(via_chain)))
    return headers, host


def _forwarded_host_and_proto(scheme: bytes, host: Optional[bytes]) -> HeaderList:
    headers = [(b"X-Forwarded-Proto", scheme)]
    if host is not None:
        headers.append((b"X-Forwarded-Host", host))
    return headers


def _real_ip(forwarded_for: List[bytes], peer: bytes, trusted: TrustedProxies) -> bytes:
    """
    Walking ``X-Forwarded-For`` from the right, past trusted proxies, the
    first address that is not one: the client as far as can be told.  A
    malformed entry stops the walk at the last proxy that vouched for it.
    """
    real = peer
    for line in reversed(forwarded_for):
        for entry in reversed(line.split(b",")):
            address = parse_ip(entry)
            if address is None:
                return real
            real = entry.strip()
            if not trusted.trusts(address):
                return real
    return real


def forwarded_element(client_ip: bytes, scheme: bytes, host: Optional[bytes]) -> bytes:
    """
    Gourmet's element of a ``Forwarded`` header (RFC 7239):
    ``for=...;proto=...;host=...``.
    """
    # The peer's address as Twisted gives it needs no parsing: IPv6 has
    # colons, IPv4 starts with a digit, anything else (a Unix socket) is
    # not an address.
    if b":" in client_ip:
        node = b'"[%s]"' % client_ip
    elif client_ip[:1].isdigit():
        node = client_ip
    else:
        node = b"unknown"
    element = b"for=%s;proto=%s" % (node, scheme)
    if host is not None:
        element += b";host=" + _quoted(host)
    return element


def _quoted(value: bytes) -> bytes:
    if TOKEN.match(value):
        return value
    escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"%s"' % escaped
