"""
gourmet._twisted.pollloop: the epoll reactor's loop without a log context per
event, on a reactor of the test's own (the suite's proxy tests run on the
global one with the loop installed by build_service).
"""

from __future__ import annotations

import socket
from typing import Iterator, List

import pytest
from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from gourmet._twisted.pollloop import install_poll_loop


class Reader(FileDescriptor):
    """
    One end of a socket pair: notes what it read; optionally breaks when
    its connection is lost.
    """

    def __init__(self, reactor: EPollReactor, sock: socket.socket, breaks: bool):
        super().__init__(reactor)
        self.sock = sock
        self.breaks = breaks
        self.read: List[bytes] = []
        self.connected = 1

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> object:
        data = self.sock.recv(100)
        self.read.append(data)
        return main.CONNECTION_DONE if self.breaks else None

    def connectionLost(self, reason: object) -> None:
        if self.breaks:
            raise RuntimeError("broken connectionLost")


@pytest.fixture
def epoll() -> Iterator[EPollReactor]:
    reactor = EPollReactor()
    yield reactor
    # As Twisted's own reactor tests dispose of theirs: the waker too.
    for reader in list(reactor._internalReaders):
        reactor.removeReader(reader)
        reader.connectionLost(None)
    reactor._poller.close()


def pair() -> List[socket.socket]:
    return list(socket.socketpair())


def test_installs_once_and_only_on_epoll(epoll: EPollReactor) -> None:
    assert install_poll_loop(epoll)
    assert not install_poll_loop(epoll)
    assert not install_poll_loop(Clock())


def test_events_reach_their_connections_and_errors_are_logged(
    epoll: EPollReactor,
) -> None:
    install_poll_loop(epoll)
    (a_near, a_far), (b_near, b_far) = pair(), pair()
    breaking = Reader(epoll, a_near, breaks=True)
    working = Reader(epoll, b_near, breaks=False)
    epoll.addReader(breaking)
    epoll.addReader(working)
    a_far.send(b"one")
    b_far.send(b"two")
    with capturedLogs() as events:
        epoll.doIteration(1)
    # The error escaping one connection's handling did not stop the other.
    assert breaking.read == [b"one"] and working.read == [b"two"]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    epoll.removeReader(working)
    for sock in (a_near, a_far, b_near, b_far):
        sock.close()
