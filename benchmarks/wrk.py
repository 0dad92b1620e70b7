"""
Load from ``wrk``: keep-alive connections for a fixed time, read back
through a Lua ``done`` hook that prints the exact counts and percentiles.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from attrs import frozen

from benchmarks.processes import pinned

#: Printed by the Lua hook before its JSON line.
MARKER = "WRK-RESULT "

SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, "
    .. "\\"p50_us\\": %.1f, \\"p99_us\\": %.1f, \\"mean_us\\": %.1f, "
    .. "\\"max_us\\": %.1f, \\"connect\\": %d, "
    .. "\\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}\\n",
    MARKER, summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@frozen
class Load:
    """
    How ``wrk`` loads a target.
    """

    connections: int
    duration: int
    cpu: Optional[int]
    script: Path


class Throughput:
    """
    A load run's rates, from its counts (``wrk``'s and ``h2load``'s).
    """

    requests: int
    seconds: float
    bytes: int

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6


@frozen
class WrkResult(Throughput):
    """
    One ``wrk`` run: the counts its Lua hook printed.

    ``status_errors`` are responses whose status was not 2xx or 3xx;
    ``socket_errors`` are connect, read, write errors and timeouts.
    """

    requests: int
    seconds: float
    bytes: int
    p50_ms: float
    p99_ms: float
    status_errors: int
    socket_errors: int
    #: The mean and the longest (absent from runs saved before they were).
    mean_ms: Optional[float] = None
    max_ms: Optional[float] = None

    def as_json(self) -> Dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "bytes": self.bytes,
            "requests_per_second": self.requests_per_second,
            "megabytes_per_second": self.megabytes_per_second,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "max_ms": self.max_ms,
            "status_errors": self.status_errors,
            "socket_errors": self.socket_errors,
        }


class WrkFailed(RuntimeError):
    pass


def write_script(path: Path) -> Path:
    path.write_text(SCRIPT.replace("MARKER", json.dumps(MARKER)))
    return path


def run(load: Load, url: str, header: Optional[str] = None) -> WrkResult:
    """
    ``wrk`` with one thread (the load has one core) against ``url``, each
    request with ``header`` if given (``Connection: close``: a connection
    per request).
    """
    command = ["wrk", "-t1", f"-c{load.connections}", f"-d{load.duration}s"]
    if header is not None:
        command += ["-H", header]
    command += ["--timeout", "5s", "-s", str(load.script), url]
    result = subprocess.run(
        pinned(command, load.cpu),
        capture_output=True,
        text=True,
        timeout=load.duration + 60,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith(MARKER):
            return parse(json.loads(line[len(MARKER) :]))
    raise WrkFailed(
        f"wrk {url} exited with {result.returncode}:\n"
        + (result.stdout + result.stderr)[-2000:]
    )


def parse(counts: Dict[str, Any]) -> WrkResult:
    return WrkResult(
        requests=int(counts["requests"]),
        seconds=max(counts["duration_us"] / 1e6, 1e-6),
        bytes=int(counts["bytes"]),
        p50_ms=counts["p50_us"] / 1000,
        p99_ms=counts["p99_us"] / 1000,
        mean_ms=counts["mean_us"] / 1000 if "mean_us" in counts else None,
        max_ms=counts["max_us"] / 1000 if "max_us" in counts else None,
        status_errors=int(counts["status"]),
        socket_errors=sum(
            int(counts[k]) for k in ("connect", "read", "write", "timeout")
        ),
    )


def version() -> str:
    result = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    return (result.stdout + result.stderr).split("\n", 1)[0].strip()
