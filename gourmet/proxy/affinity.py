"""
What ties a request to a server: its ``hash_key`` for a keyed balancer,
and its sticky cookie.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from gourmet.config.model import UpstreamConfig
from gourmet.http.cookies import cookie_value, without_cookie

HeaderList = List[Tuple[bytes, bytes]]


def request_key(spec: str, headers: HeaderList, uri: bytes) -> Optional[bytes]:
    """
    The part of a request ``hash_key`` names: ``ip``, the client's address
    as Gourmet believes it (``X-Real-IP``, after ``trusted_proxies``);
    ``uri``, the target as the client sent it (nginx's ``$request_uri``);
    ``header:NAME``, that header's values joined by commas; ``cookie:NAME``,
    that cookie's value.  None when the request has no such part.
    """
    kind, _, name = spec.partition(":")
    if kind == "uri":
        return uri
    if kind == "cookie":
        return cookie_value(headers, name.encode("ascii"))
    wanted = b"x-real-ip" if kind == "ip" else name.lower().encode("ascii")
    values = [value for field, value in headers if field.lower() == wanted]
    if kind == "ip":
        # The last: upstream_request_headers puts Gourmet's own at the end.
        return values[-1] if values else None
    return b", ".join(values) if values else None


def affinity(
    config: UpstreamConfig, headers: HeaderList, uri: bytes
) -> Tuple[Optional[bytes], Optional[bytes], HeaderList]:
    """
    A request's hash key, its sticky cookie's value, and the headers to
    send on: without the sticky cookie, which is Gourmet's and not the
    application's (HAProxy's ``cookie ... indirect``).
    """
    key = None
    if config.hash_key is not None:
        key = request_key(config.hash_key, headers, uri)
    sticky = None
    if config.sticky_cookie is not None:
        name = config.sticky_cookie.encode("ascii")
        sticky = cookie_value(headers, name)
        if sticky is not None:
            headers = without_cookie(headers, name)
    return key, sticky, headers
