"""
Many idle keep-alive connections to a proxy on loopback, from a process of
their own: each sends one ``GET`` and reads its response whole, then stays
open and silent until standard input closes (or ``--hold`` seconds pass).

    .venv/bin/python -m benchmarks.idle_clients PORT COUNT

Prints one JSON line once every connection is answered, failed or the
``--timeout`` passed: ``{"answered": n, "failed": n, "errors": {...},
"seconds": s}``.  At most ``--batch`` connections are being opened at
once, so that the proxy's listen backlog is never what is measured.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
import time
from collections import Counter
from typing import Dict, List, Optional

#: Connections being opened (connected, asked, not yet answered) at once.
BATCH = 200
#: Seconds the whole opening may take.
TIMEOUT = 120.0
#: Seconds the connections are held open at most, once answered.
HOLD = 300.0


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def answered(buffer: bytes) -> Optional[bool]:
    """
    Whether ``buffer`` holds a whole response with a ``Content-Length``
    body (None: not yet whole; False: whole but not a 2xx).
    """
    end = buffer.find(b"\r\n\r\n")
    if end == -1:
        return None
    head = buffer[:end].lower()
    start = head.find(b"\r\ncontent-length:")
    if start == -1:
        return False
    line_end = head.find(b"\r\n", start + 2)
    length = int(head[start + 17 : None if line_end == -1 else line_end])
    if len(buffer) < end + 4 + length:
        return None
    return buffer[9:10] == b"2"


class Opener:
    """
    Opens ``count`` connections to ``port``, at most ``batch`` at a time.
    """

    def __init__(self, port: int, count: int, batch: int, path: str) -> None:
        self.port = port
        self.count = count
        self.batch = batch
        self.request = request(path)
        self.selector = selectors.DefaultSelector()
        self.pending: Dict[socket.socket, bytearray] = {}
        self.idle: List[socket.socket] = []
        self.started = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()

    def fail(self, sock: socket.socket, why: str) -> None:
        self.failed += 1
        self.errors[why] += 1
        if sock in self.pending:
            del self.pending[sock]
            self.selector.unregister(sock)
        sock.close()

    def start_more(self) -> None:
        while self.started < self.count and len(self.pending) < self.batch:
            self.started += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", self.port))
            if code not in (0, errno.EINPROGRESS):
                self.fail(sock, errno.errorcode.get(code, str(code)))
                continue
            self.pending[sock] = bytearray()
            self.selector.register(sock, selectors.EVENT_WRITE)

    def on_event(self, sock: socket.socket, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.fail(sock, errno.errorcode.get(code, str(code)))
                return
            try:
                sock.send(self.request)
            except OSError as error:
                self.fail(sock, type(error).__name__)
                return
            self.selector.modify(sock, selectors.EVENT_READ)
            return
        try:
            data = sock.recv(65536)
        except OSError as error:
            self.fail(sock, type(error).__name__)
            return
        if not data:
            self.fail(sock, "closed")
            return
        buffer = self.pending[sock]
        buffer += data
        whole = answered(bytes(buffer))
        if whole is None:
            return
        if not whole:
            self.fail(sock, "status " + buffer[9:12].decode(errors="replace"))
            return
        del self.pending[sock]
        self.selector.unregister(sock)
        self.idle.append(sock)

    def run(self, timeout: float) -> Dict[str, object]:
        began = time.monotonic()
        deadline = began + timeout
        self.start_more()
        while self.pending and time.monotonic() < deadline:
            for key, events in self.selector.select(0.5):
                self.on_event(key.fileobj, events)  # type: ignore[arg-type]
            self.start_more()
        for sock in list(self.pending):
            self.fail(sock, "timeout")
        return {
            "answered": len(self.idle),
            "failed": self.failed,
            "errors": dict(self.errors),
            "seconds": round(time.monotonic() - began, 3),
        }

    def close(self) -> None:
        for sock in self.idle:
            sock.close()
        self.idle = []
        self.selector.close()


def hold(seconds: float) -> None:
    """
    Wait until standard input closes, at most ``seconds``.
    """
    with selectors.DefaultSelector() as waiting:
        waiting.register(sys.stdin, selectors.EVENT_READ)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if waiting.select(deadline - time.monotonic()) and not sys.stdin.read(1):
                return


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--path", default="/small")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument("--hold", type=float, default=HOLD)
    options = parser.parse_args(argv)
    opener = Opener(options.port, options.count, options.batch, options.path)
    try:
        sys.stdout.write(json.dumps(opener.run(options.timeout)) + "\n")
        sys.stdout.flush()
        hold(options.hold)
    finally:
        opener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
