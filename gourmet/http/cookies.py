"""
The little of cookies a proxy needs: one cookie's value in a request's
``Cookie`` headers, those headers without it, and a ``Set-Cookie`` value.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

HeaderList = List[Tuple[bytes, bytes]]


def _pairs(value: bytes) -> Iterable[Tuple[bytes, bytes, bytes]]:
    """
    Each cookie of one ``Cookie`` header value: its name, its value, and
    the piece as written (RFC 6265, 5.4: ``name=value`` joined by ``; ``).
    """
    for piece in value.split(b";"):
        name, equals, cookie = piece.partition(b"=")
        if equals:
            yield name.strip(), cookie.strip().strip(b'"'), piece.strip()


def cookie_value(
    headers: Iterable[Tuple[bytes, bytes]], name: bytes
) -> Optional[bytes]:
    """
    The value of the first cookie called ``name`` in ``headers``' ``Cookie``
    fields (any case of the field name), or None.
    """
    for field, value in headers:
        if field.lower() == b"cookie":
            for each, cookie, _ in _pairs(value):
                if each == name:
                    return cookie
    return None


def without_cookie(headers: HeaderList, name: bytes) -> HeaderList:
    """
    ``headers`` with every cookie called ``name`` taken out of their
    ``Cookie`` fields; a field left empty is dropped.
    """
    kept: HeaderList = []
    for field, value in headers:
        if field.lower() == b"cookie" and name in value:
            pieces = [piece for each, _, piece in _pairs(value) if each != name]
            if pieces:
                kept.append((field, b"; ".join(pieces)))
            continue
        kept.append((field, value))
    return kept


def set_cookie(name: bytes, value: bytes, secure: bool) -> bytes:
    """
    A ``Set-Cookie`` value for a session cookie for the whole site, hidden
    from scripts and not sent on cross-site subrequests; only over HTTPS
    when ``secure``.
    """
    flags = b"; Path=/; HttpOnly; SameSite=Lax"
    return name + b"=" + value + flags + (b"; Secure" if secure else b"")
