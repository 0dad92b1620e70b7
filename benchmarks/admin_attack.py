"""
Password guessing against the admin console, and what it does to proxied
traffic: Gourmet under twistd with its demo upstreams on loopback; the
median and p99 of proxied GETs, one at a time, first alone, then while
several connections send wrong passwords to the console as fast as they
are answered.  Prints both, and what the guessers got (401, 429).

    .venv/bin/python -m benchmarks.admin_attack [--attackers 8] [--seconds 10]
    .venv/bin/python -m benchmarks.admin_attack --twistd .tox/pypy/bin/twistd
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

from benchmarks.compare import log, start
from benchmarks.processes import Server
from benchmarks.slow_client import free_port
from gourmet.admin.passwords import hash_password

#: Requests the proxied client sends at most in each phase.
MAX_REQUESTS = 20_000


def config(port: int, admin_port: int, demo_port: int, hashed: str) -> str:
    return (
        "[upstreams.demo]\n"
        f"[[upstreams.demo.servers]]\npath = '127.0.0.1:{demo_port}'\n"
        f"[server]\nlisten = ['tcp:{port}:interface=127.0.0.1']\n"
        "[[server.locations]]\nlocation = '^/'\nupstream = 'demo'\n"
        "[log]\naccess_log = 'off'\n"
        f"[demo]\nlisten = ['127.0.0.1:{demo_port}']\n"
        f"[admin]\nlisten = 'tcp:{admin_port}:interface=127.0.0.1'\n"
        f"[admin.users]\nalice = '{hashed}'\n"
    )


def proxied_latencies(port: int, seconds: float) -> List[float]:
    """
    Milliseconds each proxied GET took, one after the other on a kept
    connection, for ``seconds`` (or :data:`MAX_REQUESTS`).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies: List[float] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and len(latencies) < MAX_REQUESTS:
            began = time.perf_counter()
            connection.request("GET", "/hello")
            connection.getresponse().read()
            latencies.append((time.perf_counter() - began) * 1000)
    finally:
        connection.close()
    return latencies


def guess(port: int, number: int, stop: threading.Event, answers: Counter[str]) -> None:
    """
    Wrong passwords to the console, one after the other, until ``stop``.
    """
    secret = base64.b64encode(f"alice:guess-{number}".encode()).decode()
    headers = {"Authorization": f"Basic {secret}", "Host": "127.0.0.1"}
    attempts = 0
    while not stop.is_set() and attempts < MAX_REQUESTS:
        attempts += 1
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/api/upstreams", headers=headers)
            answers[str(connection.getresponse().status)] += 1
        except (OSError, http.client.HTTPException) as error:
            answers[type(error).__name__] += 1
        finally:
            connection.close()


def summary(label: str, latencies: List[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{label:<28} {len(ordered):>7,} requests  median"
        f" {statistics.median(ordered):7.2f} ms  p99 {p99:7.2f} ms"
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--attackers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--twistd",
        default=str(Path(sys.executable).with_name("twistd")),
        help="the twistd that runs Gourmet (PyPy's, say); the clients stay"
        " on this Python, whose threads would otherwise slow each other",
    )
    options = parser.parse_args(argv)
    port, admin_port, demo_port = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        path = workdir / "gourmet.toml"
        path.write_text(config(port, admin_port, demo_port, hash_password("right")))
        command = [options.twistd, "-n", "--pidfile=", "gourmet", "--config", str(path)]
        start(stack, Server("gourmet", command, port, workdir / "gourmet.log"))
        proxied_latencies(port, 1.0)  # warm up
        alone = proxied_latencies(port, options.seconds)
        stop = threading.Event()
        answers: Counter[str] = Counter()
        attackers = [
            threading.Thread(target=guess, args=(admin_port, n, stop, answers))
            for n in range(options.attackers)
        ]
        for attacker in attackers:
            attacker.start()
        try:
            attacked = proxied_latencies(port, options.seconds)
        finally:
            stop.set()
            for attacker in attackers:
                attacker.join(timeout=15)
    log(summary("proxied GETs alone", alone))
    log(summary(f"with {options.attackers} guessing", attacked))
    difference = statistics.median(attacked) - statistics.median(alone)
    log(f"median difference: {difference:+.2f} ms (acceptance: within 20 ms)")
    log(
        "guessers got: " + ", ".join(f"{k} x {v:,}" for k, v in sorted(answers.items()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
