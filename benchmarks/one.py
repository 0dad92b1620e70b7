"""
One proxy under load, for working on its speed: the upstream nginx and one
target (Gourmet on CPython or PyPy, stock Twisted, or nginx) started as
``./dev bench`` starts them, then ``wrk`` rounds on both bodies, printed.

    .venv/bin/python -m benchmarks.one pypy --rounds 3
    .venv/bin/python -m benchmarks.one cpython \
        --twistd-args=--profile=/tmp/p.out,--profiler=cprofile,--savestats
    .venv/bin/python -m benchmarks.one pypy --env PYPYLOG=gc:/tmp/gc.log \
        --wrap .venv-pypy/bin/python,-m,vmprof,-o,/tmp/vm.prof

Figures from one run of this are for comparing changes made a minute
apart; the published figures come from ``benchmarks.compare``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import List

from attrs import evolve

from benchmarks import compare, pypy_env, wrk
from benchmarks.processes import REPO, Server, cpu_seconds


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("target", choices=compare.PROXIES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--body", choices=compare.BODIES, action="append")
    parser.add_argument(
        "--twistd-args", default="", help="comma-separated, before the plugin name"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the proxy"
    )
    parser.add_argument(
        "--wrap", default="", help="comma-separated command to run twistd with"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gourmet-one-") as temp:
        workdir = Path(temp)
        # nginx's workers run as nobody when started as root.
        workdir.chmod(0o755)
        pypy = None
        if args.target == "pypy":
            pypy, why = pypy_env.ensure(REPO / ".venv-pypy", REPO)
            compare.log(why)
            if pypy is None:
                return 1
        settings = compare.Settings(connections=args.connections)
        bench = compare.Bench(settings, workdir, pypy)
        load = wrk.Load(
            args.connections,
            args.duration,
            bench.load_cpu,
            wrk.write_script(workdir / "report.lua"),
        )
        with contextlib.ExitStack() as stack:
            compare.start(stack, bench.upstream())
            server = bench.proxies()[args.target]
            if args.twistd_args:
                _add_twistd_args(server, args.twistd_args.split(","))
            if args.env or args.wrap:
                where = server.command.index(str(bench.twistd[args.target]))
                wrapper = args.wrap.split(",") if args.wrap else []
                server.command[where:where] = ["env", *args.env, *wrapper]
            compare.start(stack, server)
            port = bench.ports[args.target]
            for body in args.body or list(compare.BODIES):
                url = f"http://127.0.0.1:{port}{compare.BODIES[body]}"
                wrk.run(evolve(load, duration=args.warmup), url)
                for number in range(args.rounds):
                    before = cpu_seconds(server.rss_pid)
                    result = wrk.run(load, url)
                    after = cpu_seconds(server.rss_pid)
                    # CPU time per request is steadier than requests per
                    # second on a machine whose other tenants take turns.
                    user, system = (
                        (end - start) / max(result.requests, 1) * 1e6
                        for start, end in zip(before, after)
                    )
                    compare.log(
                        f"{body} {number + 1}: {compare.describe(result)}"
                        f"  {user + system:5.1f} us CPU/request"
                        f" ({user:.1f} user, {system:.1f} system)"
                    )
    return 0


def _add_twistd_args(server: Server, extra: List[str]) -> None:
    where = server.command.index("gourmet")
    server.command[where:where] = extra


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
