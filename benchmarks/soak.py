"""
A soak test: minutes of mixed traffic through Gourmet while its upstreams
are killed and restarted; does it lose requests, memory or descriptors?

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--clients 20]

Three upstream servers (``tests.upstreams.UpstreamServer``, each in a
process of its own) sit behind Gourmet under ``twistd`` (round robin,
``max_fail = 1``, ``fail_timeout = 2``, ``tries = 3``).  Client threads send
the ``KINDS`` of request: mostly small GETs; 1 MiB GETs; 64 KiB POSTs
(checked against the upstream's echo of their length and digest); GETs the
upstream answers after half a second; 1 MiB the upstream streams over two
seconds; 4 MiB read slowly; and 4 MiB abandoned after the first 64 KiB.
Every ``--kill-every`` seconds one upstream is killed (SIGTERM and SIGKILL
in turn) and started again on the same port ``RESTART_AFTER`` seconds
later.  Every loop here is bounded by a count and by time.

A request that did not end in a complete, correct 200 is *injected* when
the test caused it:

- the client disconnected on purpose (the abandoned reads); or
- it was in flight when an upstream was killed -- it started before the
  kill's window ended (``KILL_WINDOW`` seconds after the signal) and ended
  after the signal -- and Gourmet could not retry it: either its 200
  response came from the killed server (the ``X-Upstream`` header says so)
  and was cut short, or it was a POST (a body that may have reached the
  server is never sent twice) answered with 502.

Anything else -- any other 5xx, a connection error, no answer within
``CLIENT_TIMEOUT`` seconds, a cut response, a wrong body -- is *lost to
Gourmet*: with three servers and ``tries = 3`` a GET that fails before its
response started must go to another server.

The test passes (exit status 0) when nothing was lost, Gourmet and every
upstream restart stayed up, Gourmet's resident memory at the end is at most
``RSS_GROWTH`` above the start (after ``WARM_UP`` seconds of traffic), and
its open descriptors came back to within ``--fd-slack`` of the start.  Each
start and end figure is the median of ``SAMPLES`` samples taken a second
apart under traffic.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from twisted.internet import task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

POST_SIZE = 64 * 1024
#: A slow client reads this fast, with a small receive buffer so that TCP
#: pushes back on Gourmet soon.
SLOW_RATE = 2 * MIB
SLOW_RCVBUF = 64 * 1024
#: What an abandoning client reads before it hangs up.
ABANDON_AFTER = 64 * 1024
#: An upstream takes this long to stream a ``/drip/N`` response, so that a
#: kill finds some half sent (larger ones fit whole in loopback buffers).
DRIP_SECONDS = 2.0
DRIP_PIECE = 16 * 1024
CLIENT_TIMEOUT = 30.0

WARM_UP = 10.0
SAMPLES = 5
FIRST_KILL = WARM_UP + SAMPLES + 5.0
KILL_WINDOW = 1.0
RESTART_AFTER = 5.0
RSS_GROWTH = 0.20
SIGNALS = (signal.SIGTERM, signal.SIGKILL)
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Kind:
    """
    A kind of request the clients send.

    :ivar share: of all requests, in percent.
    :ivar size: the body expected, in bytes; 0 when the body is checked
        otherwise (:func:`check_body`).
    :ivar rate: read the body at this many bytes a second; 0: at once.
    :ivar abandon: hang up after ``ABANDON_AFTER`` bytes of the body.
    """

    name: str
    share: int
    method: str
    path: str
    size: int = 0
    rate: int = 0
    abandon: bool = False

    @property
    def own_connection(self) -> bool:
        # Slow readers need their small receive buffer from the start.
        return self.abandon or self.rate > 0


SMALL = Kind("small", 70, "GET", "/small")
BIG = Kind("big", 8, "GET", f"/big/{MIB}", size=MIB)
POST = Kind("post", 8, "POST", "/echo")
#: Answered after half a second: often in flight when a server is killed,
#: and Gourmet must then send it to another one.
WAIT = Kind("wait", 4, "GET", "/slow/0.5")
SLOW = Kind("slow", 3, "GET", f"/big/{4 * MIB}", size=4 * MIB, rate=SLOW_RATE)
DRIP = Kind("drip", 3, "GET", f"/drip/{MIB}", size=MIB)
ABANDON = Kind("abandon", 4, "GET", f"/big/{4 * MIB}", abandon=True)
KINDS = (SMALL, BIG, POST, WAIT, SLOW, DRIP, ABANDON)


def log(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    """
    Wait until something accepts connections on ``port``; raise if
    ``process`` exits first or ``seconds`` pass.
    """
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.05) + 1):
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited: {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """
    SIGTERM, then SIGKILL if it is still there after five seconds.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- the upstream servers ---------------------------------------------------


