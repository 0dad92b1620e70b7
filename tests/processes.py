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

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

TWISTD = [str(Path(sys.executable).with_name("twistd"))]
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
