"""
Two connections spliced (gourmet.net.splice), on string transports and a
Clock: what a WebSocket tunnel and a TCP stream are made of.
"""

from __future__ import annotations

from typing import List, Tuple

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gourmet.net.splice import Splice


class HalfClosing(StringTransport):
    """
    A string transport that can close its writing alone, as TCP's can.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def spliced(
    idle_timeout: float = 60.0,
) -> Tuple[Splice, HalfClosing, HalfClosing, Clock, List[Splice]]:
    clock = Clock()
    ended: List[Splice] = []
    splice = Splice(clock, idle_timeout, ended.append)
    client, server = HalfClosing(), HalfClosing()
    splice.join(client, server, from_client=b"early ", from_server=b"hello")
    return splice, client, server, clock, ended


def test_bytes_pass_both_ways_and_are_counted() -> None:
    splice, client, server, _, _ = spliced()
    splice.client.data(b"request")
    splice.server.data(b" world")
    # What arrived before the splice goes first.
    assert server.value() == b"early request"
    assert client.value() == b"hello world"
    assert (splice.client.received, splice.server.received) == (13, 11)


def test_a_full_transport_stops_reading_from_the_other_side() -> None:
    splice, client, server, _, _ = spliced()
    # Each side is the producer of the other's transport.
    assert (client.producer, server.producer) == (splice.server, splice.client)
    # The client's transport cannot take more: the server is not read.
    splice.server.pauseProducing()
    assert server.producerState == "paused"
    assert client.producerState == "producing"
    splice.server.resumeProducing()
    assert server.producerState == "producing"
    splice.client.pauseProducing()
    assert client.producerState == "paused"


def test_a_half_close_is_passed_on_and_both_close_once_both_are_done() -> None:
    splice, client, server, _, ended = spliced()
    splice.client.read_ended()
    assert server.write_closed and not server.disconnecting
    # The client's end no longer produces for the server's transport: a
    # paused producer would be resumed there instead of the FIN being sent.
    assert server.producer is None
    # The server still answers the client, which still reads.
    splice.server.data(b"answer")
    assert client.value() == b"helloanswer"
    assert not client.disconnecting
    splice.server.read_ended()
    assert client.disconnecting and server.disconnecting
    splice.client.lost(Failure(ConnectionDone()))
    splice.server.lost(Failure(ConnectionDone()))
    assert ended == [splice]
    assert splice.why == "closed"


def test_a_side_lost_closes_the_other_after_its_bytes() -> None:
    splice, client, _, _, ended = spliced()
    splice.server.data(b" last words")
    splice.server.lost(Failure(ConnectionLost("reset by peer")))
    # Closed, not aborted: what the server sent last still reaches the client.
    assert client.disconnecting and client.value() == b"hello last words"
    assert ended == []
    splice.client.lost(Failure(ConnectionDone()))
    assert ended == [splice]
    assert splice.why is not None and splice.why.startswith("server ")
    assert "reset by peer" in splice.why


def test_an_idle_splice_is_closed_after_the_timeout_since_the_last_byte() -> None:
    splice, client, server, clock, _ = spliced(idle_timeout=3600)
    clock.advance(3000)
    splice.client.data(b"ping")
    clock.advance(3000)
    # 3000 s since the last byte: still open.
    assert not client.disconnecting and not server.disconnecting
    clock.advance(600)
    assert client.disconnecting and server.disconnecting
    assert splice.why == "idle"


def test_no_idle_timeout_when_it_is_zero() -> None:
    _, client, _, clock, _ = spliced(idle_timeout=0)
    assert clock.getDelayedCalls() == []
    clock.advance(10**6)
    assert not client.disconnecting


def test_the_timer_goes_when_the_splice_ends() -> None:
    splice, _, _, clock, ended = spliced()
    splice.client.lost(Failure(ConnectionDone()))
    splice.server.lost(Failure(ConnectionDone()))
    assert ended == [splice]
    assert clock.getDelayedCalls() == []