class DripResource(Resource):
    """
    ``/drip/N``: N bytes streamed over ``DRIP_SECONDS``; any other path goes
    to ``inner``.
    """

    isLeaf = True

    def __init__(self, inner: Resource, name: str, clock: Any) -> None:
        super().__init__()
        self.inner = inner
        self.name = name
        self.clock = clock

    def render(self, request: Any) -> Any:
        if not request.path.startswith(b"/drip/"):
            return self.inner.render(request)
        request.setHeader(b"x-upstream", self.name.encode())
        Drip(request, int(request.path.split(b"/")[2]), self.clock).start()
        return NOT_DONE_YET


class Drip:
    """
    Writes one ``/drip/N`` response a piece at a time.
    """

    def __init__(self, request: Any, size: int, clock: Any) -> None:
        self.request = request
        self.size = self.left = size
        self.loop = task.LoopingCall(self._write)
        self.loop.clock = clock

    def start(self) -> None:
        self.request.notifyFinish().addBoth(self._stop)
        interval = DRIP_SECONDS * DRIP_PIECE / max(self.size, 1)
        self.loop.start(interval).addErrback(
            lambda reason: sys.stderr.write(f"drip failed: {reason.value!r}\n")
        )

    def _write(self) -> None:
        piece = min(self.left, DRIP_PIECE)
        self.left -= piece
        self.request.write(b"d" * piece)
        if not self.left:
            self._stop(None)
            self.request.finish()

    def _stop(self, result: object) -> None:
        # The client (Gourmet) may have gone: nothing more to write.
        if self.loop.running:
            self.loop.stop()


def serve_upstream(port: int, name: str) -> None:
    """
    Run ``tests.upstreams.UpstreamServer`` (and ``/drip/N``) on ``port``
    until SIGTERM, or until the soak test that started it is gone.
    """
    from twisted.internet import reactor

    from tests.upstreams import UpstreamServer

    server = UpstreamServer(name)
    server.site.resource = DripResource(server.site.resource, name, reactor)
    server.port_number = port
    server.start()
    parent = os.getppid()

    def tidy() -> None:
        # It records every request, body included: forget them, or the
        # upstream grows for as long as the soak lasts.
        try:
            server.seen.clear()
            server.site.protocols[:] = [
                p for p in server.site.protocols if _connected(p)
            ]
            if os.getppid() != parent:
                reactor.stop()
        except Exception as error:  # a LoopingCall stops when its call raises
            sys.stderr.write(f"tidy failed: {error!r}\n")

    task.LoopingCall(tidy).start(1.0)
    reactor.run()


def _connected(protocol: Any) -> bool:
    channel = getattr(protocol, "_channel", protocol)
    transport = getattr(channel, "transport", None)
    return bool(transport is not None and transport.connected)


