"""
Request IDs (``X-Request-ID``): one per request, made here or kept from a
trusted proxy in front, so that one request can be followed through the
logs of every hop.
"""

from __future__ import annotations

import os
import re
from binascii import hexlify
from typing import Optional, Sequence

#: The header that carries the ID, both ways.
REQUEST_ID = b"X-Request-ID"

#: An ID Gourmet keeps from a trusted proxy: visible ASCII, no spaces, not
#: too long for a log line.
_KEPT = re.compile(rb"[\x21-\x7e]{1,200}")


#: Random bytes read from the kernel at once: a system call per 256 IDs
#: rather than per ID (as OpenSSL's ``RAND_bytes``, which nginx uses, reads
#: ahead too).
_READ_AHEAD = 4096


class RequestIds:
    """
    Makes new IDs: 128 random bits (``os.urandom``) each, as 32
    lower-case hex digits, as nginx's ``$request_id``.
    """

    def __init__(self) -> None:
        self._random = b""
        self._at = 0

    def new(self) -> bytes:
        at = self._at
        if at >= len(self._random):
            self._random = os.urandom(_READ_AHEAD)
            at = 0
        self._at = at + 16
        return hexlify(self._random[at : at + 16])


def kept_request_id(values: Optional[Sequence[bytes]]) -> Optional[bytes]:
    """
    The ID of a trusted proxy's ``X-Request-ID`` values, if it is one
    Gourmet can pass on and log as it is: a single value of 1 to 200
    visible ASCII characters.
    """
    if values is None or len(values) != 1:
        return None
    value = values[0]
    return value if _KEPT.fullmatch(value) else None
