"""
Load from ``h2load`` (Debian's ``nghttp2-client``): HTTPS connections for a
fixed time, in HTTP/2 with several streams on each, or in HTTP/1.1 with one
request at a time on each; read back from its summary, with each request's
time from its log file for the percentiles.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from attrs import asdict, evolve, frozen

from benchmarks.processes import cpu_seconds, pinned
from benchmarks.wrk import Throughput

#: Seconds without a byte after which h2load gives a connection up, its
#: requests counted as timeouts (wrk's ``--timeout 5s``).
INACTIVITY_TIMEOUT = 5


@frozen
class Load:
    """
    How ``h2load`` loads a target.

    :param clients: connections, opened before the clock starts.
    :param streams: requests in flight on each (HTTP/2 streams; with
        ``http1``, 1 is one request at a time, more is pipelining).
    :param http1: offer only ``http/1.1`` in ALPN.
    :param log: the file each request's time is written to (removed before
        each run: h2load appends to it).
    """

    clients: int
    streams: int
    duration: int
    cpu: Optional[int]
    http1: bool
    log: Path

    @property
    def protocol(self) -> str:
        """
        The protocol ALPN must have chosen.
        """
        return "http/1.1" if self.http1 else "h2"


@frozen
class H2loadResult(Throughput):
    """
    One ``h2load`` run.

    ``requests`` are the responses received whole with a 2xx or 3xx status;
    ``status_errors`` the others received whole; ``socket_errors`` the
    requests that never got a whole response (a reset stream, a closed
    connection, a connection given up after :data:`INACTIVITY_TIMEOUT`:
    h2load then counts every request it had left for it too).
    ``mean_ms`` and ``sd_ms`` are h2load's own; the percentiles are of
    every request the log file has.  ``cpu_us_per_request`` is the user and
    system CPU time the target process spent during the run, per request.
    """

    requests: int
    seconds: float
    bytes: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    sd_ms: float
    status_errors: int
    socket_errors: int
    protocol: str
    tls: str
    cipher: str
    cpu_us_per_request: Optional[float] = None

    def as_json(self) -> Dict[str, Any]:
        return {
            **asdict(self),
            "requests_per_second": self.requests_per_second,
            "megabytes_per_second": self.megabytes_per_second,
        }


class H2loadFailed(RuntimeError):
    pass


def command(load: Load, url: str) -> List[str]:
    """
    ``h2load`` with one thread (the load has one core) for ``load.duration``
    seconds: with ``-D``, ``-n`` is ignored and the time bounds the count.
    """
    words = ["h2load", "-t1", f"-c{load.clients}", f"-m{load.streams}"]
    words += [f"-D{load.duration}", f"-N{INACTIVITY_TIMEOUT}s"]
    words += [f"--log-file={load.log}"]
    if load.http1:
        words.append("--h1")
    return pinned([*words, url], load.cpu)


def run(load: Load, url: str, pid: Optional[int] = None) -> H2loadResult:
    """
    ``load`` against ``url``, with the CPU time process ``pid`` (the
    target) spent; raises :class:`H2loadFailed` with h2load's output when it
    gives no summary or ALPN chose another protocol.
    """
    load.log.unlink(missing_ok=True)
    before = sum(cpu_seconds(pid)) if pid is not None else 0.0
    result = subprocess.run(
        command(load, url),
        capture_output=True,
        text=True,
        timeout=load.duration + 60,
        check=False,
    )
    spent = sum(cpu_seconds(pid)) - before if pid is not None else None
    output = result.stdout + result.stderr
    try:
        parsed = parse(output, request_times_us(load.log))
    except (LookupError, ValueError) as error:
        raise H2loadFailed(
            f"h2load {url} exited with {result.returncode} ({error}):\n"
            + output[-2000:]
        ) from None
    if parsed.protocol != load.protocol:
        raise H2loadFailed(
            f"h2load {url} spoke {parsed.protocol!r}, not {load.protocol!r}:\n"
            + output[-2000:]
        )
    if spent is None:
        return parsed
    return evolve(parsed, cpu_us_per_request=spent / max(parsed.requests, 1) * 1e6)


def check(url: str, http1: bool, size: int, log: Path) -> Optional[str]:
    """
    What is wrong with four requests for ``url`` (a body of ``size`` bytes),
    two at a time on one connection, or None.
    """
    words = ["h2load", "-n4", "-c1", "-m2", f"-N{INACTIVITY_TIMEOUT}s"]
    words += [f"--log-file={log}", *(["--h1"] if http1 else []), url]
    log.unlink(missing_ok=True)
    result = subprocess.run(
        words, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    try:
        parsed = parse(output, request_times_us(log))
        data = int(_search(r"\((\d+)\) data", output))
    except (LookupError, ValueError) as error:
        return f"h2load gave no summary ({error}):\n{output[-2000:]}"
    wanted = "http/1.1" if http1 else "h2"
    if parsed.protocol != wanted:
        return f"ALPN chose {parsed.protocol!r}, not {wanted!r}"
    if parsed.requests != 4 or data != 4 * size:
        return (
            f"4 requests for {size} bytes: {parsed.requests} answered, "
            f"{data} bytes of body:\n{output[-2000:]}"
        )
    return None


def _search(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise LookupError(f"no {pattern!r} in h2load's output")
    return match.group(1)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def milliseconds(text: str) -> float:
    """
    One of h2load's durations (``950us``, ``1.74ms``, ``3.00s``) in ms.
    """
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def request_times_us(log: Path) -> List[int]:
    """
    The time of each request answered whole, from h2load's log file (start,
    status, microseconds; the status is -1 for a failed stream).
    """
    times = []
    with log.open() as lines:
        for line in lines:
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1] != "-1":
                times.append(int(fields[2]))
    return times


def percentile(values: List[int], share: float) -> float:
    """
    The nearest-rank percentile (0 for no values).
    """
    if not values:
        return 0.0
    ranked = sorted(values)
    return float(ranked[max(math.ceil(share * len(ranked)) - 1, 0)])


def parse(output: str, times_us: List[int]) -> H2loadResult:
    """
    h2load's summary and the log file's times as a result.
    """
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output,
    )
    if counts is None:
        raise LookupError("no requests line in h2load's output")
    succeeded, failed, errored = (int(counts.group(n)) for n in (4, 5, 6))
    mean, sd = re.findall(r"time for request:\s+\S+\s+\S+\s+(\S+)\s+(\S+)", output)[0]
    return H2loadResult(
        requests=succeeded,
        seconds=max(milliseconds(_search(r"finished in (\S+),", output)) / 1000, 1e-6),
        bytes=int(_search(r"traffic: \S+ \((\d+)\) total", output)),
        p50_ms=percentile(times_us, 0.5) / 1000,
        p99_ms=percentile(times_us, 0.99) / 1000,
        mean_ms=milliseconds(mean),
        sd_ms=milliseconds(sd),
        # h2load's failed are the errored (timeouts among them) and the
        # whole answers with another status.
        status_errors=failed - errored,
        socket_errors=errored,
        protocol=_search(r"Application protocol: (\S+)", output),
        tls=_search(r"TLS Protocol: (\S+)", output),
        cipher=_search(r"Cipher: (\S+)", output),
    )


def version() -> str:
    result = subprocess.run(
        ["h2load", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    return result.stdout.strip()
