"""
Gourmet under systemd: what it says over ``$NOTIFY_SOCKET`` (``READY=1``
once it listens, ``STATUS=``, ``WATCHDOG=1``, ``RELOADING=1``,
``STOPPING=1``), on a :class:`~twisted.internet.task.Clock` and from a real
``twistd``; ``systemd:`` listen endpoints with and without the socket
systemd passes; and the units in ``etc/`` as ``systemd-analyze`` sees them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from gourmet.config.load import ConfigError, parse_config
from gourmet.service import build_service
from gourmet.systemd import SystemdNotifier, systemd_endpoint_problem
from gourmet.upstream.state import AdminState, Upstream
from tests.configs import config
from tests.processes import (
    GOURMET_LISTENING,
    LISTEN_WRAPPER,
    START_SECONDS,
    TWISTD,
    ports_of,
    wait_reported,
)
from tests.rawhttp import status_of

ETC = Path(__file__).parent.parent / "etc"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)

#: Gourmet on a free loopback port, with one upstream nobody listens on
#: behind /api/: anything else is Gourmet's own 404.
GOURMET_CONFIG = (
    "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\n"
    "[server]\nlisten=['{listen}']\nworkers={workers}\n"
    "[[server.locations]]\nlocation='^/api/'\nupstream='b'\n"
    "[log]\naccess_log='off'\n[admin]\nlisten='off'\n"
)


class Systemd:
    """
    The receiving end of ``$NOTIFY_SOCKET``: a unix datagram socket, as
    systemd binds it.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)

    @property
    def notify_socket(self) -> str:
        """
        The value of ``$NOTIFY_SOCKET`` for it (``@name`` when abstract).
        """
        if self.address.startswith("\0"):
            return "@" + self.address[1:]
        return self.address

    def received(self, timeout: float = START_SECONDS) -> List[str]:
        """
        The lines of the next notification, waiting up to ``timeout``.
        """
        self.socket.settimeout(timeout)
        try:
            return self.socket.recv(4096).decode("utf-8").split("\n")
        except socket.timeout:
            raise AssertionError(f"no notification in {timeout}s") from None

    def pending(self) -> List[List[str]]:
        """
        The notifications already sent, without waiting.
        """
        self.socket.setblocking(False)
        notifications: List[List[str]] = []
        while True:
            try:
                data = self.socket.recv(4096)
            except BlockingIOError:
                return notifications
            notifications.append(data.decode("utf-8").split("\n"))

    def until(self, line: str, timeout: float = START_SECONDS) -> List[List[str]]:
        """
        The notifications up to and including the first with ``line``.
        """
        deadline = time.monotonic() + timeout
        seen: List[List[str]] = []
        while True:
            lines = self.received(max(0.001, deadline - time.monotonic()))
            seen.append(lines)
            if line in lines:
                return seen

    def close(self) -> None:
        self.socket.close()
        if not self.address.startswith("\0") and os.path.exists(self.address):
            os.unlink(self.address)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """
    A directory whose paths fit a unix socket's 108 bytes.
    """
    with tempfile.TemporaryDirectory(prefix="gourmet-sd-") as name:
        yield Path(name)


@pytest.fixture
def systemd(short_dir: Path) -> Iterator[Systemd]:
    receiver = Systemd(str(short_dir / "notify"))
    yield receiver
    receiver.close()


def upstreams(clock: Clock, servers: int = 2) -> Dict[str, Upstream]:
    addresses = [f"127.0.0.1:{9000 + n}" for n in range(servers)]
    parsed = parse_config(config(addresses), "gourmet.toml")
    return {u.name: Upstream(u, clock) for u in parsed.upstreams}


def notifier(
    clock: Clock,
    environ: Mapping[str, str],
    running: Optional[Dict[str, Upstream]] = None,
) -> SystemdNotifier:
    state = upstreams(clock) if running is None else running
    return SystemdNotifier(lambda: state, clock, environ=environ, pid=4242)


