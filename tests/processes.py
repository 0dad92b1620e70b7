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

from tests.rawhttp import sleep

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
