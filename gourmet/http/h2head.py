"""
What an HTTP/2 request's header block must hold before Gourmet passes it
on: pure checks, raising :exc:`BadRequest` with the status to answer, as
:mod:`gourmet.http.request` has them for HTTP/1.1.

The h2 library has checked HTTP/2's own rules by then (RFC 9113, 8.2 and
8.3): pseudo-header fields first, each once, none unknown; names in lower
case, of token characters; no CR, LF or NUL in a value, nor space around
it; no connection-specific field; ``te`` only ``trailers``; ``:authority``
and ``host`` the same.  What is left are the rules Gourmet applies to an
HTTP/1.1 head, said for HTTP/2: a token method, no CONNECT, a path in
printable ASCII, a well-formed host, no control byte in a value, one
plain ``content-length``, and the same limits on size and count.
"""

from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from gourmet.config.model import FrontendConfig
from gourmet.http.request import BadRequest, check_host, content_length
from gourmet.http.tokens import CONTROL, is_token

#: A path as an HTTP/1.1 request target may be one: printable ASCII
#: without "#".
_PATH = re.compile(rb"/[\x21\x22\x24-\x7e]*")
_SCHEMES = frozenset({b"http", b"https"})

#: What RFC 9113 (8.3.1) lets ``:path`` be besides a path: ``*`` for a
#: server-wide OPTIONS.
_ASTERISK = b"*"


class H2Head(NamedTuple):
    """
    A request's header block that passed :func:`check_h2_head`.

    :ivar headers: its fields other than pseudo-headers, in order, with a
        ``host`` first from ``:authority`` when the client sent no
        ``host`` (what routing and the upstream read).
    :ivar body_length: its ``content-length``; None when it has none.
    :ivar dropped: how many fields ``underscores_in_headers`` dropped.
    """

    method: bytes
    path: bytes
    headers: List[Tuple[bytes, bytes]]
    body_length: Optional[int]
    dropped: int = 0


def check_h2_head(
    fields: Sequence[Tuple[bytes, bytes]], limits: FrontendConfig
) -> H2Head:
    """
    Check one request's header block as h2 decoded it (names in lower
    case, pseudo-headers first).

    :raises BadRequest: 501 for CONNECT; 414 for a method and path longer
        than ``max_request_line``; 431 for more than ``max_headers`` fields
        or more than ``max_header_size`` bytes of them (each field counted
        as its HTTP/1.1 line would be); 413 for a ``content-length`` over
        ``max_body_size``; 400 otherwise.
    """
    pseudo: Dict[bytes, bytes] = {}
    headers: List[Tuple[bytes, bytes]] = []
    size = 0
    dropped = 0
    host = None
    for name, value in fields:
        size += len(name) + len(value) + 4  # "name: value\r\n"
        if name[:1] == b":":
            pseudo[name] = value
            continue
        if not is_token(name):
            raise BadRequest(400, "malformed header name")
        if CONTROL.search(value) is not None:
            raise BadRequest(400, f"control character in {name.decode()}")
        if b"_" in name and _drops_underscored(name, limits):
            dropped += 1
            continue
        if name == b"host":
            host = value
        headers.append((name, value))
    if len(headers) > limits.max_headers:
        raise BadRequest(431, f"more than {limits.max_headers} headers")
    if size > limits.max_header_size:
        raise BadRequest(431, f"head larger than {limits.max_header_size} bytes")
    method, path = _check_request(pseudo, limits)
    authority = pseudo.get(b":authority")
    if host is None and authority is not None:
        host = authority
        headers.insert(0, (b"host", authority))
    if host is None:
        raise BadRequest(400, "request without :authority or host")
    check_host(host)
    return H2Head(method, path, headers, _body_length(headers, limits), dropped)


def _check_request(
    pseudo: dict[bytes, bytes], limits: FrontendConfig
) -> Tuple[bytes, bytes]:
    """
    The method and path of the pseudo-headers, checked as a request line's.
    """
    method = pseudo.get(b":method", b"")
    if method == b"CONNECT":
        raise BadRequest(501, "CONNECT is not supported")
    if not is_token(method):
        raise BadRequest(400, "malformed :method")
    if pseudo.get(b":scheme") not in _SCHEMES:
        raise BadRequest(400, ":scheme is neither http nor https")
    path = pseudo.get(b":path", b"")
    if len(method) + len(path) + 10 > limits.max_request_line:
        limit = limits.max_request_line
        raise BadRequest(414, f"request line longer than {limit} bytes")
    if _PATH.fullmatch(path) is None and not (
        path == _ASTERISK and method == b"OPTIONS"
    ):
        raise BadRequest(400, "malformed :path")
    return method, path


def _drops_underscored(name: bytes, limits: FrontendConfig) -> bool:
    """
    Apply ``underscores_in_headers`` to a field whose name has ``_``.

    :return: whether to drop it.
    :raises BadRequest: 400 when such fields are refused.
    """
    policy = limits.underscores_in_headers
    if policy == "refuse":
        raise BadRequest(400, "underscore in a header name")
    return policy == "drop"


def _body_length(
    headers: Sequence[Tuple[bytes, bytes]], limits: FrontendConfig
) -> Optional[int]:
    lengths = [value for name, value in headers if name == b"content-length"]
    if not lengths:
        return None
    if len(lengths) > 1:
        raise BadRequest(400, "repeated framing header")
    length = content_length(lengths[0])
    if limits.max_body_size and length > limits.max_body_size:
        raise BadRequest(413, f"body larger than {limits.max_body_size} bytes")
    return length
