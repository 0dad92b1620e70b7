"""
Which certificate answers the name a client asks for in its TLS hello
(Server Name Indication): pure selection, with no OpenSSL in it.
"""

from __future__ import annotations

from typing import Dict, Generic, Iterable, Optional, Sequence, Tuple, TypeVar

_T = TypeVar("_T")


def normal_name(name: str) -> str:
    """
    A DNS name as names are compared: lower-case, without a final dot.
    """
    return name.lower().rstrip(".")


class NameIndex(Generic[_T]):
    """
    Values (certificates, contexts) by the DNS names each is for.

    A name is looked up exactly first, then as a wildcard of its parent
    (``*.example.com`` is for ``a.example.com``, neither for
    ``example.com`` nor ``a.b.example.com``, as RFC 6125 has it), without
    regard to case.  A client that sends no name, or one no value is for,
    gets the first value: what nginx's ``default_server`` does.  When
    two values are for one name, the first listed has it.

    :param entries: each value with its names, in order; at least one.
    """

    def __init__(self, entries: Sequence[Tuple[Iterable[str], _T]]) -> None:
        if not entries:
            raise ValueError("a name index needs at least one entry")
        self.default: _T = entries[0][1]
        self._names: Dict[str, _T] = {}
        for names, value in entries:
            for name in names:
                self._names.setdefault(normal_name(name), value)

    def select(self, server_name: Optional[bytes]) -> _T:
        """
        The value for the name a client sent (as the bytes of its hello),
        or the default one.
        """
        if not server_name:
            return self.default
        try:
            name = normal_name(server_name.decode("ascii"))
        except UnicodeDecodeError:
            return self.default
        found = self._names.get(name)
        if found is not None:
            return found
        parent = name.partition(".")[2]
        if parent:
            found = self._names.get("*." + parent)
            if found is not None:
                return found
        return self.default
