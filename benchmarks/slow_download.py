"""
Slow clients downloading a large response through several proxies at once,
and each proxy's peak memory meanwhile.

The pacing is ``benchmarks.slow_client``'s: past its budget of ``rate``
bytes a second the client stops reading, so TCP pushes back on the proxy.
Here each client is a thread with a blocking socket, so that the benchmark
needs no reactor.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Dict, Optional

from attrs import frozen

from benchmarks.slow_client import rss_kib


class SlowDownload(threading.Thread):
    """
    Reads ``GET path`` from ``127.0.0.1:port`` at ``rate`` bytes a second
    until the connection closes or ``deadline`` (monotonic) passes.
    """

    def __init__(self, port: int, path: str, rate: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ).encode()
        self.rate = rate
        self.deadline = deadline
        self.received = 0
        self.error: Optional[str] = None
        self.seconds = 0.0

    def run(self) -> None:
        began = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), 30) as client:
                client.sendall(self.request)
                self._read(client)
        except OSError as error:
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.seconds = time.monotonic() - began

    def _read(self, client: socket.socket) -> None:
        started = time.monotonic()
        while time.monotonic() < self.deadline:
            data = client.recv(65536)
            if not data:
                return
            self.received += len(data)
            now = time.monotonic()
            allowed = (now - started) * self.rate
            if self.received > allowed:
                time.sleep(
                    min((self.received - allowed) / self.rate, self.deadline - now)
                )
        self.error = "deadline passed"


@frozen
class SlowResult:
    """
    What one proxy did for its slow client.

    :ivar peak_kib: the proxy's peak resident memory (``VmHWM``).
    :ivar max_sampled_kib: the largest ``VmRSS`` seen, sampled each second.
    :ivar start_kib: its ``VmRSS`` before the download.
    """

    received: int
    seconds: float
    start_kib: int
    max_sampled_kib: int
    peak_kib: Optional[int]
    error: Optional[str]


def measure(
    pids: Dict[str, int], ports: Dict[str, int], path: str, total: int, rate: int
) -> Dict[str, SlowResult]:
    """
    One slow client per proxy (named keys of ``ports``), all at once; the
    memory of each proxy's process ``pids[name]``.
    """
    began = time.monotonic()
    deadline = began + total / rate * 1.5 + 30
    start = {name: rss_kib(pid) for name, pid in pids.items()}
    maxima = dict(start)
    downloads = {
        name: SlowDownload(port, path, rate, deadline) for name, port in ports.items()
    }
    for download in downloads.values():
        download.start()
    while time.monotonic() < deadline and any(d.is_alive() for d in downloads.values()):
        time.sleep(1.0)
        for name, pid in pids.items():
            maxima[name] = max(maxima[name], _memory(pid, "VmRSS") or 0)
    for download in downloads.values():
        download.join(max(0.0, deadline - time.monotonic()) + 1)
    return {
        name: SlowResult(
            received=download.received,
            seconds=download.seconds,
            start_kib=start[name],
            max_sampled_kib=maxima[name],
            peak_kib=_memory(pids[name], "VmHWM"),
            error=_error(download, total, pids[name]),
        )
        for name, download in downloads.items()
    }


def _memory(pid: int, field: str) -> Optional[int]:
    """
    ``rss_kib``, or None once the process has gone.
    """
    try:
        return rss_kib(pid, field)
    except OSError:
        return None


def _error(download: SlowDownload, total: int, pid: int) -> Optional[str]:
    if _memory(pid, "VmRSS") is None:
        return f"the proxy (pid {pid}) exited during the download"
    if download.error is not None:
        return download.error
    # What arrived includes the head: at least the body.
    if download.received < total:
        return f"received {download.received} of {total} bytes"
    return None
