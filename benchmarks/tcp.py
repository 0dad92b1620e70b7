"""
The TCP row: nginx's ``stream`` module and Gourmet's ``[[streams]]``, each
balancing TCP connections over the same two nginx HTTP servers, loaded by
``wrk`` through the L4 proxy (which sees only bytes):

- **bulk**: 1 MiB bodies on keep-alive connections: MB/s through the
  proxy, and the proxy's CPU seconds per GB moved;
- **short**: a small body, one request per connection (``Connection:
  close``): connections per second, and the proxy's CPU microseconds per
  connection (accept, balance, connect, splice, two closes, a log line).

The proxy's CPU time is read from ``/proc`` before and after each round
(nginx: its worker's), the steadier figure on a shared machine.  Run alone
with ``.venv/bin/python -m benchmarks.tcp`` (``--quick`` for a few
seconds), or as a phase of ``./dev bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from attrs import asdict, frozen

from benchmarks import nginx, wrk
from benchmarks.processes import Server, cpu_seconds, pinned, work_directory
from benchmarks.slow_client import free_port

NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

#: The loads, by name: the body path and the extra wrk header.
LOADS = {
    "bulk": (nginx.LARGE_PATH, None),
    "short": (nginx.SMALL_PATH, "Connection: close"),
}


@frozen
class TcpSettings:
    rounds: int = 3
    duration: int = 10
    warmup: int = 2
    connections: int = 32
    proxy_cpu: Optional[int] = None
    load_cpu: Optional[int] = None


@frozen
class TcpRound:
    """
    One round of one load through one proxy.
    """

    requests: int
    seconds: float
    bytes: int
    cpu_seconds: float
    socket_errors: int
    status_errors: int

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6

    @property
    def connections_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_seconds_per_gb(self) -> float:
        return self.cpu_seconds / max(self.bytes / 1e9, 1e-9)

    @property
    def cpu_us_per_connection(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1e6


def stream_config(workdir: Path, port: int, upstream_ports: Sequence[int]) -> str:
    """
    nginx as a TCP load balancer (its ``stream`` module), as a user would
    set it up: round robin over ``upstream_ports``, no access log.
    """
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstream_ports)
    return (
        f"load_module {NGINX_STREAM};\n"
        "daemon off;\nmaster_process on;\nworker_processes 1;\n"
        "worker_rlimit_nofile 8192;\n"
        f"pid {workdir}/nginx-stream.pid;\n"
        f"error_log {workdir}/nginx-stream-error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "stream {\n    upstream tcp {\n"
        + servers
        + "    }\n"
        + f"    server {{\n        listen 127.0.0.1:{port};\n"
        + "        proxy_pass tcp;\n    }\n}\n"
    )


def gourmet_config(port: int, http_port: int, upstream_ports: Sequence[int]) -> str:
    """
    Gourmet with one stream over ``upstream_ports`` (its HTTP listener,
    which [server] needs, idle), the console on, as users run it.
    """
    servers = "".join(
        f"[[upstreams.tcp.servers]]\npath = '127.0.0.1:{p}'\n" for p in upstream_ports
    )
    return (
        "[upstreams.tcp]\n"
        + servers
        + f"[server]\nlisten = ['tcp:{http_port}:interface=127.0.0.1']\n"
        + "[[server.locations]]\nlocation = '^/'\nupstream = 'tcp'\n"
        + "[log]\naccess_log = 'off'\n"
        + f"[admin]\nlisten = 'tcp:{free_port()}:interface=127.0.0.1'\n"
        + f"[[streams]]\nlisten = 'tcp:{port}:interface=127.0.0.1'\nupstream = 'tcp'\n"
    )


def proxies(
    workdir: Path,
    upstream_ports: Sequence[int],
    twistd: Dict[str, Path],
    cpu: Optional[int],
    env: Callable[[str], List[str]] = lambda runtime: [],
) -> Dict[str, Server]:
    """
    nginx's stream proxy and Gourmet on each runtime of ``twistd``, not
    started; ``env(runtime)`` is put before Gourmet's command (PyPy's
    nursery).
    """
    port = free_port()
    servers: Dict[str, Server] = {
        "nginx": nginx.Nginx(
            "nginx-stream",
            workdir,
            stream_config(workdir, port, upstream_ports),
            port,
            cpu,
        )
    }
    for runtime, path in twistd.items():
        port = free_port()
        config = workdir / f"gourmet-stream-{runtime}.toml"
        config.write_text(gourmet_config(port, free_port(), upstream_ports))
        command = [*env(runtime), str(path), "-n", "--pidfile=", "gourmet"]
        command += ["--config", str(config)]
        servers[runtime] = Server(
            f"Gourmet {runtime} stream",
            pinned(command, cpu),
            port,
            workdir / f"gourmet-stream-{runtime}.out",
        )
    return servers


def one_round(
    server: Server, load: str, settings: TcpSettings, script: Path, seconds: int
) -> TcpRound:
    path, header = LOADS[load]
    command_load = wrk.Load(settings.connections, seconds, settings.load_cpu, script)
    before = sum(cpu_seconds(server.rss_pid))
    result = wrk.run(
        command_load, f"http://127.0.0.1:{server.port}{path}", header=header
    )
    spent = sum(cpu_seconds(server.rss_pid)) - before
    return TcpRound(
        requests=result.requests,
        seconds=result.seconds,
        bytes=result.bytes,
        cpu_seconds=spent,
        socket_errors=result.socket_errors,
        status_errors=result.status_errors,
    )


def measure(
    workdir: Path,
    upstream_ports: Sequence[int],
    twistd: Dict[str, Path],
    settings: TcpSettings,
    log: Callable[[str], None],
    env: Callable[[str], List[str]] = lambda runtime: [],
) -> Dict[str, Dict[str, List[TcpRound]]]:
    """
    Every proxy's rounds of each load, the proxies started one at a time.
    """
    script = wrk.write_script(workdir / "tcp-wrk.lua")
    results: Dict[str, Dict[str, List[TcpRound]]] = {}
    for name, server in proxies(
        workdir, upstream_ports, twistd, settings.proxy_cpu, env
    ).items():
        with contextlib.ExitStack() as stack:
            stack.callback(server.stop)
            server.start()
            results[name] = {}
            for load in LOADS:
                log(f"  {server.name}: {load}, warm-up {settings.warmup} s")
                one_round(server, load, settings, script, settings.warmup)
                rounds = [
                    one_round(server, load, settings, script, settings.duration)
                    for _ in range(settings.rounds)
                ]
                results[name][load] = rounds
    return results


def medians(results: Dict[str, Dict[str, List[TcpRound]]]) -> Dict[str, Dict[str, Any]]:
    def median(rounds: List[TcpRound], read: Callable[[TcpRound], float]) -> float:
        return round(statistics.median(read(each) for each in rounds), 1)

    return {
        name: {
            "bulk_mb_per_s": median(loads["bulk"], lambda r: r.megabytes_per_second),
            "bulk_cpu_s_per_gb": median(loads["bulk"], lambda r: r.cpu_seconds_per_gb),
            "short_connections_per_s": median(
                loads["short"], lambda r: r.connections_per_second
            ),
            "short_cpu_us_per_connection": median(
                loads["short"], lambda r: r.cpu_us_per_connection
            ),
            "errors": sum(
                r.socket_errors + r.status_errors
                for rounds in loads.values()
                for r in rounds
            ),
        }
        for name, loads in results.items()
    }


def table(figures: Dict[str, Dict[str, Any]]) -> str:
    lines = [
        f"{'TCP proxy':<22} {'1 MiB MB/s':>10} {'CPU s/GB':>9} "
        f"{'conn/s':>8} {'CPU us/conn':>11} {'errors':>6}"
    ]
    for name, row in figures.items():
        label = "nginx stream" if name == "nginx" else f"Gourmet {name}"
        lines.append(
            f"{label:<22} {row['bulk_mb_per_s']:>10,.0f} "
            f"{row['bulk_cpu_s_per_gb']:>9.2f} "
            f"{row['short_connections_per_s']:>8,.0f} "
            f"{row['short_cpu_us_per_connection']:>11,.0f} {row['errors']:>6}"
        )
    return "\n".join(lines)


def as_json(results: Dict[str, Dict[str, List[TcpRound]]]) -> Dict[str, Any]:
    return {
        "medians": medians(results),
        "rounds": {
            name: {load: [asdict(r) for r in rounds] for load, rounds in loads.items()}
            for name, loads in results.items()
        },
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--keep", action="store_true", help="keep the work files")
    options = parser.parse_args(argv)
    settings = (
        TcpSettings(rounds=1, duration=3, warmup=1) if options.quick else TcpSettings()
    )

    def log(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    twistd = {"cpython": Path(sys.executable).with_name("twistd")}
    with work_directory("gourmet-tcp-", options.keep) as workdir:
        ports = [free_port(), free_port()]
        upstream = nginx.upstream(workdir, ports, 0)
        with contextlib.ExitStack() as stack:
            stack.callback(upstream.stop)
            upstream.start()
            results = measure(workdir, ports, twistd, settings, log)
    log(table(medians(results)))


if __name__ == "__main__":
    main()
