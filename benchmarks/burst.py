"""
A burst of new connections: how long until every one is answered?

Sets up, on loopback only: Debian's nginx serving a small body (the
upstream, with a listen backlog and connection limits large enough never to
be the limit); then, one at a time, each proxy in front of it: nginx as a
proxy (its default listen backlog, 511), Gourmet on CPython without a
``[server] backlog`` (the kernel's ``somaxconn``, at least 511), and Gourmet
on CPython with ``backlog = 50``, Twisted's own default, for contrast.  This
process opens ``--connections`` connections to each at once (non-blocking,
one ``epoll``), sends one ``GET /`` with ``Connection: close`` on each, and
notes when each full response has arrived.  Prints one table with every
proxy's figures, and the kernel's count of full listen queues.

A full listen queue drops SYNs, which the client's kernel sends again after
1, 3, 7, 15, 31... s: the burst stalls for seconds.  It also drops a
handshake's last ACK: that client believes it is connected and sends its
request, which waits for the server's SYN-ACK retries, or is reset once
they run out ("connected, no answer", "ECONNRESET" in the table).

    .venv/bin/python -m benchmarks.burst                # 8,000 connections
    .venv/bin/python -m benchmarks.burst --quick        # 2,000
    .venv/bin/python -m benchmarks.burst --connections 4000 --timeout 60
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from attrs import frozen

from benchmarks import nginx, pypy_env
from benchmarks.compare import fetch, log, start, stop_on_sigterm
from benchmarks.processes import REPO, Server, ServerFailed, work_directory
from benchmarks.slow_client import free_port
from gourmet.config.endpoints import DEFAULT_BACKLOG, SOMAXCONN_PATH, default_backlog
from gourmet.pypy import RECOMMENDED_NURSERY

CONNECTIONS = 8000
QUICK_CONNECTIONS = 2000
#: Seconds a proxy gets to answer the whole burst; past them, whatever is
#: unanswered is counted as such.  Linux gives up a connect after about
#: 127 s (six SYN retries), so a stalled burst shows as stalled, not lost.
TIMEOUT = 120.0
#: Seconds answered connections are given to be closed by the proxy (so
#: that the TIME_WAIT is the proxy's, not this process's ports).
LINGER = 3.0
#: Seconds between progress lines during a burst.
PROGRESS_EVERY = 10.0
#: Twisted's listen backlog when none is given.
TWISTED_BACKLOG = 50
#: File descriptors a proxy needs beyond its connections (it holds a client
#: and, at worst, an upstream connection for each): listeners, logs, imports.
SPARE_FILES = 1024
#: And this process beyond its client connections.
CLIENT_SPARE_FILES = 64

BODY_SIZE = nginx.SMALL_SIZE


# --- File-descriptor limits -----------------------------------------------------


def files_needed(connections: int) -> Tuple[int, int]:
    """
    The file descriptors this process needs for ``connections``, and what a
    proxy needs (a client and an upstream connection for each).
    """
    return connections + CLIENT_SPARE_FILES, 2 * connections + SPARE_FILES


def raise_file_limit(wanted: int) -> int:
    """
    Raise this process's soft ``RLIMIT_NOFILE`` (which the servers started
    afterwards inherit) to ``wanted``, or as near as the hard limit allows.

    :return: the soft limit now (``sys.maxsize`` for none).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    if soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def file_limit_problems(connections: int, problems: List[str]) -> Optional[str]:
    """
    Raise the file limit for ``connections``: why the burst cannot run (the
    hard limit is below what this process needs), or None; a hard limit
    below what a proxy needs is added to ``problems``.
    """
    client, proxy = files_needed(connections)
    limit = raise_file_limit(proxy)
    fix = "raise it (ulimit -Hn, LimitNOFILE= in systemd) or use --connections"
    if limit < client:
        most = limit - CLIENT_SPARE_FILES
        return (
            f"the hard limit on open files is {limit:,}, and {connections:,} "
            f"connections need {client:,} here: {fix} {most} or fewer"
        )
    if limit < proxy:
        problems.append(
            f"the hard limit on open files is {limit:,}, and a proxy may need "
            f"{proxy:,} for {connections:,} connections (a client and an "
            f"upstream connection each): Gourmet may run out, so its failures "
            f"may not be the backlog's; {fix} "
            f"{max((limit - SPARE_FILES) // 2, 1)} or fewer"
        )
        log("Note: " + problems[-1])
    return None


