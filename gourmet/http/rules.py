"""
A location's header rules (``request_headers`` and ``response_headers``):
headers set, added and removed on a request on its way upstream or on a
response on its way back, with values that may name a few variables
(``$remote_addr``, ``$scheme``, ``$host``, ``$request_id``).

A value is compiled once, when the configuration is read, into literal
pieces and variable slots: applying a rule to a request is a join, never a
parse.  Every variable's value is visible ASCII (an address, a scheme, a
host name Gourmet checked, a request ID Gourmet checked or made), so a
value that was valid when compiled is valid when filled in.
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple, Union

from attrs import field, frozen

from gourmet.http.forwarding import FORWARDING, HOP_BY_HOP, HeaderList
from gourmet.http.request_id import REQUEST_ID
from gourmet.http.tokens import CONTROL, is_token, lower_name


class Variables(NamedTuple):
    """
    What one request's rule values may name, each as sent in a header.
    """

    #: The client's address as Gourmet believes it (after ``trusted_proxies``).
    remote_addr: bytes
    #: ``http`` or ``https``: how the client reached Gourmet.
    scheme: bytes
    #: The client's ``Host`` without its port, lower-cased.
    host: bytes
    #: The request's ID (``X-Request-ID``).
    request_id: bytes


#: The names a value may use, as ``$name`` or ``${name}``.
VARIABLES = Variables._fields

# "$$", "${name}", "$name", or a "$" followed by nothing usable.
_DOLLAR = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z0-9_]*))")


class RuleError(ValueError):
    """
    A header name or value that a rule may not have; the message says why.
    """


@frozen
class Template:
    """
    A header value, compiled: literal pieces (bytes) and the indexes of
    :class:`Variables` between them.

    :ivar text: the value as written.
    """

    text: str
    pieces: Tuple[Union[bytes, int], ...]
    #: The value itself when it names no variable.
    constant: Optional[bytes]

    @property
    def variables(self) -> FrozenSet[str]:
        return frozenset(VARIABLES[p] for p in self.pieces if isinstance(p, int))

    def render(self, variables: Optional[Variables]) -> bytes:
        """
        The value with ``variables`` filled in (None when it names none).
        """
        if self.constant is not None:
            return self.constant
        assert variables is not None
        return b"".join(
            [
                piece if isinstance(piece, bytes) else variables[piece]
                for piece in self.pieces
            ]
        )


def _literal(text: str) -> bytes:
    value = text.encode("utf-8")
    if CONTROL.search(value):
        raise RuleError(
            "a header value may not hold control characters (CR, LF, NUL...)"
        )
    return value


def compile_template(text: str) -> Template:
    """
    Compile a header value: ``$name`` or ``${name}`` is a variable of
    :data:`VARIABLES`, ``$$`` a dollar sign.

    :raises RuleError: for an unknown variable, a ``$`` with no name, control
        characters, or spaces at either end (a recipient drops them).
    """
    if text != text.strip(" \t"):
        raise RuleError(
            "a header value may not begin or end with spaces or tabs:"
            " they are not part of the value"
        )
    pieces: List[Union[bytes, int]] = []
    literal: List[str] = []
    at = 0
    for match in _DOLLAR.finditer(text):
        literal.append(text[at : match.start()])
        at = match.end()
        dollar, braced, bare = match.groups()
        if dollar:
            literal.append("$")
            continue
        name = braced if braced is not None else bare
        if name not in VARIABLES:
            known = ", ".join("$" + each for each in VARIABLES)
            if not name:
                raise RuleError(
                    f"a '$' without a variable name; write '$$' for a dollar sign"
                    f" (variables: {known})"
                )
            raise RuleError(f"unknown variable ${name}; known: {known}")
        pieces.append(_literal("".join(literal)))
        literal = []
        pieces.append(VARIABLES.index(name))
    literal.append(text[at:])
    pieces.append(_literal("".join(literal)))
    kept = tuple(piece for piece in pieces if piece != b"")
    if not any(isinstance(piece, int) for piece in kept):
        return Template(text, kept, b"".join(kept))  # type: ignore[arg-type]
    return Template(text, kept, None)


def header_name(name: str) -> bytes:
    """
    ``name`` as a header name.

    :raises RuleError: unless it is an RFC 9110 token.
    """
    encoded = name.encode("utf-8")
    if not is_token(encoded):
        raise RuleError("not a header name: letters, digits and !#$%&'*+-.^_`|~ only")
    return encoded


_FRAMING = (
    "Gourmet frames each message and manages each connection itself;"
    " framing and hop-by-hop headers are not forwarded"
)
_REQUEST_ID = "the request ID is Gourmet's own (see [server] request_id)"

#: Why a rule may not name a header of a request on its way upstream.
OWNED_REQUEST = {
    **{name: _FRAMING for name in HOP_BY_HOP},
    b"host": (
        "Host is the server's own, or the client's with the upstream's"
        " preserve_host = true"
    ),
    **{
        name: (
            "Gourmet sets the forwarding headers itself, from what it saw"
            " and what trusted_proxies said"
        )
        for name in FORWARDING
    },
    b"expect": "Gourmet sends a request's body with its head, without waiting",
    REQUEST_ID.lower(): _REQUEST_ID,
}

#: Why a rule may not name a header of a response on its way to the client.
OWNED_RESPONSE = {
    **{name: _FRAMING for name in HOP_BY_HOP},
    REQUEST_ID.lower(): _REQUEST_ID,
}


def check_not_owned(name: bytes, owned: Dict[bytes, str]) -> None:
    """
    :raises RuleError: when ``name`` is one of the headers ``owned`` names,
        saying why Gourmet keeps it.
    """
    reason = owned.get(name.lower())
    if reason is not None:
        raise RuleError(f"{name.decode()} is not for header rules: {reason}")


def _dropped(rules: HeaderRules) -> FrozenSet[bytes]:
    return frozenset(
        [name.lower() for name, _ in rules.set]
        + [name.lower() for name in rules.remove]
    )


def _uses_variables(rules: HeaderRules) -> bool:
    return any(template.constant is None for _, template in (*rules.set, *rules.add))


@frozen
class HeaderRules:
    """
    One direction's rules: ``set`` replaces every value of a header with
    one, ``add`` adds a value to those there are, ``remove`` deletes a
    header.  A header is named in one of them at most.
    """

    set: Tuple[Tuple[bytes, Template], ...] = ()
    add: Tuple[Tuple[bytes, Template], ...] = ()
    remove: Tuple[bytes, ...] = ()
    #: Lower-case names whose values are dropped: removed, or set anew.
    dropped: FrozenSet[bytes] = field(init=False)
    #: Whether a value names a variable (the request's must be gathered).
    uses_variables: bool = field(init=False)

    @dropped.default
    def _dropped_default(self) -> FrozenSet[bytes]:
        return _dropped(self)

    @uses_variables.default
    def _uses_variables_default(self) -> bool:
        return _uses_variables(self)

    @property
    def variables(self) -> FrozenSet[str]:
        """
        The variables the values name.
        """
        found: FrozenSet[str] = frozenset()
        for _, template in (*self.set, *self.add):
            found |= template.variables
        return found

    def apply(
        self, headers: Sequence[Tuple[bytes, bytes]], variables: Optional[Variables]
    ) -> HeaderList:
        """
        ``headers`` with the rules applied: removed and set headers left out,
        then the values set, then those added, in the order configured.
        """
        dropped = self.dropped
        if dropped:
            kept = [each for each in headers if lower_name(each[0]) not in dropped]
        else:
            kept = list(headers)
        for name, template in self.set:
            kept.append((name, template.render(variables)))
        for name, template in self.add:
            kept.append((name, template.render(variables)))
        return kept


def host_variable(host: Optional[bytes], fallback: bytes) -> bytes:
    """
    ``$host``: the client's ``Host`` without its port and lower-cased, as
    nginx's ``$host``; ``fallback`` (the address the client connected
    to) when it sent none.  An IPv6 address keeps its brackets.
    """
    if not host:
        return fallback
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1].lower()
    return host.partition(b":")[0].lower()
