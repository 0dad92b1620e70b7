"""
What a request must look like before Gourmet passes it on: pure checks of
the request line, each header line and the whole head, raising
:exc:`BadRequest` with the status to answer.

A proxy that reads a request differently from the server behind it opens
a request-smuggling hole, so Gourmet accepts only requests that every
reasonable parser reads the same way: anything ambiguous (two framings,
obsolete syntax, stray control bytes) is refused.
"""

from __future__ import annotations

import re
from typing import AbstractSet, List, NamedTuple, Optional, Sequence, Tuple

from gourmet.http.forwarding import FORWARDING
from gourmet.http.tokens import CONTROL, TCHAR

#: Status lines of Gourmet's own refusals (RFC 9110 names, whatever the
#: Python version).
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}

#: The largest body length accepted from a request when there is no
#: ``max_body_size``: 18 decimal digits, below 2**63.
MAX_LENGTH_DIGITS = 18
MAX_BODY = 10**MAX_LENGTH_DIGITS - 1

_VERSIONS = frozenset({b"HTTP/1.0", b"HTTP/1.1"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
#: Headers a client may not name in Connection: the proxy would strip
#: them, changing the request's framing or what Gourmet says about it.
_PROTECTED = FORWARDING | {b"content-length", b"transfer-encoding", b"host"}

# A target is printable ASCII without "#": a fragment is never sent, and
# servers disagree on what to do with one.
_REQUEST_LINE = re.compile(
    rb"([" + TCHAR + rb"]+) ([\x21\x22\x24-\x7e]+) (HTTP/[0-9]\.[0-9])"
)
_ABSOLUTE_TARGET = re.compile(rb"(?i:https?)://([^/?]*)([/?].*)?")
# A DNS name or IPv4 address, or an IPv6 literal, and an optional port.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")
_HEADER_NAME = re.compile(rb"[" + TCHAR + rb"]+")
_DIGITS = re.compile(rb"[0-9]+")
_CODINGS = re.compile(rb"[" + TCHAR + rb"]+(?: *, *[" + TCHAR + rb"]+)*")


class BadRequest(Exception):
    """
    A request Gourmet will not pass on: it is answered with ``status`` and
    its connection closed.

    :ivar status: the response status.
    :ivar reason: what was wrong, for the log.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class RequestLine(NamedTuple):
    """
    A request line that passed :func:`check_request_line`.

    :ivar target: in origin form (or ``*``): an absolute-form target is
        reduced to its path and query.
    :ivar authority: the host and port of an absolute-form target, which
        the Host header must repeat; None for other forms.
    """

    method: bytes
    target: bytes
    version: bytes
    authority: Optional[bytes] = None


class Head(NamedTuple):
    """
    What :func:`check_head` found out about a request.

    :ivar body_length: the body's length; None for a chunked body.
    :ivar close: whether the client asked to close the connection after
        this request.
    :ivar keep_alive: whether it asked to keep it (what an HTTP/1.0 client
        must say for that).
    """

    body_length: Optional[int]
    close: bool
    keep_alive: bool = False


def refusal(status: int, server: bool = True, json_body: bytes = b"") -> bytes:
    """
    Gourmet's answer to a request it refuses: a status and nothing else,
    or for clients that read JSON (the admin console's) a JSON body.

    :param server: whether to say ``Server: Gourmet``.
    """
    named = b"Server: Gourmet\r\n" if server else b""
    if json_body:
        named += b"Content-Type: application/json\r\n"
    return b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        status,
        REASONS[status],
        named,
        len(json_body),
        json_body,
    )


def check_host(value: bytes) -> None:
    """
    :raises BadRequest: unless ``value`` is a host name or address with an
        optional port, as a Host header or an absolute target holds it.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        raise BadRequest(400, "malformed host")
    port = match.group(1)
    if port is not None and int(port) > 65535:
        raise BadRequest(400, "port out of range in host")


def check_request_line(line: bytes, limit: int) -> RequestLine:
    """
    Check a request line: ``method SP target SP HTTP/1.x`` exactly, the
    method a token, the target a path (or ``*`` for OPTIONS) or an
    absolute ``http(s)`` URL, in printable ASCII.

    :param limit: the longest line accepted, in bytes.
    :raises BadRequest: 414 for a line over ``limit``, 505 for an HTTP
        version other than 1.0 and 1.1, 501 for CONNECT, 400 otherwise.
    """
    if len(line) > limit:
        raise BadRequest(414, f"request line longer than {limit} bytes")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise BadRequest(400, "malformed request line")
    method, target, version = match.groups()
    if version not in _VERSIONS:
        raise BadRequest(505, f"unsupported version {version.decode()}")
    if method == b"CONNECT":
        raise BadRequest(501, "CONNECT is not supported")
    if target.startswith(b"/") or (target == b"*" and method == b"OPTIONS"):
        return RequestLine(method, target, version)
    absolute = _ABSOLUTE_TARGET.fullmatch(target)
    if absolute is None:
        raise BadRequest(400, "request target is neither a path nor a URL")
    authority, rest = absolute.groups()
    check_host(authority)
    if not rest or rest.startswith(b"?"):
        rest = b"/" + (rest or b"")
    return RequestLine(method, rest, version, authority)


def check_header_line(line: bytes) -> Tuple[bytes, bytes]:
    """
    Check a header (or trailer) line: a token, a colon right after it, and
    a value without control bytes other than HTAB.  The framing headers
    must be written plainly, with no HTAB around their value.  (A name
    with ``_`` is a token: what becomes of it is the channel's
    ``underscores_in_headers``.)

    :return: the name in lower case, and the value without the spaces and
        tabs around it.
    :raises BadRequest: 400.
    """
    name, colon, value = line.partition(b":")
    if not colon:
        raise BadRequest(400, "header line without a colon")
    if _HEADER_NAME.fullmatch(name) is None:
        if line.startswith((b" ", b"\t")):
            raise BadRequest(400, "obsolete line folding in the head")
        raise BadRequest(400, "malformed header name")
    lower = name.lower()
    if CONTROL.search(value) is not None:
        raise BadRequest(400, f"control character in {lower.decode()}")
    if lower in _FRAMING and b"\t" in value:
        raise BadRequest(400, f"tab in {lower.decode()}")
    return lower, value.strip(b" \t")


def _check_hosts(line: RequestLine, hosts: Sequence[bytes]) -> None:
    if len(hosts) > 1:
        raise BadRequest(400, "more than one Host header")
    if not hosts:
        if line.version == b"HTTP/1.1":
            raise BadRequest(400, "HTTP/1.1 request without Host")
        return
    check_host(hosts[0])
    if line.authority is not None and line.authority.lower() != hosts[0].lower():
        raise BadRequest(400, "Host differs from the absolute target's host")


def _connection_options(values: Sequence[bytes]) -> AbstractSet[bytes]:
    tokens = {
        token.strip(b" \t").lower() for value in values for token in value.split(b",")
    }
    protected = tokens & _PROTECTED
    if protected:
        names = b", ".join(sorted(protected)).decode()
        raise BadRequest(400, f"Connection names {names}")
    return tokens


def content_length(value: bytes) -> int:
    """
    A ``Content-Length`` value: digits only, at most 18 of them.

    :raises BadRequest: 400 when malformed, 413 when too long.
    """
    if _DIGITS.fullmatch(value) is None:
        raise BadRequest(400, "malformed Content-Length")
    if len(value) > MAX_LENGTH_DIGITS:
        raise BadRequest(413, "Content-Length too large")
    return int(value)


def _check_transfer_coding(value: bytes) -> None:
    if value.lower() == b"chunked":
        return
    if _CODINGS.fullmatch(value) is None:
        raise BadRequest(400, "malformed Transfer-Encoding")
    codings = [coding.strip(b" ").lower() for coding in value.split(b",")]
    # RFC 9112, 6.3: a request body whose last coding is not chunked has
    # no length one can trust.
    if codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
        raise BadRequest(400, "chunked is not the last and only framing coding")
    raise BadRequest(501, "unsupported transfer coding")


def _body_length(
    version: bytes, lengths: Sequence[bytes], codings: Sequence[bytes]
) -> Optional[int]:
    if len(lengths) + len(codings) > 1:
        if lengths and codings:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        raise BadRequest(400, "repeated framing header")
    if codings:
        if version != b"HTTP/1.1":
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        _check_transfer_coding(codings[0])
        return None
    if lengths:
        return content_length(lengths[0])
    return 0


def check_head(line: RequestLine, headers: Sequence[Tuple[bytes, bytes]]) -> Head:
    """
    Check a whole request head, each header line having passed
    :func:`check_header_line`.

    - Host: exactly one for HTTP/1.1, at most one for HTTP/1.0, well
      formed, and the same as an absolute target's host.
    - Framing: at most one Content-Length or Transfer-Encoding line, never
      both.  A Content-Length is digits only (any other value, even a
      repeated ``5, 5``, is refused); a Transfer-Encoding is ``chunked``
      (HTTP/1.1 only).  An unknown coding before ``chunked`` gets 501.
    - Connection names none of the framing headers nor those Gourmet sets.

    :raises BadRequest: 400, 413 for a Content-Length of more than 18
        digits, 501 for an unsupported transfer coding.
    """
    hosts: List[bytes] = []
    lengths: List[bytes] = []
    codings: List[bytes] = []
    connection: List[bytes] = []
    wanted = {
        b"host": hosts,
        b"content-length": lengths,
        b"transfer-encoding": codings,
        b"connection": connection,
    }
    for name, value in headers:
        values = wanted.get(name)
        if values is not None:
            values.append(value)
    _check_hosts(line, hosts)
    options = _connection_options(connection)
    close = b"close" in options
    keep_alive = not close and b"keep-alive" in options
    return Head(_body_length(line.version, lengths, codings), close, keep_alive)
