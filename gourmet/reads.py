"""
Socket reads that allocate only what arrived, for PyPy.

Twisted's TCP transport reads with ``socket.recv(65536)``.  On PyPy that
allocates the whole 64 KiB in the young generation for every read, however
few bytes came: a small proxied request costs two such reads, and the
minor collections they cause took a quarter of the proxy's time and set its
tail latency (measured with ``PYPYLOG=gc``; see the README's Performance
section).  Reading into one reused buffer and copying out only the bytes
received allocates a hundredth of that.  CPython's ``recv`` already returns
a buffer of the received size, and its C loop is faster than this Python
one, so there the transport is left alone.
"""

from __future__ import annotations

import platform
from errno import EWOULDBLOCK
from typing import Any, Optional, Union

from twisted.internet import main, tcp
from twisted.internet.error import ConnectionDone, ConnectionLost

#: Whether to read into a buffer: only where ``recv`` allocates its maximum.
ENABLED = platform.python_implementation() == "PyPy"


class _BufferedRead:
    """
    A TCP transport's ``doRead``, reading into a buffer shared by every
    connection: the reactor reads one socket at a time, and the bytes are
    copied out before any protocol code runs.
    """

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)

    def install(self, connection: tcp.Connection) -> None:
        def do_read() -> Union[ConnectionLost, ConnectionDone, None]:
            try:
                count = connection.socket.recv_into(self.buffer)
            except OSError as error:
                if error.args[0] == EWOULDBLOCK:
                    return None
                return main.CONNECTION_LOST
            return connection._dataReceived(self.view[:count].tobytes())

        # The reactor looks doRead up on the instance when the socket is
        # readable, so this shadows the class's method for this one only.
        connection.doRead = do_read  # type: ignore[method-assign]


_reader: Optional[_BufferedRead] = None


def read_into_buffer(transport: Any) -> None:
    """
    Make the TCP connection under ``transport`` (TLS included) read into
    the shared buffer, where that saves allocations; otherwise do nothing.
    """
    global _reader
    if not ENABLED:
        return
    while transport is not None and not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)
    if transport is None or type(transport).doRead is not tcp.Connection.doRead:
        return
    if _reader is None:
        _reader = _BufferedRead(transport.bufferSize)
    _reader.install(transport)
