"""
Gourmet with ``[server] workers = 1`` and ``2`` beside nginx with
``worker_processes 1`` and ``2``, in one run on this machine: requests per
second, p50/p99, the CPU time each spends per request (its whole process
tree, from /proc), and how evenly the requests spread over the workers
(each worker process's share of the CPU time, and for Gourmet the
requests each sent upstream, from its console).

    .venv/bin/python -m benchmarks.workers             # CPython
    .venv/bin/python -m benchmarks.workers --pypy      # PyPy too
    .venv/bin/python -m benchmarks.workers --quick

Nothing is pinned: the proxies' workers need every core, and wrk and the
upstream nginx share them, so requests per second are capped by the
machine; the CPU time per request is the figure to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from attrs import evolve

from benchmarks import compare, nginx, pypy_env, wrk
from benchmarks.processes import REPO, Server, children, cpu_seconds, work_directory
from benchmarks.slow_client import free_port
from gourmet.pypy import RECOMMENDED_NURSERY

#: Client connections of each round.
CONNECTIONS = (32, 256)


def tree_cpu(pid: int) -> Dict[int, float]:
    """
    CPU seconds (user and system) of ``pid`` and each of its children.
    """
    times = {}
    for each in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            times[each] = sum(cpu_seconds(each))
    return times


def console(admin_port: int) -> Dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{admin_port}/api/upstreams"
    with opener.open(url, timeout=10) as response:
        document: Dict[str, Any] = json.loads(response.read())
    return document


def console_workers(admin_port: int) -> Dict[int, int]:
    """
    The requests each Gourmet worker sent upstream, from its console.
    """
    workers = console(admin_port).get("workers") or {"workers": []}
    return {each["index"]: each["requests"] for each in workers["workers"]}


def wait_for_workers(admin_port: int, count: int, within: float = 60.0) -> None:
    """
    Wait until Gourmet's ``count`` workers all serve.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            workers = console(admin_port).get("workers")
        except OSError:
            workers = None
        if count == 1 or (
            workers is not None
            and len(workers["workers"]) == count
            and all(each["ready"] for each in workers["workers"])
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"Gourmet's {count} workers did not all serve")


def nginx_proxy(
    workdir: Path, name: str, port: int, ups: Sequence[int], n: int
) -> Server:
    config = nginx.proxy_config(
        workdir, port, ups, workdir / f"{name}-access.log", name=name
    ).replace("worker_processes 1;", f"worker_processes {n};")
    return nginx.Nginx(name, workdir, config, port, None)


def gourmet(
    workdir: Path,
    name: str,
    twistd: Path,
    port: int,
    admin_port: int,
    ups: List[int],
    n: int,
    pypy: bool,
) -> Server:
    text = compare.gourmet_config(port, admin_port, ups, workdir / f"{name}-access.log")
    text = text.replace("[server]\n", f"[server]\nworkers = {n}\n", 1)
    config = workdir / f"{name}.toml"
    config.write_text(text)
    command = [str(twistd), "-n", "--pidfile=", "gourmet", "--config", str(config)]
    if pypy:
        command = ["env", f"PYPY_GC_NURSERY={RECOMMENDED_NURSERY}", *command]
    return Server(name, command, port, workdir / f"{name}.out")


def spread(shares: Sequence[float]) -> str:
    total = sum(shares)
    if len(shares) < 2 or total <= 0:
        return "-"
    return "/".join(f"{share / total * 100:.0f}" for share in shares)


def measure(
    server: Server,
    port: int,
    load: wrk.Load,
    rounds: int,
    warmup: int,
    admin_port: Optional[int],
) -> List[Dict[str, Any]]:
    url = f"http://127.0.0.1:{port}{nginx.SMALL_PATH}"
    rows = []
    for connections in CONNECTIONS:
        each = evolve(load, connections=connections)
        wrk.run(evolve(each, duration=warmup), url)
        for number in range(rounds):
            cpu_before = tree_cpu(server.pid)
            asked = console_workers(admin_port) if admin_port else {}
            result = wrk.run(each, url)
            cpu_after = tree_cpu(server.pid)
            told = console_workers(admin_port) if admin_port else {}
            used = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
            workers = [used[pid] for pid in sorted(used) if pid != server.pid]
            row = {
                "target": server.name,
                "connections": connections,
                "round": number + 1,
                "requests_per_second": result.requests_per_second,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "errors": result.status_errors + result.socket_errors,
                "cpu_us_per_request": sum(used.values())
                / max(result.requests, 1)
                * 1e6,
                "supervisor_cpu_us_per_request": used.get(server.pid, 0.0)
                / max(result.requests, 1)
                * 1e6,
                "worker_cpu_spread": spread(workers),
                "worker_request_spread": spread(
                    [told[i] - asked.get(i, 0) for i in sorted(told)]
                ),
            }
            compare.log(
                f"{row['target']:<18} c={connections:<4} {number + 1}:"
                f" {row['requests_per_second']:8.0f} req/s"
                f"  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms"
                f"  {row['cpu_us_per_request']:6.1f} us CPU/request"
                f"  workers' CPU {row['worker_cpu_spread']}%"
                f"  requests {row['worker_request_spread']}%"
                f"  errors {row['errors']}"
            )
            rows.append(row)
    return rows


