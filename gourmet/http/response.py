"""
What a response must look like before Gourmet passes it on: the status line
and headers parsed strictly, and the body's framing certain.  A response
framed two ways, or with bytes servers read differently, is an
:exc:`InvalidResponse`, never a guess: a response framed wrongly would
desynchronise the connection it came on.
"""

from __future__ import annotations

import re
from typing import FrozenSet, List, NoReturn, Optional, Tuple

from attrs import frozen

from gourmet.http.tokens import CONTROL, checked_lower_name, connection_tokens

HeaderList = List[Tuple[bytes, bytes]]

#: The most header lines accepted in a response head.  Real servers send
#: a few dozen; thousands of short ones fit in MAX_HEAD and would cost a
#: list entry each, for every client that gets them.
MAX_HEADERS = 200

#: Control bytes but HTAB, CR and LF (which parse_head counts instead).
_CONTROL_BUT_CRLF = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class InvalidResponse(Exception):
    """
    The server's response is not HTTP/1.1 that can be framed with certainty.
    """


@frozen
class ResponseHead:
    """
    The status line and headers of a response, as the server sent them.

    :ivar headers: in order, repeated headers repeated, framing included.
    :ivar content_length: the body's length when the server said it.
    :ivar chunked: whether the body is chunked.
    :ivar connection: the tokens of its Connection lines, lower-cased.
    """

    version: bytes
    status: int
    reason: bytes
    headers: HeaderList
    content_length: Optional[int]
    chunked: bool
    connection: FrozenSet[bytes] = frozenset()


def parse_head(raw: bytes) -> ResponseHead:
    """
    Parse a response's status line and headers (without the blank line).

    This runs for every response, so it makes one pass over the lines,
    without a regular expression per line, and allocates little (which is
    time on PyPy): each header name is checked once per process, and the
    whole head is searched for control bytes at once.

    :raises InvalidResponse: for anything but a well-formed head whose body
        framing is certain.
    """
    lines = raw.split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        raise InvalidResponse(f"more than {MAX_HEADERS} header lines")
    if _has_control_bytes(raw, len(lines) - 1):
        _refuse_control_bytes(lines)
    version, status, reason = _status_line(lines[0])
    headers: HeaderList = []
    lengths: List[bytes] = []
    codings: List[bytes] = []
    connection: List[bytes] = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lower = _check_name(name, line)
        value = value.strip(b" \t")
        headers.append((name, value))
        if lower == b"content-length":
            lengths.append(value)
        elif lower == b"transfer-encoding":
            codings.append(value)
        elif lower == b"connection":
            connection.append(value)
    content_length, chunked = _framing(lengths, codings)
    return ResponseHead(
        version=version,
        status=status,
        reason=reason,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        connection=frozenset(connection_tokens(connection)),
    )


def _check_name(name: bytes, line: bytes) -> bytes:
    """
    The lower-case form of a header name, once it is known to be a token.
    """
    # Also refuses a line without a colon, obsolete line folding and
    # spaces before the colon, which servers and proxies read differently.
    lower = checked_lower_name(name)
    if lower is None or b":" not in line:
        raise InvalidResponse(f"bad header line {line[:60]!r}")
    return lower


def _has_control_bytes(raw: bytes, line_breaks: int) -> bool:
    """
    Whether a head of ``line_breaks`` CRLFs holds a control byte other than
    those CRLFs and HTAB: NUL, or a bare CR or LF, which servers read
    differently.
    """
    return (
        raw.count(b"\r") != line_breaks
        or raw.count(b"\n") != line_breaks
        or _CONTROL_BUT_CRLF.search(raw) is not None
    )


def _refuse_control_bytes(lines: List[bytes]) -> NoReturn:
    """
    Refuse a head :func:`_has_control_bytes` found a control byte in,
    naming its line.
    """
    for number, line in enumerate(lines):
        if CONTROL.search(line):
            where = "header line" if number else "status line"
            raise InvalidResponse(f"control character in {where} {line[:60]!r}")
    raise InvalidResponse("control character in the head")


def _status_line(line: bytes) -> Tuple[bytes, int, bytes]:
    """
    The version, status and reason of an ``HTTP/1.x NNN reason`` line,
    the reason and the space before it being optional.
    """
    code = line[9:12]
    if (
        line[:7] != b"HTTP/1."
        or line[7:9] not in (b"0 ", b"1 ")
        or not (len(code) == 3 and code.isdigit() and b"1" <= code[:1] <= b"5")
        or line[12:13] not in (b"", b" ")
    ):
        raise InvalidResponse(f"bad status line {line[:60]!r}")
    return line[:8], int(code), line[13:]


def _framing(lengths: List[bytes], codings: List[bytes]) -> Tuple[Optional[int], bool]:
    """
    The body's length, or whether it is chunked, from the values of the
    response's Content-Length and Transfer-Encoding lines.
    """
    if codings:
        if lengths:
            # Both: a classic smuggling vector; refuse rather than pick one.
            raise InvalidResponse("both Content-Length and Transfer-Encoding")
        names = [
            part.strip().lower() for value in codings for part in value.split(b",")
        ]
        if names != [b"chunked"]:
            raise InvalidResponse(f"unsupported Transfer-Encoding {names!r}")
        return None, True
    if not lengths:
        return None, False
    if len(lengths) > 1 or b"," in lengths[0]:
        # "5, 5" is allowed by RFC 9110 when the values agree.
        values = {part.strip() for value in lengths for part in value.split(b",")}
        if len(values) > 1:
            raise InvalidResponse("conflicting Content-Length values")
        (length,) = values
    else:
        length = lengths[0]
    if not length.isdigit() or len(length) > 18:
        raise InvalidResponse(f"bad Content-Length {length[:20]!r}")
    return int(length), False


def keeps_alive(head: ResponseHead) -> bool:
    """
    Whether the connection the response came on may be used again.
    """
    if head.version == b"HTTP/1.1":
        return b"close" not in head.connection
    return b"keep-alive" in head.connection and b"close" not in head.connection
