"""
How evenly the kernel spreads new connections over worker processes, for
the two ways ``[server] workers`` could share a listener: one socket
inherited by every worker (what Gourmet does), or one ``SO_REUSEPORT``
socket per worker on the same port.  Also the shared socket with
Twisted's accept batch (up to 100 connections per wake-up) cut to one.

Each worker is a small Twisted web server (the same reactor and HTTP
channel Gourmet runs on) that counts the connections it accepted and the
requests it answered; ``wrk`` loads them; the shares are printed.

    .venv/bin/python -m benchmarks.accept_spread --workers 2
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from benchmarks import wrk
from benchmarks.processes import work_directory

#: One worker: serves on an inherited socket (``fd``) or its own
#: SO_REUSEPORT one (``port``); on SIGUSR1 prints its counts as JSON.
WORKER = r"""
import json, os, signal, socket, sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

mode, where, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {"connections": 0, "requests": 0}

class Counted(Resource):
    isLeaf = True
    def render_GET(self, request):
        counts["requests"] += 1
        return b"x" * 128

class CountingSite(Site):
    def buildProtocol(self, addr):
        counts["connections"] += 1
        return super().buildProtocol(addr)

site = CountingSite(Counted())
site.noisy = False
if mode == "reuseport":
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", where))
    sock.listen(511)
    sock.setblocking(False)
    port = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
    sock.close()
else:
    os.set_blocking(where, False)
    port = reactor.adoptStreamPort(where, socket.AF_INET, site)
port.numberAccepts = batch
def done(*_):
    sys.stdout.write(json.dumps(counts) + "\n")
    sys.stdout.flush()
    os._exit(0)
# SIGUSR1: the reactor installs none of its own for it.
signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(done))
sys.stdout.write("ready\n")
sys.stdout.flush()
reactor.run()
"""


def run(
    mode: str, workers: int, connections: int, duration: int, script: Path
) -> List[Dict[str, int]]:
    """
    The counts of each worker after ``wrk`` loaded them.
    """
    keep = socket.socket()
    batch = 1 if mode == "shared-1" else 100
    if mode == "reuseport":
        keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        keep.bind(("127.0.0.1", 0))
        where = port = keep.getsockname()[1]
        fds: Tuple[int, ...] = ()
    else:
        keep.bind(("127.0.0.1", 0))
        keep.listen(511)
        port = keep.getsockname()[1]
        where = keep.fileno()
        fds = (where,)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode.split("-")[0], str(where), str(batch)],
            stdout=subprocess.PIPE,
            pass_fds=fds,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        if mode == "reuseport":
            keep.close()
        load = wrk.Load(connections, duration, None, script)
        wrk.run(load, f"http://127.0.0.1:{port}/")
        counts = []
        for child in children:
            child.send_signal(signal.SIGUSR1)
            out, _ = child.communicate(timeout=10)
            counts.append(json.loads(out.strip().splitlines()[-1]))
        return counts
    finally:
        keep.close()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def shares(counts: List[Dict[str, int]], key: str) -> str:
    total = sum(each[key] for each in counts) or 1
    return "/".join(f"{each[key] / total * 100:.0f}" for each in counts)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--connections", type=int, action="append", help="default: 32 and 256"
    )
    args = parser.parse_args(argv)
    with work_directory("gourmet-spread-", False) as workdir:
        script = wrk.write_script(workdir / "report.lua")
        for connections in args.connections or [32, 256]:
            for mode in ("shared", "shared-1", "reuseport"):
                for number in range(args.rounds):
                    started = time.monotonic()
                    counts = run(mode, args.workers, connections, args.duration, script)
                    sys.stdout.write(
                        f"c={connections:<4} {mode:<10} round {number + 1}:"
                        f" connections {shares(counts, 'connections')}%"
                        f"  requests {shares(counts, 'requests')}%"
                        f"  ({sum(each['requests'] for each in counts)} requests,"
                        f" {time.monotonic() - started:.0f} s)\n"
                    )
                    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
