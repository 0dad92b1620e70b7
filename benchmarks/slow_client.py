"""
A large response to a slow client: how much memory does the proxy hold?

Starts an upstream that streams ``--size`` bytes, Gourmet under ``twistd``
in front of it, and a client on loopback that reads at ``--rate`` bytes per
second; samples Gourmet's resident memory every second and prints it.

    .venv/bin/python -m benchmarks.slow_client --size 300M --rate 1M

Stock ``ReverseProxyResource`` would read the whole response from the
upstream as fast as it comes and hold it until the client took it.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, List

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ClientFactory, Protocol

from tests.upstreams import UpstreamServer

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def size(text: str) -> int:
    text = text.upper().rstrip("B")
    unit = text[-1] if text[-1:] in UNITS else ""
    return int(float(text[: len(text) - len(unit)]) * UNITS[unit])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


class SlowReader(Protocol):
    """
    Reads at most ``rate`` bytes a second: past its budget it stops reading,
    so TCP pushes back on the proxy, as a slow client's would.
    """

    def __init__(self, request: bytes, rate: int, done: Deferred[int]) -> None:
        self.request = request
        self.rate = rate
        self.done = done
        self.received = 0
        self.started = 0.0
        self.paused = False

    def connectionMade(self) -> None:
        self.started = time.monotonic()
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        allowed = (time.monotonic() - self.started) * self.rate
        if self.received > allowed and not self.paused:
            self.paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
            reactor.callLater((self.received - allowed) / self.rate, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.received)


def log(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def run(total: int, rate: int) -> int:
    upstream = UpstreamServer("big")
    upstream.start()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="gourmet-bench-"))
    config = workdir / "gourmet.toml"
    config.write_text(
        f"[upstreams.b]\n[[upstreams.b.servers]]\npath = '{upstream.address}'\n"
        f"[server]\nlisten = ['tcp:{port}:interface=127.0.0.1']\n"
        "[[server.locations]]\nlocation = '/'\nupstream = 'b'\n"
        "[log]\naccess_log = 'off'\n[admin]\nlisten = 'off'\n"
    )
    twistd = Path(sys.executable).with_name("twistd")
    gourmet = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "gourmet", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "gourmet.err").open("wb"),
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                await task.deferLater(reactor, 0.1, lambda: None)
        start_rss = rss_kib(gourmet.pid)
        log(f"response {total / 2**20:.0f} MiB at {rate / 2**20:.2f} MiB/s")
        log(f"gourmet RSS at start: {start_rss / 1024:.1f} MiB")
        done: Deferred[int] = Deferred()
        request = f"GET /big/{total} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        factory: Any = ClientFactory.forProtocol(
            lambda: SlowReader(request.encode(), rate, done)
        )
        reactor.connectTCP("127.0.0.1", port, factory)
        samples: List[int] = []
        deadline = time.monotonic() + total / rate * 1.5 + 30
        began = time.monotonic()
        while not done.called and time.monotonic() < deadline:
            await task.deferLater(reactor, 1.0, lambda: None)
            samples.append(rss_kib(gourmet.pid))
            if len(samples) % 30 == 0:
                log(
                    f"  {time.monotonic() - began:5.0f} s: RSS "
                    f"{samples[-1] / 1024:.1f} MiB"
                )
        received = await done if done.called else -1
        peak = rss_kib(gourmet.pid, "VmHWM")
        elapsed = time.monotonic() - began
        log(f"received {received} of {total} bytes in {elapsed:.0f} s")
        log(f"gourmet RSS max sampled: {max(samples or [0]) / 1024:.1f} MiB")
        log(f"gourmet peak RSS (VmHWM): {peak / 1024:.1f} MiB")
        # What arrived includes the head and chunk framing: at least the body.
        return 0 if received >= total and peak < 100 * 1024 else 1
    finally:
        gourmet.terminate()
        gourmet.wait(10)
        await upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size, default=size("300M"))
    parser.add_argument("--rate", type=size, default=size("1M"))
    options = parser.parse_args()
    result: List[int] = []

    async def go() -> None:
        try:
            result.append(await run(options.size, options.rate))
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(go()))
    reactor.run()
    sys.exit(result[0] if result else 2)


if __name__ == "__main__":
    main()