# --- The servers ----------------------------------------------------------------


def _sized(config: str, connections: int) -> str:
    """
    An nginx configuration from :mod:`benchmarks.nginx` with room for
    ``connections`` clients and as many upstream connections.
    """
    worker_connections = 2 * connections + SPARE_FILES // 2
    config = nginx.replaced(
        config,
        "worker_connections 4096;",
        f"worker_connections {worker_connections};",
    )
    return nginx.replaced(
        config,
        "worker_rlimit_nofile 8192;",
        f"worker_rlimit_nofile {worker_connections + SPARE_FILES};",
    )


def upstream_config(workdir: Path, root: Path, port: int, connections: int) -> str:
    """
    The upstream: ``root``'s ``index.html`` for ``/``, with the kernel's
    largest listen backlog and room for a proxy's every connection, so
    that only the proxy in front of it stalls.
    """
    config = nginx.upstream_config(workdir, root, [port])
    config = nginx.replaced(
        config,
        f"listen 127.0.0.1:{port};",
        f"listen 127.0.0.1:{port} backlog={default_backlog()};",
    )
    return _sized(config, connections)


def nginx_proxy_config(
    workdir: Path, port: int, upstream_port: int, connections: int
) -> str:
    """
    nginx as a proxy as :func:`benchmarks.nginx.proxy_config` sets it up,
    with its default listen backlog (511), room for ``connections`` and, as
    for Gourmet here, no access log.
    """
    access_log = workdir / "nginx-access.log"
    config = nginx.proxy_config(workdir, port, [upstream_port], access_log)
    config = nginx.replaced(
        config,
        f"access_log {access_log} combined buffer=64k flush=1s;",
        "access_log off;",
    )
    return _sized(config, connections)


def gourmet_config(
    port: int, upstream_port: int, connections: int, backlog: Optional[int]
) -> str:
    """
    Gourmet in front of the upstream with room for ``connections`` clients,
    no access log and no admin console; ``backlog`` as ``[server] backlog``
    (None: the key left out, Gourmet's default).
    """
    backlog_line = "" if backlog is None else f"backlog = {backlog}\n"
    return (
        "[upstreams.bench]\nkeepalive = 32\n"
        f"[[upstreams.bench.servers]]\npath = '127.0.0.1:{upstream_port}'\n"
        f"[server]\nlisten = ['tcp:{port}:interface=127.0.0.1']\n"
        f"max_connections = {connections + 1000}\n"
        + backlog_line
        + "[[server.locations]]\nlocation = '^/'\nupstream = 'bench'\n"
        "[log]\naccess_log = 'off'\n[admin]\nlisten = 'off'\n"
    )


@frozen
class Proxy:
    """
    One proxy of the comparison.

    :param key: its name in file names.
    :param label: its column's heading.
    :param backlog: the listen backlog it should get (for the table, and
        checked against what the kernel reports).
    :param gourmet_backlog: for Gourmet, its ``[server] backlog`` (None: not
        set); for nginx, unused.
    :param pypy_twistd: for Gourmet on PyPy, its ``twistd``; None: this
        Python's.
    """

    key: str
    label: str
    backlog: int
    gourmet_backlog: Optional[int] = None
    pypy_twistd: Optional[Path] = None


def somaxconn() -> Optional[int]:
    """
    The kernel's cap on any listen backlog, or None if it cannot be read.
    """
    try:
        return int(Path(SOMAXCONN_PATH).read_text())
    except (OSError, ValueError):
        return None


