"""
Sticky sessions: the opaque token that names a server in a client's
cookie, and the server a token names.

A token is a keyed hash (HMAC-SHA256, cut to 16 hex digits) of the
upstream's name and the server's address, so it never shows the address
and cannot be made for another address without the key.  It stays the same
while the address, the upstream's name and the key do: across reloads
always; across restarts and between several Gourmets only with a
configured ``sticky_secret`` (otherwise each upstream draws a random key
when it is created, and clients of a restarted Gourmet are balanced afresh
once, then stick again).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Dict, Optional


class StickyTokens:
    """
    Tokens for the servers of one upstream.

    :param secret: the key; None draws a random one, kept for the life of
        this object (the upstream's, which reloads keep).
    """

    def __init__(self, upstream: str, secret: Optional[str]) -> None:
        self._upstream = upstream.encode("utf-8")
        self._random = os.urandom(32)
        self._key = self._random
        self._tokens: Dict[str, bytes] = {}
        self.rekey(secret)

    def rekey(self, secret: Optional[str]) -> None:
        """
        Use ``secret`` (a reload's), or the random key when it is None.
        """
        key = self._random if secret is None else secret.encode("utf-8")
        if key != self._key:
            self._key = key
            self._tokens.clear()

    def token(self, address: str) -> bytes:
        """
        The cookie value that names the server at ``address``.
        """
        token = self._tokens.get(address)
        if token is None:
            message = self._upstream + b"\0" + address.encode("utf-8")
            digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()
            token = self._tokens[address] = digest[:16].encode("ascii")
        return token
