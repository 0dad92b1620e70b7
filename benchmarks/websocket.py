"""
WebSocket tunnels through Gourmet (CPython, and PyPy when there is one) and
nginx: messages per second, MB/s and new tunnels per second, with the CPU
time each proxy spends per message, per MiB and per handshake.

On loopback only, each proxy on one core and everything else on the other,
as ``benchmarks.compare`` places them: an echo server (asyncio, below) that
answers the WebSocket handshake as RFC 6455 says (``Sec-WebSocket-Accept``)
and then sends back every byte it receives; and a load client (asyncio, raw
sockets, in this process) whose connections each make the handshake through
the proxy, check the ``101`` and its accept key, then send batches of masked
binary frames, built once, and read back the same bytes, compared with what
was sent.  Three loads, round after round, each target in turn:

- small messages (64 bytes, 100 a batch, 50 tunnels): messages per second
  and the proxy's CPU time per message;
- large messages (64 KiB, 4 a batch, 16 tunnels): MB/s each way and the
  proxy's CPU time per MiB;
- handshakes (16 at a time): each connection makes the handshake, echoes
  one small message and closes; tunnels per second and CPU time per tunnel.
  The handshake is where a proxy does HTTP work; the rest is splicing.

Neither end parses frames after the handshake: a tunnel never looks at
them, so nginx and Gourmet do the same work whatever the frames hold, and
parsing in Python would measure the test tools, not the proxies.  A message
counts once, sent and read back: it crossed the proxy twice.  The proxy's
CPU time is read from ``/proc`` before and after each run (nginx: its
worker's); on a shared machine it is the steadier figure.

    .venv/bin/python -m benchmarks.websocket            # about two and a half minutes
    .venv/bin/python -m benchmarks.websocket --quick    # under a minute

``phase`` runs it as a phase of ``benchmarks.compare``, with its ``Bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import os
import socket
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Coroutine, Dict, Iterator, List, Optional, Tuple

from attrs import asdict, evolve, field, frozen

from benchmarks import compare, nginx, report
from benchmarks.processes import (
    REPO,
    Server,
    cpu_seconds,
    pinned,
)
from benchmarks.slow_client import free_port

#: RFC 6455's GUID, appended to the client's key for the server's answer.
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Seconds past a run's end after which a connection still at work is
#: counted as failed (stalled) and abandoned.
STALL = 10.0
#: The longest handshake answer read.
MAX_HEAD = 16 * 1024

TARGETS = {key: report.TARGETS[key] for key in ("nginx", "cpython", "pypy")}
LOADS = ("small", "large", "handshake")


@frozen
class Stream:
    """
    Tunnels that each send ``batch`` messages of ``size`` bytes, read them
    back, and again, until the run ends.
    """

    size: int
    batch: int
    connections: int


@frozen
class Loads:
    """
    What every target is given, each load for ``duration`` seconds in each
    of ``rounds`` after a ``warmup``; no run goes past ``max_batches``
    batches on a tunnel nor ``max_handshakes`` tunnels.

    The handshakes' warm-up is ``warmup_tunnels`` tunnels, or
    ``warmup_cap`` seconds if that comes first: PyPy's JIT compiles a path
    once it has run it some thousand times, and a streaming tunnel runs its
    path that often within a second, but a tunnel's making and ending runs
    once per tunnel.
    """

    rounds: int = 3
    duration: float = 4.0
    warmup: float = 2.0
    warmup_tunnels: int = 3000
    warmup_cap: float = 15.0
    small: Stream = Stream(64, 100, 50)
    large: Stream = Stream(64 * 1024, 4, 16)
    handshake_connections: int = 16
    max_batches: int = 1_000_000
    max_handshakes: int = 50_000


def loads_for(settings: compare.Settings) -> Loads:
    """
    The loads for a comparison run with ``settings``: its rounds, with
    shorter runs (three loads per target per round) and warm-ups.
    """
    full = Loads()
    return evolve(
        full,
        rounds=settings.rounds,
        duration=min(settings.duration, full.duration),
        warmup=min(settings.warmup, full.warmup),
        warmup_cap=min(settings.warmup * 5, full.warmup_cap),
    )


# --- The WebSocket handshake and frames ---------------------------------------


def accept_key(key: bytes) -> bytes:
    """
    The ``Sec-WebSocket-Accept`` a server answers the client's ``key`` with.
    """
    return base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())


def masked_frame(payload: bytes, mask: bytes) -> bytes:
    """
    One final binary frame carrying ``payload``, masked with ``mask`` (four
    bytes) as a client must.
    """
    size = len(payload)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
    key = (mask * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return head + mask + masked.to_bytes(size, "big")


def batch_of(stream: Stream) -> bytes:
    """
    ``stream.batch`` frames of ``stream.size`` random bytes, in one string.
    """
    return b"".join(
        masked_frame(os.urandom(stream.size), os.urandom(4))
        for _ in range(stream.batch)
    )


def handshake_request(port: int, key: bytes) -> bytes:
    return (
        b"GET /echo HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    ) % (port, key)


def header(head: bytes, name: bytes) -> Optional[bytes]:
    """
    The value of header ``name`` (lower case) in a request or response head.
    """
    for line in head.split(b"\r\n")[1:]:
        found, _, value = line.partition(b":")
        if found.strip().lower() == name:
            return value.strip()
    return None


# --- The upstream: an echo server ---------------------------------------------


class Echo(asyncio.Protocol):
    """
    Answers a WebSocket handshake with its ``101``, then sends back every
    byte it receives, reading no faster than its client takes them.
    """

    def __init__(self) -> None:
        self.transport: Any = None
        self.head = b""
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.transport.write(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                self.transport.close()
            return
        head, rest = self.head[:end], self.head[end + 4 :]
        key = header(head, b"sec-websocket-key")
        if key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            self.transport.close()
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n" + rest
        )
        self.open, self.head = True, b""

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def serve_echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def echo_server(workdir: Path, cpu: Optional[int]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.websocket", "--echo", str(port)]
    return Server("echo", pinned(command, cpu), port, workdir / "echo.out")


# --- The load -----------------------------------------------------------------


class TunnelFailed(Exception):
    """
    A tunnel did not open, or did not give back what was sent.
    """


@frozen
class Run:
    """
    One load against one target.

    :param seconds: from the first batch (or handshake) to the last.
    :param messages: messages read back whole.
    :param bytes: bytes read back (frames, each way).
    :param tunnels: handshakes answered ``101`` with the right key.
    :param failed: connections that failed: a refused or broken handshake,
        an echo short or different, a connection closed or stalled.
    :param cpu_seconds: the proxy's user and system time during the run.
    :param system_seconds: the system time among them (the kernel's work
        for the proxy's calls: its sockets, TCP).
    """

    load: str
    seconds: float
    messages: int
    bytes: int
    tunnels: int
    failed: int
    cpu_seconds: float
    system_seconds: float
    errors: List[str] = field(factory=list)

    def figures(self) -> Dict[str, float]:
        """
        This run's figures, by key: rates, and CPU per unit.
        """
        if self.load == "handshake":
            return {
                "handshake_rate": self.tunnels / self.seconds,
                "handshake_cpu_us": self.cpu_seconds / max(self.tunnels, 1) * 1e6,
            }
        if self.load == "small":
            return {
                "small_mps": self.messages / self.seconds,
                "small_cpu_us": self.cpu_seconds / max(self.messages, 1) * 1e6,
            }
        return {
            "large_mbps": self.bytes / self.seconds / 1e6,
            "large_cpu_ms": self.cpu_seconds / max(self.bytes / 2**20, 1e-9) * 1e3,
        }

    def as_json(self) -> Dict[str, Any]:
        return {**asdict(self), **self.figures()}


class Counts:
    """
    A run's counts as its connections go, and the first few errors.
    """

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.tunnels = 0
        self.failed = 0
        self.errors: List[str] = []

    def fail(self, error: BaseException) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(f"{type(error).__name__}: {error}")

    def run(self, load: str, seconds: float, user: float, system: float) -> Run:
        return Run(
            load,
            max(seconds, 1e-6),
            self.messages,
            self.bytes,
            self.tunnels,
            self.failed,
            user + system,
            system,
            self.errors,
        )


async def open_tunnel(port: int, counts: Counts) -> socket.socket:
    """
    A connection through the proxy on ``port`` that the echo server has
    switched to WebSocket; raises :class:`TunnelFailed` if not.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        await loop.sock_sendall(sock, handshake_request(port, key))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk or len(head) > MAX_HEAD:
                raise TunnelFailed(f"handshake answer cut short: {head[:80]!r}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            status = head.partition(b"\r\n")[0]
            raise TunnelFailed(f"handshake answered {status!r}")
        if header(head, b"sec-websocket-accept") != accept_key(key):
            raise TunnelFailed("wrong or missing Sec-WebSocket-Accept")
        if rest:
            raise TunnelFailed(f"{len(rest)} bytes came before any message")
    except BaseException:
        sock.close()
        raise
    counts.tunnels += 1
    return sock


async def echo(sock: socket.socket, batch: bytes, buffer: bytearray) -> None:
    """
    ``batch`` sent and read back into ``buffer`` (as long as it), both at
    once (neither side may wait for the other to finish), and compared.
    """
    loop = asyncio.get_running_loop()
    sending = None
    try:
        sent = sock.send(batch)
    except BlockingIOError:
        sent = 0
    if sent < len(batch):
        sending = asyncio.ensure_future(loop.sock_sendall(sock, batch[sent:]))
    view = memoryview(buffer)
    got = 0
    try:
        while got < len(batch):
            read = await loop.sock_recv_into(sock, view[got:])
            if not read:
                raise TunnelFailed(f"closed after {got} of {len(batch)} bytes")
            got += read
        if sending is not None:
            await sending
    finally:
        if sending is not None and not sending.done():
            sending.cancel()
    if buffer != batch:
        raise TunnelFailed("the bytes read back differ from those sent")


async def keep_echoing(
    sock: socket.socket,
    stream: Stream,
    batch: bytes,
    deadline: float,
    loads: Loads,
    counts: Counts,
) -> None:
    buffer = bytearray(len(batch))
    try:
        for _ in range(loads.max_batches):
            if time.monotonic() >= deadline:
                break
            await echo(sock, batch, buffer)
            counts.messages += stream.batch
            counts.bytes += len(batch)
    except (TunnelFailed, OSError) as error:
        counts.fail(error)


async def handshakes(
    port: int, frame: bytes, deadline: float, loads: Loads, counts: Counts
) -> None:
    """
    Tunnels opened one after another until ``deadline``, each carrying one
    message there and back before it closes.
    """
    buffer = bytearray(len(frame))
    while time.monotonic() < deadline and counts.tunnels < loads.max_handshakes:
        try:
            sock = await open_tunnel(port, counts)
        except (TunnelFailed, OSError) as error:
            counts.fail(error)
            continue
        try:
            await echo(sock, frame, buffer)
            counts.messages += 1
            counts.bytes += len(frame)
        except (TunnelFailed, OSError) as error:
            counts.fail(error)
        finally:
            sock.close()


async def finish(
    workers: List[asyncio.Task[None]], timeout: float, counts: Counts
) -> None:
    """
    The workers waited for up to ``timeout`` seconds; those still at work
    then are stalled: cancelled and counted as failed.
    """
    if not workers:
        return
    _, stalled = await asyncio.wait(workers, timeout=timeout)
    for worker in stalled:
        worker.cancel()
        counts.fail(TunnelFailed(f"stalled {timeout:.0f} s"))
    await asyncio.gather(*stalled, return_exceptions=True)


async def run_load(load: str, port: int, loads: Loads, seconds: float, pid: int) -> Run:
    """
    ``load`` through the proxy on ``port`` for ``seconds``, with the CPU
    time process ``pid`` (the proxy) spends meanwhile.
    """
    counts = Counts()
    socks: List[socket.socket] = []
    if load == "handshake":
        frame = batch_of(evolve(loads.small, batch=1))

        def work(deadline: float) -> List[Coroutine[Any, Any, None]]:
            return [
                handshakes(port, frame, deadline, loads, counts)
                for _ in range(loads.handshake_connections)
            ]

    else:
        stream: Stream = getattr(loads, load)
        batch = batch_of(stream)
        # The handshakes before the clock starts: this load measures tunnels.
        opened = await asyncio.gather(
            *(open_tunnel(port, counts) for _ in range(stream.connections)),
            return_exceptions=True,
        )
        socks = [s for s in opened if isinstance(s, socket.socket)]
        for error in opened:
            if isinstance(error, BaseException):
                counts.fail(error)

        def work(deadline: float) -> List[Coroutine[Any, Any, None]]:
            return [
                keep_echoing(sock, stream, batch, deadline, loads, counts)
                for sock in socks
            ]

    try:
        (user, system), began = cpu_seconds(pid), time.monotonic()
        workers = [asyncio.ensure_future(w) for w in work(began + seconds)]
        await finish(workers, seconds + STALL, counts)
        user_after, system_after = cpu_seconds(pid)
        return counts.run(
            load, time.monotonic() - began, user_after - user, system_after - system
        )
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def running_on(cpu: Optional[int]) -> Iterator[None]:
    """
    This thread (the load client's) on CPU ``cpu`` meanwhile (None: as it is).
    """
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --- The phase ----------------------------------------------------------------

#: Target key to load to its runs.
Runs = Dict[str, Dict[str, List[Run]]]


def proxies(bench: compare.Bench, echo_port: int, workdir: Path) -> Dict[str, Server]:
    """
    nginx and Gourmet in front of the echo server, on the ports ``bench``
    gave them, their configurations and logs in ``workdir``.
    """
    # Gourmet as the comparison starts it, but in front of the echo server.
    tunnels = copy.copy(bench)
    tunnels.workdir, tunnels.upstream_ports = workdir, [echo_port]
    port = bench.ports["nginx"]
    config = nginx.proxy_config(
        workdir,
        port,
        [echo_port],
        tunnels.access_log("nginx"),
        name="nginx-websocket",
        websocket=True,
    )
    servers: Dict[str, Server] = {
        "nginx": nginx.Nginx("nginx-websocket", workdir, config, port, bench.proxy_cpu)
    }
    for runtime in bench.twistd:
        servers[runtime] = tunnels._gourmet(runtime)
    return servers


def describe(run: Run) -> str:
    figures = run.figures()
    if run.load == "handshake":
        text = (
            f"{figures['handshake_rate']:8,.0f} tunnels/s "
            f"{figures['handshake_cpu_us']:8,.0f} us CPU/tunnel"
        )
    elif run.load == "small":
        text = (
            f"{figures['small_mps']:10,.0f} msg/s "
            f"{figures['small_cpu_us']:8,.2f} us CPU/msg"
        )
    else:
        text = (
            f"{figures['large_mbps']:8,.0f} MB/s "
            f"{figures['large_cpu_ms']:8,.2f} ms CPU/MiB"
        )
    if run.failed:
        text += f"  FAILED {run.failed}: {'; '.join(run.errors)}"
    return text


def measure_rounds(
    servers: Dict[str, Server], ports: Dict[str, int], loads: Loads
) -> Tuple[Runs, Runs]:
    """
    After a warm-up of every load on every target, round after round, each
    load on each target in turn; the runs measured, and the warm-ups'.
    """
    warmups: Runs = {name: {} for name in ports}
    for name, port in ports.items():
        compare.log(f"  warm-up {TARGETS[name]}")
        for load in LOADS:
            seconds, bounded = loads.warmup, loads
            if load == "handshake":
                seconds = loads.warmup_cap
                bounded = evolve(loads, max_handshakes=loads.warmup_tunnels)
            pid = servers[name].rss_pid
            run = asyncio.run(run_load(load, port, bounded, seconds, pid))
            warmups[name][load] = [run]
            if run.failed:
                compare.log(f"  warm-up {TARGETS[name]}, {load}: {describe(run)}")
    runs: Runs = {name: {load: [] for load in LOADS} for name in ports}
    for number in range(1, loads.rounds + 1):
        for load in LOADS:
            for name, port in ports.items():
                run = asyncio.run(
                    run_load(load, port, loads, loads.duration, servers[name].rss_pid)
                )
                runs[name][load].append(run)
                label = f"{TARGETS[name]}, {load}"
                compare.log(
                    f"  round {number}/{loads.rounds} {label:<28} {describe(run)}"
                )
    return runs, warmups


def medians_of(runs: Runs) -> report.Medians:
    medians: report.Medians = {}
    for name, by_load in runs.items():
        medians[name] = {}
        for load_runs in by_load.values():
            for key in load_runs[0].figures() if load_runs else ():
                medians[name][key] = statistics.median(
                    r.figures()[key] for r in load_runs
                )
    return medians


def figures(loads: Loads) -> List[report.Figure]:
    small, large = loads.small, loads.large
    return [
        report.Figure("small_mps", f"{small.size} B messages/s", 0),
        report.Figure("small_cpu_us", "  CPU us per message", 2),
        report.Figure("large_mbps", f"{large.size // 1024} KiB messages MB/s", 0),
        report.Figure("large_cpu_ms", "  CPU ms per MiB", 2),
        report.Figure("handshake_rate", "handshakes/s", 0),
        report.Figure("handshake_cpu_us", "  CPU us per handshake", 0),
    ]


def access_log_statuses(path: Path) -> Dict[str, int]:
    """
    The statuses in a combined-format access log, counted.
    """
    counts: Dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError), path.open("rb") as lines:
        for line in lines:
            match = compare.STATUS.search(line)
            status = match.group(1).decode() if match else "unparsed"
            counts[status] = counts.get(status, 0) + 1
    return counts


def check_access_logs(
    workdir: Path, opened: Dict[str, int], problems: List[str]
) -> Dict[str, Any]:
    """
    Each target logged one ``101`` for every tunnel the client opened
    through it, and nothing else.
    """
    checks: Dict[str, Any] = {}
    for name, tunnels in opened.items():
        statuses = access_log_statuses(workdir / f"{name}-access.log")
        checks[f"access_log_statuses_{name}"] = statuses
        checks[f"tunnels_opened_{name}"] = tunnels
        if statuses != {"101": tunnels}:
            problems.append(
                f"{TARGETS[name]} logged {statuses} for {tunnels} WebSocket "
                "tunnels opened"
            )
    return checks


def phase(
    bench: compare.Bench, loads: Optional[Loads] = None
) -> Tuple[Dict[str, Any], List[str]]:
    """
    The WebSocket phase of a comparison: its own echo server, nginx and
    Gourmet freshly started in front of it, the loads measured; returns
    the figures (JSON-able: medians, ratios to nginx, every run, checks)
    and the problems found.
    """
    loads = loads or loads_for(bench.settings)
    problems: List[str] = []
    workdir = bench.workdir / "websocket"
    workdir.mkdir(exist_ok=True)
    workdir.chmod(0o755)
    compare.log(
        f"WebSocket: {loads.small.connections} tunnels x {loads.small.batch} "
        f"messages of {loads.small.size} B, {loads.large.connections} x "
        f"{loads.large.batch} of {loads.large.size // 1024} KiB, handshakes "
        f"{loads.handshake_connections} at a time; an echo server, nginx and "
        "Gourmet freshly started"
    )
    with contextlib.ExitStack() as stack:
        echo_port = compare.start(stack, echo_server(workdir, bench.load_cpu)).port
        servers = compare.start_proxies(
            stack, proxies(bench, echo_port, workdir), problems
        )
        ports = {name: bench.ports[name] for name in servers}
        with running_on(bench.load_cpu):
            runs, warmups = measure_rounds(servers, ports, loads)
    every = {
        name: [r for rs in [*by_load.values(), *warmups[name].values()] for r in rs]
        for name, by_load in runs.items()
    }
    opened = {name: sum(r.tunnels for r in rs) for name, rs in every.items()}
    checks = check_access_logs(workdir, opened, problems)
    failed = {name: sum(r.failed for r in rs) for name, rs in every.items()}
    for name, count in failed.items():
        if count:
            errors = sorted({e for r in every[name] for e in r.errors})
            problems.append(
                f"{TARGETS[name]}: {count} WebSocket connections failed "
                f"(warm-ups included): {'; '.join(errors[:5])}"
            )
    medians = medians_of(runs)
    return {
        "loads": asdict(loads),
        "medians": medians,
        "ratios": {
            name: {
                key: report.ratio(medians, name, key, "nginx") for key in medians[name]
            }
            for name in medians
        },
        "failed_connections": failed,
        "runs": {
            name: {load: [r.as_json() for r in rs] for load, rs in by_load.items()}
            for name, by_load in runs.items()
        },
        "checks": checks,
    }, problems


def table(record: Dict[str, Any]) -> str:
    """
    ``phase``'s figures as a table, each target beside nginx, with what
    the loads were.
    """
    loads = Loads(
        **{
            **record["loads"],
            "small": Stream(**record["loads"]["small"]),
            "large": Stream(**record["loads"]["large"]),
        }
    )
    failed = {name: str(n) for name, n in record["failed_connections"].items()}
    lines = [
        report.table(
            record["medians"],
            failed,
            TARGETS,
            figures(loads),
            {"nginx": report.REFERENCES["nginx"]},
            "WebSocket",
            errors_label="failed connections",
        ),
        f"Medians of {loads.rounds} rounds of {loads.duration:g} s after a "
        f"{loads.warmup:g} s warm-up of each load (of handshakes: "
        f"{loads.warmup_tunnels:,} tunnels, at most {loads.warmup_cap:g} s).  Small: "
        f"{loads.small.connections} tunnels, {loads.small.batch} messages a "
        f"batch; large: {loads.large.connections} tunnels, {loads.large.batch} "
        f"a batch; MB/s is 10^6 bytes/s of frames each way.  Handshakes: "
        f"{loads.handshake_connections} at a time, each tunnel carrying one "
        f"{loads.small.size} B message and closed.",
        "CPU: the proxy's user and system time (nginx: its worker) per message "
        "sent and read back (it crossed the proxy twice), per MiB each way, per "
        "tunnel opened, echoed through and closed.",
    ]
    return "\n".join(lines)


# --- Alone, from the command line ---------------------------------------------


def save(record: Dict[str, Any], out: Optional[Path], date: datetime) -> Path:
    path = out or REPO / "benchmarks" / "results" / (
        date.strftime("%Y-%m-%d-%H%M%S") + "-websocket.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def measure(bench: compare.Bench, problems: List[str], out: Optional[Path]) -> None:
    began, date, revision, busy = compare.phase_start(problems)
    placement = compare.placement(bench).replace(
        "wrk (1 thread) and the upstream nginx",
        "the load client (asyncio, 1 thread) and the echo server",
    )
    compare.log(placement)
    figures, found = phase(bench)
    problems += found
    if compare.git_revision() != revision:
        problems.append(
            f"the checkout changed during the run (from {revision} to "
            f"{compare.git_revision()})"
        )
    compare.log("")
    compare.log(table(figures))
    compare.log(placement + ".")
    record = compare.phase_record(
        bench,
        date,
        revision,
        busy,
        placement,
        ("websocket", figures),
        problems,
        began,
    )
    compare.log(f"Saved {save(record, out, date)}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run to try it")
    compare.add_run_options(parser)
    parser.add_argument("--echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.echo is not None:
        # The upstream, as a process of its own.
        asyncio.run(serve_echo(options.echo))
        return 0
    quick: Dict[str, Any] = dict(compare.QUICK) if options.quick else {}
    settings = compare.run_settings(options, **quick)
    return compare.run_alone(
        "websocket",
        settings,
        lambda bench, problems: measure(bench, problems, options.out),
    )


if __name__ == "__main__":
    sys.exit(main())
