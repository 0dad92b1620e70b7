"""
Gourmet beside nginx and Twisted's stock proxy: one machine, one run.

Sets up, on loopback only: Debian's nginx serving a small body and 1 MiB
on two ports (the upstream; alone, it is the limit); nginx load-balancing
in front of both (the peer); Twisted's stock ``ReverseProxyResource`` in
front of one (the Python baseline); and Gourmet under ``twistd`` on CPython
and, when Debian's ``pypy3`` is installed, on PyPy.  ``wrk`` loads each in
turn for several rounds; then a slow client downloads a large response
through every proxy at once while their memory is watched; then nginx and
Gourmet terminate TLS (a self-signed certificate made for the run) and
``h2load`` loads them in HTTP/2 and in HTTP/1.1, with the CPU time each
spends per request; last, :mod:`benchmarks.efficiency`: each proxy's CPU
time per request at 32, 256 and 1,000 connections, its latencies there,
and its memory per idle keep-alive connection; and :mod:`benchmarks.workers`:
nginx with 1 and 2 worker processes beside Gourmet with ``workers = 1``
and ``2``, and how evenly each spreads the requests.  Prints tables of medians
with ratios to nginx and to stock Twisted, and saves them as JSON and a PNG
chart.

    ./dev bench            # installs nginx, wrk, h2load, pypy3, matplotlib
    ./dev bench --quick    # two or three minutes, to try it out
    .venv/bin/python -m benchmarks.compare --help
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from attrs import asdict, evolve, frozen

import twisted
from benchmarks import (
    certificate,
    chart,
    efficiency,
    h2load,
    nginx,
    pypy_env,
    report,
    slow_download,
    slow_server,
    tcp,
    websocket,
    workers,
    wrk,
)
from benchmarks.processes import (
    REPO,
    Server,
    ServerFailed,
    can_pin,
    pinned,
    work_directory,
)
from benchmarks.slow_client import free_port, rss_kib, size
from gourmet.pypy import RECOMMENDED_NURSERY

#: With CPU pinning: the proxies on one core, the load and the upstream on
#: the other.
PROXY_CPU = 1
LOAD_CPU = 0

BODIES = {"small": nginx.SMALL_PATH, "large": nginx.LARGE_PATH}
PROXIES = ["nginx", "stock", "cpython", "pypy"]


@frozen
class Settings:
    rounds: int = 3
    duration: int = 10
    warmup: int = 3
    connections: int = 32
    #: HTTP/2 streams in flight on each connection: connections / h2_streams
    #: connections carry as many requests at once as wrk's do.
    h2_streams: int = 8
    slow_size: int = size("300M")
    slow_rate: int = size("1M")
    pin: bool = True
    pypy_venv: Optional[Path] = REPO / ".venv-pypy"
    out: Optional[Path] = None
    chart: Optional[Path] = None
    keep_temp: bool = False


QUICK = {
    "rounds": 1,
    "duration": 3,
    "warmup": 1,
    "slow_size": size("30M"),
    "slow_rate": size("4M"),
}


def log(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# --- The servers --------------------------------------------------------------


def gourmet_config(
    port: int,
    admin_port: int,
    upstream_ports: List[int],
    access_log: Path,
    tls_port: Optional[int] = None,
    tls: Optional[certificate.Tls] = None,
    max_connections: Optional[int] = None,
) -> str:
    """
    Gourmet as users run it: an access log to a file, the admin console
    (and its metrics) on loopback, passive health on, keep-alive upstreams;
    with ``tls``, HTTPS (and HTTP/2, on by default) on ``tls_port`` too;
    ``max_connections`` as ``[server] max_connections`` (None: the default).
    """
    servers = "".join(
        f"[[upstreams.bench.servers]]\npath = '127.0.0.1:{p}'\n" for p in upstream_ports
    )
    https = ""
    if tls is not None:
        https = (
            f"tls_listen = ['tcp:{tls_port}:interface=127.0.0.1']\n"
            f"[[server.certificates]]\ncert = '{tls.cert}'\nkey = '{tls.key}'\n"
        )
    return (
        "[upstreams.bench]\nbalancer = 'round_robin'\nkeepalive = 32\n"
        "max_fail = 1\nfail_timeout = 10\n"
        + servers
        + f"[server]\nlisten = ['tcp:{port}:interface=127.0.0.1']\n"
        + ("" if max_connections is None else f"max_connections = {max_connections}\n")
        + https
        + "[[server.locations]]\nlocation = '^/'\nupstream = 'bench'\n"
        f"[log]\naccess_log = '{access_log}'\naccess_log_format = 'combined'\n"
        f"[admin]\nlisten = 'tcp:{admin_port}:interface=127.0.0.1'\n"
    )


class Bench:
    """
    The run's ports, files and server processes, all in ``workdir``.
    """

    def __init__(
        self, settings: Settings, workdir: Path, pypy_twistd: Optional[Path]
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.twistd = {"cpython": Path(sys.executable).with_name("twistd")}
        if pypy_twistd is not None:
            self.twistd["pypy"] = pypy_twistd
        self.upstream_ports = [free_port(), free_port()]
        self.ports = {name: free_port() for name in PROXIES}
        self.admin_ports = {name: free_port() for name in self.twistd}
        self.tls_ports = {name: free_port() for name in ("nginx", *self.twistd)}
        self.proxy_cpu = PROXY_CPU if settings.pin else None
        self.load_cpu = LOAD_CPU if settings.pin else None

    def access_log(self, name: str) -> Path:
        return self.workdir / f"{name}-access.log"

    def upstream(self) -> Server:
        return nginx.upstream(
            self.workdir, self.upstream_ports, self.settings.slow_size, self.load_cpu
        )

    def proxies(self) -> Dict[str, Server]:
        """
        New server objects for every proxy (fresh processes each phase).
        """
        proxy = nginx.proxy_config(
            self.workdir,
            self.ports["nginx"],
            self.upstream_ports,
            self.access_log("nginx"),
        )
        servers: Dict[str, Server] = {
            "nginx": nginx.Nginx(
                "nginx-proxy", self.workdir, proxy, self.ports["nginx"], self.proxy_cpu
            ),
            "stock": self._stock(),
        }
        for runtime in self.twistd:
            servers[runtime] = self._gourmet(runtime)
        return servers

    def https_proxies(self, tls: certificate.Tls) -> Dict[str, Server]:
        """
        New server objects for the proxies that terminate TLS, with ``tls``.
        """
        port = self.tls_ports["nginx"]
        config = nginx.proxy_config(
            self.workdir,
            port,
            self.upstream_ports,
            self.access_log("nginx-tls"),
            tls,
            name="nginx-tls",
        )
        servers: Dict[str, Server] = {
            "nginx": nginx.Nginx(
                "nginx-tls", self.workdir, config, port, self.proxy_cpu
            )
        }
        for runtime in self.twistd:
            servers[runtime] = self._gourmet(runtime, tls)
        return servers

    def _stock(self) -> Server:
        port = self.ports["stock"]
        command = [sys.executable, "-m", "benchmarks.stock_twisted", str(port)]
        command += [str(self.upstream_ports[0]), str(self.access_log("stock"))]
        return Server(
            "stock Twisted",
            pinned(command, self.proxy_cpu),
            port,
            self.workdir / "stock.out",
        )

    def _gourmet(self, runtime: str, tls: Optional[certificate.Tls] = None) -> Server:
        # With TLS: the same plain port, and ready once the TLS one listens.
        name = runtime + ("-tls" if tls else "")
        port = self.tls_ports[runtime] if tls else self.ports[runtime]
        config = self.workdir / f"gourmet-{name}.toml"
        config.write_text(
            gourmet_config(
                self.ports[runtime],
                self.admin_ports[runtime],
                self.upstream_ports,
                self.access_log(name),
                self.tls_ports[runtime],
                tls,
            )
        )
        command = [str(self.twistd[runtime]), "-n", "--pidfile=", "gourmet"]
        command += ["--config", str(config)]
        if runtime == "pypy":
            # As the README says to run Gourmet on PyPy.
            command = ["env", f"PYPY_GC_NURSERY={RECOMMENDED_NURSERY}", *command]
        return Server(
            report.TARGETS[runtime],
            pinned(command, self.proxy_cpu),
            port,
            self.workdir / f"gourmet-{name}.out",
        )


def start(stack: contextlib.ExitStack, server: Server) -> Server:
    # Registered first: a server that started but never listened is stopped.
    stack.callback(server.stop)
    server.start()
    return server


def start_proxies(
    stack: contextlib.ExitStack, servers: Dict[str, Server], problems: List[str]
) -> Dict[str, Server]:
    """
    Every proxy started; Gourmet on PyPy is left out, with a problem noted,
    if it does not start.
    """
    started = {}
    for name, server in servers.items():
        try:
            started[name] = start(stack, server)
        except ServerFailed as error:
            if name != "pypy":
                raise
            problems.append(f"Gourmet on PyPy left out: {error}")
            log(problems[-1])
    return started


# --- Checks -------------------------------------------------------------------


def fetch(url: str) -> bytes:
    # No proxy from the environment: everything stays on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def check_bodies(ports: Dict[str, int]) -> None:
    """
    Every target answers both bodies in full before anything is measured.
    """
    sizes = {"small": nginx.SMALL_SIZE, "large": nginx.LARGE_SIZE}
    for name, port in ports.items():
        for body, path in BODIES.items():
            got = len(fetch(f"http://127.0.0.1:{port}{path}"))
            if got != sizes[body]:
                raise RuntimeError(
                    f"{report.TARGETS[name]}: {path} gave {got} bytes, "
                    f"not {sizes[body]}"
                )


STATUS = re.compile(rb'\] "[^"]*" (\d{3}) ')


def non_2xx(access_log: Path) -> Dict[str, int]:
    """
    The statuses other than 2xx in a combined-format access log and the
    files it was rotated to (stock Twisted's), counted.
    """
    counts: Dict[str, int] = {}
    for path in sorted(access_log.parent.glob(access_log.name + "*")):
        with path.open("rb") as lines:
            for line in lines:
                match = STATUS.search(line)
                status = match.group(1).decode() if match else "unparsed"
                if not status.startswith("2"):
                    counts[status] = counts.get(status, 0) + 1
    return counts


def unexpected(counts: Dict[str, int]) -> Dict[str, int]:
    """
    Leaves out 499 (the client went away): wrk stops each run with up to
    one request in flight on each connection.
    """
    return {status: n for status, n in counts.items() if status != "499"}


def check_metrics(admin_port: int) -> str:
    try:
        body = fetch(f"http://127.0.0.1:{admin_port}/metrics")
    except OSError as error:
        return f"failed: {error}"
    return f"answered {len(body)} bytes"


def http2_metrics(admin_port: int) -> List[str]:
    """
    Gourmet's HTTP/2 lines from ``/metrics``: its connections, and those
    it closed for their client's doing, by reason.
    """
    try:
        body = fetch(f"http://127.0.0.1:{admin_port}/metrics").decode()
    except OSError as error:
        return [f"failed: {error}"]
    return [
        line for line in body.splitlines() if line.startswith("gourmet_client_http2")
    ]


# --- Load ---------------------------------------------------------------------

Rounds = Dict[str, Dict[str, List[wrk.WrkResult]]]


def describe(result: wrk.WrkResult) -> str:
    text = (
        f"{result.requests_per_second:9,.0f} req/s {result.megabytes_per_second:8,.1f}"
        f" MB/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
    )
    if result.status_errors or result.socket_errors:
        text += f"  ERRORS non-2xx {result.status_errors} socket {result.socket_errors}"
    return text


def warm_up(ports: Dict[str, int], load: wrk.Load) -> None:
    for name, port in ports.items():
        for body, path in BODIES.items():
            log(f"  warm-up {report.TARGETS[name]}, {body} body")
            wrk.run(load, f"http://127.0.0.1:{port}{path}")


def measure_rounds(ports: Dict[str, int], load: wrk.Load, rounds: int) -> Rounds:
    """
    Round after round, each target in turn, so that drift in the machine
    touches them all alike.
    """
    results: Rounds = {name: {body: [] for body in BODIES} for name in ports}
    for number in range(1, rounds + 1):
        for body, path in BODIES.items():
            for name, port in ports.items():
                result = wrk.run(load, f"http://127.0.0.1:{port}{path}")
                results[name][body].append(result)
                label = f"{report.TARGETS[name]}, {body}"
                log(f"  round {number}/{rounds} {label:<24} {describe(result)}")
    return results


def error_counts(results: Rounds) -> Dict[str, str]:
    counts = {}
    for name, bodies in results.items():
        runs = [r for body in bodies.values() for r in body]
        statuses = sum(r.status_errors for r in runs)
        sockets = sum(r.socket_errors for r in runs)
        counts[name] = f"{statuses}/{sockets}"
    return counts


# --- HTTPS load: HTTP/2 and HTTP/1.1 over TLS, from h2load -------------------

#: Target key to "h2_small" (protocol and body) to its runs.
HttpsRounds = Dict[str, Dict[str, List[h2load.H2loadResult]]]


def https_loads(bench: Bench) -> Dict[str, h2load.Load]:
    """
    By protocol: HTTP/2 with ``h2_streams`` streams on each of fewer
    connections, and HTTP/1.1 with one request at a time on each of
    ``connections``, as wrk's; as many requests in flight either way.
    """
    settings = bench.settings
    requests_log = bench.workdir / "h2load-requests.log"
    return {
        "h2": h2load.Load(
            max(settings.connections // settings.h2_streams, 1),
            settings.h2_streams,
            settings.duration,
            bench.load_cpu,
            http1=False,
            log=requests_log,
        ),
        "h1": h2load.Load(
            settings.connections,
            1,
            settings.duration,
            bench.load_cpu,
            http1=True,
            log=requests_log,
        ),
    }


def https_url(port: int, body: str) -> str:
    return f"https://127.0.0.1:{port}{BODIES[body]}"


def describe_https(result: h2load.H2loadResult) -> str:
    text = (
        f"{result.requests_per_second:9,.0f} req/s {result.megabytes_per_second:8,.1f}"
        f" MB/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        f"  {result.cpu_us_per_request or 0:6,.0f} us CPU/req"
    )
    if result.status_errors or result.socket_errors:
        text += f"  ERRORS non-2xx {result.status_errors} socket {result.socket_errors}"
    return text


def check_https(
    ports: Dict[str, int],
    loads: Dict[str, h2load.Load],
    workdir: Path,
    problems: List[str],
) -> Dict[str, int]:
    """
    The targets that answer both bodies in full, in each protocol; the
    others are problems, left out (a new protocol's failure is a finding,
    not a reason to lose the run).
    """
    sizes = {"small": nginx.SMALL_SIZE, "large": nginx.LARGE_SIZE}
    answering = {}
    for name, port in ports.items():
        found = []
        for protocol, load in loads.items():
            for body in BODIES:
                problem = h2load.check(
                    https_url(port, body),
                    load.http1,
                    sizes[body],
                    workdir / "h2load-check.log",
                )
                if problem is not None:
                    found.append(
                        f"{report.TARGETS[name]} over HTTPS, "
                        f"{report.PROTOCOLS[protocol]} {BODIES[body]}: {problem}; "
                        "left out"
                    )
        for problem in found:
            problems.append(problem)
            log(problem)
        if not found:
            answering[name] = port
    return answering


def measure_https_rounds(
    proxies: Dict[str, Server],
    ports: Dict[str, int],
    loads: Dict[str, h2load.Load],
    rounds: int,
    problems: List[str],
) -> HttpsRounds:
    """
    Round after round, each target in turn, with the CPU time each proxy
    spent; a run h2load could not make sense of is a problem, left out.
    """
    results: HttpsRounds = {
        name: {f"{p}_{b}": [] for p in loads for b in BODIES} for name in ports
    }
    for number in range(1, rounds + 1):
        for protocol, load in loads.items():
            for body in BODIES:
                for name, port in ports.items():
                    label = f"{report.TARGETS[name]}, {protocol} {body}"
                    try:
                        result = h2load.run(
                            load, https_url(port, body), proxies[name].rss_pid
                        )
                    except h2load.H2loadFailed as error:
                        problems.append(f"{label}: {error}")
                        log(f"  round {number}/{rounds} {label}: {error}")
                        continue
                    results[name][f"{protocol}_{body}"].append(result)
                    shown = describe_https(result)
                    log(f"  round {number}/{rounds} {label:<27} {shown}")
    return results


def https_error_counts(results: HttpsRounds) -> Dict[str, str]:
    counts = {}
    for name, runs in results.items():
        cells = []
        for protocol in report.PROTOCOLS:
            done = [
                r for key, rs in runs.items() if key.startswith(protocol) for r in rs
            ]
            statuses = sum(r.status_errors for r in done)
            sockets = sum(r.socket_errors for r in done)
            cells.append(f"{protocol} {statuses}/{sockets}")
        counts[name] = " ".join(cells)
    return counts


# --- The run ------------------------------------------------------------------


def throughput_phase(
    bench: Bench, problems: List[str]
) -> Tuple[Rounds, Dict[str, Any]]:
    settings = bench.settings
    load = wrk.Load(
        settings.connections,
        settings.duration,
        bench.load_cpu,
        wrk.write_script(bench.workdir / "report.lua"),
    )
    with contextlib.ExitStack() as stack:
        proxies = start_proxies(stack, bench.proxies(), problems)
        ports = {"upstream": bench.upstream_ports[0]}
        ports.update({name: bench.ports[name] for name in proxies})
        check_bodies(ports)
        log(f"Warm-up: {settings.warmup} s per target and body")
        warm_up(ports, evolve(load, duration=settings.warmup))
        log(f"Measuring: {settings.rounds} rounds of {settings.duration} s")
        results = measure_rounds(ports, load, settings.rounds)
        checks: Dict[str, Any] = {
            f"metrics_{name}": check_metrics(bench.admin_ports[name])
            for name in proxies
            if name in bench.admin_ports
        }
    check_access_logs(bench, ("nginx", "stock", *bench.twistd), "", checks, problems)
    return results, checks


def check_access_logs(
    bench: Bench,
    names: Sequence[str],
    suffix: str,
    checks: Dict[str, Any],
    problems: List[str],
) -> None:
    """
    Each target's non-2xx statuses from its access log (``name + suffix``)
    into ``checks``, and a problem for those no client's leaving explains.
    """
    for name in names:
        path = bench.access_log(name + suffix)
        counts = non_2xx(path)
        checks[f"access_log_non_2xx_{name}{suffix}"] = counts
        if unexpected(counts):
            problems.append(
                f"{report.TARGETS[name]} logged non-2xx ({path.name}): {counts}"
            )


def slow_phase(bench: Bench, problems: List[str]) -> Dict[str, Any]:
    settings = bench.settings
    log(
        f"Slow client: {settings.slow_size / 2**20:.0f} MiB at "
        f"{settings.slow_rate / 2**20:.2f} MiB/s through every proxy at once, "
        "each freshly started"
    )
    with contextlib.ExitStack() as stack:
        proxies = start_proxies(stack, bench.proxies(), problems)
        results = slow_download.measure(
            {name: server.rss_pid for name, server in proxies.items()},
            {name: bench.ports[name] for name in proxies},
            nginx.SLOW_PATH,
            settings.slow_size,
            settings.slow_rate,
        )
    for name, result in results.items():
        label = report.TARGETS[name]
        peak = "-" if result.peak_kib is None else f"{result.peak_kib / 1024:.1f}"
        log(
            f"  {label:<16} peak RSS {peak:>7} MiB "
            f"(start {result.start_kib / 1024:.1f}) in {result.seconds:.0f} s"
        )
        if result.error is not None:
            problems.append(f"slow client through {label}: {result.error}")
            log(f"  {problems[-1]}")
    return {name: asdict(result) for name, result in results.items()}


def https_phase(
    bench: Bench, problems: List[str]
) -> Tuple[HttpsRounds, Dict[str, Any]]:
    settings = bench.settings
    loads = https_loads(bench)
    h2, h1 = loads["h2"], loads["h1"]
    log(
        f"HTTPS: h2load, HTTP/2 on {h2.clients} connections x {h2.streams} "
        f"streams, HTTP/1.1 on {h1.clients} connections; nginx and Gourmet "
        "freshly started with a self-signed certificate"
    )
    tls = certificate.write(bench.workdir)
    with contextlib.ExitStack() as stack:
        proxies = start_proxies(stack, bench.https_proxies(tls), problems)
        ports = check_https(
            {name: bench.tls_ports[name] for name in proxies},
            loads,
            bench.workdir,
            problems,
        )
        log(f"Warm-up: {settings.warmup} s per target, protocol and body")
        for name, port in ports.items():
            for protocol, load in loads.items():
                for body in BODIES:
                    log(f"  warm-up {report.TARGETS[name]}, {protocol} {body}")
                    with contextlib.suppress(h2load.H2loadFailed):
                        h2load.run(
                            evolve(load, duration=settings.warmup),
                            https_url(port, body),
                        )
        log(f"Measuring: {settings.rounds} rounds of {settings.duration} s")
        results = measure_https_rounds(proxies, ports, loads, settings.rounds, problems)
        checks: Dict[str, Any] = {
            f"metrics_http2_{name}": http2_metrics(bench.admin_ports[name])
            for name in proxies
            if name in bench.admin_ports
        }
    check_access_logs(bench, list(proxies), "-tls", checks, problems)
    return results, checks


#: Clients at once in the one-slow-server scenario: few, where p2c_ewma's
#: latency dominates its score, and more, where requests in flight do.
SLOW_SERVER_CLIENTS = [2, 8]


def slow_server_phase(bench: Bench) -> Dict[str, Dict[str, float]]:
    """
    One slow server (:mod:`benchmarks.slow_server`): nginx's least_conn and
    Gourmet's round_robin, least_conn and p2c_ewma in front of two 2 ms
    upstreams and a 20 ms one.
    """
    settings = bench.settings
    workdir = bench.workdir / "slow-server"
    workdir.mkdir(exist_ok=True)
    workdir.chmod(0o755)
    log(
        "One slow server: 2, 2 and 20 ms upstreams; nginx least_conn and Gourmet "
        f"round_robin, least_conn and p2c_ewma at {SLOW_SERVER_CLIENTS} clients"
    )
    return slow_server.phase(
        workdir, SLOW_SERVER_CLIENTS, settings.warmup, settings.duration
    )


def tcp_phase(bench: Bench, problems: List[str]) -> Dict[str, Any]:
    """
    The TCP row (:mod:`benchmarks.tcp`): nginx's stream module and
    Gourmet's [[streams]] in front of the same upstream.
    """
    if not tcp.NGINX_STREAM.exists():
        problems.append(
            "TCP row skipped: no nginx stream module (apt install libnginx-mod-stream)"
        )
        return {}
    settings = bench.settings
    log(
        f"TCP: wrk through nginx's stream module and Gourmet's [[streams]], "
        f"{settings.connections} connections: 1 MiB bodies kept alive, and "
        "small ones on a connection each"
    )
    results = tcp.measure(
        bench.workdir,
        bench.upstream_ports,
        bench.twistd,
        tcp.TcpSettings(
            rounds=settings.rounds,
            duration=settings.duration,
            warmup=settings.warmup,
            connections=settings.connections,
            proxy_cpu=bench.proxy_cpu,
            load_cpu=bench.load_cpu,
        ),
        log,
        env=lambda runtime: (
            ["env", f"PYPY_GC_NURSERY={RECOMMENDED_NURSERY}"]
            if runtime == "pypy"
            else []
        ),
    )
    figures = tcp.as_json(results)
    for name, row in figures["medians"].items():
        if row["errors"]:
            problems.append(f"TCP through {name}: {row['errors']} wrk errors")
    log(tcp.table(figures["medians"]))
    return figures


#: PyPy's own floor: Twisted's web stack and reverse proxy imported, nothing
#: served; the probe says so and waits for its standard input to close.
_FLOOR_PROBE = (
    "import sys, twisted.internet.reactor, twisted.web.proxy\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()"
)


def pypy_floor_mib(twistd: Path) -> Optional[float]:
    """
    What PyPy takes with nothing but Twisted's web stack imported, with the
    settings Gourmet runs with.
    """
    environment = dict(os.environ, PYPY_GC_NURSERY=RECOMMENDED_NURSERY)
    try:
        with subprocess.Popen(
            [str(twistd.with_name("python")), "-c", _FLOOR_PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        ) as probe:
            assert probe.stdin is not None and probe.stdout is not None
            ready = probe.stdout.readline().strip() == "ready"
            floor = rss_kib(probe.pid) / 1024 if ready else None
            probe.stdin.close()
            probe.wait(timeout=60)
            return floor
    except (OSError, LookupError, subprocess.SubprocessError):
        return None


def pypy_memory(
    bench: Bench, slow: Dict[str, Any], medians: report.Medians
) -> Tuple[Optional[float], Optional[str]]:
    """
    The floor of PyPy's memory and the line that sets Gourmet's beside it.
    """
    if "pypy" not in bench.twistd or "pypy" not in slow:
        return None, None
    floor = pypy_floor_mib(bench.twistd["pypy"])
    start_mib = slow["pypy"]["start_kib"] / 1024
    return floor, report.pypy_memory_text(medians, floor, start_mib)


def medians_of(
    results: Rounds, slow: Dict[str, Any], https: HttpsRounds
) -> report.Medians:
    medians: report.Medians = {}
    for name, bodies in results.items():
        small, large = bodies["small"], bodies["large"]
        medians[name] = {
            "small_rps": statistics.median(r.requests_per_second for r in small),
            "small_p50_ms": statistics.median(r.p50_ms for r in small),
            "small_p99_ms": statistics.median(r.p99_ms for r in small),
            "large_mbps": statistics.median(r.megabytes_per_second for r in large),
            "slow_peak_mib": None,
        }
    for name, result in slow.items():
        peak = result["peak_kib"]
        medians.setdefault(name, {})["slow_peak_mib"] = (
            None if peak is None else peak / 1024
        )
    for name, runs in https.items():
        medians.setdefault(name, {}).update(https_medians(runs))
    return medians


def https_medians(
    runs: Dict[str, List[h2load.H2loadResult]],
) -> Dict[str, Optional[float]]:
    """
    One target's HTTPS medians, by figure key (None: no run measured).
    """

    def median(
        key: str, value: Callable[[h2load.H2loadResult], float]
    ) -> Optional[float]:
        values = [value(r) for r in runs.get(key, [])]
        return statistics.median(values) if values else None

    def cpu(result: h2load.H2loadResult) -> float:
        return result.cpu_us_per_request or 0.0

    figures: Dict[str, Optional[float]] = {}
    for protocol in report.PROTOCOLS:
        small, large = f"{protocol}_small", f"{protocol}_large"
        figures[f"{small}_rps"] = median(small, lambda r: r.requests_per_second)
        figures[f"{small}_p50_ms"] = median(small, lambda r: r.p50_ms)
        figures[f"{small}_p99_ms"] = median(small, lambda r: r.p99_ms)
        figures[f"{small}_cpu_us"] = median(small, cpu)
        figures[f"{large}_mbps"] = median(large, lambda r: r.megabytes_per_second)
        figures[f"{large}_cpu_us"] = median(large, cpu)
    return figures


# --- What was measured, and on what -------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def git_revision() -> str:
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def machine(bench: Bench, revision: str) -> Dict[str, Any]:
    versions = {
        "cpython": sys.version.replace("\n", " "),
        "twisted_cpython": twisted.__version__,
        "nginx": nginx.version(),
        "wrk": wrk.version(),
        "h2load": h2load.version(),
    }
    if "pypy" in bench.twistd:
        versions["pypy"] = pypy_env.version(bench.twistd["pypy"])
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions,
        "gourmet_revision": revision,
    }


def placement(bench: Bench) -> str:
    if bench.proxy_cpu is None:
        return "no CPU pinning: wrk, the upstream and the proxy share every core"
    return (
        f"taskset: each proxy on CPU {bench.proxy_cpu}; wrk (1 thread) and the "
        f"upstream nginx on CPU {bench.load_cpu}"
    )


def output_paths(settings: Settings, date: datetime) -> Tuple[Path, Path]:
    out = settings.out or REPO / "benchmarks" / "results" / (
        date.strftime("%Y-%m-%d-%H%M%S") + ".json"
    )
    return out, settings.chart or out.with_suffix(".png")


def summary(
    bench: Bench,
    medians: report.Medians,
    errors: Dict[str, str],
    https_errors: Dict[str, str],
    negotiated: str,
    problems: List[str],
    pypy_note: Optional[str] = None,
) -> str:
    settings = bench.settings
    goal_list = report.goals(settings.connections)
    cost = report.protocol_cost_text(medians)
    h2, h1 = https_loads(bench)["h2"], https_loads(bench)["h1"]
    notes = [
        report.table(medians, errors),
        "",
        report.goals_text(goal_list, medians),
        *([pypy_note] if pypy_note else []),
        "",
        report.https_table(medians, https_errors),
        *([cost] if cost else []),
        "",
        f"Medians of {settings.rounds} rounds of {settings.duration} s after a "
        f"{settings.warmup} s warm-up; wrk, {settings.connections} keep-alive "
        "connections, 1 thread.",
        f"Small body {nginx.SMALL_SIZE} B; MB/s is 10^6 bytes/s; slow client "
        f"{settings.slow_size / 2**20:.0f} MiB at {settings.slow_rate / 2**20:.2f} "
        "MiB/s, peak RSS is VmHWM (nginx: its worker).",
        "Ratios divide each figure by nginx proxy's or stock Twisted's: above 1 "
        "is better for req/s and MB/s, worse for latency and memory.",
        "Access logs on for nginx proxy (buffer=64k flush=1s), stock Twisted "
        "and Gourmet (buffered, flushed each second); stock Twisted fronts one "
        "upstream port, the others balance over both.",
        placement(bench) + ".",
        f"Gourmet on PyPy runs with PYPY_GC_NURSERY={RECOMMENDED_NURSERY}, as the "
        "README says to run it.",
        f"HTTPS: h2load, 1 thread, the same rounds; HTTP/2 (ALPN h2) on "
        f"{h2.clients} connections x {h2.streams} streams, HTTP/1.1 (ALPN "
        f"http/1.1) on {h1.clients} connections, one request at a time; "
        f"negotiated: {negotiated or '-'}, a self-signed ECDSA P-256 "
        "certificate; MB/s counts every byte h2load read.",
        "CPU us/req: the proxy's user and system time (nginx: its worker) per "
        "response, read from /proc before and after each run.",
    ]
    if problems:
        notes += ["", "Problems:"] + [f"  - {p}" for p in problems]
    return "\n".join(notes)


def save(
    bench: Bench,
    record: Dict[str, Any],
    medians: report.Medians,
    date: datetime,
) -> None:
    out, chart_path = output_paths(bench.settings, date)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(f"Saved {out}")
    labels = {k: v for k, v in report.TARGETS.items() if k in medians}
    title = (
        f"{date:%Y-%m-%d}, {record['machine']['cpu_model']}, "
        f"{record['machine']['cores']} cores: medians of "
        f"{bench.settings.rounds} x {bench.settings.duration} s, "
        f"{bench.settings.connections} connections"
    )
    why_not = chart.draw(chart_path, labels, medians, title)
    log(f"Chart not drawn: {why_not}" if why_not else f"Saved {chart_path}")
    slow_chart = chart_path.with_name(chart_path.stem + "-slow-server.png")
    slow_title = slow_server.chart_title(
        SLOW_SERVER_CLIENTS, bench.settings.duration, f"{date:%Y-%m-%d %H:%M}"
    )
    why_not = slow_server.draw(slow_chart, record["slow_server"], slow_title)
    log(f"Chart not drawn: {why_not}" if why_not else f"Saved {slow_chart}")


def cpu_times() -> Tuple[int, int]:
    """
    The machine's (idle, total) CPU time so far, in clock ticks.
    """
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def busy_before() -> float:
    """
    The share of the CPUs something else used in the second before the run.
    """
    idle, total = cpu_times()
    time.sleep(1.0)
    idle_after, total_after = cpu_times()
    return 1 - (idle_after - idle) / max(total_after - total, 1)


def busy_note(busy: float) -> Optional[str]:
    if busy < 0.1:
        return None
    return (
        f"the machine was {busy:.0%} busy before the run: other processes share "
        "the cores, so these figures are noisier than on a quiet machine"
    )


def measure(bench: Bench, problems: List[str]) -> None:
    # Each phase starts its servers afresh, from the checkout as it is then.
    began, date, revision, busy = phase_start(problems)
    log(placement(bench))
    with contextlib.ExitStack() as stack:
        start(stack, bench.upstream())
        results, checks = throughput_phase(bench, problems)
        slow = slow_phase(bench, problems)
        https, https_checks = https_phase(bench, problems)
        websocket_record, websocket_problems = websocket.phase(bench)
        tcp_figures = tcp_phase(bench, problems)
        slow_servers = slow_server_phase(bench)
        efficiency_record, efficiency_problems = efficiency.phase(
            bench, efficiency_settings(bench.settings)
        )
        workers_record, workers_problems = workers.phase(
            bench, bench.settings.rounds, bench.settings.duration, bench.settings.warmup
        )
    problems += websocket_problems + efficiency_problems + workers_problems
    checks.update(https_checks)
    if git_revision() != revision:
        problems.append(
            f"the checkout changed during the run (from {revision} to "
            f"{git_revision()}): later phases may have run other code"
        )
    medians = medians_of(results, slow, https)
    floor, pypy_note = pypy_memory(bench, slow, medians)
    errors = error_counts(results)
    for name, text in errors.items():
        if text != "0/0":
            problems.append(f"{report.TARGETS[name]}: wrk errors non-2xx/socket {text}")
    https_errors = https_error_counts(https)
    for name, text in https_errors.items():
        if text != "h2 0/0 h1 0/0":
            problems.append(
                f"{report.TARGETS[name]}: h2load errors non-2xx/socket {text}"
            )
    negotiated = ", ".join(
        sorted(
            {
                f"{r.tls} {r.cipher}"
                for b in https.values()
                for rs in b.values()
                for r in rs
            }
        )
    )
    log("")
    log(summary(bench, medians, errors, https_errors, negotiated, problems, pypy_note))
    log("\n" + websocket.table(websocket_record))
    if tcp_figures:
        log("\n" + tcp.table(tcp_figures["medians"]))
    log("\n" + slow_server.table(slow_servers))
    log("\n" + efficiency.table(efficiency_record["medians"]))
    log(efficiency.goals_text(efficiency_record["medians"]))
    log(efficiency.notes(efficiency_settings(bench.settings), bench))
    log("\n" + workers.table(workers_record["rows"]))
    elapsed = time.monotonic() - began
    log(f"\nTook {elapsed:.0f} s.")
    record = {
        "date": date.isoformat(timespec="seconds"),
        "machine": machine(bench, revision),
        "settings": asdict(bench.settings),
        "placement": placement(bench),
        "pypy_environment": {"PYPY_GC_NURSERY": RECOMMENDED_NURSERY},
        "cpu_busy_before": busy,
        "load_average_after": os.getloadavg(),
        "medians": medians,
        "ratios": ratios(medians),
        "targets": report.goals_json(report.goals(bench.settings.connections), medians),
        "rounds": {
            name: {body: [r.as_json() for r in runs] for body, runs in bodies.items()}
            for name, bodies in results.items()
        },
        "slow_client": slow,
        "https_rounds": {
            name: {key: [r.as_json() for r in rs] for key, rs in runs.items()}
            for name, runs in https.items()
        },
        "https_load": {
            protocol: {"clients": load.clients, "streams": load.streams}
            for protocol, load in https_loads(bench).items()
        },
        "https_negotiated": negotiated,
        "websocket": websocket_record,
        "pypy_floor_mib": floor,
        "tcp": tcp_figures,
        "slow_server": slow_servers,
        "efficiency": efficiency_record,
        "workers": workers_record,
        "checks": checks,
        "problems": problems,
        "elapsed_seconds": round(elapsed),
    }
    save(bench, record, medians, date)


def efficiency_settings(settings: Settings) -> efficiency.Settings:
    """
    The efficiency phase's settings: the run's rounds and durations.
    """
    return efficiency.Settings(
        rounds=settings.rounds,
        duration=settings.duration,
        # PyPy's JIT needs longer than a throughput round's warm-up.
        warmup=settings.warmup * 3,
        pin=settings.pin,
    )


def phase_start(problems: List[str]) -> Tuple[float, datetime, str, float]:
    """
    A phase run alone starts: when (monotonic, and the date), at which
    revision, and how busy the machine was (said, and noted in
    ``problems``, when it was).
    """
    began, date = time.monotonic(), datetime.now().astimezone()
    revision = git_revision()
    busy = busy_before()
    note = busy_note(busy)
    if note is not None:
        problems.append(note)
        log("Note: " + note)
    return began, date, revision, busy


def phase_record(
    bench: Bench,
    date: datetime,
    revision: str,
    busy: float,
    placement_text: str,
    phase: Tuple[str, Dict[str, Any]],
    problems: List[str],
    began: float,
) -> Dict[str, Any]:
    """
    A phase run alone has ended (at ``began`` on the monotonic clock): its
    problems and time printed, and what it saves: its ``phase`` (name,
    figures), and what it ran on.
    """
    if problems:
        log("\nProblems:\n" + "\n".join(f"  - {p}" for p in problems))
    elapsed = time.monotonic() - began
    log(f"\nTook {elapsed:.0f} s.")
    versions = {"cpython": sys.version.replace("\n", " "), "nginx": nginx.version()}
    if "pypy" in bench.twistd:
        versions["pypy"] = pypy_env.version(bench.twistd["pypy"])
    name, figures = phase
    return {
        "date": date.isoformat(timespec="seconds"),
        "machine": {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "versions": versions,
            "gourmet_revision": revision,
        },
        "placement": placement_text,
        "pypy_environment": {"PYPY_GC_NURSERY": RECOMMENDED_NURSERY},
        "cpu_busy_before": busy,
        "load_average_after": os.getloadavg(),
        name: figures,
        "problems": problems,
        "elapsed_seconds": round(elapsed),
    }


def ratios(medians: report.Medians) -> Dict[str, Dict[str, Dict[str, Any]]]:
    figures = [(f, report.REFERENCES) for f in report.FIGURES]
    figures += [(f, report.HTTPS_REFERENCES) for f in report.HTTPS_FIGURES]
    return {
        name: {
            figure.key: {
                f"vs_{reference}": report.ratio(medians, name, figure.key, reference)
                for reference in references
            }
            for figure, references in figures
            if figure.key in medians[name]
        }
        for name in medians
    }


# --- Command line -------------------------------------------------------------


def parse_settings(argv: Optional[List[str]] = None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="--quick: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    parser.add_argument("--quick", action="store_true", help="a short run to try it")
    parser.add_argument("--rounds", type=int, help=f"default {defaults.rounds}")
    parser.add_argument("--duration", type=int, help="seconds per round and body")
    parser.add_argument("--warmup", type=int, help="seconds per target and body")
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument(
        "--h2-streams",
        type=int,
        default=defaults.h2_streams,
        help="HTTP/2 streams per connection (connections / this connections)",
    )
    parser.add_argument("--slow-size", type=size, help="e.g. 300M (default)")
    parser.add_argument("--slow-rate", type=size, help="bytes/s, e.g. 1M (default)")
    add_run_options(parser)
    parser.add_argument("--chart", type=Path, help="PNG file (default: beside --out)")
    options = parser.parse_args(argv)
    chosen = dict(QUICK) if options.quick else {}
    for name in ("rounds", "duration", "warmup", "slow_size", "slow_rate"):
        if getattr(options, name) is not None:
            chosen[name] = getattr(options, name)
    return run_settings(
        options,
        connections=options.connections,
        h2_streams=options.h2_streams,
        out=options.out,
        chart=options.chart,
        **chosen,
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """
    The options every run of the benchmark takes, whole or a phase alone:
    pinning, PyPy, where the figures go, the work files.
    """
    parser.add_argument("--no-pin", action="store_true", help="no taskset")
    parser.add_argument("--no-pypy", action="store_true", help="leave PyPy out")
    parser.add_argument("--pypy-venv", type=Path, default=Settings().pypy_venv)
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--keep-temp", action="store_true", help="keep configs/logs")


def run_settings(options: argparse.Namespace, **changes: Any) -> Settings:
    """
    The run's settings from :func:`add_run_options`' options, with
    ``changes``.
    """
    return evolve(
        Settings(),
        pin=not options.no_pin and can_pin(),
        pypy_venv=None if options.no_pypy else options.pypy_venv,
        keep_temp=options.keep_temp,
        **changes,
    )


def missing_tools() -> List[str]:
    return [tool for tool in ("nginx", "wrk", "h2load") if shutil.which(tool) is None]


def pypy_twistd(settings: Settings, problems: List[str]) -> Optional[Path]:
    if settings.pypy_venv is None:
        problems.append("Gourmet on PyPy left out (--no-pypy)")
        return None
    log(f"PyPy: checking {settings.pypy_venv} (making it can take a minute)")
    twistd, note = pypy_env.ensure(settings.pypy_venv, REPO)
    if twistd is None:
        problems.append("Gourmet on PyPy left out: " + note)
    log(note if twistd else problems[-1])
    return twistd


def stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_alone(
    name: str, settings: Settings, run: Callable[[Bench, List[str]], None]
) -> int:
    """
    Run one phase alone (``run``, given the run's Bench and its problems so
    far) in a work directory of its own; an exit status.
    """
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    problems: List[str] = []
    twistd = pypy_twistd(settings, problems)
    try:
        with work_directory(f"gourmet-{name}-", settings.keep_temp) as workdir:
            run(Bench(settings, workdir, twistd), problems)
    except KeyboardInterrupt:
        log(f"{name}: interrupted; every server stopped")
        return 130
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    settings = parse_settings(argv)
    missing = missing_tools()
    if missing:
        log(f"compare: {' and '.join(missing)} not found: run ./dev bench")
        return 2
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    problems: List[str] = []
    twistd = pypy_twistd(settings, problems)
    try:
        with work_directory("gourmet-compare-", settings.keep_temp) as workdir:
            measure(Bench(settings, workdir, twistd), problems)
    except KeyboardInterrupt:
        log("compare: interrupted; every server stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
