"""
Where a profiled Gourmet spends its CPU time, by part: a ``cProfile``
file (``benchmarks.one cpython --twistd-args=--profile=F,--profiler=
cprofile,--savestats``) summed by own time into Twisted's web stack,
Twisted's reactor and transports, Gourmet's modules, the interpreter's
builtins (dict, list, bytes methods) and the socket calls, with the
functions that cost most.  Each share is of the time profiled, so the
profiler's own overhead inflates the many small calls alike.

    .venv/bin/python -m benchmarks.profile_share /tmp/p.out [--requests N]
"""

from __future__ import annotations

import argparse
import pstats
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

#: (part, what a function's file or name starts with), first match wins.
PARTS: Tuple[Tuple[str, str], ...] = (
    ("socket calls (send, recv, epoll)", "<method 'send"),
    ("socket calls (send, recv, epoll)", "<method 'recv"),
    ("socket calls (send, recv, epoll)", "<method 'poll' of 'select.epoll"),
    ("twisted.web (HTTP parsing, Request, Headers)", "twisted/web/"),
    ("twisted reactor and transports", "twisted/internet/"),
    ("twisted (other)", "twisted/"),
    ("builtins (dict, list, bytes, str methods)", "<"),
)


def part_of(path: str, name: str) -> str:
    where = path.replace("\\", "/")
    for part, start in PARTS:
        if start.startswith("<") and path == "~" and name.startswith(start):
            return part
        if not start.startswith("<") and start in where:
            return part
    if "/gourmet/" in where:
        module = where.split("/gourmet/", 1)[1].rsplit(".", 1)[0]
        return "gourmet." + module.replace("/", ".")
    return "other"


def shares(
    stats: pstats.Stats,
) -> Tuple[float, Dict[str, float], List[Tuple[float, str]]]:
    by_part: Dict[str, float] = defaultdict(float)
    functions: List[Tuple[float, str]] = []
    total = 0.0
    raw: Dict[Tuple[str, int, str], Tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    for (path, line, name), (_, calls, own, _, _) in raw.items():
        total += own
        by_part[part_of(path, name)] += own
        functions.append((own, f"{name} ({path.rsplit('/', 1)[-1]}:{line}) x{calls}"))
    functions.sort(reverse=True)
    return total, by_part, functions


def report(path: str, requests: Optional[int], top: int) -> str:
    total, by_part, functions = shares(pstats.Stats(path))
    gourmet = sum(v for k, v in by_part.items() if k.startswith("gourmet."))
    lines = [f"{path}: {total:.2f} s of own time profiled"]
    if requests:
        lines[0] += f", {total / requests * 1e6:.0f} us per request (profiled)"
    rows = [(v, k) for k, v in by_part.items() if not k.startswith("gourmet.")]
    rows.append((gourmet, "gourmet (all its modules)"))
    for value, part in sorted(rows, reverse=True):
        lines.append(f"  {value / total * 100:5.1f}%  {part}")
    lines.append("  Gourmet's modules:")
    mine = sorted(
        ((v, k) for k, v in by_part.items() if k.startswith("gourmet.")), reverse=True
    )
    for value, part in mine[:12]:
        lines.append(f"    {value / total * 100:5.1f}%  {part}")
    lines.append(f"  The {top} functions with most own time:")
    for value, name in functions[:top]:
        lines.append(f"    {value / total * 100:5.1f}%  {name}")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--requests", type=int, help="requests served while profiled")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    sys.stdout.write(report(args.profile, args.requests, args.top) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