def proxies(pypy_twistd: Optional[Path]) -> List[Proxy]:
    """
    The proxies compared, in order, with the backlog the kernel should
    grant each (what it asks for, at most ``somaxconn``); Gourmet on PyPy
    too when ``pypy_twistd`` is there.
    """
    cap = somaxconn() or 65535

    def granted(backlog: int) -> int:
        return min(backlog, cap)

    compared = [
        Proxy("nginx", "nginx proxy", granted(DEFAULT_BACKLOG)),
        Proxy("gourmet-default", "Gourmet default", granted(default_backlog())),
        Proxy(
            "gourmet-50",
            f"Gourmet backlog={TWISTED_BACKLOG}",
            granted(TWISTED_BACKLOG),
            TWISTED_BACKLOG,
        ),
    ]
    if pypy_twistd is not None:
        pypy = Proxy(
            "gourmet-pypy",
            "Gourmet PyPy",
            granted(default_backlog()),
            pypy_twistd=pypy_twistd,
        )
        compared.insert(2, pypy)
    return compared


def server_for(
    proxy: Proxy, workdir: Path, port: int, upstream_port: int, connections: int
) -> Server:
    """
    ``proxy``'s process (not started yet), on ``port`` in front of the
    upstream on ``upstream_port``.
    """
    if proxy.key == "nginx":
        config = nginx_proxy_config(workdir, port, upstream_port, connections)
        return nginx.Nginx("nginx-proxy", workdir, config, port, None)
    config_path = workdir / f"{proxy.key}.toml"
    config_path.write_text(
        gourmet_config(port, upstream_port, connections, proxy.gourmet_backlog)
    )
    command = [str(Path(sys.executable).with_name("twistd"))]
    if proxy.pypy_twistd is not None:
        nursery = f"PYPY_GC_NURSERY={RECOMMENDED_NURSERY}"
        command = ["env", nursery, str(proxy.pypy_twistd)]
    command += ["-n", "--pidfile=", "gourmet"]
    command += ["--config", str(config_path)]
    return Server(proxy.label, command, port, workdir / f"{proxy.key}.out")


def listen_backlog(port: int) -> Optional[int]:
    """
    The backlog the kernel gave the listener on 127.0.0.1:``port`` (the
    ``Send-Q`` that ``ss`` shows for a listening socket), or None if ``ss``
    cannot say.
    """
    if shutil.which("ss") is None:
        return None
    result = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == f"127.0.0.1:{port}":
            return int(fields[2])
    return None


# --- The burst ------------------------------------------------------------------


def _error_name(number: int) -> str:
    return errno.errorcode.get(number, f"errno {number}")