def test_ready_with_the_status_then_the_status_when_it_changes(
    systemd: Systemd,
) -> None:
    clock = Clock()
    running = upstreams(clock)
    (backend,) = running.values()
    service = notifier(clock, {"NOTIFY_SOCKET": systemd.address}, running)
    service.startService()
    assert systemd.received() == [
        "READY=1",
        "STATUS=serving: 0 requests proxied, 2 of 2 servers up",
    ]
    clock.advance(5)
    assert systemd.pending() == []  # nothing changed, nothing said
    for _ in range(3):
        backend.servers[0].attempt_started()
        backend.servers[0].attempt_finished()
    backend.servers[1].failed("connect failed")  # out for fail_timeout
    clock.advance(5)
    assert systemd.pending() == [
        ["STATUS=serving: 3 requests proxied, 1 of 2 servers up"]
    ]
    # An operator takes both out (the failed one would be tried again now).
    backend.servers[0].admin_state = AdminState.DISABLED
    backend.servers[1].admin_state = AdminState.DRAIN
    clock.advance(5)
    assert systemd.pending() == [
        ["STATUS=serving: 3 requests proxied, 0 of 2 servers up; none up in backend"]
    ]
    service.stopService()
    assert systemd.pending() == [["STOPPING=1", "STATUS=stopping"]]
    assert clock.getDelayedCalls() == []


def test_the_status_follows_the_upstreams_a_reload_brings(systemd: Systemd) -> None:
    clock = Clock()
    running = upstreams(clock, servers=1)
    service = SystemdNotifier(
        lambda: running, clock, environ={"NOTIFY_SOCKET": systemd.address}
    )
    service.startService()
    assert "STATUS=serving: 0 requests proxied, 1 of 1 server up" in systemd.received()
    running = upstreams(clock, servers=3)
    clock.advance(5)
    assert systemd.pending() == [
        ["STATUS=serving: 0 requests proxied, 3 of 3 servers up"]
    ]
    service.stopService()


def test_watchdog_pings_every_half_of_watchdog_usec(systemd: Systemd) -> None:
    clock = Clock()
    service = notifier(
        clock, {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "400000"}
    )
    service.startService()
    assert systemd.received()[0] == "READY=1"
    assert systemd.pending() == [["WATCHDOG=1"]]
    clock.advance(0.19)
    assert systemd.pending() == []
    for _ in range(5):
        clock.advance(0.01)
        assert systemd.pending() == [["WATCHDOG=1"]]
        clock.advance(0.19)
        assert systemd.pending() == []
    service.stopService()
    assert systemd.pending() == [["STOPPING=1", "STATUS=stopping"]]
    clock.advance(10)
    assert systemd.pending() == []


@pytest.mark.parametrize(("watchdog_pid", "pings"), [("4242", True), ("1", False)])
def test_watchdog_only_for_the_process_watchdog_pid_names(
    systemd: Systemd, watchdog_pid: str, pings: bool
) -> None:
    clock = Clock()
    environ = {
        "NOTIFY_SOCKET": systemd.address,
        "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": watchdog_pid,
    }
    service = notifier(clock, environ)
    service.startService()
    clock.pump([0.5] * 4)
    sent = [systemd.received(), *systemd.pending()]
    assert sent[0][0] == "READY=1"
    assert sent.count(["WATCHDOG=1"]) == (5 if pings else 0)
    service.stopService()


def test_reloading_says_when_on_the_monotonic_clock_then_ready(
    systemd: Systemd,
) -> None:
    clock = Clock()
    service = notifier(clock, {"NOTIFY_SOCKET": systemd.address})
    service.startService()
    systemd.received()
    before = time.monotonic_ns() // 1000
    service.reloading()
    after = time.monotonic_ns() // 1000
    reloading, monotonic, status = systemd.received()
    assert (reloading, status) == ("RELOADING=1", "STATUS=reloading")
    match = re.fullmatch(r"MONOTONIC_USEC=(\d+)", monotonic)
    assert match is not None
    assert before <= int(match.group(1)) <= after
    service.ready()
    assert systemd.received() == [
        "READY=1",
        "STATUS=serving: 0 requests proxied, 2 of 2 servers up",
    ]
    service.stopService()


