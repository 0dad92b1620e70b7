"""
Hostile requests: each is refused with a 4xx (or 5xx) and a closed
connection, and nothing of it reaches an upstream.  Sent as exact bytes
over a real socket to Gourmet on loopback, next to positive controls that
must pass.
"""

from __future__ import annotations

import json
from typing import Any, List, Tuple

import pytest
import pytest_twisted
import treq

from gourmet.http.request import (
    BadRequest,
    Head,
    RequestLine,
    check_head,
    check_header_line,
    check_request_line,
    refusal,
)
from tests.configs import config
from tests.rawhttp import RawClient, sleep, status_of

HOST = b"Host: example.com\r\n"


#: The limits every request here meets.
LIMITS = "max_body_size = 1000\nheader_timeout = 0.5\nbody_min_rate = 1000"


def get(*headers: bytes, target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET %s %s\r\n%s\r\n" % (target, version, b"".join(headers))


def post(*headers: bytes, body: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\n" + HOST + b"".join(headers) + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", body=body)


def header(name: bytes, value: bytes) -> bytes:
    return name + b": " + value + b"\r\n"


def cases(table: List[Tuple[str, bytes, Any]]) -> List[Any]:
    """
    The rows of a table of (name, request bytes, expected) as parameters
    named by their first column.
    """
    return [
        pytest.param(request, expected, id=name) for name, request, expected in table
    ]


#: (name, exact request bytes, the status Gourmet answers)
HOSTILE: List[Tuple[str, bytes, int]] = [
    # -- framing conflicts ----------------------------------------------
    (
        "content-length and transfer-encoding",
        post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "transfer-encoding and content-length",
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "two different content-lengths",
        post(b"Content-Length: 5\r\nContent-Length: 6\r\n", body=b"hello!"),
        400,
    ),
    (
        "two equal content-lengths",
        post(b"Content-Length: 5\r\nContent-Length: 5\r\n", body=b"hello"),
        400,
    ),
    ("content-length list", post(b"Content-Length: 5, 5\r\n", body=b"hello"), 400),
    ("content-length +5", post(b"Content-Length: +5\r\n", body=b"hello"), 400),
    ("content-length -1", post(b"Content-Length: -1\r\n"), 400),
    ("content-length 5 5", post(b"Content-Length: 5 5\r\n", body=b"hello"), 400),
    ("content-length 0x5", post(b"Content-Length: 0x5\r\n", body=b"hello"), 400),
    ("content-length 5.0", post(b"Content-Length: 5.0\r\n", body=b"hello"), 400),
    ("content-length empty", post(b"Content-Length:\r\n"), 400),
    ("content-length abc", post(b"Content-Length: abc\r\n"), 400),
    ("content-length tab", post(b"Content-Length:\t5\r\n", body=b"hello"), 400),
    (
        "content-length of 30 digits",
        post(b"Content-Length: " + b"9" * 30 + b"\r\n"),
        413,
    ),
    (
        "transfer-encoding identity",
        post(b"Transfer-Encoding: identity\r\n", body=b"hello"),
        400,
    ),
    (
        "chunked, identity",
        post(b"Transfer-Encoding: chunked, identity\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "chunked, chunked",
        post(b"Transfer-Encoding: chunked, chunked\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "gzip, chunked",
        post(b"Transfer-Encoding: gzip, chunked\r\n", body=b"0\r\n\r\n"),
        501,
    ),
    ("xchunked", post(b"Transfer-Encoding: xchunked\r\n", body=b"0\r\n\r\n"), 400),
    (
        "quoted chunked",
        post(b'Transfer-Encoding: "chunked"\r\n', body=b"0\r\n\r\n"),
        400,
    ),
    (
        "tab before chunked",
        post(b"Transfer-Encoding:\tchunked\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "vertical tab after chunked",
        post(b"Transfer-Encoding: chunked\x0b\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "chunked with a parameter",
        post(b"Transfer-Encoding: chunked;q=1\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    (
        "two transfer-encoding lines",
        post(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    (
        "chunked on HTTP/1.0",
        b"POST / HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # -- header syntax ----------------------------------------------------
    ("space before the colon", b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n", 400),
    ("obs-fold continuation", get(HOST, b"X-A: a\r\n", b" folded\r\n"), 400),
    (
        "whitespace before the first header",
        b"GET / HTTP/1.1\r\n X-A: a\r\n" + HOST + b"\r\n",
        400,
    ),
    (
        "bare LF inside a line",
        get(HOST, b"X-A: a\nTransfer-Encoding: chunked\r\n"),
        400,
    ),
    ("bare LF line endings", b"GET / HTTP/1.1\nHost: example.com\n\n", 400),
    ("bare LF after the request line", b"GET / HTTP/1.1\n" + HOST + b"\r\n", 400),
    ("bare CR line endings", b"GET / HTTP/1.1\rHost: example.com\r\r", 400),
    ("bare CR inside a value", get(HOST, b"X-A: a\rb\r\n"), 400),
    ("NUL in a value", get(HOST, b"X-A: a\x00b\r\n"), 400),
    ("NUL in a name", get(HOST, b"X\x00A: b\r\n"), 400),
    ("control byte in a value", get(HOST, b"X-A: a\x01b\r\n"), 400),
    ("ESC in a value", get(HOST, b"X-A: \x1b[31m\r\n"), 400),
    ("DEL in a value", get(HOST, b"X-A: a\x7fb\r\n"), 400),
    ("empty header name", get(HOST, b": x\r\n"), 400),
    ("header line without a colon", get(HOST, b"X-A\r\n"), 400),
    ("parenthesis in a name", get(HOST, b"X(A): b\r\n"), 400),
    ("quote in a name", get(HOST, b'X"A: b\r\n'), 400),
    ("slash in a name", get(HOST, b"X/A: b\r\n"), 400),
    ("non-ASCII name", get(HOST, b"X-\xe9: b\r\n"), 400),
    # -- chunk syntax -------------------------------------------------------
    ("chunk size 0x0", chunked(b"0x0\r\n\r\n"), 400),
    ("chunk size +0", chunked(b"+0\r\n\r\n"), 400),
    ("chunk size -1", chunked(b"-1\r\n\r\n"), 400),
    ("chunk size with a space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk size after a space", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk size empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk size of 20 hex digits", chunked(b"1" * 20 + b"\r\nhello\r\n"), 413),
    ("chunk size line too long", chunked(b"0" * 1100 + b"1\r\nx\r\n0\r\n\r\n"), 400),
    (
        "control byte in a chunk extension",
        chunked(b"5;a\x01b\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    ("bare LF in a chunk extension", chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk longer than its size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk without its CRLF", chunked(b"5\r\nhello0\r\n\r\n"), 400),
    ("chunk ended by a bare LF", chunked(b"5\r\nhello\n0\r\n\r\n"), 400),
    (
        "last chunk without its final CRLF, then a request",
        chunked(b"5\r\nhello\r\n0\r\n" + get(HOST, target=b"/smuggled")),
        400,
    ),
    ("last chunk without its final CRLF", chunked(b"5\r\nhello\r\n0\r\n"), 408),
    ("control byte in a trailer", chunked(b"0\r\nX-T: a\x01\r\n\r\n"), 400),
    ("folded trailer", chunked(b"0\r\nX-T: a\r\n b\r\n\r\n"), 400),
    # -- request line and Host ------------------------------------------------
    ("HTTP/1.1 without Host", get(), 400),
    ("two Host headers", get(HOST, b"Host: other.example\r\n"), 400),
    ("two equal Host headers", get(HOST, HOST), 400),
    ("Host with a space", get(b"Host: example .com\r\n"), 400),
    ("Host with userinfo", get(b"Host: user@example.com\r\n"), 400),
    ("Host with a named port", get(b"Host: example.com:http\r\n"), 400),
    ("Host with a port out of range", get(b"Host: example.com:99999\r\n"), 400),
    ("Host with an empty port", get(b"Host: example.com:\r\n"), 400),
    ("Host with a comma", get(b"Host: a.example,b.example\r\n"), 400),
    ("empty Host on HTTP/1.1", get(b"Host:\r\n"), 400),
    (
        "absolute target and another Host",
        get(HOST, target=b"http://other.example/"),
        400,
    ),
    (
        "absolute target with userinfo",
        get(b"Host: other.example\r\n", target=b"http://u@other.example/"),
        400,
    ),
    ("absolute target of another scheme", get(HOST, target=b"ftp://example.com/"), 400),
    ("authority-form target", get(HOST, target=b"example.com:80"), 400),
    ("relative target", get(HOST, target=b"index.html"), 400),
    ("asterisk target for GET", get(HOST, target=b"*"), 400),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\n" + HOST + b"\r\n", 501),
    ("control byte in the target", get(HOST, target=b"/a\x01b"), 400),
    ("DEL in the target", get(HOST, target=b"/a\x7fb"), 400),
    ("byte 0x80 in the target", get(HOST, target=b"/a\x80b"), 400),
    ("byte 0xb0 in the target", get(HOST, target=b"/a\xb0b"), 400),
    ("byte 0xff in the target", get(HOST, target=b"/a\xffb"), 400),
    ("fragment in the target", get(HOST, target=b"/a#b"), 400),
    ("tab in the request line", b"GET\t/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("two spaces in the request line", b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("space after the version", b"GET / HTTP/1.1 \r\n" + HOST + b"\r\n", 400),
    ("HTTP/2.0", get(HOST, version=b"HTTP/2.0"), 505),
    ("HTTP/1.2", get(HOST, version=b"HTTP/1.2"), 505),
    ("HTTP/0.9 version", get(HOST, version=b"HTTP/0.9"), 505),
    ("no version (HTTP/0.9 style)", b"GET /\r\n\r\n", 400),
    ("lower-case version", get(HOST, version=b"http/1.1"), 400),
    ("version HTTP/1.10", get(HOST, version=b"HTTP/1.10"), 400),
    ("request line over 8192 bytes", get(HOST, target=b"/" + b"a" * 8200), 414),
    ("unfinished request line over 8192 bytes", b"GET /" + b"a" * 9000, 414),
    ("101 headers", get(HOST, *[b"X-%d: v\r\n" % i for i in range(100)]), 431),
    (
        "head over 32768 bytes",
        get(HOST, *[header(b"X-%d" % i, b"v" * 4000) for i in range(9)]),
        431,
    ),
    ("header line over 32768 bytes", get(HOST, header(b"X-Big", b"v" * 33000)), 431),
    ("method with a parenthesis", b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method with a slash", b"GE/T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("empty method", b" / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("two blank lines before the request", b"\r\n\r\n" + get(HOST), 400),
    # -- Connection naming what the proxy must keep -------------------------
    (
        "Connection: Content-Length",
        post(b"Connection: Content-Length\r\nContent-Length: 5\r\n", body=b"hello"),
        400,
    ),
    (
        "Connection: Transfer-Encoding",
        chunked(b"0\r\n\r\n").replace(
            HOST, HOST + b"Connection: Transfer-Encoding\r\n"
        ),
        400,
    ),
    ("Connection: Host", get(HOST, b"Connection: Host\r\n"), 400),
    (
        "Connection: X-Forwarded-For",
        get(HOST, b"Connection: keep-alive, x-forwarded-for\r\n"),
        400,
    ),
    ("Connection: X-Real-IP", get(HOST, b"Connection: X-Real-IP\r\n"), 400),
    ("Connection: Forwarded", get(HOST, b"Connection: Forwarded\r\n"), 400),
    (
        "Connection: X-Forwarded-Host",
        get(HOST, b"Connection: X-Forwarded-Host\r\n"),
        400,
    ),
    ("Connection: Via", get(HOST, b"Connection: Via\r\n"), 400),
]


#: Names with "_", refused with ``underscores_in_headers = "refuse"``.
UNDERSCORED: List[Tuple[str, bytes, int]] = [
    ("Content_Length", post(b"Content_Length: 5\r\n", body=b"hello"), 400),
    (
        "Transfer_Encoding",
        post(b"Transfer_Encoding: chunked\r\n", body=b"0\r\n\r\n"),
        400,
    ),
    ("X_Forwarded_For", get(HOST, b"X_Forwarded_For: 203.0.113.9\r\n"), 400),
]
REFUSE_UNDERSCORES = 'underscores_in_headers = "refuse"'


@pytest.mark.parametrize(
    "request_bytes, expected, settings",
    [
        *[pytest.param(*param.values, "", id=param.id) for param in cases(HOSTILE)],
        *[
            pytest.param(*param.values, REFUSE_UNDERSCORES, id=param.id)
            for param in cases(UNDERSCORED)
        ],
    ],
)
@pytest_twisted.ensureDeferred
async def test_hostile_request_is_refused_and_reaches_no_upstream(
    raw_proxy: Any, request_bytes: bytes, expected: int, settings: str
) -> None:
    server, _, client = await raw_proxy(f"{LIMITS}\n{settings}")
    await client.send(request_bytes)
    reply = await client.read_until_closed(timeout=5)
    assert status_of(reply) == expected, reply[:200]
    assert reply == refusal(expected)
    assert client.closed
    assert server.seen == []
    assert server.connections == 0


async def exchange(client: RawClient, request_bytes: bytes) -> Tuple[int, Any]:
    """
    The status of the answer to ``request_bytes``, and its body (as JSON
    when it is a 200 with one).
    """
    await client.send(request_bytes)
    reply = await client.read_response()
    head, _, body = reply.partition(b"\r\n\r\n")
    status = status_of(head)
    assert status is not None, reply[:200]
    return status, json.loads(body) if status == 200 and body else body


#: (name, exact request bytes, the body the upstream must receive)
ACCEPTED: List[Tuple[str, bytes, bytes]] = [
    ("GET", get(HOST), b""),
    (
        "POST with Content-Length",
        post(b"Content-Length: 5\r\n", body=b"hello"),
        b"hello",
    ),
    (
        "POST with Content-Length 005",
        post(b"Content-Length: 005\r\n", body=b"hello"),
        b"hello",
    ),
    (
        "chunked POST",
        chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        b"hello world",
    ),
    (
        "chunked POST with extensions and trailers",
        post(
            b"Transfer-Encoding: Chunked\r\n",
            body=b"5;name=value\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n",
        ),
        b"hello",
    ),
    (
        "GET with Connection: keep-alive, X-Custom",
        get(HOST, b"Connection: keep-alive, X-Custom\r\nX-Custom: secret\r\n"),
        b"",
    ),
    ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", b""),
    (
        "absolute target with the same Host",
        get(b"Host: Example.com\r\n", target=b"http://example.com/a?b=1"),
        b"",
    ),
    (
        "absolute target with a query only",
        get(HOST, target=b"https://example.com?b=1"),
        b"",
    ),
    ("one blank line before the request", b"\r\n" + get(HOST), b""),
    ("UTF-8 in a value", get(HOST, b"X-Name: caf\xc3\xa9\r\n"), b""),
    ("Host with a port", get(b"Host: example.com:8080\r\n"), b""),
    ("Host as an IPv6 literal", get(b"Host: [::1]:8080\r\n"), b""),
    ("100 headers", get(HOST, *[b"X-%d: v\r\n" % i for i in range(99)]), b""),
]


@pytest.mark.parametrize("request_bytes, body", cases(ACCEPTED))
@pytest_twisted.ensureDeferred
async def test_well_formed_request_reaches_the_upstream_once(
    raw_proxy: Any, request_bytes: bytes, body: bytes
) -> None:
    server, _, client = await raw_proxy(LIMITS)
    status, answer = await exchange(client, request_bytes)
    assert status == 200
    assert answer["body_length"] == len(body)
    assert len(server.seen) == 1
    seen = server.seen[0]
    assert seen.body == body
    # Gourmet frames what it forwards itself: never the client's framing.
    assert b"transfer-encoding" not in seen.headers
    if body:
        assert seen.headers[b"content-length"] == [b"%d" % len(body)]
    assert seen.header(b"x-custom") is None
    assert seen.uri.startswith(b"/")


@pytest_twisted.ensureDeferred
async def test_options_star_is_answered_by_gourmet(raw_proxy: Any) -> None:
    server, _, client = await raw_proxy(LIMITS)
    status, _ = await exchange(client, b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n")
    # Twisted answers it: it asks about Gourmet, not about a resource.
    assert status == 200
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_absolute_target_goes_upstream_in_origin_form(raw_proxy: Any) -> None:
    server, _, client = await raw_proxy(LIMITS)
    status, answer = await exchange(
        client, get(HOST, target=b"http://example.com/a/b?c=1")
    )
    assert status == 200
    assert answer["uri"] == "/a/b?c=1"
    assert server.seen[0].header(b"x-forwarded-host") == b"example.com"


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_each_checked(raw_proxy: Any) -> None:
    server, _, client = await raw_proxy(LIMITS)
    await client.send(
        get(HOST, target=b"/first")
        + post(b"Content-Length: 5\r\n", body=b"hello")
        + get(HOST, b"Content-Length: 1\r\nContent-Length: 1\r\n", target=b"/bad")
    )
    first = await client.read_response()
    second = await client.read_response()
    third = await client.read_until_closed()
    assert status_of(first) == status_of(second) == 200
    assert third == refusal(400)
    assert client.closed
    assert [seen.uri for seen in server.seen] == [b"/first", b"/"]


@pytest.mark.parametrize(
    "second, answers",
    [
        (get(HOST, b"Connection: close\r\n", target=b"/nowhere"), [404, 404]),
        (b"GET /nowhere HTTP/1.1\r\nHost: example.com\nX: y\n\n", [404, 400]),
    ],
    ids=["well formed", "bare LF"],
)
@pytest_twisted.ensureDeferred
async def test_request_replayed_after_a_synchronous_answer_is_checked(
    gourmet: Any,
    make_upstreams: Any,
    raw_socket: Any,
    second: bytes,
    answers: List[int],
) -> None:
    """
    A request that arrived while the one before was handled is parsed when
    that one is answered, from inside the call that brought the end of
    its body when the answer is immediate (a 404).
    """
    (server,) = make_upstreams("one")
    text = config([server], server_extra=LIMITS).replace('"^/"', '"^/app"')
    client = raw_socket((await gourmet(text)).port)
    await client.send(
        b"POST /nowhere HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhel"
    )
    await sleep(0.05)
    await client.send(b"lo" + second)
    replies = [await client.read_response() for _ in answers]
    assert await client.read_until_closed() == b""
    assert [status_of(reply) for reply in replies] == answers
    assert client.closed
    assert server.seen == []


@pytest_twisted.ensureDeferred
async def test_huge_chunk_size_without_a_body_limit_is_refused(raw_proxy: Any) -> None:
    limits = LIMITS.replace("max_body_size = 1000", "max_body_size = 0")
    server, _, client = await raw_proxy(limits)
    await client.send(chunked(b"1" * 20 + b"\r\nhello\r\n"))
    assert await client.read_until_closed() == refusal(400)
    assert server.seen == []


# -- the checks themselves, without sockets ---------------------------------


def test_request_line_in_origin_form_is_kept() -> None:
    assert check_request_line(b"GET /a?b HTTP/1.1", 100) == RequestLine(
        b"GET", b"/a?b", b"HTTP/1.1"
    )


@pytest.mark.parametrize(
    "target, origin",
    [
        (b"http://h.example", b"/"),
        (b"http://h.example/", b"/"),
        (b"HTTPS://h.example:8443/p?q", b"/p?q"),
        (b"http://h.example?q", b"/?q"),
    ],
)
def test_absolute_target_is_reduced_to_origin_form(
    target: bytes, origin: bytes
) -> None:
    line = check_request_line(b"GET " + target + b" HTTP/1.1", 100)
    assert line.target == origin
    assert line.authority is not None
    assert line.authority.lower().startswith(b"h.example")


@pytest.mark.parametrize(
    "line, status",
    [
        (b"GET /" + b"a" * 100 + b" HTTP/1.1", 414),
        (b"GET / HTTP/3.0", 505),
        (b"GET / HTTP/1.1\r", 400),
        (b"GET / HTTP/1.1\x00", 400),
        (b"", 400),
    ],
)
def test_bad_request_lines(line: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as raised:
        check_request_line(line, 100)
    assert raised.value.status == status


def test_header_line_gives_the_lower_case_name_and_trimmed_value() -> None:
    assert check_header_line(b"X-Thing:  a\tb \t") == (b"x-thing", b"a\tb")
    assert check_header_line(b"X-Empty:") == (b"x-empty", b"")


def test_head_gives_the_body_length_and_whether_to_close() -> None:
    line = RequestLine(b"POST", b"/", b"HTTP/1.1")
    headers = [
        (b"host", b"h"),
        (b"content-length", b"12"),
        (b"connection", b"Keep-Alive,Close"),
    ]
    assert check_head(line, headers) == Head(12, True)
    chunked_headers = [(b"host", b"h"), (b"transfer-encoding", b"CHUNKED")]
    assert check_head(line, chunked_headers) == Head(None, False)
    assert check_head(line, [(b"host", b"h")]) == Head(0, False)


def test_refusal_is_a_bare_status_that_closes() -> None:
    assert refusal(431) == (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"Server: Gourmet\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("settings", "forwarded", "dropped"),
    [
        pytest.param("", None, 1, id="dropped by default"),
        pytest.param('underscores_in_headers = "pass"', [b"s"], 0, id="passed"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_header_name_with_underscore_is_dropped_or_passed(
    raw_proxy: Any, settings: str, forwarded: Any, dropped: int
) -> None:
    server, running, client = await raw_proxy(f"{LIMITS}\n{settings}")
    request_bytes = get(HOST, b"X_Api_Key: s\r\nX-Api-Key: dashed\r\n")
    for _ in range(2):  # the connection is kept: nothing was refused
        status, _ = await exchange(client, request_bytes)
        assert status == 200
    seen = server.seen[0]
    assert seen.headers.get(b"x_api_key") == forwarded
    assert seen.header(b"x-api-key") == b"dashed"
    metrics = await (await treq.get(running.admin_url + "/metrics")).text()
    counted = (
        f'gourmet_client_headers_dropped_total{{reason="underscore"}} {2 * dropped}.0'
    )
    assert counted in metrics.splitlines()
