"""
Headers that skip Twisted's sanitising copy for values already checked.

Relies on two private names of ``twisted.web.http_headers``, unchanged from
Twisted 24.10 to 26.10: ``_nameEncoder`` (the canonical form of a name)
and ``Headers._rawHeaders`` (the dict of values).  No public method adds a
value without copying and re-checking it: a list and two copies of the
bytes for each header of every response.  :mod:`gourmet._twisted.check`
checks both names at start-up.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers, _nameEncoder


class CheckedHeaders(Headers):
    """
    Headers that may also take values already checked as they were parsed
    (:func:`gourmet.upstream.connection.parse_head` refuses CR, LF and other control
    bytes), without Twisted's sanitising copy: a list and two copies of the
    bytes for each header of every response.

    """

    __slots__ = ()

    def add_checked(self, name: bytes, value: bytes) -> None:
        """
        Add ``value`` to the header ``name``, both known to be well formed.
        """
        self._rawHeaders.setdefault(_nameEncoder.encode(name), []).append(value)

    def set_checked(self, name: bytes, value: bytes) -> None:
        """
        Make ``value`` the one value of the header ``name``, both known to
        be well formed.
        """
        self._rawHeaders[_nameEncoder.encode(name)] = [value]


def set_raw(headers: Headers, name: bytes, value: bytes) -> None:
    """
    Make ``value`` the one value of the header ``name`` in any
    :class:`Headers`, both known to be well formed (Gourmet's own).
    """
    headers._rawHeaders[_nameEncoder.encode(name)] = [value]