def medians(rows: List[Dict[str, Any]]) -> List[Tuple[str, int, Dict[str, Any]]]:
    grouped: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["target"], row["connections"]), []).append(row)
    table = []
    for (target, connections), each in grouped.items():
        middle = sorted(each, key=lambda row: row["cpu_us_per_request"])[len(each) // 2]
        table.append(
            (
                target,
                connections,
                {
                    "requests_per_second": statistics.median(
                        row["requests_per_second"] for row in each
                    ),
                    "p99_ms": statistics.median(row["p99_ms"] for row in each),
                    "cpu_us_per_request": middle["cpu_us_per_request"],
                    "worker_cpu_spread": middle["worker_cpu_spread"],
                    "worker_request_spread": middle["worker_request_spread"],
                },
            )
        )
    return table


def measure_all(
    workdir: Path,
    ups: Sequence[int],
    runtimes: Dict[str, Path],
    load: wrk.Load,
    rounds: int,
    warmup: int,
) -> List[Dict[str, Any]]:
    """
    nginx and then Gourmet on each runtime, with 1 and then 2 workers, each
    freshly started in front of the upstream on ``ups``; every round's row.
    """
    rows: List[Dict[str, Any]] = []
    for count in (1, 2):
        port, name = free_port(), f"nginx-{count}"
        with contextlib.ExitStack() as inner:
            server = compare.start(inner, nginx_proxy(workdir, name, port, ups, count))
            rows += measure(server, port, load, rounds, warmup, None)
    for runtime, twistd in runtimes.items():
        for count in (1, 2):
            port, admin = free_port(), free_port()
            name = f"gourmet-{runtime}-{count}"
            server = gourmet(
                workdir, name, twistd, port, admin, list(ups), count, runtime == "pypy"
            )
            with contextlib.ExitStack() as inner:
                compare.start(inner, server)
                wait_for_workers(admin, count)
                rows += measure(server, port, load, rounds, warmup, admin)
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    """
    The medians of ``rows``, as a text table.
    """
    lines = [
        "Workers: medians (CPU time per request: the whole process tree)",
        f"{'target':<18} {'conns':>5} {'req/s':>8} {'p99 ms':>8}"
        f" {'us CPU/req':>10}  workers' CPU %   requests %",
    ]
    for target, connections, row in medians(rows):
        lines.append(
            f"{target:<18} {connections:>5} {row['requests_per_second']:8.0f}"
            f" {row['p99_ms']:8.2f} {row['cpu_us_per_request']:10.1f}"
            f"  {row['worker_cpu_spread']:<15} {row['worker_request_spread']}"
        )
    return "\n".join(lines)


def phase(
    bench: compare.Bench, rounds: int, duration: int, warmup: int
) -> Tuple[Dict[str, Any], List[str]]:
    """
    The workers phase of ``./dev bench``: nginx with 1 and 2 worker
    processes and Gourmet with 1 and 2 workers on each runtime, in front of
    the run's upstream; returns the figures (JSON-able) and the problems.
    """
    compare.log(
        "Workers: nginx worker_processes 1 and 2, Gourmet workers = 1 and 2,"
        f" wrk at {', '.join(map(str, CONNECTIONS))} connections, nothing pinned"
    )
    script = wrk.write_script(bench.workdir / "workers.lua")
    load = wrk.Load(CONNECTIONS[0], duration, None, script)
    rows = measure_all(
        bench.workdir, bench.upstream_ports, bench.twistd, load, rounds, warmup
    )
    problems = [
        f"workers: {row['target']} at {row['connections']} connections:"
        f" {row['errors']} wrk errors"
        for row in rows
        if row["errors"]
    ]
    table_rows = [
        {"target": target, "connections": connections, **row}
        for target, connections, row in medians(rows)
    ]
    return {"rows": rows, "medians": table_rows}, problems


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pypy", action="store_true", help="Gourmet on PyPy too")
    parser.add_argument(
        "--pypy-twistd", type=Path, help="PyPy's twistd to use (else .venv-pypy's)"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, help="save the rows as JSON here")
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    with work_directory("gourmet-workers-", args.keep_temp) as workdir:
        script = wrk.write_script(workdir / "report.lua")
        load = wrk.Load(CONNECTIONS[0], args.duration, None, script)
        runtimes = {"cpython": Path(sys.executable).with_name("twistd")}
        if args.pypy_twistd is not None:
            runtimes["pypy"] = args.pypy_twistd
        elif args.pypy:
            twistd, why = pypy_env.ensure(REPO / ".venv-pypy", REPO)
            compare.log(why)
            if twistd is not None:
                runtimes["pypy"] = twistd
        ups = [free_port(), free_port()]
        with contextlib.ExitStack() as stack:
            compare.start(stack, nginx.upstream(workdir, ups, 1024))
            rows = measure_all(workdir, ups, runtimes, load, args.rounds, args.warmup)
        compare.log("\n" + table(rows))
        if args.out is not None:
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