def test_an_abstract_notify_socket() -> None:
    receiver = Systemd(f"\0gourmet-test-{uuid.uuid4().hex}")
    try:
        assert receiver.notify_socket.startswith("@gourmet-test-")
        service = notifier(Clock(), {"NOTIFY_SOCKET": receiver.notify_socket})
        service.startService()
        assert receiver.received()[0] == "READY=1"
        service.stopService()
        assert receiver.received()[0] == "STOPPING=1"
    finally:
        receiver.close()


def test_a_vanished_notify_socket_is_logged_once_and_never_raised(
    short_dir: Path,
) -> None:
    clock = Clock()
    address = str(short_dir / "notify")
    systemd = Systemd(address)
    service = notifier(clock, {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    with capturedLogs() as events:
        service.startService()
        assert systemd.received()[0] == "READY=1"
        systemd.close()
        clock.advance(10)  # 10 pings and a status to a socket that is gone
        assert len(events) == 1
        assert formatEvent(events[0]).startswith(f"cannot notify systemd at {address}:")
        # systemd back (a daemon-reexec): the pings get through again.
        systemd = Systemd(address)
        clock.advance(1)
        assert systemd.pending() == [["WATCHDOG=1"]]
        systemd.close()
        clock.advance(1)
        assert len(events) == 2  # a new outage, one more line
    service.stopService()
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234"])
def test_nothing_at_all_without_a_unix_notify_socket(value: Optional[str]) -> None:
    clock = Clock()
    environ = {"WATCHDOG_USEC": "1000000"}
    if value is not None:
        environ["NOTIFY_SOCKET"] = value
    service = notifier(clock, environ)
    with capturedLogs() as events:
        service.startService()
        assert clock.getDelayedCalls() == []  # no status, no watchdog
        service.reloading()
        service.ready()
        service.stopService()
    assert events == []
    assert not service.enabled


@pytest.mark.parametrize(
    ("description", "error", "environ", "line"),
    [
        (
            "systemd:domain=INET:index=0",
            IndexError(),
            {},
            "no socket at index 0: systemd passed none (LISTEN_FDNAMES is not set);"
            " start Gourmet from a socket unit, such as etc/gourmet.socket",
        ),
        (
            "systemd:domain=INET6:name=https",
            KeyError("https"),
            {"LISTEN_FDNAMES": "http"},
            "no socket named 'https': systemd passed 1 socket: http",
        ),
        (
            "systemd:INET:2",
            IndexError(),
            {"LISTEN_FDNAMES": "http:admin"},
            "no socket at index 2: systemd passed 2 sockets: http, admin",
        ),
        (
            "systemd:domain=INET:index=0",
            IndexError(),
            {"LISTEN_FDNAMES": "http", "LISTEN_PID": "99", "LISTEN_FDS": "1"},
            "no socket at index 0: the sockets systemd passed are for process 99"
            " (LISTEN_PID), not this one (42)",
        ),
        (
            "systemd:domain=INET:name=http",
            KeyError("http"),
            {"LISTEN_FDNAMES": "http"},
            "no socket named 'http': LISTEN_FDNAMES names 1 socket (http) but"
            " LISTEN_FDS does not say as many",
        ),
        (
            "systemd:domain=INET5:index=0",
            AttributeError(),
            {},
            "domain must be INET, INET6 or UNIX, got 'INET5'",
        ),
        ("tcp:80", KeyError("x"), {}, None),
        ("systemd:domain=INET:index=0", TypeError(), {}, None),
    ],
)
def test_what_a_systemd_endpoint_without_its_socket_is_told(
    description: str,
    error: Exception,
    environ: Dict[str, str],
    line: Optional[str],
) -> None:
    assert systemd_endpoint_problem(description, error, environ, pid=42) == line


def test_building_a_systemd_listener_without_a_socket_names_the_key() -> None:
    text = GOURMET_CONFIG.format(listen="systemd:domain=INET:name=http", workers=1)
    with pytest.raises(ConfigError) as raised:
        build_service(parse_config(text, "gourmet.toml"), MemoryReactorClock())
    assert str(raised.value).startswith(
        "gourmet.toml: server.listen[0]: no socket named 'http': systemd passed none"
    )


# A real twistd.


class Gourmet:
    """
    ``twistd -n gourmet`` with the environment a test gives it.
    """

    def __init__(
        self,
        directory: Path,
        listen: str,
        environ: Mapping[str, str],
        passed: Optional[socket.socket] = None,
        workers: int = 1,
    ) -> None:
        self.config = directory / "gourmet.toml"
        self.config.write_text(GOURMET_CONFIG.format(listen=listen, workers=workers))
        self.stderr = directory / "gourmet.err"
        command = [*TWISTD, "-n", "--pidfile=", "gourmet", "--config", str(self.config)]
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("NOTIFY_", "WATCHDOG_", "LISTEN_"))
        }
        env.update(environ)
        fds: List[int] = []
        if passed is not None:
            fds = [passed.fileno()]
            command = [sys.executable, "-c", LISTEN_WRAPPER, str(fds[0]), *command]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr.open("wb"),
            cwd=directory,
            env=env,
            pass_fds=fds,
        )

    def listening(self) -> bool:
        return GOURMET_LISTENING.search(self.stderr.read_text()) is not None

    def port(self) -> int:
        (match,) = wait_reported(self.process, self.stderr, [GOURMET_LISTENING])
        return ports_of(match["addresses"])[0]


