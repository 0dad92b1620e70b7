"""
HTTP/2 connections in memory (:mod:`tests.memory`), on the reactor's
clock: the deadlines of a connection and of a stream's body, a stop that
lets the streams under way finish, the connection limit, and an upstream
failing under a stream, each timed exactly, with no sleep.

The TLS under a real HTTP/2 connection cannot run here: these connections
speak HTTP/2 from the first byte (``tests.memory.PlainHttp2``); what ALPN
and TLS do is tested on loopback (``tests/test_http2.py``).
"""

from __future__ import annotations

import json
from typing import List

from h2.errors import ErrorCodes
from hpack import Decoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
)

from tests.memory import (
    Gourmets,
    MemoryServer,
    UpstreamPeer,
    close,
    ok,
)
from tests.test_memory_frontend import SERVER, console, proxy, server

__all__ = ["server"]  # the fixture, shared with the HTTP/1.1 tests


def goaway(frames: List[Frame]) -> List[GoAwayFrame]:
    return [frame for frame in frames if isinstance(frame, GoAwayFrame)]


def test_a_connection_asking_nothing_is_closed_at_header_timeout(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10")
    client = gourmet.connect_h2()
    assert gourmet.service.site.open_connections == 1
    gourmet.advance(9.9)
    assert not client.closed
    gourmet.advance(0.1)
    assert client.closed
    (frame,) = goaway(client.frames)
    assert (frame.error_code, frame.last_stream_id) == (ErrorCodes.NO_ERROR, 0)
    assert gourmet.service.site.open_connections == 0


def test_an_idle_connection_is_closed_at_idle_timeout_after_its_last_stream(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10\nidle_timeout = 75")
    client = gourmet.connect_h2()
    gourmet.advance(5)
    assert client.get("/").status == 200
    # The head's deadline no longer counts, the idle one does.
    gourmet.advance(74.9)
    assert not client.closed
    assert client.get("/again").status == 200
    gourmet.advance(74.9)
    assert not client.closed
    gourmet.advance(0.1)
    assert client.closed
    assert goaway(client.frames)[0].last_stream_id == 3


def test_a_header_block_never_ended_gets_no_more_time_than_a_request(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10")
    client = gourmet.connect_h2()
    # HEADERS without END_HEADERS, then a CONTINUATION every few seconds.
    block = client.conn.encoder.encode(
        [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https")]
    )
    client.transport.write(HeadersFrame(1, data=block).serialize())  # type: ignore[union-attr]
    for _ in range(3):
        gourmet.advance(3)
        piece = client.conn.encoder.encode([(b"x-drip", b"1")])
        client.transport.write(ContinuationFrame(1, data=piece).serialize())  # type: ignore[union-attr]
    gourmet.advance(1)
    assert client.closed
    assert server.attempts == 0


def test_a_slow_upload_gets_408_on_its_stream_and_the_connection_goes_on(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "header_timeout = 10\nbody_min_rate = 1024")
    client = gourmet.connect_h2()
    slow = client.request("/up", "POST", body=b"x" * 5000, end=False)
    gourmet.advance(9.9)
    assert client.answers[slow].status is None
    # 5000 bytes in 10 seconds: below 1024 a second.
    gourmet.advance(0.1)
    assert client.answers[slow].status == 408
    assert client.answers[slow].done
    assert client.get("/other").status == 200
    assert not client.closed
    assert len(server.requests) == 1
    assert gourmet.service.site.client_stats.refusals[408] == 1


def test_a_stop_says_goaway_and_lets_the_streams_under_way_finish(
    gourmets: Gourmets,
) -> None:
    server = MemoryServer(SERVER, None)
    gourmet = proxy(gourmets, server, "")
    client = gourmet.connect_h2()
    slow = client.request("/slow")
    gourmet.flush()
    assert len(server.requests) == 1
    closed = gourmet.service.site.close_connections()
    gourmet.flush()
    (frame,) = goaway(client.frames)
    assert (frame.error_code, frame.last_stream_id) == (ErrorCodes.NO_ERROR, slow)
    assert not client.closed
    # The stream under way is answered, whole, and then the connection ends.
    server.connections[0].write(ok(b"finished"))
    gourmet.flush()
    after = client.frames[client.frames.index(frame) + 1 :]
    decoder = Decoder()
    heads = [
        dict(decoder.decode(each.data, raw=True))
        for each in client.frames
        if isinstance(each, HeadersFrame)
    ]
    assert heads[-1][b":status"] == b"200"
    data = [each for each in after if isinstance(each, DataFrame)]
    assert b"".join(each.data for each in data) == b"finished"
    assert "END_STREAM" in data[-1].flags
    assert client.closed
    assert closed.called


def test_a_response_cut_short_resets_its_stream_rather_than_ending_it(
    gourmets: Gourmets,
) -> None:

    def cut(peer: UpstreamPeer) -> None:
        # The upstream says 10 bytes, sends 4 and closes.
        peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfour")
        close(peer)

    server = MemoryServer(SERVER, cut)
    gourmet = proxy(gourmets, server, "")
    client = gourmet.connect_h2()
    answer = client.get("/cut")
    assert answer.status == 200
    assert answer.reset == ErrorCodes.INTERNAL_ERROR
    assert not answer.ended
    # The connection and its other streams go on.
    assert client.get("/next").status == 200


def test_connections_over_max_connections_are_refused_with_goaway(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = proxy(gourmets, server, "max_connections = 1")
    first = gourmet.connect_h2()
    second = gourmet.connect_h2()
    assert second.closed
    (frame,) = goaway(second.frames)
    assert (frame.error_code, frame.last_stream_id) == (ErrorCodes.REFUSED_STREAM, 0)
    assert first.get("/").status == 200


def test_the_console_counts_http2_connections_and_their_errors(
    gourmets: Gourmets, server: MemoryServer
) -> None:
    gourmet = console(gourmets, server)
    client = gourmet.connect_h2()
    assert client.get("/").status == 200
    broken = gourmet.connect_h2()
    # A DATA frame on stream 0, the connection's own: a protocol error.
    broken.transport.write(b"\x00" * 9)  # type: ignore[union-attr]
    gourmet.flush()
    assert broken.closed
    api = gourmet.connect(gourmet.service.admin_site)
    api.send(b"GET /api/upstreams HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    proxy = json.loads(api.response().body)["listeners"][0]
    assert (proxy["connections"], proxy["http2_connections"]) == (1, 1)
    assert proxy["http2_errors"] == {"protocol": 1}
    api.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    metrics = api.response().body.decode()
    assert 'gourmet_client_http2_connections{listener="proxy"} 1.0' in metrics
    assert (
        'gourmet_client_http2_errors_total{listener="proxy",reason="protocol"} 1.0'
        in metrics
    )
