"""
Where an idle keep-alive connection's bytes go: Gourmet built in this
process from a configuration like the benchmark's, idle connections opened
to it by :mod:`benchmarks.idle_clients` (one request answered on each),
and the memory they took, by allocation site (``tracemalloc``, on CPython)
and by type of object (the garbage collector's, on both runtimes).

    .venv/bin/python -m benchmarks.idle_memory --connections 2000
    .venv-pypy/bin/python -m benchmarks.idle_memory --connections 2000

A tool for working on Gourmet's memory: ``benchmarks.efficiency`` measures
the published figure (resident memory of a real ``twistd``).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from benchmarks import compare
from benchmarks.processes import REPO
from benchmarks.slow_client import free_port
from gourmet.config.load import load_config
from gourmet.service import build_service

if TYPE_CHECKING:
    import tracemalloc

#: Allocation sites shown.
TOP = 25


def upstream(reactor: Any) -> Tuple[Any, int]:
    """
    A small upstream in this process: 128 bytes at ``/small``.
    """
    root = Resource()
    root.putChild(b"small", Data(b"x" * 128, "text/plain"))
    site = Site(root)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return port, port.getHost().port


def open_idle(port: int, count: int) -> Tuple[subprocess.Popen[str], Dict[str, Any]]:
    """
    ``count`` idle connections from a client process, once all answered;
    they stay open until its standard input is closed.
    """
    client = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.idle_clients", str(port), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    return client, json.loads(line) if line else {}


def close_idle(client: subprocess.Popen[str]) -> None:
    assert client.stdin is not None
    client.stdin.close()
    client.wait(timeout=60)


def shallow_size(thing: Any) -> int:
    """
    The bytes of ``thing`` itself (not of what it refers to): CPython's
    ``sys.getsizeof``, PyPy's ``gc.get_rpy_memory_usage`` (which leaves
    out a list's or a dictionary's storage).
    """
    try:
        if platform.python_implementation() == "PyPy":
            return int(gc.get_rpy_memory_usage(thing))  # type: ignore[attr-defined]
        return sys.getsizeof(thing)
    except (TypeError, AttributeError):
        return 0


def types_now() -> Tuple[Counter[str], Counter[str]]:
    """
    The objects the collector knows, counted by type, and their shallow
    bytes by type.
    """
    gc.collect()
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for thing in gc.get_objects():
        name = type(thing).__qualname__
        counts[name] += 1
        sizes[name] += shallow_size(thing)
    return counts, sizes


def instance_sizes() -> List[str]:
    """
    The attributes of one idle connection's channel and transport, and
    (CPython) the size of their dictionaries.
    """
    lines = []
    for type_name in ("GourmetChannel", "Server"):
        found = [o for o in gc.get_objects() if type(o).__qualname__ == type_name]
        if not found:
            continue
        one = vars(found[-1])
        # PyPy's getsizeof raises: it has no meaningful answer there.
        size = (
            sys.getsizeof(one) if platform.python_implementation() == "CPython" else 0
        )
        lines.append(
            f"  one {type_name}: {len(one)} attributes, its dict {size} B: "
            + " ".join(sorted(one))
        )
    return lines


def by_type(
    before: Tuple[Counter[str], Counter[str]],
    after: Tuple[Counter[str], Counter[str]],
    count: int,
) -> List[str]:
    grown = after[1] - before[1]
    counts = after[0] - before[0]
    total = sum(grown.values()) / count
    lines = [f"  {total:7.0f} B per connection in all (shallow sizes)"]
    for name, size in grown.most_common(TOP):
        lines.append(
            f"  {size / count:7.0f} B {counts[name] / count:6.2f} objects  {name}"
        )
    return lines


def by_site(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int
) -> List[str]:
    lines = []
    total = 0
    for stat in after.compare_to(before, "traceback"):
        total += stat.size_diff
    lines.append(f"  total {total / count:8.0f} B per connection (tracemalloc)")
    for stat in after.compare_to(before, "lineno")[:TOP]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        lines.append(
            f"  {stat.size_diff / count:8.0f} B {stat.count_diff / count:6.2f} "
            f"blocks  {where}"
        )
    return lines


async def measure(reactor: Any, count: int) -> None:
    upstream_port, upstream_number = upstream(reactor)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="gourmet-idle-memory-"))
    config = workdir / "gourmet.toml"
    config.write_text(
        compare.gourmet_config(
            port,
            free_port(),
            [upstream_number],
            workdir / "access.log",
            max_connections=count + 1000,
        )
    )
    service = build_service(load_config(str(config)), reactor)
    service.privilegedStartService()
    service.startService()
    try:
        # Warm: the pool's upstream connections, the first request's caches.
        client, _ = await threads.deferToThread(open_idle, port, 100)
        close_idle(client)
        await task.deferLater(reactor, 0.5, lambda: None)
        # PyPy has no tracemalloc.
        tracing = platform.python_implementation() == "CPython"
        if tracing:
            import tracemalloc

            tracemalloc.start(5)
        types_before = types_now()
        snapshot = tracemalloc.take_snapshot() if tracing else None
        client, counts = await threads.deferToThread(open_idle, port, count)
        await task.deferLater(reactor, 0.5, lambda: None)
        opened = int(counts.get("answered", 0))
        types_after = types_now()
        lines = [f"{opened} idle connections ({counts})"]
        if snapshot is not None:
            lines += by_site(snapshot, tracemalloc.take_snapshot(), max(opened, 1))
        lines += instance_sizes()
        lines.append("Objects that grew, by type:")
        lines += by_type(types_before, types_after, max(opened, 1))
        sys.stdout.write("\n".join(lines) + "\n")
        close_idle(client)
    finally:
        stopped: Optional[Deferred[Any]] = service.stopService()
        if stopped is not None:
            await stopped
        await upstream_port.stopListening()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    options = parser.parse_args(argv)
    task.react(
        lambda reactor: Deferred.fromCoroutine(measure(reactor, options.connections))
    )


if __name__ == "__main__":
    main()