class Upstream:
    """
    One upstream server process, which the test kills and restarts.
    """

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.stderr = workdir / f"{name}.err"
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "benchmarks.soak", "--serve-upstream"]
        with self.stderr.open("ab") as stderr:
            self.process = subprocess.Popen(
                [*command, str(self.port), self.name],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_for_port(self.port, self.process, 10)

    def kill(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


# -- Gourmet ----------------------------------------------------------------


def gourmet_config(port: int, upstreams: Sequence[Upstream]) -> str:
    servers = "".join(
        f"[[upstreams.soak.servers]]\npath = '{u.address}'\n" for u in upstreams
    )
    return (
        "[upstreams.soak]\nbalancer = 'round_robin'\n"
        "max_fail = 1\nfail_timeout = 2\ntries = 3\n"
        f"{servers}"
        f"[server]\nlisten = ['tcp:{port}:interface=127.0.0.1']\n"
        "[[server.locations]]\nlocation = '^/'\nupstream = 'soak'\n"
        "[log]\naccess_log = 'access.log'\naccess_log_format = 'json'\n"
        "[admin]\nlisten = 'off'\n"
    )


def _die_with_parent() -> None:
    # Runs in the child before exec, so twistd gets SIGTERM if the soak
    # test is killed outright.  Only used while the test has one thread.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Gourmet:
    """
    ``twistd -n gourmet`` with its configuration and logs in ``workdir``.
    """

    def __init__(self, workdir: Path, upstreams: Sequence[Upstream]) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "gourmet.toml"
        self.config.write_text(gourmet_config(self.port, upstreams))
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        twistd = Path(sys.executable).with_name("twistd")
        command = [str(twistd), "-n", "--pidfile=", "gourmet"]
        with (self.workdir / "twistd.log").open("ab") as output:
            self.process = subprocess.Popen(
                [*command, "--config", str(self.config)],
                cwd=self.workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        wait_for_port(self.port, self.process, 20)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise LookupError("VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def access_log(self) -> Iterator[Dict[str, Any]]:
        path = self.workdir / "access.log"
        if path.exists():
            with path.open() as lines:
                for line in lines:
                    yield json.loads(line)


# -- the clients --------------------------------------------------------------


@dataclass
class Outcome:
    """
    One request as its client saw it.

    :ivar status: the response's status; None when no response head came.
    :ivar server: the upstream that answered, from ``X-Upstream``.
    :ivar complete: the whole response body arrived.
    :ivar error: what was wrong; empty for a complete, correct 200.
    :ivar abandoned: the client hung up on purpose.
    """

    kind: Kind
    request_id: str
    started: float
    ended: float = 0.0
    status: Optional[int] = None
    server: Optional[str] = None
    complete: bool = False
    error: str = ""
    abandoned: bool = False


@dataclass
class Tally:
    """
    What one client saw: every request counted, the bad ones kept.
    """

    sent: Counter[str] = field(default_factory=Counter)
    answered: Counter[int] = field(default_factory=Counter)
    problems: List[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.sent[outcome.kind.name] += 1
        if outcome.complete and outcome.status is not None:
            self.answered[outcome.status] += 1
        if outcome.error or outcome.abandoned:
            self.problems.append(outcome)


class SmallBufferConnection(http.client.HTTPConnection):
    """
    A connection with a small receive buffer, set before connecting so
    that the window TCP offers stays small: a slow reader's backpressure
    then reaches Gourmet rather than filling loopback buffers.
    """

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock


def read_slowly(response: http.client.HTTPResponse, size: int, rate: int) -> bytes:
    """
    Read a body of ``size`` bytes at ``rate`` bytes a second.
    """
    started = time.monotonic()
    deadline = started + size / rate + CLIENT_TIMEOUT
    pieces: List[bytes] = []
    received = 0
    for _ in range(size // 1024 + 2):
        piece = response.read(64 * 1024)
        if not piece:
            break
        pieces.append(piece)
        received += len(piece)
        if time.monotonic() > deadline:
            raise TimeoutError("slow read took too long")
        time.sleep(max(0.0, received / rate - (time.monotonic() - started)))
    return b"".join(pieces)


def check_body(kind: Kind, body: bytes, sent: bytes, server: Optional[str]) -> str:
    """
    What is wrong with a 200 response's body, or "".
    """
    if kind.size:
        return "" if len(body) == kind.size else f"body of {len(body)} bytes"
    if kind is WAIT:
        expected = b"late from %s" % (server or "?").encode()
        return "" if body == expected else f"body {body[:60]!r}"
    try:
        document = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:60]!r}"
    if kind is POST and (
        document.get("body_length") != len(sent)
        or document.get("body_sha256") != hashlib.sha256(sent).hexdigest()
    ):
        return f"upstream got {document.get('body_length')} other bytes"
    return "" if "server" in document else "no server named"


def describe(error: BaseException) -> str:
    if isinstance(error, http.client.IncompleteRead):
        return f"cut short after {len(error.partial)} bytes"
    return f"{type(error).__name__}: {error}".rstrip(": ")


class Client(threading.Thread):
    """
    Sends requests of the ``KINDS`` one after another over a keep-alive
    connection (slow and abandoning readers get a connection of their own)
    until the deadline, ``max_requests`` or ``stop``.
    """

    def __init__(
        self,
        number: int,
        port: int,
        deadline: float,
        max_requests: int,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.number = number
        self.port = port
        self.deadline = deadline
        self.max_requests = max_requests
        self.stop = stop
        self.random = random.Random(number)
        self.tally = Tally()
        self.keepalive = self._connection(http.client.HTTPConnection)

    def _connection(self, kind: type[http.client.HTTPConnection]) -> Any:
        return kind("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)

    def run(self) -> None:
        weights = [kind.share for kind in KINDS]
        for n in range(self.max_requests):
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                break
            kind = self.random.choices(KINDS, weights)[0]
            self.tally.add(self.exchange(kind, f"c{self.number}-{n}"))
        self.keepalive.close()

    def exchange(self, kind: Kind, request_id: str) -> Outcome:
        outcome = Outcome(kind, request_id, started=time.monotonic())
        own = self._connection(SmallBufferConnection) if kind.own_connection else None
        try:
            self._send(own or self.keepalive, outcome)
        except (OSError, http.client.HTTPException) as error:
            outcome.error = describe(error)
            self.keepalive.close()
        finally:
            if own is not None:
                own.close()
        outcome.ended = time.monotonic()
        return outcome

    def _send(self, connection: http.client.HTTPConnection, outcome: Outcome) -> None:
        kind = outcome.kind
        body = self.random.randbytes(POST_SIZE) if kind is POST else None
        target = f"{kind.path}?id={outcome.request_id}"
        connection.request(kind.method, target, body=body)
        response = connection.getresponse()
        outcome.status = response.status
        outcome.server = response.getheader("x-upstream")
        if kind.abandon and response.status == 200:
            response.read(ABANDON_AFTER)
            outcome.abandoned = True
            return
        if kind.rate and response.status == 200:
            data = read_slowly(response, kind.size, kind.rate)
        else:
            data = response.read()
        outcome.complete = True
        if response.status != 200:
            outcome.error = f"status {response.status}"
        else:
            outcome.error = check_body(kind, data, body or b"", outcome.server)


# -- faults and figures -------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    at: float
    server: str
    signal_name: str

    def overlaps(self, outcome: Outcome) -> bool:
        return outcome.started <= self.at + KILL_WINDOW and outcome.ended >= self.at

    def explains(self, outcome: Outcome) -> bool:
        """
        Whether this kill caused a failure Gourmet could not have avoided.
        """
        if not self.overlaps(outcome):
            return False
        if outcome.status == 200 and not outcome.complete:
            return outcome.server == self.server
        return outcome.kind is POST and outcome.status == 502


def kill_times(duration: float, every: float) -> List[float]:
    """
    When to kill: none so late that the end samples would see it.
    """
    last = duration - RESTART_AFTER - SAMPLES - 2
    times: List[float] = []
    at = FIRST_KILL
    while at <= last and every > 0:
        times.append(at)
        at += every
    return times


@dataclass
class Sample:
    at: float
    rss_kib: int
    fds: int


@dataclass
class Run:
    """
    What happened during a soak, for the report.
    """

    began: float
    kills: List[Kill] = field(default_factory=list)
    failed_restarts: List[str] = field(default_factory=list)
    samples: List[Sample] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    gourmet_died: Optional[float] = None

    def since_start(self, at: float) -> float:
        return at - self.began

    def medians(self, chosen: Sequence[Sample]) -> Tuple[float, float]:
        """
        The median RSS (KiB) and descriptor count of some samples.
        """
        if not chosen:
            return 0.0, 0.0
        return (
            statistics.median(s.rss_kib for s in chosen),
            statistics.median(s.fds for s in chosen),
        )


class Soak:
    """
    Runs the clients and the fault schedule, and samples Gourmet.
    """

    def __init__(
        self,
        gourmet: Gourmet,
        upstreams: Sequence[Upstream],
        options: argparse.Namespace,
    ) -> None:
        self.gourmet = gourmet
        self.upstreams = upstreams
        self.duration = options.minutes * 60.0
        self.kill_every = options.kill_every
        self.clients = options.clients
        self.max_requests = options.max_requests
        self.stop = threading.Event()
        self.next_progress = 60.0

    def run(self) -> Run:
        run = Run(began=time.monotonic())
        deadline = run.began + self.duration
        clients = [
            Client(n, self.gourmet.port, deadline, self.max_requests, self.stop)
            for n in range(self.clients)
        ]
        for client in clients:
            client.start()
        try:
            self._schedule(run, deadline)
        finally:
            # Interrupted, the clients (daemon threads) are left to die.
            self.stop.set()
        for client in clients:
            client.join(CLIENT_TIMEOUT * 3)
        for client in clients:
            run.tally.sent += client.tally.sent
            run.tally.answered += client.tally.answered
            run.tally.problems += client.tally.problems
        return run

    def _schedule(self, run: Run, deadline: float) -> None:
        kills = [run.began + t for t in kill_times(self.duration, self.kill_every)]
        restarts: List[Tuple[float, Upstream]] = []
        next_sample = run.began + WARM_UP
        for _ in range(int(self.duration / 0.1) + 100):
            now = time.monotonic()
            if now >= deadline:
                break
            if not self.gourmet.alive():
                run.gourmet_died = now
                break
            if kills and now >= kills[0]:
                kills.pop(0)
                upstream = self._kill(run, len(run.kills))
                restarts.append((time.monotonic() + RESTART_AFTER, upstream))
            if restarts and now >= restarts[0][0]:
                self._restart(run, restarts.pop(0)[1])
            if now >= next_sample:
                next_sample = now + 1.0
                self._sample(run, now)
            time.sleep(0.1)

    def _kill(self, run: Run, number: int) -> Upstream:
        upstream = self.upstreams[number % len(self.upstreams)]
        signum = SIGNALS[number % len(SIGNALS)]
        run.kills.append(
            Kill(time.monotonic(), upstream.name, signal.Signals(signum).name)
        )
        upstream.kill(signum)
        return upstream

    def _restart(self, run: Run, upstream: Upstream) -> None:
        try:
            upstream.start()
        except RuntimeError as error:
            run.failed_restarts.append(f"{upstream.name}: {error}")

    def _sample(self, run: Run, now: float) -> None:
        sample = Sample(now, self.gourmet.rss_kib(), self.gourmet.open_fds())
        run.samples.append(sample)
        elapsed = run.since_start(now)
        if elapsed >= self.next_progress:
            self.next_progress += 60.0
            log(
                f"  {elapsed:4.0f} s: RSS {sample.rss_kib / 1024:.1f} MiB, "
                f"fds {sample.fds}, upstream kills {len(run.kills)}"
            )


# -- the report -----------------------------------------------------------------


INJECTED_ABANDONED = "client disconnects"
INJECTED_KILL = "cut by a kill"
LOST = "lost"


def explaining_kill(outcome: Outcome, kills: Sequence[Kill]) -> Optional[Kill]:
    if outcome.abandoned:
        return None
    return next((kill for kill in kills if kill.explains(outcome)), None)


def classify(outcome: Outcome, kills: Sequence[Kill]) -> str:
    if outcome.abandoned:
        return INJECTED_ABANDONED
    if explaining_kill(outcome, kills) is not None:
        return INJECTED_KILL
    return LOST


def percent(start: float, end: float) -> float:
    return (end - start) / start * 100 if start else 0.0


def row(name: str, value: object, note: str = "") -> None:
    log(f"{name:<21}{value}" + (f"   ({note})" if note else ""))


class Report:
    """
    The final table, and whether the soak passed.
    """

    def __init__(self, run: Run, options: argparse.Namespace) -> None:
        self.run = run
        self.options = options
        self.classes = Counter(classify(o, run.kills) for o in run.tally.problems)
        self.lost = [o for o in run.tally.problems if classify(o, run.kills) == LOST]
        # Sampling starts after the warm-up, once a second.
        self.rss = (
            run.medians(run.samples[:SAMPLES]),
            run.medians(run.samples[-SAMPLES:]),
        )

    def passed(self) -> bool:
        (rss_start, fds_start), (rss_end, fds_end) = self.rss
        return (
            not self.lost
            and self.run.gourmet_died is None
            and not self.run.failed_restarts
            and rss_end <= rss_start * (1 + RSS_GROWTH)
            and fds_end <= fds_start + self.options.fd_slack
        )

    def write(self, gourmet: Gourmet, upstreams: Sequence[Upstream]) -> None:
        self._traffic(upstreams)
        self._resources()
        if self.run.gourmet_died is not None:
            died = self.run.since_start(self.run.gourmet_died)
            row("gourmet exited", f"at +{died:.1f} s")
        for failure in self.run.failed_restarts:
            row("restart failed", failure)
        row("result", "PASS" if self.passed() else "FAIL")
        self._kills()
        if self.lost:
            self._lost(gourmet, upstreams)

    def _kills(self) -> None:
        cut: Counter[Kill] = Counter()
        for outcome in self.run.tally.problems:
            kill = explaining_kill(outcome, self.run.kills)
            if kill is not None:
                cut[kill] += 1
        log("kills (seconds from the start, server, signal, requests cut):")
        entries = [
            f"+{self.run.since_start(k.at):5.1f} {k.server} {k.signal_name} {cut[k]}"
            for k in self.run.kills
        ]
        for first in range(0, len(entries), 4):
            log("  " + " | ".join(entries[first : first + 4]))

    def _traffic(self, upstreams: Sequence[Upstream]) -> None:
        run, tally = self.run, self.run.tally
        signals = Counter(kill.signal_name for kill in run.kills)
        log(
            f"soak: {self.options.minutes:.1f} min, {self.options.clients} "
            f"clients, {len(run.kills)} upstream kills "
            f"({', '.join(f'{n} {s}' for s, n in sorted(signals.items()))})"
        )
        row("requests sent", sum(tally.sent.values()))
        row("  by kind", ", ".join(f"{k.name} {tally.sent[k.name]}" for k in KINDS))
        for status, count in sorted(tally.answered.items()):
            row(f"answered {status}", count)
        wrong = sum(1 for o in tally.problems if o.complete and o.status == 200)
        if wrong:
            row("  of which wrong", wrong)
        unanswered = [o for o in tally.problems if not o.complete]
        cut = sum(1 for o in unanswered if o.status is not None and not o.abandoned)
        row(
            "no full answer",
            len(unanswered),
            f"abandoned {self.classes[INJECTED_ABANDONED]}, cut short {cut}, "
            f"no response {sum(1 for o in unanswered if o.status is None)}",
        )
        injected = self.classes[INJECTED_ABANDONED] + self.classes[INJECTED_KILL]
        row(
            "injected failures",
            injected,
            ", ".join(
                f"{n} {self.classes[n]}" for n in (INJECTED_ABANDONED, INJECTED_KILL)
            ),
        )
        row("lost to Gourmet", len(self.lost))

    def _resources(self) -> None:
        (rss_start, fds_start), (rss_end, fds_end) = self.rss
        row(
            "RSS start / end",
            f"{rss_start / 1024:.1f} MiB / {rss_end / 1024:.1f} MiB "
            f"({percent(rss_start, rss_end):+.1f}%)",
        )
        peak = max((s.rss_kib for s in self.run.samples), default=0)
        row("RSS peak sampled", f"{peak / 1024:.1f} MiB")
        row(
            "open fds start / end",
            f"{fds_start:.0f} / {fds_end:.0f} ({percent(fds_start, fds_end):+.1f}%)",
        )

    def _lost(self, gourmet: Gourmet, upstreams: Sequence[Upstream]) -> None:
        log("lost requests (first 20; times from the start, kills for reference):")
        names = {u.address: u.name for u in upstreams}
        wanted = {o.request_id: o for o in self.lost[:20]}
        lines = self._log_lines(gourmet, set(wanted))
        for outcome in wanted.values():
            log("  " + self._describe(outcome))
            entry = lines.get(outcome.request_id)
            if entry is not None:
                tried = ",".join(names.get(s, s) for s in entry["upstream"].split(","))
                log(
                    f"      access log: status {entry['status']}, upstreams "
                    f"{tried}, upstream statuses {entry['upstream_status']}, "
                    f"{entry['body_bytes_sent']} bytes sent"
                )

    def _describe(self, outcome: Outcome) -> str:
        started = self.run.since_start(outcome.started)
        nearest = min(
            self.run.kills, key=lambda k: abs(k.at - outcome.started), default=None
        )
        relation = (
            f"; nearest kill {nearest.server} {nearest.signal_name} at "
            f"+{self.run.since_start(nearest.at):.1f} s"
            if nearest is not None
            else ""
        )
        return (
            f"{outcome.request_id} {outcome.kind.name} +{started:.2f}..+"
            f"{self.run.since_start(outcome.ended):.2f} s: status "
            f"{outcome.status}, from {outcome.server}, {outcome.error}{relation}"
        )

    @staticmethod
    def _log_lines(gourmet: Gourmet, ids: set[str]) -> Dict[str, Dict[str, Any]]:
        found: Dict[str, Dict[str, Any]] = {}
        for entry in gourmet.access_log():
            request_id = entry["request"].split("id=", 1)[-1].split(" ", 1)[0]
            if request_id in ids:
                found[request_id] = entry
        return found


# -- wiring ---------------------------------------------------------------------


def soak(options: argparse.Namespace, workdir: Path) -> bool:
    upstreams = [Upstream(f"u{n}", workdir) for n in (1, 2, 3)]
    gourmet = Gourmet(workdir, upstreams)
    try:
        for upstream in upstreams:
            upstream.start()
        gourmet.start()
        log(
            f"gourmet pid {gourmet.pid} on port {gourmet.port}; upstreams "
            + ", ".join(f"{u.name}={u.address}" for u in upstreams)
        )
        run = Soak(gourmet, upstreams, options).run()
    finally:
        gourmet.stop()
        for upstream in upstreams:
            upstream.stop()
    report = Report(run, options)
    report.write(gourmet, upstreams)
    return report.passed()


def _terminated(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(f"soak: stopped by signal {signum}")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument(
        "--fd-slack",
        type=int,
        default=None,
        help="descriptors the end may have above the start (default: clients)",
    )
    parser.add_argument(
        "--max-requests", type=int, default=10**7, help="per client, at most"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--serve-upstream", nargs=2, metavar=("PORT", "NAME"), help=argparse.SUPPRESS
    )
    options = parser.parse_args(argv)
    if options.fd_slack is None:
        options.fd_slack = options.clients
    if options.minutes * 60 < FIRST_KILL:
        parser.error(f"--minutes: at least {FIRST_KILL / 60:.2f}")
    return options


def main(argv: Optional[Sequence[str]] = None) -> None:
    options = parse(sys.argv[1:] if argv is None else argv)
    if options.serve_upstream:
        port, name = options.serve_upstream
        serve_upstream(int(port), name)
        return
    signal.signal(signal.SIGTERM, _terminated)
    workdir = Path(tempfile.mkdtemp(prefix="gourmet-soak-"))
    passed = False
    try:
        passed = soak(options, workdir)
    finally:
        if options.keep or not passed:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
