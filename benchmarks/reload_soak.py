"""
Reloads under load: Gourmet under twistd with three demo upstreams on
loopback, reloaded by SIGHUP again and again, alternating two files that
differ in weights, one server (b out, c in) and a location, while
keep-alive clients send GETs as fast as they are answered.  Prints the
failed requests (there must be none), the servers each file's requests
went to, and the proxy's RSS and open file descriptors across the reloads.

    .venv/bin/python -m benchmarks.reload_soak [--reloads 100] [--clients 4]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.compare import log, start
from benchmarks.processes import Server
from benchmarks.slow_client import free_port

#: Requests each client sends at most, and seconds a reload may take.
MAX_REQUESTS = 2_000_000
RELOAD_SECONDS = 10.0


def config(
    port: int, demo: Dict[str, int], weights: Dict[str, int], extra: bool
) -> str:
    text = "[upstreams.demo]\n"
    for name, weight in weights.items():
        text += f"[[upstreams.demo.servers]]\npath='127.0.0.1:{demo[name]}'\n"
        text += f"weight={weight}\n"
    text += f"[server]\nlisten=['tcp:{port}:interface=127.0.0.1']\n"
    if extra:
        text += "[[server.locations]]\nlocation='^/extra/'\nupstream='demo'\n"
    text += "[[server.locations]]\nlocation='^/'\nupstream='demo'\n"
    text += "[log]\naccess_log='off'\n"
    listen = ", ".join(f"'127.0.0.1:{each}'" for each in demo.values())
    return text + f"[demo]\nlisten=[{listen}]\n"


class Load:
    """
    Clients each sending GETs on one kept connection until stopped,
    counting what answered them (a new connection after a close).
    """

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def take(self) -> Counter[str]:
        with self.lock:
            answers, self.answers = self.answers, Counter()
        return answers

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for _ in range(MAX_REQUESTS):
            if self.stop.is_set():
                break
            try:
                connection.request("GET", "/hello")
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.failures[type(error).__name__] += 1
                connection.close()
                continue
            with self.lock:
                if response.status == 200:
                    self.answers[json.loads(body)["server"]] += 1
                else:
                    self.failures[str(response.status)] += 1
        connection.close()


def figures(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    (rss,) = [line.split()[1] for line in status if line.startswith("VmRSS:")]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return f"RSS {int(rss) / 1024:6.1f} MiB, {fds} open fds"


def reload(server: Server, logged: Path, count: int) -> None:
    os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_SECONDS
    while logged.read_text().count("gourmet reloaded") < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"reload {count} did not happen: see {logged}")
        time.sleep(0.01)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds-between", type=float, default=0.2)
    options = parser.parse_args(argv)
    port = free_port()
    demo = {name: free_port() for name in "abc"}
    files = [
        config(port, demo, {"a": 1, "b": 1}, extra=False),
        config(port, demo, {"a": 3, "c": 1}, extra=True),
    ]
    splits: List[Counter[str]] = [Counter(), Counter()]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        path = workdir / "gourmet.toml"
        path.write_text(files[0])
        twistd = str(Path(sys.executable).with_name("twistd"))
        command = [twistd, "-n", "--pidfile=", "gourmet", "--config", str(path)]
        logged = workdir / "gourmet.log"
        server = start(stack, Server("gourmet", command, port, logged))
        with Load(port, options.clients) as load:
            time.sleep(1.0)
            log(f"before the reloads: {figures(server.pid)}")
            for number in range(1, options.reloads + 1):
                splits[(number - 1) % 2] += load.take()
                path.write_text(files[number % 2])
                reload(server, logged, number)
                # Answered while the reload was under way: either file's.
                load.take()
                time.sleep(options.seconds_between)
                if number % 25 == 0:
                    log(f"after {number} reloads: {figures(server.pid)}")
        splits[options.reloads % 2] += load.take()
        for index, split in enumerate(splits):
            names = {f"demo 127.0.0.1:{port}": name for name, port in demo.items()}
            shown = ", ".join(
                f"{names.get(k, k)} {v:,}" for k, v in sorted(split.items())
            )
            log(f"file {index + 1}'s requests went to: {shown}")
        failed = sum(load.failures.values())
        log(f"failed requests: {failed} {dict(load.failures) or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
