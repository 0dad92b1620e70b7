"""
The access log: one line per request, in the combined log format plus what
the proxy did (the upstreams tried, their statuses, the time taken), or as
JSON.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from attrs import define, field
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.web import http

#: Written for a request whose client left before the response was complete,
#: as nginx does.
CLIENT_CLOSED = 499

#: A TLS client's connection: the protocol version (``TLSv1.3``) and the
#: name it asked for (SNI), if any.
TLSInfo = Tuple[str, Optional[str]]


@define
class ProxyRecord:
    """
    What the proxy did for one request, filled in as it goes.
    """

    started: float
    upstreams: List[str] = field(factory=list)
    upstream_statuses: List[str] = field(factory=list)
    #: The status to log when it is not the one the client got whole
    #: (499: the client left; the upstream's status with a truncated body).
    status: Optional[int] = None
    #: The client's TLS, when it spoke TLS.
    tls: Optional[TLSInfo] = None
    #: The request's ID, unless request IDs are off.
    request_id: Optional[bytes] = None


def _quoted(value: Optional[bytes]) -> str:
    if not value:
        return "-"
    text = value.decode("latin-1")
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _fields(
    request: http.Request, record: ProxyRecord, now: float, when: str
) -> Dict[str, Any]:
    address = request.getClientAddress()
    return {
        "remote_addr": getattr(address, "host", "-"),
        "time": when,
        "request": (
            f"{_quoted(request.method)} {_quoted(request.uri)} "
            f"{_quoted(request.clientproto)}"
        ),
        "status": record.status or request.code,
        "body_bytes_sent": request.sentLength,
        "referer": _quoted(request.getHeader(b"referer")),
        "user_agent": _quoted(request.getHeader(b"user-agent")),
        "upstream": ",".join(record.upstreams) or "-",
        "upstream_status": ",".join(record.upstream_statuses) or "-",
        "request_time": round(now - record.started, 6),
        "tls": record.tls[0] if record.tls else None,
        "sni": record.tls[1] if record.tls else None,
        "request_id": _text(record.request_id),
    }


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("latin-1")


def combined_line(
    request: http.Request, record: ProxyRecord, now: float, when: str
) -> str:
    """
    The access log line of a request in the combined format, then the
    upstreams tried, their statuses and the time taken.
    """
    # Written out rather than through _fields: this runs for every request.
    address = request.getClientAddress()
    return (
        f"{getattr(address, 'host', '-')} - - [{when}] "
        f'"{_quoted(request.method)} {_quoted(request.uri)} '
        f'{_quoted(request.clientproto)}" '
        f"{record.status or request.code} {request.sentLength} "
        f'"{_quoted(request.getHeader(b"referer"))}" '
        f'"{_quoted(request.getHeader(b"user-agent"))}" '
        f"upstream={','.join(record.upstreams) or '-'} "
        f"upstream_status={','.join(record.upstream_statuses) or '-'} "
        f"request_time={now - record.started:.3f}"
        f"{_request_id_field(record.request_id)}\n"
    )


def _request_id_field(request_id: Optional[bytes]) -> str:
    """
    The request ID at the end of a combined line, quoted (one from a
    trusted proxy may hold ``"``); nothing when request IDs are off.
    """
    if request_id is None:
        return ""
    text = request_id.decode("latin-1")
    if '"' in text or "\\" in text:
        text = _quoted(request_id)
    return f' request_id="{text}"'


def json_line(request: http.Request, record: ProxyRecord, now: float, when: str) -> str:
    """
    The same fields as :func:`combined_line`, as one JSON object, and the
    client's TLS version and the name it asked for (``tls`` and ``sni``,
    null for plain HTTP).
    """
    fields = _fields(request, record, now, when)
    return json.dumps(fields, separators=(",", ":")) + "\n"


#: A line from the request, its record, the time now and that time as text.
LineFormat = Callable[[Any, ProxyRecord, float, str], str]

FORMATS: Dict[str, LineFormat] = {
    "combined": combined_line,
    "json": json_line,
}


class AccessLog(MultiService):
    """
    Writes access log lines to a file, buffered and flushed every second
    (as nginx's ``flush=1s``) so that logging costs a request no system call.

    :param path: ``"stdout"``, ``"off"`` or a file name.
    :param clock: for request times and the flush timer.
    """

    def __init__(self, path: str, line_format: str, clock: Any) -> None:
        super().__init__()
        self._path = path
        self._format = FORMATS[line_format]
        self._clock = clock
        self._file: Optional[IO[bytes]] = None
        # The time as text changes once a second, not once a request.
        self._second = -1
        self._when = ""
        self.enabled = path != "off"
        flusher = TimerService(1.0, self.flush)
        flusher.clock = clock
        flusher.setServiceParent(self)

    def startService(self) -> None:
        self._file = _open(self._path)
        super().startService()

    def reopen(
        self, path: Optional[str] = None, line_format: Optional[str] = None
    ) -> None:
        """
        Write to ``path`` from now on (by default the same path: a file
        that logrotate moved away is made anew, as nginx does on SIGUSR1),
        in ``line_format``; the lines buffered so far go to the old file.

        :raises OSError: when the file cannot be opened; nothing changes.
        """
        path = self._path if path is None else path
        new = _open(path) if self.running else None
        old, self._file = self._file, new
        if old is not None:
            old.close()
        self._path = path
        self.enabled = path != "off"
        if line_format is not None:
            self._format = FORMATS[line_format]

    def stopService(self) -> Any:
        result = super().stopService()
        if self._file is not None:
            self._file.close()
            self._file = None
        return result

    def write(self, request: http.Request, record: ProxyRecord) -> None:
        if self._file is None:
            return
        now = self._clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        line = self._format(request, record, now, self._when)
        self._file.write(line.encode("utf-8", "backslashreplace"))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()


def _open(path: str) -> Optional[IO[bytes]]:
    if path == "off":
        return None
    if path == "stdout":
        # Descriptor 1 itself: by now twistd has replaced sys.stdout with a
        # file that feeds its log.
        return open(1, "ab", closefd=False)
    return open(path, "ab")