class Connection:
    """
    One client connection of a burst and what became of it.

    :param sock: its non-blocking socket, connecting.
    :param started: when ``connect`` was called (``time.monotonic``).
    """

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.started = started
        self.connected = False
        self.head = bytearray()
        self.body_received = 0
        self.head_done = False
        self.status = 0
        self.length: Optional[int] = None
        #: Seconds from ``connect`` to the full response, if it was a 200.
        self.answered: Optional[float] = None
        #: Why it failed, if it did.
        self.failure: Optional[str] = None
        self.closed = False

    @property
    def settled(self) -> bool:
        return self.answered is not None or self.failure is not None

    def fail(self, reason: str) -> None:
        if not self.settled:
            self.failure = reason

    def on_writable(self, request: bytes, selector: selectors.BaseSelector) -> None:
        """
        The connect finished: send the request (a few dozen bytes, which a
        fresh socket's buffer always takes at once), then wait to read.
        """
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.fail(f"connect: {_error_name(error)}")
            self.close(selector)
            return
        self.connected = True
        try:
            sent = self.sock.send(request)
        except OSError as failure:
            self.fail(f"send: {_error_name(failure.errno or 0)}")
            self.close(selector)
            return
        if sent != len(request):
            self.fail("send: partial")
            self.close(selector)
            return
        selector.modify(self.sock, selectors.EVENT_READ, self)

    def on_readable(self, now: float, selector: selectors.BaseSelector) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as failure:
            self.fail(f"receive: {_error_name(failure.errno or 0)}")
            self.close(selector)
            return
        if not data:
            self._on_end(now)
            self.close(selector)
            return
        if self.head_done:
            self.body_received += len(data)
        else:
            self._take_head(data)
        if (
            self.head_done
            and self.length is not None
            and self.body_received >= self.length
            and not self.settled
        ):
            self.answered = now - self.started

    def _take_head(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 65536:
                self.head_done = True  # what follows counts as body
                self.fail("response head too large")
            return
        self.head_done = True
        self.body_received = len(self.head) - end - 4
        lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    self.length = int(value)
        except (IndexError, ValueError):
            self.fail("unreadable response head")
            return
        if self.status != 200:
            self.fail(f"status {self.status}")

    def _on_end(self, now: float) -> None:
        if self.settled:
            return
        if not self.head_done:
            self.fail("closed with no response")
        elif self.length is None and self.status == 200:
            # No Content-Length: the close ends the body.
            self.answered = now - self.started
        else:
            self.fail("closed before the full body")

    def close(self, selector: selectors.BaseSelector) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(self.sock)
        self.sock.close()


@frozen
class BurstResult:
    """
    What became of one burst.

    :param connections: how many were opened.
    :param answered: per connection answered 200 with its full body, the
        seconds from its ``connect`` to the last byte, in order.
    :param failures: the others, by reason.
    :param opening_seconds: how long issuing every ``connect`` took.
    :param last_answer_seconds: from the first ``connect`` to the last full
        response (None: none).
    """

    connections: int
    answered: Tuple[float, ...]
    failures: Dict[str, int]
    opening_seconds: float
    last_answer_seconds: Optional[float]

    @property
    def all_answered(self) -> bool:
        return len(self.answered) == self.connections

    def percentile(self, share: float) -> Optional[float]:
        """
        The nearest-rank percentile of the answered connections' times.
        """
        if not self.answered:
            return None
        return self.answered[max(math.ceil(share * len(self.answered)) - 1, 0)]


def _open(port: int, selector: selectors.BaseSelector) -> Union[Connection, str]:
    """
    A connection to 127.0.0.1:``port`` started, or why it could not be.
    """
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as failure:
        return f"socket: {_error_name(failure.errno or 0)}"
    sock.setblocking(False)
    started = time.monotonic()
    result = sock.connect_ex(("127.0.0.1", port))
    if result not in (0, errno.EINPROGRESS):
        sock.close()
        return f"connect: {_error_name(result)}"
    connection = Connection(sock, started)
    selector.register(sock, selectors.EVENT_WRITE, connection)
    return connection


def _serve_events(
    selector: selectors.BaseSelector, request: bytes, until: float
) -> Tuple[int, int]:
    """
    Handle whatever events arrive within a second (or until ``until``).

    :return: how many connections this settled, and how many it closed.
    """
    settled = closed = 0
    wait = max(min(1.0, until - time.monotonic()), 0.0)
    for key, _ in selector.select(wait):
        connection: Connection = key.data
        was_settled, was_closed = connection.settled, connection.closed
        if connection.connected:
            connection.on_readable(time.monotonic(), selector)
        else:
            connection.on_writable(request, selector)
        settled += connection.settled and not was_settled
        # A connection is closed only once it is settled.
        closed += connection.closed and not was_closed
    return settled, closed


def burst(port: int, connections: int, timeout: float) -> BurstResult:
    """
    Open ``connections`` connections to 127.0.0.1:``port`` at once, one
    request on each, and wait up to ``timeout`` seconds for every answer.
    """
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    failures: Counter[str] = Counter()
    opened: List[Connection] = []
    with selectors.DefaultSelector() as selector:
        try:
            began = time.monotonic()
            for _ in range(connections):
                outcome = _open(port, selector)
                if isinstance(outcome, str):
                    failures[outcome] += 1
                else:
                    opened.append(outcome)
            opening = time.monotonic() - began
            deadline = began + timeout
            next_progress = began + PROGRESS_EVERY
            unsettled = still_open = len(opened)
            while unsettled and time.monotonic() < deadline:
                settled, closed = _serve_events(selector, request, deadline)
                unsettled -= settled
                still_open -= closed
                if time.monotonic() >= next_progress:
                    next_progress += PROGRESS_EVERY
                    done = sum(c.answered is not None for c in opened)
                    log(f"    {time.monotonic() - began:5.0f} s: {done:,} answered")
            # Let the proxy close first, as Connection: close asks it to.
            linger_until = time.monotonic() + LINGER
            while still_open > unsettled and time.monotonic() < linger_until:
                _, closed = _serve_events(selector, request, linger_until)
                still_open -= closed
        finally:
            for connection in opened:
                connection.close(selector)
    for connection in opened:
        if connection.failure is not None:
            failures[connection.failure] += 1
        elif connection.answered is None:
            state = "connected, no answer" if connection.connected else "connecting"
            failures[f"{state} after {timeout:.0f} s"] += 1
    ends = [c.started + c.answered - began for c in opened if c.answered is not None]
    return BurstResult(
        connections=connections,
        answered=tuple(sorted(c.answered for c in opened if c.answered is not None)),
        failures=dict(failures),
        opening_seconds=opening,
        last_answer_seconds=max(ends) if ends else None,
    )


# --- The table ------------------------------------------------------------------

LABEL_WIDTH = 30
COLUMN_WIDTH = 22


@frozen
class Measured:
    """
    One proxy's burst and what the kernel said around it.

    :param backlog: its listener's backlog as ``ss`` showed it (None: unknown).
    :param overflows: how many times a listen queue on this machine was
        full during the burst (``ListenOverflows``: each a SYN or a
        handshake's last ACK dropped; None: unknown).
    """

    proxy: Proxy
    result: BurstResult
    backlog: Optional[int]
    overflows: Optional[int]


def _row(label: str, cells: Sequence[str]) -> str:
    return label.ljust(LABEL_WIDTH) + "".join(c.rjust(COLUMN_WIDTH) for c in cells)


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _count(value: Optional[int]) -> str:
    return "?" if value is None else f"{value:,}"


def _all_answered(result: BurstResult) -> str:
    if not result.all_answered:
        return "not all"
    return _seconds(result.last_answer_seconds)


def table(measured: Sequence[Measured]) -> str:
    """
    One column per proxy; the reasons for failures below.
    """
    results = [m.result for m in measured]
    rows = [
        ("listen backlog", [_count(m.backlog) for m in measured]),
        ("listen queue overflows", [_count(m.overflows) for m in measured]),
        ("connections", [_count(r.connections) for r in results]),
        ("answered OK", [_count(len(r.answered)) for r in results]),
        ("failed", [_count(sum(r.failures.values())) for r in results]),
        ("all answered after (s)", [_all_answered(r) for r in results]),
        ("last answer after (s)", [_seconds(r.last_answer_seconds) for r in results]),
        ("per connection p50 (s)", [_seconds(r.percentile(0.5)) for r in results]),
        ("per connection p99 (s)", [_seconds(r.percentile(0.99)) for r in results]),
        ("per connection max (s)", [_seconds(r.percentile(1.0)) for r in results]),
        ("issuing every connect (s)", [_seconds(r.opening_seconds) for r in results]),
    ]
    lines = [_row("", [m.proxy.label for m in measured])]
    lines += [_row(label, cells) for label, cells in rows]
    for one in measured:
        for reason, count in sorted(one.result.failures.items()):
            lines.append(f"  {one.proxy.label} failed: {reason} x {count:,}")
    return "\n".join(lines)


# --- The run --------------------------------------------------------------------


def listen_overflows() -> Optional[int]:
    """
    The kernel's count of full listen queues so far (this network
    namespace, every listener), or None if it cannot be read.
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            counters = dict(zip(names.split()[1:], values.split()[1:]))
            if "ListenOverflows" in counters:
                return int(counters["ListenOverflows"])
    return None


def check_answer(port: int, label: str) -> None:
    """
    One request through the proxy before the burst: it works, and Gourmet's
    lazy imports are done.
    """
    got = len(fetch(f"http://127.0.0.1:{port}/"))
    if got != BODY_SIZE:
        raise RuntimeError(f"{label}: / gave {got} bytes, not {BODY_SIZE}")


def measure_one(
    proxy: Proxy,
    server: Server,
    connections: int,
    timeout: float,
    problems: List[str],
) -> Optional[Measured]:
    """
    Start ``server``, burst it, stop it; None if it did not start.
    """
    with contextlib.ExitStack() as stack:
        try:
            start(stack, server)
        except ServerFailed as error:
            problems.append(f"{proxy.label} left out: {error}")
            log(problems[-1])
            return None
        check_answer(server.port, proxy.label)
        backlog = listen_backlog(server.port)
        if backlog not in (None, proxy.backlog):
            problems.append(
                f"{proxy.label}: listen backlog {backlog}, expected {proxy.backlog}"
            )
        log(f"  {proxy.label} (backlog {_count(backlog)}): {connections:,} at once")
        before = listen_overflows()
        result = burst(server.port, connections, timeout)
        after = listen_overflows()
    log(
        f"  {proxy.label}: {len(result.answered):,} answered, the last after "
        f"{_seconds(result.last_answer_seconds)} s"
    )
    overflows = None if before is None or after is None else after - before
    return Measured(proxy, result, backlog, overflows)


def measure(
    workdir: Path,
    connections: int,
    timeout: float,
    pypy_twistd: Optional[Path],
    problems: List[str],
) -> str:
    """
    Start the upstream, then each proxy in turn, and burst each; the table.
    """
    root = workdir / "html"
    root.mkdir()
    (root / "index.html").write_bytes(b"x" * BODY_SIZE)
    upstream_port = free_port()
    measured: List[Measured] = []
    with contextlib.ExitStack() as stack:
        config = upstream_config(workdir, root, upstream_port, connections)
        start(stack, nginx.Nginx("upstream", workdir, config, upstream_port, None))
        for proxy in proxies(pypy_twistd):
            server = server_for(proxy, workdir, free_port(), upstream_port, connections)
            one = measure_one(proxy, server, connections, timeout, problems)
            if one is not None:
                measured.append(one)
    return table(measured)


def notes(connections: int, timeout: float) -> str:
    text = (
        f"{connections:,} connections opened at once from one process "
        "(non-blocking, epoll), each 'GET /' with Connection: close; a "
        f"{BODY_SIZE} B body from an nginx upstream (backlog "
        f"{default_backlog()}).  Per connection: from its connect() to the "
        "last byte of its response; 'all answered after': from the first "
        "connect() to the last response.  Listen queue overflows: the "
        "kernel's ListenOverflows during the burst (every listener on the "
        "machine).  Each proxy freshly started and alone, no access logs, "
        f"given {timeout:.0f} s; CPython {sys.version.split()[0]}, Gourmet "
        f"max_connections {connections + 1000:,}, {nginx.version()}, "
        "somaxconn " + _count(somaxconn()) + "."
    )
    return textwrap.fill(text, 79)


def pypy_twistd(problems: List[str]) -> Optional[Path]:
    """
    Gourmet's ``twistd`` on PyPy, in the venv ``./dev bench`` makes (made
    here if it is not there yet); None, with the reason in ``problems``.
    """
    log("PyPy: checking .venv-pypy (making it can take a minute)")
    twistd, note = pypy_env.ensure(REPO / ".venv-pypy", REPO)
    if twistd is None:
        problems.append("Gourmet on PyPy left out: " + note)
    return twistd


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--connections",
        type=int,
        help=f"default {CONNECTIONS:,} ({QUICK_CONNECTIONS:,} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run to try it")
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT,
        help=f"seconds per proxy (default {TIMEOUT:.0f})",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep configs/logs")
    parser.add_argument("--no-pypy", action="store_true", help="leave PyPy out")
    options = parser.parse_args(argv)
    connections = options.connections or (
        QUICK_CONNECTIONS if options.quick else CONNECTIONS
    )
    if connections < 1 or options.timeout <= 0:
        parser.error("--connections and --timeout must be positive")
    if shutil.which("nginx") is None:
        log("burst: nginx not found: apt-get install nginx (or ./dev bench)")
        return 2
    problems: List[str] = []
    too_few_files = file_limit_problems(connections, problems)
    if too_few_files is not None:
        log(f"burst: {too_few_files}")
        return 2
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    began = time.monotonic()
    try:
        with work_directory("gourmet-burst-", options.keep_temp) as workdir:
            pypy = None if options.no_pypy else pypy_twistd(problems)
            text = measure(workdir, connections, options.timeout, pypy, problems)
    except KeyboardInterrupt:
        log("burst: interrupted; every server stopped")
        return 130
    log("")
    log(text)
    log("")
    log(notes(connections, options.timeout))
    if problems:
        log("\nProblems:\n" + "\n".join(f"  - {p}" for p in problems))
    log(f"\nTook {time.monotonic() - began:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
