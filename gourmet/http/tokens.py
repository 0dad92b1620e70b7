"""
The pieces of HTTP syntax every message is made of: token characters,
control bytes, header names in lower case, and the lists in ``Connection``.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Optional, Set

#: The characters of an RFC 9110 token, as the body of a regex class.
TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
TOKEN = re.compile(rb"\A[" + TCHAR + rb"]+\Z")
#: What a field value may not hold (RFC 9110, 5.5): control bytes but HTAB,
#: so NUL and bare CR and LF among them.
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


#: The bytes a token may hold, for ``bytes.translate`` to delete.
_TOKEN_BYTES = bytes(
    byte for byte in range(256) if re.fullmatch(b"[" + TCHAR + b"]", bytes([byte]))
)


def is_token(value: bytes) -> bool:
    """
    Whether ``value`` is an RFC 9110 token (a method, a header name, a
    coding), without a regular expression.
    """
    return bool(value) and not value.translate(None, _TOKEN_BYTES)


#: Lower-case forms of the header names seen that are tokens: the same few
#: names come in every message.  Bounded, as clients and servers may send
#: any.
_lower_names: Dict[bytes, bytes] = {}
_MAX_LOWER_NAMES = 1000


def lower_name(name: bytes) -> bytes:
    """
    ``name.lower()``, without a new bytes object for a name seen before.
    """
    lower = _lower_names.get(name)
    if lower is None:
        lower = name.lower()
        if len(_lower_names) < _MAX_LOWER_NAMES and is_token(name):
            _lower_names[name] = lower
    return lower


def checked_lower_name(name: bytes) -> Optional[bytes]:
    """
    The lower-case form of a header name, or None when it is not a token;
    a name seen before costs one look-up.
    """
    lower = _lower_names.get(name)
    if lower is None and is_token(name):
        lower = lower_name(name)
    return lower


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
