"""
Child processes the tests start (``twistd gourmet``, upstream servers), and
what they say about where they listen.

A test never picks a port number for a child: the child listens on port 0
and says which port it got, and the test reads that from the child's log.
Picking a number by binding a socket to port 0, closing it and handing the
number on races with every other program on the machine, and was seen to
fail with "Address already in use".
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from gourmet.upstream.state import server_ids
from tests.rawhttp import sleep

ROOT = Path(__file__).parents[1]

TWISTD = [str(Path(sys.executable).with_name("twistd"))]
#: The ``gourmet`` command, as installed beside twistd.
GOURMET = [str(Path(sys.executable).with_name("gourmet"))]
#: How long a process may take to say where it listens.
START_SECONDS = 20.0
#: Seconds between two looks at a log.
POLL_SECONDS = 0.05

#: Gourmet's start-up line (gourmet.service), naming the addresses its
#: listeners got, joined with ", ": ``gourmet listening on 127.0.0.1:43123
#: with 1 upstreams from /path/gourmet.toml``.
GOURMET_LISTENING = re.compile(
    r"gourmet listening on (?P<addresses>.+?) with \d+ upstreams from "
)
#: The console's line right after it: ``admin console on 127.0.0.1:43124
#: (read-only: ...)``.
ADMIN_CONSOLE = re.compile(r"admin console on (?P<address>\S+) \(")
#: The line of tests.upstream_process, once listening:
#: ``upstream alpha listening on 127.0.0.1:43125``.
UPSTREAM_LISTENING = re.compile(r"upstream \S+ listening on (?P<address>\S+)\n")


def port_of(address: str) -> int:
    """
    The port of ``127.0.0.1:43123`` or ``[::1]:43123``.
    """
    return int(address.rsplit(":", 1)[1])


def ports_of(addresses: str) -> List[int]:
    """
    The ports of addresses joined with ", ", in order.
    """
    return [port_of(address) for address in addresses.split(", ")]


def reported(
    process: subprocess.Popen[bytes],
    log: Path,
    patterns: Sequence[re.Pattern[str]],
    start: int = 0,
) -> Optional[List[re.Match[str]]]:
    """
    Each pattern's first match in what ``process`` wrote to ``log`` from
    byte ``start`` on, or None while one has no match yet.

    :raises AssertionError: if the process exited without writing them all.
    """
    # The exit status first: a process that exits after its last line was
    # written is seen with that line.
    exited = process.poll() is not None
    text = log.read_bytes()[start:].decode("utf-8", "replace")
    found = [pattern.search(text) for pattern in patterns]
    matches = [match for match in found if match is not None]
    if len(matches) == len(found):
        return matches
    if exited:
        raise AssertionError(f"exited with {process.returncode}: {text}")
    return None


def wait_reported(
    process: subprocess.Popen[bytes],
    log: Path,
    patterns: Sequence[re.Pattern[str]],
    start: int = 0,
) -> List[re.Match[str]]:
    """
    Wait (blocking) for :func:`reported` to find every pattern.

    :raises AssertionError: if the process exits first, or it takes longer
        than :data:`START_SECONDS`.
    """
    deadline = time.monotonic() + START_SECONDS
    while True:
        matches = reported(process, log, patterns, start)
        if matches is not None:
            return matches
        if time.monotonic() > deadline:
            text = log.read_bytes()[start:].decode("utf-8", "replace")
            raise AssertionError(f"did not say where it listens: {text}")
        time.sleep(POLL_SECONDS)


#: Starts a command as systemd does with a socket: the listening socket
#: whose number is the first argument as descriptor 3, and LISTEN_PID set to
#: the process that then becomes the command.
LISTEN_WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Twistd:
    """
    A ``twistd -n gourmet`` process.

    Its configuration listens on port 0; :meth:`ready` reads the ports it
    got from its log (standard error, under ``-n`` with no ``--logfile``).

    :ivar port: the port of its first listener, once ready.
    :ivar admin_port: the console's port, once ready, if it has one.
    """

    def __init__(self, config: Path, passed: Optional[socket.socket] = None) -> None:
        """
        :param passed: a listening socket, passed as systemd passes one
            named ``http`` (``systemd:domain=INET:name=http``).
        """
        self.config = config
        self.stdout = config.with_suffix(".out")
        self.stderr = config.with_suffix(".err")
        command = [*TWISTD, "-n", "--pidfile=", "gourmet", "--config", str(config)]
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("NOTIFY_", "WATCHDOG_", "LISTEN_"))
        }
        fds: List[int] = []
        if passed is not None:
            # A listening socket of the test's, as systemd passes one.
            fds = [passed.fileno()]
            command = [sys.executable, "-c", LISTEN_WRAPPER, str(fds[0]), *command]
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES="http")
        self.process = subprocess.Popen(
            command,
            stdout=self.stdout.open("wb"),
            stderr=self.stderr.open("wb"),
            cwd=config.parent,
            env=env,
            pass_fds=fds,
        )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.port = 0
        self.admin_port: Optional[int] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, admin: bool = False) -> None:
        """
        Wait until twistd says where it listens (and, with ``admin``, where
        its console does), without blocking the reactor.
        """
        patterns = [GOURMET_LISTENING, ADMIN_CONSOLE] if admin else [GOURMET_LISTENING]
        deadline = time.monotonic() + START_SECONDS
        while True:
            matches = reported(self.process, self.stderr, patterns)
            if matches is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"twistd did not say: {self.stderr.read_text()}")
            await sleep(POLL_SECONDS)
        self.port = ports_of(matches[0]["addresses"])[0]
        if admin:
            self.admin_port = port_of(matches[1]["address"])

    def get(self, path: str, **kwargs: Any) -> Any:
        return treq.get(self.url + path, pool=self.pool, **kwargs)

    def rss_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(field)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def stop_process(process: subprocess.Popen[bytes]) -> Optional[int]:
    """
    SIGTERM, and SIGKILL if that is not enough within 10 s.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


