"""
What RFC 9110 and 9112 ask of a proxy, checked on the wire: raw client
sockets where the exact bytes matter, real or scripted upstreams behind
Gourmet, everything on loopback and every wait bounded.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutput
from twisted.python.failure import Failure

from tests.rawhttp import sleep

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """
    Let the reactor run until ``condition()`` holds, failing after
    ``timeout`` seconds.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not true after {timeout} s: {condition}")
        await sleep(0.005)


class RawClient(Protocol):
    """
    A client that writes exactly the bytes it is given and keeps every
    byte it receives.
    """

    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        self.reason: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self.reason = reason

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    async def response(self, timeout: float = 5.0) -> Response:
        """
        The next whole response (or what there is of it once the connection
        is closed), taken off the bytes received.
        """
        await wait_for(
            lambda: self.closed or Response.parse(self.data)[1] is not None, timeout
        )
        response, rest = Response.parse(self.data, at_close=self.closed)
        assert response is not None, self.data[:200]
        self.data = rest or b""
        return response


async def raw_client(port: int, data: bytes = b"") -> RawClient:
    """
    A raw client connected to ``port``, that has sent ``data``.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    client = await connectProtocol(endpoint, RawClient())
    if data:
        client.send(data)
    return client


class Response:
    """
    A response as a client reads it off the wire.

    :ivar complete: its body arrived whole, as its framing says.
    """

    def __init__(
        self, status: int, headers: List[Tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.complete = True

    def header(self, name: bytes) -> Optional[bytes]:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return b", ".join(values) if values else None

    @property
    def names(self) -> List[bytes]:
        return sorted(name.lower() for name, _ in self.headers)

    @classmethod
    def parse(
        cls, data: bytes, head_only: bool = False, at_close: bool = False
    ) -> Tuple[Optional[Response], Optional[bytes]]:
        """
        The first response in ``data`` and the bytes after it, or
        ``(None, None)`` if it has not all arrived; with ``at_close``, a
        response cut short is returned with ``complete`` false.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None, None
        lines = data[:end].split(b"\r\n")
        headers = [
            (name.strip(), value.strip())
            for name, _, value in (line.partition(b":") for line in lines[1:])
        ]
        response = cls(int(lines[0].split(b" ")[1]), headers, b"")
        rest: Optional[bytes] = data[end + 4 :]
        assert rest is not None
        if head_only or response.status in (204, 304):
            return response, rest
        length = response.header(b"content-length")
        if response.header(b"transfer-encoding") == b"chunked":
            response.body, rest = _dechunk(rest)
        elif length is not None:
            response.body = rest[: int(length)]
            rest = rest[int(length) :] if len(response.body) == int(length) else None
        else:
            response.body, rest = rest, None
        if rest is None:
            if not at_close:
                return None, None
            response.complete = False
            rest = b""
        return response, rest


