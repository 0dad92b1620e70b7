"""
One slow server: three upstreams, two answering in 2 ms and one in 20 ms,
behind Gourmet with ``round_robin``, ``least_conn`` and ``p2c_ewma``, and
behind nginx with ``least_conn`` as the anchor; a fixed number of clients
on kept-alive connections, and for each proxy its requests per second, p50,
p99 and the slow server's share.

    .venv/bin/python -m benchmarks.slow_server --quick

The upstreams are ``tests/delayed_upstream.py`` processes; the delays come
with each request (``/?a=0.002&b=0.002&slow=0.020``).  The load is an
asyncio client in this process that reads which server answered from the
``X-Upstream`` header.  Results go to ``benchmarks/results/`` and, with
matplotlib, a chart to ``docs/slow-server.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks import chart, compare
from benchmarks.nginx import Nginx, proxy_config
from benchmarks.processes import REPO, Server, work_directory
from benchmarks.slow_client import free_port

#: The upstreams' names and how long each takes to answer, in seconds.
DELAYS = {"a": 0.002, "b": 0.002, "slow": 0.020}
PATH = "/?" + "&".join(f"{name}={delay}" for name, delay in DELAYS.items())
#: What is compared: name shown, and Gourmet's balancer (None: nginx).
TARGETS: Dict[str, Optional[str]] = {
    "nginx least_conn": None,
    "Gourmet round_robin": "round_robin",
    "Gourmet least_conn": "least_conn",
    "Gourmet p2c_ewma": "p2c_ewma",
}
CHART = REPO / "docs" / "slow-server.png"
RESULTS = REPO / "benchmarks" / "results"


def gourmet_config(
    port: int, admin_port: int, upstreams: List[int], balancer: str
) -> str:
    servers = "".join(
        f"[[upstreams.bench.servers]]\npath = '127.0.0.1:{p}'\n" for p in upstreams
    )
    return (
        f"[upstreams.bench]\nbalancer = '{balancer}'\nkeepalive = 32\n"
        + servers
        + f"[server]\nlisten = ['tcp:{port}:interface=127.0.0.1']\n"
        + "[[server.locations]]\nlocation = '^/'\nupstream = 'bench'\n"
        + f"[admin]\nlisten = 'tcp:{admin_port}:interface=127.0.0.1'\n"
    )


def nginx_least_conn(workdir: Path, port: int, upstreams: List[int]) -> str:
    config = proxy_config(workdir, port, upstreams, workdir / "nginx-access.log")
    return config.replace(
        "    upstream bench {\n", "    upstream bench {\n        least_conn;\n"
    )


async def _client(
    port: int, until: float, results: List[Tuple[str, float]], failures: Counter[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {PATH} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        while time.monotonic() < until:
            began = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(
                line.split(":", 1)
                for line in head.decode("latin-1").split("\r\n")[1:]
                if line
            )
            fields = {
                key.strip().lower(): value.strip() for key, value in headers.items()
            }
            await reader.readexactly(int(fields.get("content-length", "0")))
            if not head.startswith(b"HTTP/1.1 200"):
                failures[head.split(b"\r\n", 1)[0].decode("latin-1")] += 1
                continue
            results.append((fields.get("x-upstream", "?"), time.monotonic() - began))
    finally:
        writer.close()


async def _load(
    port: int, clients: int, seconds: float
) -> Tuple[List[Tuple[str, float]], Counter[str]]:
    results: List[Tuple[str, float]] = []
    failures: Counter[str] = Counter()
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(_client(port, until, results, failures) for _ in range(clients))
    )
    return results, failures


def percentile(times: List[float], fraction: float) -> float:
    ordered = sorted(times)
    return ordered[max(math.ceil(fraction * len(ordered)), 1) - 1]


def measure(port: int, clients: int, warmup: float, seconds: float) -> Dict[str, float]:
    asyncio.run(_load(port, clients, warmup))
    results, failures = asyncio.run(_load(port, clients, seconds))
    times = [elapsed for _, elapsed in results]
    fast = [elapsed for name, elapsed in results if name != "slow"]
    counts = Counter(name for name, _ in results)
    return {
        "requests_per_second": len(results) / seconds,
        "p50_ms": percentile(times, 0.5) * 1000,
        "p99_ms": percentile(times, 0.99) * 1000,
        "fast_p99_ms": percentile(fast, 0.99) * 1000,
        "slow_share": counts["slow"] / max(len(results), 1),
        "requests": len(results),
        "failures": sum(failures.values()),
    }


def draw(path: Path, figures: Dict[str, Dict[str, float]], title: str) -> Optional[str]:
    pyplot = chart._pyplot()
    if pyplot is None:
        return "matplotlib is not installed: no chart"
    names = list(figures)
    figure, axes = pyplot.subplots(1, 3, figsize=(13, 5))
    panels = (
        ("p50_ms", "p50 (ms)"),
        ("p99_ms", "p99 (ms)"),
        ("slow_share", "share of the slow server"),
    )
    for axis, (key, label) in zip(axes, panels):
        values = [figures[name][key] for name in names]
        bars = axis.barh(
            names,
            values,
            color=[
                "#888888" if name.startswith("nginx") else "#4c72b0" for name in names
            ],
        )
        axis.invert_yaxis()
        axis.set_title(label)
        for bar, value in zip(bars, values):
            text = f"{value:.1%}" if key == "slow_share" else f"{value:.1f}"
            axis.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                " " + text,
                va="center",
            )
        axis.margins(x=0.25)
    for axis in axes[1:]:
        axis.set_yticklabels([])
    chart.save(pyplot, figure, path, title)
    return None


def line(key: str, result: Dict[str, float]) -> str:
    return (
        f"{key:32} {result['requests_per_second']:7.0f} req/s"
        f"  p50 {result['p50_ms']:5.1f} ms  p99 {result['p99_ms']:5.1f} ms"
        f"  (fast servers' p99 {result['fast_p99_ms']:5.1f} ms)"
        f"  slow share {result['slow_share']:6.1%}"
        f"  failures {result['failures']:.0f}"
    )


def table(figures: Dict[str, Dict[str, float]]) -> str:
    """
    The figures of :func:`phase`, a line per proxy and client count.
    """
    heading = "One slow server (2, 2 and 20 ms upstreams; p2c_ewma's scenario):"
    return "\n".join([heading, *(line(key, f) for key, f in figures.items())])


def _upstreams(stack: contextlib.ExitStack, workdir: Path) -> List[int]:
    ports = []
    for name in DELAYS:
        port = free_port()
        command = [sys.executable, "-m", "tests.delayed_upstream", str(port), name]
        compare.start(
            stack, Server(name, command, port, workdir / f"upstream-{name}.out")
        )
        ports.append(port)
    return ports


def _proxy(
    workdir: Path, target: str, balancer: Optional[str], upstreams: List[int]
) -> Server:
    port = free_port()
    if balancer is None:
        config = nginx_least_conn(workdir, port, upstreams)
        return Nginx("nginx-proxy", workdir, config, port, None)
    path = workdir / f"gourmet-{balancer}.toml"
    path.write_text(gourmet_config(port, free_port(), upstreams, balancer))
    twistd = Path(sys.executable).with_name("twistd")
    command = [str(twistd), "-n", "--pidfile=", "gourmet", "--config", str(path)]
    return Server(target, command, port, workdir / f"gourmet-{balancer}.out")


def phase(
    workdir: Path, counts: List[int], warmup: float, seconds: float
) -> Dict[str, Dict[str, float]]:
    """
    The upstreams started, then each proxy in turn in front of them under
    each count of clients: the figures by "proxy, N clients".
    """
    figures: Dict[str, Dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        upstreams = _upstreams(stack, workdir)
        for target, balancer in TARGETS.items():
            with contextlib.ExitStack() as proxy:
                port = compare.start(
                    proxy, _proxy(workdir, target, balancer, upstreams)
                ).port
                for clients in counts:
                    key = f"{target}, {clients} clients"
                    figures[key] = measure(port, clients, warmup, seconds)
                    compare.log(line(key, figures[key]))
    return figures


def chart_title(counts: List[int], seconds: float, stamp: str) -> str:
    return (
        f"One slow server: 2, 2 and 20 ms upstreams, "
        f"{','.join(map(str, counts))} clients, {seconds:.0f} s each "
        f"({stamp} UTC, loopback; nginx in grey)"
    )


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per proxy")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--clients", default="2,8", help="comma-separated: concurrent clients"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    warmup = 1.0 if args.quick else 3.0
    counts = [int(count) for count in args.clients.split(",")]
    with work_directory("gourmet-slow-server-", args.keep) as workdir:
        workdir.chmod(0o755)
        figures = phase(workdir, counts, warmup, seconds)
    stamp = time.strftime("%Y-%m-%d-%H%M%S", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{stamp}-slow-server.json"
    settings = {
        "seconds": seconds,
        "warmup": warmup,
        "clients": counts,
        "delays": DELAYS,
    }
    out.write_text(
        json.dumps({"settings": settings, "figures": figures}, indent=2) + "\n"
    )
    compare.log(f"results: {out.relative_to(REPO)}")
    why = draw(CHART, figures, chart_title(counts, seconds, stamp))
    compare.log(why or f"chart: {CHART.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
