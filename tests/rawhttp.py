"""
A raw HTTP client for the tests: a real socket on loopback, so that the
exact bytes of a hostile request reach Gourmet, driven without blocking
the reactor (which runs in this thread) by polling with short sleeps.
"""

from __future__ import annotations

import socket
import time
from typing import Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

#: Seconds between two looks at the socket.
_POLL = 0.002


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds)


def status_of(reply: bytes) -> Optional[int]:
    """
    The status code of the first response in ``reply``, if there is one.
    """
    parts = reply.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None
    return int(parts[1])


class RawClient:
    """
    One client connection.

    :ivar received: everything the server sent so far.
    :ivar closed: whether the server closed (or reset) the connection.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.socket = socket.create_connection((host, port), timeout=2)
        self.socket.setblocking(False)
        self.received = b""
        self.closed = False

    async def send(self, data: bytes, timeout: float = 5.0) -> bool:
        """
        Send all of ``data``, unless the server closes first.

        :return: whether all of it was sent.
        """
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[self.socket.send(view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the server stopped reading") from None
                self.poll()
                await sleep(_POLL)
            except OSError:
                self.closed = True
                return False
        return True

    def poll(self) -> None:
        """
        Take in what the server sent, noting whether it closed.
        """
        while not self.closed:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # reset
                self.closed = True
                return
            if not data:
                self.closed = True
                return
            self.received += data

    async def read_until_closed(self, timeout: float = 5.0) -> bytes:
        """
        Everything the server sends until it closes the connection, within
        ``timeout`` seconds (then :attr:`closed` stays false).
        """
        deadline = time.monotonic() + timeout
        self.poll()
        while not self.closed and time.monotonic() < deadline:
            await sleep(_POLL)
            self.poll()
        return self.received

    async def read_response(self, timeout: float = 5.0) -> bytes:
        """
        The next whole response (framed by Content-Length, or by the close
        when it has none; an interim 1xx one counts), within ``timeout``
        seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            head, found, rest = self.received.partition(b"\r\n\r\n")
            if found:
                length = _content_length(head)
                if length is not None and len(rest) >= length:
                    self.received = rest[length:]
                    return head + found + rest[:length]
            if self.closed:
                reply, self.received = self.received, b""
                return reply
            await sleep(_POLL)
        raise TimeoutError(f"no whole response: {self.received[:200]!r}")

    def close(self) -> None:
        self.socket.close()


def _content_length(head: bytes) -> Optional[int]:
    status = status_of(head)
    if status is not None and (status < 200 or status in (204, 304)):
        return 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None
