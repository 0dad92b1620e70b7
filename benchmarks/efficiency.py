"""
What a request costs each proxy, how evenly it serves its connections, and
what an idle connection holds: nginx (one worker) and Gourmet on CPython
and PyPy in one run, optionally beside Gourmet at an earlier commit.

On a 2-core machine, requests per second are capped by wrk and the upstream
sharing the cores, which hides the proxy's own cost; so for each ``wrk`` run
this reads the proxy's user and system time from ``/proc`` before and after
and divides it by the requests served (nginx: its worker's).  Each load is
run at 32, 256 and 1,000 keep-alive connections, giving the CPU time per
request and the mean, p50 and p99 latencies at each.  Then
:mod:`benchmarks.idle_clients` opens 10,000 keep-alive connections to each
proxy in turn, one request on each, and leaves them idle: the growth of the
proxy's resident memory, divided by the connections, is what one idle
connection holds.

    .venv/bin/python -m benchmarks.efficiency            # about 10 minutes
    .venv/bin/python -m benchmarks.efficiency --quick    # about 3
    .venv/bin/python -m benchmarks.efficiency --before 85dbc24

``--before REV`` adds Gourmet as it was at ``REV`` (``git archive`` of it
into the run's directory) on each runtime, so that a change is shown
beside what it changed, in the same run.  ``./dev bench`` runs this as one
of its phases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from attrs import asdict, evolve, frozen

from benchmarks import compare, nginx, wrk
from benchmarks.processes import (
    REPO,
    Server,
    cpu_seconds,
    pinned,
)
from benchmarks.slow_client import free_port, rss_kib
from gourmet.pypy import RECOMMENDED_NURSERY

#: Keep-alive connections of each wrk run: the issue's CPU figures are at
#: the first two, its latency figures at the last two.
CONNECTIONS = (32, 256, 1000)
#: Idle keep-alive connections whose memory is measured.
IDLE_CONNECTIONS = 10_000
#: Seconds the proxy is left to settle before and after the idle
#: connections open, before its memory is read.
SETTLE = 2.0

LABELS = {
    "nginx": "nginx 1 worker",
    "cpython": "Gourmet CPython",
    "pypy": "Gourmet PyPy",
    "cpython-before": "CPython before",
    "pypy-before": "PyPy before",
}


@frozen
class Settings:
    rounds: int = 3
    duration: int = 10
    #: Seconds of load before measuring, at each number of connections.
    warmup: int = 10
    idle_connections: int = IDLE_CONNECTIONS
    #: Each wrk run's keep-alive connections: CPU figures are shown for the
    #: first two, latencies for the last two.
    connections: Tuple[int, ...] = CONNECTIONS
    pin: bool = True
    #: A git revision of Gourmet to measure beside the checkout.
    before: Optional[str] = None


QUICK = {"rounds": 1, "duration": 3, "warmup": 3}


@frozen
class LoadRun:
    """
    One wrk run and the CPU time its target spent during it.
    """

    connections: int
    requests: int
    seconds: float
    cpu_seconds: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1e6

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    def as_json(self) -> Dict[str, Any]:
        return {
            **asdict(self),
            "cpu_us_per_request": self.cpu_us_per_request,
            "requests_per_second": self.requests_per_second,
        }


@frozen
class IdleRun:
    """
    The proxy's resident memory before and after ``answered`` idle
    keep-alive connections opened (``failed`` could not).
    """

    answered: int
    failed: int
    errors: Dict[str, int]
    rss_before_kib: int
    rss_after_kib: int
    seconds: float

    @property
    def kib_per_connection(self) -> Optional[float]:
        if not self.answered:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.answered

    def as_json(self) -> Dict[str, Any]:
        return {**asdict(self), "kib_per_connection": self.kib_per_connection}


# --- The servers ----------------------------------------------------------------


def nginx_config(workdir: Path, port: int, upstream_ports: Sequence[int]) -> str:
    """
    nginx as :func:`benchmarks.nginx.proxy_config` sets it up (one worker,
    its access log), with room for the idle connections.
    """
    config = nginx.proxy_config(
        workdir,
        port,
        upstream_ports,
        workdir / "nginx-efficiency-access.log",
        name="nginx-efficiency",
    )
    room = IDLE_CONNECTIONS + 2048
    config = nginx.replaced(
        config, "worker_connections 4096;", f"worker_connections {room};"
    )
    return nginx.replaced(
        config, "worker_rlimit_nofile 8192;", f"worker_rlimit_nofile {room + 1024};"
    )


def unpack(revision: str, workdir: Path) -> Path:
    """
    Gourmet's tree at ``revision``, written under ``workdir``.
    """
    where = workdir / f"gourmet-{revision}"
    where.mkdir()
    archive = subprocess.run(
        ["git", "archive", revision],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    subprocess.run(
        ["tar", "-x", "-C", str(where)], input=archive, timeout=120, check=True
    )
    return where


def gourmet_server(
    name: str,
    twistd: Path,
    source: Path,
    workdir: Path,
    port: int,
    upstream_ports: List[int],
    cpu: Optional[int],
) -> Server:
    """
    Gourmet from the tree at ``source`` (first on its PYTHONPATH), as
    ``./dev bench`` runs it, with room for the idle connections.
    """
    config = workdir / f"efficiency-{name}.toml"
    config.write_text(
        compare.gourmet_config(
            port,
            free_port(),
            upstream_ports,
            workdir / f"efficiency-{name}-access.log",
            max_connections=IDLE_CONNECTIONS + 1000,
        )
    )
    env = ["env", f"PYTHONPATH={source}"]
    if name.startswith("pypy"):
        env.append(f"PYPY_GC_NURSERY={RECOMMENDED_NURSERY}")
    command = [*env, str(twistd), "-n", "--pidfile=", "gourmet"]
    command += ["--config", str(config)]
    return Server(
        LABELS[name], pinned(command, cpu), port, workdir / f"efficiency-{name}.out"
    )


def servers(bench: compare.Bench, before: Optional[Path]) -> Dict[str, Server]:
    """
    The targets, not started: nginx, Gourmet on each runtime and, with
    ``before``, Gourmet from that tree on each runtime.
    """
    workdir = bench.workdir
    port = free_port()
    found: Dict[str, Server] = {
        "nginx": nginx.Nginx(
            "nginx-efficiency",
            workdir,
            nginx_config(workdir, port, bench.upstream_ports),
            port,
            bench.proxy_cpu,
        )
    }
    sources = [("", REPO)] + ([("-before", before)] if before else [])
    for suffix, source in sources:
        for runtime, twistd in bench.twistd.items():
            name = runtime + suffix
            found[name] = gourmet_server(
                name,
                twistd,
                source,
                workdir,
                free_port(),
                bench.upstream_ports,
                bench.proxy_cpu,
            )
    return found


# --- Measuring ------------------------------------------------------------------


def load_run(server: Server, load: wrk.Load) -> LoadRun:
    pid = server.rss_pid
    before = sum(cpu_seconds(pid))
    result = wrk.run(load, f"http://127.0.0.1:{server.port}{nginx.SMALL_PATH}")
    spent = sum(cpu_seconds(pid)) - before
    return LoadRun(
        connections=load.connections,
        requests=result.requests,
        seconds=result.seconds,
        cpu_seconds=spent,
        mean_ms=result.mean_ms or 0.0,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms or 0.0,
        errors=result.status_errors + result.socket_errors,
    )


def describe(run: LoadRun) -> str:
    text = (
        f"{run.requests_per_second:8,.0f} req/s {run.cpu_us_per_request:7.1f} us "
        f"CPU/req  mean {run.mean_ms:6.2f} p50 {run.p50_ms:6.2f} p99 "
        f"{run.p99_ms:7.2f} max {run.max_ms:7.1f} ms"
    )
    return text + (f"  ERRORS {run.errors}" if run.errors else "")


Runs = Dict[str, Dict[int, List[LoadRun]]]


def measure_loads(
    started: Dict[str, Server], settings: Settings, cpu: Optional[int], script: Path
) -> Runs:
    """
    Round after round, each number of connections, each target in turn.
    """
    runs: Runs = {name: {c: [] for c in settings.connections} for name in started}
    # At every number of connections: PyPy's JIT goes on compiling new
    # paths (connections opened and closed) for many seconds, and a trace
    # being compiled stalls every connection.
    for name, server in started.items():
        compare.log(f"  warm-up {LABELS[name]}")
        for connections in settings.connections:
            load_run(server, wrk.Load(connections, settings.warmup, cpu, script))
    for number in range(1, settings.rounds + 1):
        for connections in settings.connections:
            load = wrk.Load(connections, settings.duration, cpu, script)
            for name, server in started.items():
                run = load_run(server, load)
                runs[name][connections].append(run)
                label = f"{LABELS[name]}, {connections} conns"
                compare.log(
                    f"  round {number}/{settings.rounds} {label:<28} {describe(run)}"
                )
    return runs


def idle_run(server: Server, count: int, cpu: Optional[int]) -> IdleRun:
    """
    ``count`` idle keep-alive connections to ``server`` from a client
    process of their own, and the memory they took.
    """
    pid = server.rss_pid
    time.sleep(SETTLE)
    before = rss_kib(pid)
    command = [sys.executable, "-m", "benchmarks.idle_clients"]
    command += [str(server.port), str(count)]
    with subprocess.Popen(
        pinned(command, cpu),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    ) as client:
        assert client.stdin is not None and client.stdout is not None
        try:
            line = client.stdout.readline()
            counts = json.loads(line) if line else {}
            time.sleep(SETTLE)
            after = rss_kib(pid)
        finally:
            client.stdin.close()
            client.wait(timeout=60)
    return IdleRun(
        answered=int(counts.get("answered", 0)),
        failed=int(counts.get("failed", 0)),
        errors=dict(counts.get("errors", {"no report": 1})),
        rss_before_kib=before,
        rss_after_kib=after,
        seconds=float(counts.get("seconds", 0.0)),
    )


def medians_of(
    runs: Runs, idle: Dict[str, IdleRun], cpu_at: Sequence[int]
) -> Dict[str, Dict[str, Any]]:
    medians: Dict[str, Dict[str, Any]] = {}
    for name, by_connections in runs.items():
        row: Dict[str, Any] = {}
        for connections, done in by_connections.items():
            if not done:
                continue
            for key in ("cpu_us_per_request", "mean_ms", "p50_ms", "p99_ms"):
                row[f"{key}_{connections}"] = statistics.median(
                    getattr(r, key) for r in done
                )
            row[f"rps_{connections}"] = statistics.median(
                r.requests_per_second for r in done
            )
            row[f"p99_over_mean_{connections}"] = statistics.median(
                r.p99_ms / r.mean_ms if r.mean_ms else 0.0 for r in done
            )
        if name in idle:
            row["idle_kib_per_connection"] = idle[name].kib_per_connection
        medians[name] = row
    for row in medians.values():
        for connections in cpu_at:
            mine = row.get(f"cpu_us_per_request_{connections}")
            nginx_cpu = medians.get("nginx", {}).get(
                f"cpu_us_per_request_{connections}"
            )
            row[f"efficiency_{connections}"] = (
                nginx_cpu / mine if mine and nginx_cpu else None
            )
    return medians


# --- The targets and the table ------------------------------------------------------


@frozen
class Goal:
    text: str
    target: str
    figure: str
    at_least: bool
    threshold: float

    def value(self, medians: Dict[str, Dict[str, Any]]) -> Optional[float]:
        value = medians.get(self.target, {}).get(self.figure)
        return None if value is None else float(value)

    def met(self, medians: Dict[str, Dict[str, Any]]) -> Optional[bool]:
        value = self.value(medians)
        if value is None:
            return None
        return value >= self.threshold if self.at_least else value <= self.threshold


def goals(levels: Sequence[int] = CONNECTIONS) -> List[Goal]:
    cpu_at, latency_at = levels[:2], levels[-2:]
    found = []
    for connections in cpu_at:
        found.append(
            Goal(
                f"CPU/request at {connections}: PyPy >= 55% of nginx's efficiency",
                "pypy", f"efficiency_{connections}", True, 0.55,
            )
        )  # fmt: skip
        found.append(
            Goal(
                f"CPU/request at {connections}: CPython >= 15% of nginx's efficiency",
                "cpython", f"efficiency_{connections}", True, 0.15,
            )
        )  # fmt: skip
    for connections in latency_at:
        for runtime in ("cpython", "pypy"):
            found.append(
                Goal(
                    f"p99 at {connections}: {LABELS[runtime]} within 3x the mean",
                    runtime, f"p99_over_mean_{connections}", False, 3.0,
                )
            )  # fmt: skip
    for runtime in ("cpython", "pypy"):
        found.append(
            Goal(
                f"idle keep-alive connection: {LABELS[runtime]} <= 5 KiB",
                runtime, "idle_kib_per_connection", False, 5.0,
            )
        )  # fmt: skip
    return found


def rows(connections: Sequence[int]) -> List[Tuple[str, str, int]]:
    """
    The table's rows: figure key, label, digits.
    """
    cpu_at, latency_at = connections[:2], connections[-2:]
    return [
        *[(f"cpu_us_per_request_{c}", f"CPU us/request, {c} conns", 1) for c in cpu_at],
        *[(f"efficiency_{c}", f"  nginx's CPU / this, {c}", 2) for c in cpu_at],
        *[
            (f"{figure}_{c}", f"{label}, {c} conns", 2)
            for c in latency_at
            for figure, label in (
                ("mean_ms", "mean ms"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("p99_over_mean", "  p99 / mean"),
            )
        ],
        *[(f"rps_{c}", f"req/s, {c} conns", 0) for c in connections],
        ("idle_kib_per_connection", "idle conn KiB (RSS)", 2),
    ]


LABEL_WIDTH = 27
COLUMN_WIDTH = 16


def table(
    medians: Dict[str, Dict[str, Any]], connections: Sequence[int] = CONNECTIONS
) -> str:
    names = list(medians)
    lines = [
        "Efficiency".ljust(LABEL_WIDTH)
        + "".join(LABELS[n].rjust(COLUMN_WIDTH) for n in names)
    ]
    for key, label, digits in rows(connections):
        cells = []
        for name in names:
            value = medians[name].get(key)
            cells.append("-" if value is None else f"{value:,.{digits}f}")
        lines.append(
            label.ljust(LABEL_WIDTH) + "".join(c.rjust(COLUMN_WIDTH) for c in cells)
        )
    return "\n".join(lines)


def goals_text(
    medians: Dict[str, Dict[str, Any]], connections: Sequence[int] = CONNECTIONS
) -> str:
    lines = ["Targets (from this run's medians):"]
    for goal in goals(connections):
        met = goal.met(medians)
        value = goal.value(medians)
        shown = "-" if value is None else f"{value:.2f}"
        verdict = "not measured" if met is None else "met" if met else "NOT MET"
        lines.append(f"  {goal.text:<62} {shown:>7}  {verdict}")
    return "\n".join(lines)


# --- The phase ----------------------------------------------------------------------


def phase(bench: compare.Bench, settings: Settings) -> Tuple[Dict[str, Any], List[str]]:
    """
    The efficiency phase: its targets freshly started in front of the
    running upstream, the loads and then the idle connections measured;
    returns the figures (JSON-able) and the problems found.
    """
    problems: List[str] = []
    before = unpack(settings.before, bench.workdir) if settings.before else None
    compare.log(
        "Efficiency: wrk at "
        f"{', '.join(map(str, settings.connections))} connections, the "
        "proxy's CPU time per request from /proc; then "
        f"{settings.idle_connections:,} idle keep-alive connections to each"
        + (f"; Gourmet at {settings.before} beside the checkout" if before else "")
    )
    script = wrk.write_script(bench.workdir / "efficiency.lua")
    idle: Dict[str, IdleRun] = {}
    with contextlib.ExitStack() as stack:
        started = compare.start_proxies(stack, servers(bench, before), problems)
        runs = measure_loads(started, settings, bench.load_cpu, script)
    # Freshly started, so that what the load left (PyPy's heap grown with
    # its garbage, room a new connection takes without growing RSS) is not
    # counted; warmed with fewer connections first (PyPy's nursery touched,
    # the paths compiled), then measured.
    with contextlib.ExitStack() as stack:
        started = compare.start_proxies(stack, servers(bench, before), problems)
        for name, server in started.items():
            idle_run(server, settings.idle_connections // 5, bench.load_cpu)
            result = idle_run(server, settings.idle_connections, bench.load_cpu)
            idle[name] = result
            per = result.kib_per_connection
            compare.log(
                f"  idle {LABELS[name]:<16} {result.answered:,} connections in "
                f"{result.seconds:.1f} s, RSS {result.rss_before_kib / 1024:.1f} -> "
                f"{result.rss_after_kib / 1024:.1f} MiB: "
                + ("-" if per is None else f"{per:.2f} KiB each")
            )
            if result.failed:
                problems.append(
                    f"{LABELS[name]}: {result.failed} idle connections failed: "
                    f"{result.errors}"
                )
    for name, by_connections in runs.items():
        errors = sum(r.errors for rs in by_connections.values() for r in rs)
        if errors:
            problems.append(f"{LABELS[name]}: {errors} wrk errors")
    medians = medians_of(runs, idle, settings.connections[:2])
    return {
        "settings": asdict(settings),
        "medians": medians,
        "targets": [
            {"target": g.text, "value": g.value(medians), "met": g.met(medians)}
            for g in goals(settings.connections)
        ],
        "runs": {
            name: {str(c): [r.as_json() for r in rs] for c, rs in by.items()}
            for name, by in runs.items()
        },
        "idle": {name: run.as_json() for name, run in idle.items()},
    }, problems


def notes(settings: Settings, bench: compare.Bench) -> str:
    return "\n".join(
        [
            f"Medians of {settings.rounds} rounds of {settings.duration} s (wrk, 1 "
            f"thread, small body of {nginx.SMALL_SIZE} B) after a "
            f"{settings.warmup} s warm-up at each number of connections.",
            "CPU us/request: the proxy's user and system time from /proc (nginx: "
            "its worker) divided by the requests served; nginx's CPU / this is "
            "the proxy's efficiency beside nginx's (1 = as efficient).",
            f"Idle: each proxy freshly started, {settings.idle_connections // 5:,} "
            f"connections opened and closed, then {settings.idle_connections:,} "
            "keep-alive connections opened from one client process, one request "
            f"answered on each, then left idle; the proxy's RSS {SETTLE:g} s "
            "after, minus its RSS before, divided by the connections.",
            compare.placement(bench) + ".",
        ]
    )


def measure(
    bench: compare.Bench, settings: Settings, out: Optional[Path], problems: List[str]
) -> None:
    began, date, revision, busy = compare.phase_start(problems)
    with contextlib.ExitStack() as stack:
        compare.start(stack, bench.upstream())
        figures, found = phase(bench, settings)
    problems += found
    compare.log("")
    compare.log(table(figures["medians"], settings.connections))
    compare.log(goals_text(figures["medians"], settings.connections))
    compare.log(notes(settings, bench))
    record = compare.phase_record(
        bench,
        date,
        revision,
        busy,
        compare.placement(bench),
        ("efficiency", figures),
        problems,
        began,
    )
    record["machine"]["versions"]["wrk"] = wrk.version()
    path = out or REPO / "benchmarks" / "results" / (
        date.strftime("%Y-%m-%d-%H%M%S") + "-efficiency.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    compare.log(f"Saved {path}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run to try it")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=int, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, help="seconds per number of connections")
    parser.add_argument("--idle", type=int, help="idle connections (default 10,000)")
    parser.add_argument(
        "--connections",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="each wrk run's, comma-separated (default 32,256,1000)",
    )
    parser.add_argument("--before", metavar="REV", help="also Gourmet at REV")
    compare.add_run_options(parser)
    options = parser.parse_args(argv)
    chosen: Dict[str, Any] = dict(QUICK) if options.quick else {}
    for name, key in (
        ("rounds", "rounds"),
        ("duration", "duration"),
        ("warmup", "warmup"),
        ("idle", "idle_connections"),
        ("connections", "connections"),
    ):
        if getattr(options, name) is not None:
            chosen[key] = getattr(options, name)
    bench_settings = compare.run_settings(options)
    settings = evolve(
        Settings(), pin=bench_settings.pin, before=options.before, **chosen
    )
    return compare.run_alone(
        "efficiency",
        bench_settings,
        lambda bench, problems: measure(bench, settings, options.out, problems),
    )


if __name__ == "__main__":
    sys.exit(main())