def _dechunk(data: bytes) -> Tuple[bytes, Optional[bytes]]:
    """
    A chunked body (without trailers, which Gourmet never sends) and what
    follows it; or what arrived of it and None, when it is not all there.
    """
    body = b""
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return body, None
        size = int(data[:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            if data[start : start + 2] != b"\r\n":
                return body, None
            return body, data[start + 2 :]
        body += data[start : start + size]
        if len(data) < start + size + 2:
            return body, None
        data = data[start + size + 2 :]


def request(
    target: bytes = b"/",
    method: bytes = b"GET",
    headers: Tuple[bytes, ...] = (),
    body: bytes = b"",
) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: shop.example", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- hop-by-hop headers --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_request_headers_are_not_forwarded(proxy: Any) -> None:
    server, running = await proxy()
    client = await raw_client(
        running.port,
        b"POST /in HTTP/1.1\r\nHost: shop.example\r\n"
        b"Connection: X-A\r\n"
        b"Connection: keep-alive, X-B ,Upgrade, HTTP2-Settings\r\n"
        b"X-A: 1\r\nX-B: 2\r\nX-Kept: yes\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    response = await client.response()
    client.close()
    # Upgrade to anything but WebSocket is ignored (RFC 9110, 7.8): the
    # request goes through as HTTP/1.1.
    assert response.status == 200
    assert json.loads(response.body)["body_length"] == 5
    seen = server.seen[-1]
    assert seen.header(b"x-kept") == b"yes"
    assert seen.header(b"content-length") == b"5"
    for name in (
        b"connection",
        b"x-a",
        b"x-b",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"http2-settings",
        b"transfer-encoding",
    ):
        assert seen.header(name) is None, name


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_response_headers_are_not_forwarded(
    scripted_proxy: Any,
) -> None:
    _, running = await scripted_proxy(
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: X-A\r\n"
        b"Connection: keep-alive, X-B\r\n"
        b"X-A: 1\r\nX-B: 2\r\nX-Kept: yes\r\n"
        b"Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    client = await raw_client(running.port, request())
    response = await client.response()
    client.close()
    assert response.status == 200 and response.body == b"ok"
    assert response.names == [b"content-length", b"date", b"x-kept", b"x-request-id"]


# -- who the client is -----------------------------------------------------

SPOOFING = {
    "X-Forwarded-For": "203.0.113.9, 10.0.0.2",
    "X-Real-IP": "6.6.6.6",
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "Host": "shop.example",
}


async def forwarding_seen(proxy: Any, trusted: str) -> Dict[bytes, object]:
    """
    The forwarding headers an upstream receives when a client on 127.0.0.1
    sends ``SPOOFING`` to Gourmet with ``trusted_proxies = trusted``:
    each joined, but ``Forwarded`` as its lines.
    """
    server, running = await proxy(f"trusted_proxies = {trusted}")
    await (await running.get("/", headers=SPOOFING)).content()
    seen = server.seen[-1]
    names = (
        b"x-forwarded-for",
        b"x-real-ip",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    )
    found: Dict[bytes, object] = {name: seen.header(name) for name in names}
    found[b"forwarded"] = seen.headers.get(b"forwarded")
    return found


@pytest_twisted.ensureDeferred
async def test_an_untrusted_client_cannot_say_who_it_is(proxy: Any) -> None:
    assert await forwarding_seen(proxy, '["10.0.0.0/8"]') == {
        b"x-forwarded-for": b"127.0.0.1",
        b"x-real-ip": b"127.0.0.1",
        b"x-forwarded-host": b"shop.example",
        b"x-forwarded-proto": b"http",
        b"forwarded": [b"for=127.0.0.1;proto=http;host=shop.example"],
    }


@pytest_twisted.ensureDeferred
async def test_a_trusted_proxy_is_believed(proxy: Any) -> None:
    assert await forwarding_seen(proxy, '["127.0.0.1", "10.0.0.0/8"]') == {
        b"x-forwarded-for": b"203.0.113.9, 10.0.0.2, 127.0.0.1",
        # Right to left past 127.0.0.1 and 10.0.0.2, both trusted.
        b"x-real-ip": b"203.0.113.9",
        b"x-forwarded-host": b"evil.example",
        b"x-forwarded-proto": b"https",
        b"forwarded": [
            b"for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=shop.example"
        ],
    }


# -- responses that have no body -----------------------------------------

NO_BODY = [
    (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
    (b"GET", b"HTTP/1.1 204 No Content\r\n\r\nhello"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
]


@pytest.mark.parametrize(("method", "answer"), NO_BODY)
@pytest_twisted.ensureDeferred
async def test_a_body_on_a_response_without_one_never_reaches_the_client(
    scripted_proxy: Any, method: bytes, answer: bytes
) -> None:
    upstream, running = await scripted_proxy(answer, OK)
    client = await raw_client(running.port, request(method=method))
    await wait_for(lambda: b"\r\n\r\n" in client.data)
    await sleep(0.1)
    # The head and nothing else: the next bytes would be read as the
    # next response by a client that pipelines.
    first, rest = Response.parse(client.data, head_only=True)
    assert first is not None and rest == b""
    # A 204 may not announce a body; HEAD and 304 announce the one left out.
    expected_length = None if first.status == 204 else b"5"
    assert first.header(b"content-length") == expected_length
    client.data = b""
    client.send(request(b"/next"))
    second = await client.response()
    client.close()
    assert (second.status, second.body) == (200, b"ok")
    # That upstream connection was not trusted again.
    assert upstream.connections == 2
    assert running.service.pools["backend"].idle_count() == 1


# -- Expect: 100-continue ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_then_another_request(proxy: Any) -> None:
    server, running = await proxy()
    client = await raw_client(
        running.port,
        b"POST /upload HTTP/1.1\r\nHost: shop.example\r\n"
        b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    await wait_for(lambda: b"\r\n\r\n" in client.data)
    assert client.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.data = b""
    client.send(b"hello")
    response = await client.response()
    assert response.status == 200
    answer = json.loads(response.body)
    assert (answer["uri"], answer["body_length"]) == ("/upload", 5)
    assert server.seen[-1].header(b"expect") is None
    # The connection is still in step: a second request works.
    client.send(request(b"/second"))
    second = await client.response()
    client.close()
    assert second.status == 200
    assert json.loads(second.body)["uri"] == "/second"


# -- Upgrade ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_websocket_handshake_a_server_does_not_accept_gets_its_answer(
    proxy: Any,
) -> None:
    server, running = await proxy()
    client = await raw_client(running.port)
    client.send(
        b"GET /chat HTTP/1.1\r\nHost: shop.example\r\n"
        b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    response = await client.response(timeout=5)
    # The server was asked for the upgrade, as the client asked for it...
    seen = server.seen[-1]
    assert seen.header(b"upgrade") == b"websocket"
    assert seen.header(b"connection") == b"Upgrade"
    assert seen.header(b"sec-websocket-key") == b"dGhlIHNhbXBsZSBub25jZQ=="
    # ...and its answer, not a 101, is the client's.
    assert response.status == 200
    assert json.loads(response.body)["uri"] == "/chat"
    # Still plain HTTP/1.1 on that connection.
    client.send(request(b"/after"))
    after = await client.response()
    client.close()
    assert after.status == 200


# -- broken upstream framing -------------------------------------------------

BROKEN = {
    "two lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"
    ),
    "length and chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    "unknown coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "thousands of headers": (
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000 + b"Content-Length: 2\r\n\r\nok"
    ),
}


@pytest.mark.parametrize("answer", BROKEN.values(), ids=list(BROKEN))
@pytest_twisted.ensureDeferred
async def test_broken_framing_is_502_and_the_connection_is_dropped(
    scripted_proxy: Any, answer: bytes
) -> None:
    upstream, running = await scripted_proxy(answer, OK)
    response = await running.get("/", headers={"Accept": "application/json"})
    assert response.code == 502
    assert json.loads(await response.content())["status"] == 502
    assert running.service.pools["backend"].idle_count() == 0
    response = await running.get("/")
    assert (response.code, await response.content()) == (200, b"ok")
    assert upstream.connections == 2


@pytest_twisted.ensureDeferred
async def test_connection_close_from_the_client_is_answered_in_kind(proxy: Any) -> None:
    _, running = await proxy()
    client = await raw_client(running.port, request(headers=(b"Connection: close",)))
    response = await client.response()
    client.close()
    assert response.status == 200
    assert response.header(b"connection") == b"close"


# -- HTTP/1.0 keep-alive ---------------------------------------------------


def request_1_0(target: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([b"GET %s HTTP/1.0" % target, *headers]) + b"\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_http_1_0_keep_alive_is_honoured_when_the_length_is_known(
    proxy: Any,
) -> None:
    server, running = await proxy()
    client = await raw_client(running.port)
    for path in (b"/one", b"/two", b"/status/404"):
        client.send(request_1_0(path, b"Connection: Keep-Alive"))
        response = await client.response()
        assert response.header(b"connection") == b"keep-alive"
        assert response.header(b"content-length") is not None
    assert not client.closed
    # One client connection carried all three.
    assert [seen.uri for seen in server.seen] == [b"/one", b"/two", b"/status/404"]
    client.close()


@pytest_twisted.ensureDeferred
async def test_http_1_0_without_keep_alive_is_closed(proxy: Any) -> None:
    _, running = await proxy()
    client = await raw_client(running.port, request_1_0(b"/one"))
    response = await client.response()
    await wait_for(lambda: client.closed)
    assert response.status == 200
    assert response.header(b"connection") is None


@pytest_twisted.ensureDeferred
async def test_http_1_0_keep_alive_of_unknown_length_ends_with_the_close(
    proxy: Any,
) -> None:
    # The upstream streams /big/ without a length: HTTP/1.0 has no chunks,
    # so only closing the connection can end the body.
    _, running = await proxy()
    client = await raw_client(
        running.port, request_1_0(b"/big/100000", b"Connection: keep-alive")
    )
    await wait_for(lambda: client.closed)
    response, _ = Response.parse(client.data, at_close=True)
    assert response is not None
    assert response.header(b"connection") is None
    assert response.header(b"transfer-encoding") is None
    assert len(response.body) == 100000


@pytest_twisted.ensureDeferred
async def test_ab_keep_alive_requests_all_succeed(proxy: Any) -> None:
    # ab speaks HTTP/1.0 with Connection: Keep-Alive (Debian's
    # apache2-utils, which ./dev installs).
    ab = shutil.which("ab")
    assert ab is not None, "ab (apache2-utils) is not installed"
    server, running = await proxy()
    output = await getProcessOutput(
        ab,
        ["-k", "-n", "2000", "-c", "20", "-s", "10", f"{running.url}/hello"],
        errortoo=True,
    )
    text = output.decode()
    figures = dict(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in text.splitlines())
    )
    assert figures["Complete requests"] == "2000", text
    assert figures["Failed requests"] == "0", text
    assert figures["Keep-Alive requests"] == "2000", text
    assert len(server.seen) == 2000
