"""
A blocking HTTP/2 client for the tests, on the h2 library over Python's
``ssl``: it sends what a test scripts (requests, resets, raw frames, even
header blocks h2 itself would refuse to send) and collects what comes
back, stream by stream.  Tests run it in a thread when the proxy or its
upstreams answer from the test's reactor.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError, StreamClosedError

Fields = Sequence[Tuple[bytes, bytes]]


class Answer:
    """
    What came back on one stream.
    """

    def __init__(self) -> None:
        self.status: Optional[int] = None
        self.headers: Dict[bytes, List[bytes]] = {}
        self.body = bytearray()
        self.ended = False
        self.reset: Optional[int] = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.headers.get(name)
        return values[-1] if values else None


class H2Session:
    """
    The client's side of one HTTP/2 connection, without its transport:
    requests sent, answers collected by stream.  :meth:`flush` is the
    transport's.

    :param checked: whether h2 checks and normalizes the headers sent;
        False sends them as given, for the tests of what Gourmet refuses.
    """

    def __init__(self, checked: bool = True) -> None:
        self.conn = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=checked,
                normalize_outbound_headers=checked,
            )
        )
        self.conn.initiate_connection()
        self.answers: Dict[int, Answer] = {}
        #: Streams whose data is not acknowledged: their window stays shut.
        self.stalled: Set[int] = set()
        self.terminated: Optional[ConnectionTerminated] = None
        self.closed = False

    def flush(self) -> None:
        """
        Send what is framed: the transport's.
        """
        raise NotImplementedError

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        headers: Iterable[Tuple[bytes, bytes]] = (),
        body: Optional[bytes] = None,
        authority: str = "a.test",
        end: bool = True,
    ) -> int:
        """
        Send a request; its stream's id.  With ``end`` False the body (if
        any) is sent but not ended.
        """
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            *headers,
        ]
        self.send_headers(stream_id, fields, end=end and body is None)
        if body is not None:
            self.send_body(stream_id, body, end=end)
        return stream_id

    def send_headers(self, stream_id: int, fields: Fields, end: bool = True) -> None:
        self.answers[stream_id] = Answer()
        self.conn.send_headers(stream_id, list(fields), end_stream=end)
        self.flush()

    def send_body(self, stream_id: int, body: bytes, end: bool = True) -> None:
        """
        Send ``body``, which must fit the windows.
        """
        self.conn.send_data(stream_id, body, end_stream=end)
        self.flush()

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        self.flush()

    def receive(self, data: bytes) -> bool:
        """
        Take what the server sent; False if it broke the protocol.
        """
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.closed = True
            return False
        for event in events:
            self._handle(event)
        self.flush()
        return True

    def _handle(self, event: object) -> None:
        answer = self.answers.get(getattr(event, "stream_id", 0))
        if isinstance(event, ResponseReceived) and answer is not None:
            fields = dict(event.headers)
            answer.status = int(fields[b":status"])
            for name, value in event.headers:
                answer.headers.setdefault(name, []).append(value)
        elif isinstance(event, DataReceived) and answer is not None:
            answer.body += event.data
            if event.stream_id in self.stalled:
                # The connection's window opens, the stream's does not.
                self.conn.increment_flow_control_window(event.flow_controlled_length)
            else:
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
        elif isinstance(event, StreamEnded) and answer is not None:
            answer.ended = True
        elif isinstance(event, StreamReset) and answer is not None:
            answer.reset = event.error_code
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event


class H2Client(H2Session):
    """
    An HTTP/2 connection to ``port`` on 127.0.0.1, over TLS with ALPN
    ``h2`` (any certificate is taken), used from one thread.
    """

    def __init__(
        self,
        port: int,
        server_name: str = "a.test",
        checked: bool = True,
        before_tls: bytes = b"",
    ) -> None:
        """
        :param before_tls: bytes sent in the clear first (a PROXY header).
        """
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(before_tls)
        self.sock = context.wrap_socket(raw, server_hostname=server_name)
        self.alpn = self.sock.selected_alpn_protocol()
        super().__init__(checked)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_body(self, stream_id: int, body: bytes, end: bool = True) -> None:
        """
        Send ``body`` as the windows allow, reading what comes meanwhile.
        """
        view = memoryview(body)
        try:
            while view and not self.answers[stream_id].done:
                window = min(
                    self.conn.local_flow_control_window(stream_id),
                    self.conn.max_outbound_frame_size,
                )
                if window <= 0:
                    if not self.read_once():
                        return
                    continue
                self.conn.send_data(stream_id, bytes(view[:window]))
                view = view[window:]
                self.flush()
            if end and not self.answers[stream_id].done:
                self.conn.end_stream(stream_id)
                self.flush()
        except StreamClosedError:
            pass  # answered (and reset) before the body was all sent

    def read_once(self, timeout: float = 10.0) -> bool:
        """
        Read what comes within ``timeout`` (perhaps nothing); False once
        the connection is closed.
        """
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True  # nothing came, yet
        except (ConnectionError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        return self.receive(data)

    def wait(
        self, stream_ids: Iterable[int], timeout: float = 20.0
    ) -> Dict[int, Answer]:
        """
        Read until each of ``stream_ids`` is answered (or reset), the
        connection closes, or ``timeout`` passes.
        """
        wanted = list(stream_ids)
        deadline = time.monotonic() + timeout
        while not all(self.answers[each].done for each in wanted):
            left = deadline - time.monotonic()
            if left <= 0 or not self.read_once(left):
                break
        return {each: self.answers[each] for each in wanted}

    def wait_closed(self, timeout: float = 20.0) -> None:
        """
        Read until the server closes the connection.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.read_once(
            deadline - time.monotonic()
        ):
            pass

    def closed_with(self) -> Optional[int]:
        """
        Read until the server closes the connection: the error code of its
        GOAWAY, if it sent one.
        """
        self.wait_closed()
        terminated = self.terminated
        return terminated.error_code if terminated is not None else None

    def get(self, path: str = "/", **options: object) -> Answer:
        stream_id = self.request(path, **options)  # type: ignore[arg-type]
        return self.wait([stream_id])[stream_id]

    def close(self) -> None:
        self.closed = True
        self.sock.close()
