"""
Server processes for the benchmarks: started on loopback, optionally pinned
to a CPU with ``taskset``, waited for, and always stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

#: Where the servers run: the checkout, so that ``python -m benchmarks...``
#: finds this package.
REPO = Path(__file__).resolve().parents[1]
#: Seconds a server gets to start listening (PyPy takes a few).
START_TIMEOUT = 60.0
#: Seconds a server gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


class ServerFailed(RuntimeError):
    """
    A server did not start; the message ends with its log's last lines.
    """


def pinned(command: Sequence[str], cpu: Optional[int]) -> List[str]:
    """
    ``command`` run on CPU ``cpu`` with ``taskset`` (None: anywhere).
    """
    if cpu is None:
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


def can_pin() -> bool:
    """
    Whether the proxies and the load can get a core each: ``taskset`` is
    there and this process may run on CPUs 0 and 1.
    """
    cpus = os.sched_getaffinity(0)
    return shutil.which("taskset") is not None and {0, 1} <= cpus


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


class Server:
    """
    One server process, its output in ``log``; ``rss_pid`` is the process
    whose memory counts (nginx's worker rather than its master).

    :param name: what the benchmark calls it.
    :param command: the command line, already pinned if wanted.
    :param port: a loopback port it listens on once ready.
    :param log: the file its standard output and error go to.
    """

    def __init__(self, name: str, command: Sequence[str], port: int, log: Path) -> None:
        self.name = name
        self.command = list(command)
        self.port = port
        self.log = log
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def rss_pid(self) -> int:
        return self.pid

    def start(self) -> None:
        with self.log.open("ab") as output:
            # A session of its own: Ctrl-C reaches only the benchmark, whose
            # finally blocks stop this in order.
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited with status {self.process.returncode}:\n"
                    + tail(self.log)
                )
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise ServerFailed(
            f"{self.name} not listening on 127.0.0.1:{self.port} after "
            f"{START_TIMEOUT:.0f} s:\n" + tail(self.log)
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def children(pid: int) -> List[int]:
    """
    The process ids whose parent is ``pid``.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """
    User and system CPU time of process ``pid`` so far.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """
    A new directory for a benchmark's configurations and logs, removed
    afterwards unless ``keep``.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    # nginx's worker may run as another user (nobody) and reads from here.
    workdir.chmod(0o755)
    try:
        yield workdir
    finally:
        if keep:
            sys.stdout.write(f"Configurations and logs kept in {workdir}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