class UpstreamProcess:
    """
    ``python -m tests.upstream_process PORT NAME`` (or another ``module``
    that says where it listens the same way), which can be stopped and
    started again at the same address.

    :ivar port: the port it listens on, known once it first started.
    """

    def __init__(
        self, name: str, directory: Path, module: str = "tests.upstream_process"
    ) -> None:
        self.name = name
        self.module = module
        self.port = 0
        self.log = directory / f"upstream-{name}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def id(self) -> str:
        """
        The server's id in the admin API, made from its address.
        """
        (id_,) = server_ids([self.address])
        return id_

    def start(self) -> None:
        """
        Start the server and wait until it says where it listens.

        The first start listens on port 0, a port the system picks. A
        restart listens on that port again: Gourmet's configuration names
        the server by its address, and a server that comes back after a
        crash comes back there. (The port was this server's own until it
        stopped; another program may take it meanwhile, and then the
        restart fails saying so rather than serving somewhere else.)
        """
        assert self.process is None or self.process.poll() is not None
        start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    str(self.port),
                    self.name,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        (listening,) = wait_reported(
            self.process, self.log, [UPSTREAM_LISTENING], start
        )
        self.port = port_of(listening["address"])

    def stop(self) -> Optional[int]:
        """
        Stop the server; its exit status (0 when SIGTERM stopped it cleanly).
        """
        if self.process is None:
            return None
        return stop_process(self.process)


#: ``GOURMET_TEST_WORKERS=2 pytest ...`` runs every twistd of the tests
#: with ``[server] workers = 2`` (those whose file sets none): the whole
#: suite's end-to-end tests, on the supervisor and its workers.
TEST_WORKERS = os.environ.get("GOURMET_TEST_WORKERS")


def with_test_workers(text: str) -> str:
    """
    ``text`` with :data:`TEST_WORKERS` workers, when that is set.
    """
    if not TEST_WORKERS or "[server]\n" not in text or "workers" in text:
        return text
    return text.replace("[server]\n", f"[server]\nworkers = {TEST_WORKERS}\n", 1)


async def start_twistd(
    directory: Path,
    processes: List[Twistd],
    text: str,
    admin: bool = True,
    passed: Optional[socket.socket] = None,
) -> Twistd:
    """
    ``twistd gourmet`` on the configuration ``text``, written to
    ``gourmet.toml`` in ``directory``, once it listens (its console too,
    unless ``admin`` is false); added to ``processes``, which stops it.
    """
    config = directory / "gourmet.toml"
    config.write_text(with_test_workers(text))
    gourmet = Twistd(config, passed)
    processes.append(gourmet)
    await gourmet.ready(admin=admin)
    return gourmet
