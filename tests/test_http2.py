"""
HTTP/2 to clients over TLS: Gourmet started in this process with a TLS
listener, real upstreams on loopback, and the h2 library as the client
(:mod:`tests.h2client`, in a thread, since the proxy and its upstreams
answer from this process's reactor).

What HTTP/1.1 clients are promised holds for each stream: routing,
balancing, streaming under the client's flow control, the limits and
checks of a request; and the HTTP/2 attacks the anchors defend against
(rapid reset, CONTINUATION floods, HPACK bombs, invalid pseudo-headers)
cost their own connection only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest
import pytest_twisted
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame
from twisted.internet.threads import deferToThread

from gourmet.frontend.http2 import PREMATURE_RESETS
from tests.configs import config
from tests.conftest import RunningGourmet, listening_port
from tests.h2client import Answer, Fields, H2Client
from tests.processes import Twistd
from tests.rawhttp import sleep
from tests.test_operations import access_lines
from tests.test_tls_listeners import (
    Authority,
    _pem,
    start,
    start_for_a_test,
    tls_text,
)
from tests.upstreams import UpstreamServer


async def start_h2(
    gourmet: Any,
    make_upstreams: Any,
    tmp_path: Path,
    names: Tuple[str, ...] = ("a",),
    server_extra: str = "",
) -> Tuple[List[UpstreamServer], RunningGourmet, int]:
    """
    Upstreams named ``names`` and Gourmet in front of them with a TLS
    listener for ``a.test``: the upstreams, Gourmet, and its TLS port.
    """
    Authority(tmp_path).issue("a", ["a.test"])
    servers = make_upstreams(*names)
    tls = (
        "tls_listen = ['tcp:0:interface=127.0.0.1']\n"
        f"{server_extra}\n"
        f"[[server.certificates]]\ncert = '{tmp_path}/a.pem'\n"
        f"key = '{tmp_path}/a.key'\n"
    )
    running = await gourmet(config(servers, server_extra=tls))
    (listener,) = [each for each in running.service.listeners if each.tls]
    return servers, running, listening_port(listener)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


def beside_a_bystander(port: int, attack: Callable[[], Any]) -> Tuple[Any, Answer]:
    """
    What ``attack`` returns, and the answer to a request made afterwards
    on a connection opened before it.
    """
    bystander = H2Client(port)
    outcome = attack()
    after = bystander.get("/after")
    bystander.close()
    return outcome, after


def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return deferToThread(function, *args)


@pytest_twisted.ensureDeferred
async def test_a_hundred_streams_on_one_connection_are_balanced(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    servers, _, port = await start_h2(
        gourmet, make_upstreams, tmp_path, ("a", "b"), "hsts = 'max-age=600'"
    )

    def hundred() -> Any:
        client = H2Client(port)
        assert client.alpn == "h2"
        ids = [client.request(f"/n/{index}") for index in range(100)]
        answers = client.wait(ids)
        client.close()
        return answers

    answers = await in_thread(hundred)
    assert [each.status for each in answers.values()] == [200] * 100
    # HSTS on HTTP/2 responses too, as on HTTP/1.1 ones over TLS.
    hsts = {each.header(b"strict-transport-security") for each in answers.values()}
    assert hsts == {b"max-age=600"}
    served = Counter(json.loads(each.body)["server"] for each in answers.values())
    assert served == {"a": 50, "b": 50}
    # Each stream got its own answer, and upstreams heard HTTPS over HTTP/2.
    uris = sorted(json.loads(each.body)["uri"] for each in answers.values())
    assert uris == sorted(f"/n/{index}" for index in range(100))
    seen = servers[0].seen[0]
    assert seen.header(b"x-forwarded-proto") == b"https"
    assert seen.header(b"via") == b"2 gourmet"
    assert seen.header(b"x-forwarded-host") == b"a.test"


@pytest_twisted.ensureDeferred
async def test_uploads_stream_and_a_body_over_the_limit_gets_413_on_its_stream(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    _, _, port = await start_h2(
        gourmet, make_upstreams, tmp_path, server_extra="max_body_size = '8m'"
    )
    body = bytes(range(256)) * (5 * 4096)  # 5 MiB, many windows' worth

    def upload() -> Any:
        client = H2Client(port)
        sent = client.request("/up", "POST", body=body)
        # Over the limit, with no length said: refused as the bytes pass it.
        big = client.request("/big", "POST", body=b"x" * (9 * 1024 * 1024))
        after = client.get("/after")
        answers = client.wait([sent, big])
        client.close()
        return answers[sent], answers[big], after

    sent, big, after = await in_thread(upload)
    assert sent.status == 200
    assert json.loads(sent.body)["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert big.status == 413
    assert after.status == 200


# -- what HTTP/2 clients may not do ------------------------------------------------


def _fields(**pseudo: str) -> List[Tuple[bytes, bytes]]:
    values = {"method": "GET", "path": "/", "scheme": "https", "authority": "a.test"}
    values.update(pseudo)
    return [(b":" + name.encode(), value.encode()) for name, value in values.items()]


#: Header blocks that break HTTP/2's own rules (RFC 9113, 8.2 and 8.3):
#: the connection is closed with GOAWAY PROTOCOL_ERROR.
BROKEN_BLOCKS = {
    "no :path": [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a")],
    "unknown pseudo-header": [*_fields(), (b":bogus", b"1")],
    "pseudo-header after a field": [
        (b":method", b"GET"),
        (b"x-a", b"1"),
        (b":path", b"/"),
        (b":scheme", b"https"),
        (b":authority", b"a.test"),
    ],
    "repeated pseudo-header": [*_fields(), (b":path", b"/again")],
    "upper-case name": [*_fields(), (b"X-Upper", b"1")],
    "connection-specific field": [*_fields(), (b"connection", b"keep-alive")],
    "te other than trailers": [*_fields(), (b"te", b"gzip")],
    "LF in a value": [*_fields(), (b"x-a", b"1\nx-b: 2")],
}

#: Requests HTTP/2 allows that Gourmet does not pass on, as for HTTP/1.1:
#: answered on their own stream, the connection going on.
REFUSED_REQUESTS = {
    "path without a slash": (_fields(path="index.html"), 400),
    "space in the path": (_fields(path="/a b"), 400),
    "fragment in the path": (_fields(path="/a#b"), 400),
    "method not a token": (_fields(method="G(T"), 400),
    "scheme neither http nor https": (_fields(scheme="ftp"), 400),
    "name not a token": ([*_fields(), (b"x(a)", b"1")], 400),
    "control byte in a value": ([*_fields(), (b"x-a", b"1\x012")], 400),
    "malformed host": (_fields(authority="a.test:99999"), 400),
    "content-length of 19 digits": (
        [*_fields(method="POST"), (b"content-length", b"1" * 19)],
        413,
    ),
    "content-length, and no body": (
        [*_fields(method="POST"), (b"content-length", b"5")],
        400,
    ),
    "content-length over max_body_size": (
        [*_fields(method="POST"), (b"content-length", b"2000000")],
        413,
    ),
    "a field of 33 KB": ([*_fields(), (b"x-big", b"v" * 33000)], 431),
}


@pytest_twisted.ensureDeferred
async def test_broken_header_blocks_close_their_connection_only(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (upstream,), _, port = await start_h2(gourmet, make_upstreams, tmp_path)

    def send_each() -> Any:
        outcomes = {}
        for name, fields in BROKEN_BLOCKS.items():
            client = H2Client(port, checked=False)
            client.send_headers(1, fields)
            outcomes[name] = client.closed_with()
            client.close()
        return outcomes

    outcomes, after = await in_thread(beside_a_bystander, port, send_each)
    assert outcomes == {name: ErrorCodes.PROTOCOL_ERROR for name in BROKEN_BLOCKS}
    # A connection opened before them all is served still.
    assert after.status == 200
    assert [seen.uri for seen in upstream.seen] == [b"/after"]


@pytest_twisted.ensureDeferred
async def test_requests_gourmet_refuses_get_their_status_on_their_stream(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (upstream,), running, port = await start_h2(gourmet, make_upstreams, tmp_path)

    def send_each() -> Any:
        client = H2Client(port, checked=False)
        statuses = {}
        for name, (fields, _) in REFUSED_REQUESTS.items():
            stream_id = client.conn.get_next_available_stream_id()
            client.send_headers(stream_id, fields, end=True)
            statuses[name] = client.wait([stream_id])[stream_id].status
        after = client.get("/after")
        client.close()
        return statuses, after

    statuses, after = await in_thread(send_each)
    assert statuses == {name: status for name, (_, status) in REFUSED_REQUESTS.items()}
    # On the same connection, a good request is served.
    assert after.status == 200
    assert [seen.uri for seen in upstream.seen] == [b"/after"]
    refusals = running.service.site.client_stats.refusals
    assert (refusals[400], refusals[413], refusals[431]) == (9, 2, 1)


#: Requests that one h2 finds a protocol error (closing the connection)
#: and another lets Gourmet refuse (on their stream): h2 4.4 (Python 3.10
#: and newer) takes a plain CONNECT and refuses a content-length with a
#: sign; h2 4.3 (PyPy 3.9's) the other way round.
EITHER_WAY = {
    "CONNECT": ([(b":method", b"CONNECT"), (b":authority", b"a.test:443")], 501),
    "content-length not digits": ([*_fields(), (b"content-length", b"+0")], 400),
}


@pytest_twisted.ensureDeferred
async def test_connect_and_a_signed_content_length_are_never_passed_on(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (upstream,), _, port = await start_h2(gourmet, make_upstreams, tmp_path)

    def send(fields: Fields) -> Any:
        client = H2Client(port, checked=False)
        client.send_headers(1, fields)
        answer = client.wait([1])[1]
        terminated = client.terminated
        client.close()
        return answer.status, terminated and terminated.error_code

    for name, (fields, status) in EITHER_WAY.items():
        outcome = await in_thread(send, fields)
        assert outcome in [(None, ErrorCodes.PROTOCOL_ERROR), (status, None)], name
    assert upstream.seen == []


@pytest_twisted.ensureDeferred
async def test_rapid_reset_closes_the_connection_before_upstreams_see_the_flood(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (upstream,), running, port = await start_h2(gourmet, make_upstreams, tmp_path)

    def flood() -> Any:
        client = H2Client(port)
        # Until Gourmet closes the connection.
        with contextlib.suppress(OSError, ProtocolError):
            for _ in range(1000):
                client.reset(client.request("/slow/5"))
        return client.closed_with()

    error_code, after = await in_thread(beside_a_bystander, port, flood)
    assert error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # Hardly any of them reached the upstream: reset in the same read as
    # their request, they were never served.
    assert len(upstream.seen) <= PREMATURE_RESETS
    assert after.status == 200
    assert running.service.site.client_stats.protocol_errors["rapid_reset"] == 1


@pytest_twisted.ensureDeferred
async def test_a_continuation_flood_and_an_hpack_bomb_close_their_connection(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (upstream,), _, port = await start_h2(gourmet, make_upstreams, tmp_path)

    def attack() -> Any:
        # A header block that never ends: CONTINUATION after CONTINUATION.
        flood = H2Client(port)
        frames: List[Frame] = [HeadersFrame(1, data=Encoder().encode(_fields()))]
        frames += [ContinuationFrame(1, data=b"\x40\x01a\x01b") for _ in range(200)]
        with contextlib.suppress(OSError):
            flood.sock.sendall(b"".join(frame.serialize() for frame in frames))
        flood_code = flood.closed_with()
        # A 4 KB field indexed once and repeated 200 times: 800 KB decoded.
        bomb = H2Client(port)
        encoder = Encoder()
        block = encoder.encode([*_fields(), (b"x-bomb", b"b" * 4000)])
        # 0xbe: the dynamic table's first entry (62), the field just indexed.
        block += b"\xbe" * 199
        headers = HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"])
        bomb.sock.sendall(headers.serialize())
        return flood_code, bomb.closed_with()

    (flood_code, bomb_code), after = await in_thread(beside_a_bystander, port, attack)
    assert flood_code == ErrorCodes.PROTOCOL_ERROR
    assert bomb_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert after.status == 200
    assert [seen.uri for seen in upstream.seen] == [b"/after"]


@pytest_twisted.ensureDeferred
async def test_the_settings_advertise_the_limits(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    _, _, port = await start_h2(
        gourmet,
        make_upstreams,
        tmp_path,
        server_extra="http2_max_concurrent_streams = 7\nmax_header_size = 4096",
    )

    def settings() -> Any:
        client = H2Client(port)
        client.get("/")
        remote = client.conn.remote_settings
        client.close()
        return remote.max_concurrent_streams, remote.max_header_list_size

    streams, header_list = await in_thread(settings)
    assert streams == 7
    # Gourmet's limit, with the 32 bytes HPACK counts for each of 100 fields.
    assert header_list == 4096 + 32 * 100


# -- twistd ------------------------------------------------------------------------


def curl(port: int, name: str, root: Path, *options: str) -> Tuple[str, str]:
    """
    curl's answer for ``/x`` from ``name`` at ``port``, verified against
    ``root``: its HTTP version and its body.
    """
    done = subprocess.run(
        [
            "curl", "-sS", "--max-time", "20", *options,
            "--cacert", str(root),
            "--resolve", f"{name}:{port}:127.0.0.1",
            "-w", "\\n%{http_version}",
            f"https://{name}:{port}/x",
        ],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    body, _, version = done.stdout.rpartition("\n")
    return version, body


@pytest_twisted.ensureDeferred
async def test_curl_speaks_http2_and_http1_on_one_port_to_each_names_upstream(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any, authority: Authority
) -> None:
    up_a, up_b = make_upstreams("for-a", "for-b")
    authority.issue("a", ["a.test"])
    authority.issue("b", ["b.test"])
    root = tmp_path / "root.pem"
    root.write_bytes(_pem(authority.root))
    locations = (
        "[[server.locations]]\nlocation='^/'\nhost='b.test'\nupstream='c'\n"
        "[[server.locations]]\nlocation='^/'\nupstream='b'\n"
    )
    text = f"[upstreams.c]\n[[upstreams.c.servers]]\npath='{up_b.address}'\n" + (
        tls_text(up_a.address, "ab", locations=locations)
    )
    _, port = await start(tmp_path, processes, text)

    def ask() -> Any:
        return {
            (name, protocol): curl(port, name, root, protocol)
            for name in ("a.test", "b.test")
            for protocol in ("--http2", "--http1.1")
        }

    answers = await deferToThread(ask)
    for (name, protocol), (version, body) in answers.items():
        assert version == ("2" if protocol == "--http2" else "1.1")
        expected = "for-b" if name == "b.test" else "for-a"
        assert json.loads(body)["server"] == expected, (name, protocol)
    # Each request in the access log (flushed each second), with its
    # protocol and name.
    for _ in range(100):
        if len(access_lines(tmp_path)) == 4:
            break
        await sleep(0.05)
    lines = [json.loads(line) for line in access_lines(tmp_path)]
    assert sorted((line["request"], line["sni"]) for line in lines) == sorted(
        [("GET /x HTTP/2", name) for name in ("a.test", "b.test")]
        + [("GET /x HTTP/1.1", name) for name in ("a.test", "b.test")]
    )
    assert {line["tls"] for line in lines} == {"TLSv1.3"}


#: The download a client stops reading: 50 MB.
STALLED = 50 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_a_stalled_download_neither_slows_the_other_streams_nor_grows_memory(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any, authority: Authority
) -> None:
    _, gourmet, port = await start_for_a_test(
        tmp_path, processes, make_upstreams, authority
    )

    def download() -> Any:
        client = H2Client(port)
        warm = client.get("/warm")
        before = gourmet.rss_kib()
        stalled = client.request(f"/big/{STALLED}")
        client.stalled.add(stalled)
        # The others, ten at a time, while the big one waits unread.
        statuses = []
        started = time.monotonic()
        for _ in range(5):
            ids = [client.request("/other") for _ in range(10)]
            statuses += [each.status for each in client.wait(ids).values()]
        others_took = time.monotonic() - started
        # Time for the whole 50 MB to reach Gourmet, were it not paused.
        time.sleep(1.5)
        client.read_once(0.1)
        held = len(client.answers[stalled].body)
        during = gourmet.rss_kib()
        # Read now: the whole body comes, intact.
        client.stalled.clear()
        client.conn.acknowledge_received_data(held, stalled)
        client.flush()
        answer = client.wait([stalled], timeout=120)[stalled]
        client.close()
        return warm, statuses, others_took, held, before, during, answer

    warm, statuses, others_took, held, before, during, answer = await deferToThread(
        download
    )
    assert warm.status == 200
    assert statuses == [200] * 50
    # Not held up behind the stalled stream (they would never end if they were).
    assert others_took < 10
    # The client's window (64 KiB) is what it got of the big one meanwhile...
    assert held <= 65535
    # ...and Gourmet held back little of the rest: the upstream was paused.
    assert during - before < 16 * 1024, (before, during)
    assert answer.status == 200 and answer.ended
    assert len(answer.body) == STALLED
    assert answer.body[:65536] == b"x" * 65536
