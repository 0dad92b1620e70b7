"""
How Gourmet's TCP connections read and write: the client's connection to
Gourmet and Gourmet's to its upstreams, on every request.

Writes go out at once when nothing is queued.  Twisted's transport only
queues a write and asks the reactor to say when the socket is writable:
two ``epoll_ctl`` calls and one more turn of the event loop for every
write, so for every hop of every request, where the socket of a
keep-alive connection almost always has room.  Only what the socket does
not take is queued, as before (asyncio's transports do the same).  And, as
nginx and HAProxy do, TCP connections send with TCP_NODELAY.

On PyPy, reads go into one reused buffer.  Twisted reads with
``socket.recv(65536)``, which on PyPy allocates the whole 64 KiB in the
young generation for every read however small; copying out only the bytes
received allocates a hundredth of that.  CPython's ``recv`` already
returns a buffer of the received size, and its C loop is faster than this
Python one, so there reads are left alone.
"""

from __future__ import annotations

import platform
import socket
from errno import EWOULDBLOCK
from typing import Any, Dict, Iterable, Optional, Tuple, Union

from twisted.internet import main, tcp
from twisted.internet.error import ConnectionDone, ConnectionLost

#: Whether to read into a buffer: only where ``recv`` allocates its maximum.
BUFFERED_READS = platform.python_implementation() == "PyPy"

#: Whether the eager writes and buffered reads are used: not when the
#: installed Twisted lacks a name they rely on (gourmet._twisted.check).
speedups = True


class _EagerWrites(tcp.Connection):
    """
    Writes straight to the socket when nothing is queued before them; only
    what the socket does not take is queued, as Twisted queues it all.
    """

    def write(self, data: bytes) -> None:
        if not data or not _nothing_queued(self):
            super().write(data)
            return
        try:
            sent = self.socket.send(data)
        except OSError:
            # Full (EAGAIN) or broken: the queued path waits for room, or
            # finds the error and loses the connection as it always did.
            sent = 0
        if sent < len(data):
            super().write(data[sent:])

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))


class _BufferedReads(tcp.Connection):
    """
    Reads into a buffer shared by every connection: the reactor reads one
    socket at a time, and the bytes are copied out before any protocol
    code runs.
    """

    #: The buffer, made by the first read.
    _shared: Optional[memoryview] = None

    def doRead(self) -> Union[ConnectionLost, ConnectionDone, None]:  # type: ignore[override]
        view = _BufferedReads._shared
        if view is None:
            view = _BufferedReads._shared = memoryview(bytearray(self.bufferSize))
        try:
            count = self.socket.recv_into(view)
        except OSError as error:
            if error.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(view[:count].tobytes())


#: Twisted's connection classes to their tuned subclasses.
_tuned: Dict[Tuple[type, bool], type] = {}


def _nothing_queued(connection: tcp.Connection) -> bool:
    """
    Whether a write may go straight to the socket: nothing is waiting
    before it, the connection is open both ways and not being aborted, and
    no pull producer waits for the transport to ask it for more (it asks
    only after writing out what was queued).
    """
    return bool(
        connection.connected
        # Aborted: the reactor drops what is queued; nothing may go out.
        and not connection._aborting
        and not connection.disconnecting
        and not connection._writeDisconnecting
        and not connection._writeDisconnected
        and not connection._tempDataBuffer
        and connection.offset == len(connection.dataBuffer)
        and (connection.producer is None or connection.streamingProducer)
    )


def _tune_class(connection: tcp.Connection, buffered: bool) -> None:
    """
    Make ``connection`` an instance of a subclass of its class that writes
    at once and, if ``buffered``, reads into the shared buffer.

    A subclass with no state of its own, swapped in, rather than methods
    set on each instance: closures per connection took about 600 bytes of
    every idle connection.
    """
    cls = type(connection)
    tuned = _tuned.get((cls, buffered))
    if tuned is None:
        bases = (_BufferedReads,) if buffered else ()
        tuned = type(cls.__name__, (_EagerWrites, *bases, cls), {})
        tuned.__module__ = cls.__module__
        _tuned[(cls, buffered)] = tuned
    connection.__class__ = tuned


def tune(transport: Any) -> None:
    """
    Make the TCP connection under ``transport`` send without Nagle's delay
    and, unless it is TLS, write at once and, on PyPy, read into the shared
    buffer.
    """
    while transport is not None and not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)
    if transport is None:
        return
    if transport.socket.family in (socket.AF_INET, socket.AF_INET6):
        # As nginx's tcp_nodelay: a write that follows one not yet
        # acknowledged (the rest of a streamed body, a response after a
        # pipelined one) goes out now rather than after the peer's delayed
        # acknowledgement, up to 40 ms later.
        transport.setTcpNoDelay(True)
    if getattr(transport, "TLS", False) or not speedups:
        return
    cls = type(transport)
    if cls.write is tcp.Connection.write:
        _tune_class(transport, BUFFERED_READS and cls.doRead is tcp.Connection.doRead)