@pytest.fixture
def started() -> Iterator[List[Gourmet]]:
    processes: List[Gourmet] = []
    yield processes
    for each in processes:
        # What a test asserts about stopping it did itself.
        if each.process.poll() is None:
            each.process.kill()
        each.process.wait()


def answer(port: int, path: str = "/") -> bytes:
    """
    Gourmet's whole answer to one ``GET path`` on a new connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        client.sendall(request.encode())
        return read_to_end(client)


def read_to_end(client: socket.socket) -> bytes:
    reply = b""
    while True:
        data = client.recv(65536)
        if not data:
            return reply
        reply += data


LOOPBACK = "tcp:0:interface=127.0.0.1"


@pytest.mark.parametrize("workers", [1, 2])
def test_twistd_says_ready_once_its_port_accepts_reloading_and_stopping(
    tmp_path: Path, systemd: Systemd, started: List[Gourmet], workers: int
) -> None:
    gourmet = Gourmet(
        tmp_path, LOOPBACK, {"NOTIFY_SOCKET": systemd.address}, workers=workers
    )
    started.append(gourmet)
    ready = systemd.received()
    # Not a moment early: the listening line is out, the port accepts.
    assert gourmet.listening()
    assert ready == ["READY=1", "STATUS=serving: 0 requests proxied, 1 of 1 server up"]
    with socket.create_connection(("127.0.0.1", gourmet.port()), timeout=5):
        pass
    assert status_of(answer(gourmet.port())) == 404
    # A reload (systemctl reload sends SIGHUP): RELOADING=1 with the time on
    # the monotonic clock, then READY=1 once the new file is in use.
    before = time.monotonic_ns() // 1000
    gourmet.process.send_signal(signal.SIGHUP)
    reloading, *_ = systemd.until("READY=1")
    assert reloading[0] == "RELOADING=1"
    (stamp,) = [line for line in reloading if line.startswith("MONOTONIC_USEC=")]
    assert before <= int(stamp.split("=")[1]) <= time.monotonic_ns() // 1000
    assert "gourmet reloaded" in gourmet.stderr.read_text()
    gourmet.process.send_signal(signal.SIGTERM)
    assert systemd.until("STOPPING=1")[-1] == ["STOPPING=1", "STATUS=stopping"]
    # A graceful stop exits 0.
    assert gourmet.process.wait(10) == 0


def test_twistd_pings_the_watchdog_at_half_its_interval(
    tmp_path: Path, systemd: Systemd, started: List[Gourmet]
) -> None:
    environ = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "400000"}
    gourmet = Gourmet(tmp_path, LOOPBACK, environ)
    started.append(gourmet)
    assert systemd.received()[0] == "READY=1"
    pings = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            lines = systemd.received(max(0.001, deadline - time.monotonic()))
        except AssertionError:
            break
        if lines == ["WATCHDOG=1"]:
            pings.append(time.monotonic())
    # Every 0.2 s, the first at once: about 10 in 2 s, given a busy machine.
    assert 6 <= len(pings) <= 12, pings
    gaps = sorted(b - a for a, b in zip(pings, pings[1:]))
    assert 0.1 < gaps[len(gaps) // 2] < 0.35, gaps


@pytest.mark.parametrize("notify_socket", [None, "missing"])
def test_twistd_serves_without_systemd_or_when_its_socket_is_gone(
    tmp_path: Path,
    short_dir: Path,
    started: List[Gourmet],
    notify_socket: Optional[str],
) -> None:
    environ = {}
    if notify_socket is not None:
        environ = {
            "NOTIFY_SOCKET": str(short_dir / notify_socket),
            "WATCHDOG_USEC": "100000",
        }
    gourmet = Gourmet(tmp_path, LOOPBACK, environ)
    started.append(gourmet)
    port = gourmet.port()
    time.sleep(0.5)  # pings every 0.05 s, all lost
    assert status_of(answer(port)) == 404
    assert gourmet.process.poll() is None
    complaints = gourmet.stderr.read_text().count("cannot notify systemd")
    assert complaints == (0 if notify_socket is None else 1)


def listening_socket() -> socket.socket:
    passed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    passed.bind(("127.0.0.1", 0))
    passed.listen(16)
    return passed


@pytest.mark.parametrize("workers", [1, 2])
def test_twistd_serves_on_the_socket_systemd_passes(
    tmp_path: Path, started: List[Gourmet], workers: int
) -> None:
    passed = listening_socket()
    port = passed.getsockname()[1]
    # A client that comes before Gourmet runs waits in the socket's queue.
    early = socket.create_connection(("127.0.0.1", port), timeout=START_SECONDS)
    early.sendall(b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with passed:
        environ = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
        gourmet = Gourmet(
            tmp_path, "systemd:domain=INET:name=http", environ, passed, workers
        )
        started.append(gourmet)
    with early:
        assert status_of(read_to_end(early)) == 404
    assert gourmet.port() == port
    assert status_of(answer(port)) == 404


@pytest.mark.parametrize(
    ("listen", "environ", "passes", "said"),
    [
        (
            "systemd:domain=INET:index=0",
            {},
            False,
            "no socket at index 0: systemd passed none (LISTEN_FDNAMES is not set)",
        ),
        (
            "systemd:domain=INET:index=0",
            {"LISTEN_FDS": "1"},
            True,
            "no socket at index 0: systemd passed none (LISTEN_FDNAMES is not set)",
        ),
        (
            "systemd:domain=INET:name=https",
            {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"},
            True,
            "no socket named 'https': systemd passed 1 socket: http",
        ),
    ],
)
def test_twistd_with_a_systemd_endpoint_but_no_such_socket_says_one_line(
    tmp_path: Path,
    started: List[Gourmet],
    listen: str,
    environ: Dict[str, str],
    passes: bool,
    said: str,
) -> None:
    passed = listening_socket() if passes else None
    gourmet = Gourmet(tmp_path, listen, environ, passed)
    started.append(gourmet)
    if passed is not None:
        passed.close()
    assert gourmet.process.wait(START_SECONDS) == 1
    lines = gourmet.stderr.read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gourmet: {gourmet.config}: server.listen[0]: {said}")


# The units, as systemd-analyze sees them.


def units_to_check(directory: Path) -> List[Path]:
    """
    ``etc/gourmet.service`` and ``etc/gourmet.socket`` copied into
    ``directory``, the service's ``twistd`` made the one installed here
    (systemd-analyze verify fails on a command that does not exist).
    """
    service = (ETC / "gourmet.service").read_text()
    assert "ExecStart=/opt/gourmet/bin/twistd " in service
    service = service.replace("/opt/gourmet/bin/twistd", TWISTD[0])
    (directory / "gourmet.service").write_text(service)
    shutil.copy(ETC / "gourmet.socket", directory / "gourmet.socket")
    return [directory / "gourmet.service", directory / "gourmet.socket"]


@needs_systemd_analyze
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, units_to_check(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
def test_the_service_is_rated_below_2_5_by_systemd_analyze_security(
    tmp_path: Path,
) -> None:
    assert SYSTEMD_ANALYZE is not None
    service = units_to_check(tmp_path)[0]
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(
        r"Overall exposure level for gourmet\.service: (\d+\.\d+)", result.stdout
    )
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) < 2.5, result.stdout
