"""
An upstream server in a process of its own, so that a test can stop it (as
a crash would) and start it again::

    python -m tests.upstream_process PORT NAME

It listens on 127.0.0.1:PORT (PORT 0: a port the system picks), prints
``upstream NAME listening on 127.0.0.1:PORT`` with the port it got, and
answers every request with JSON naming itself, ``{"server": NAME, "path":
...}``, until SIGTERM stops it cleanly.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import react
from twisted.web.server import Site

from gourmet.demo import DemoResource, DemoSite


async def serve(
    reactor: Any, port: int, name: str, site: Optional[Site] = None
) -> None:
    """
    Listen until the reactor stops: twistd's usual signal handling makes
    SIGTERM (and SIGINT) stop it, and :func:`react` then exits with 0.

    :param site: what to serve; the demo's JSON by default.
    """
    if site is None:
        site = DemoSite(DemoResource(name), reactor=reactor)
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    listening = await endpoint.listen(site)
    # The test reads the port from this line (tests.processes).
    print(f"upstream {name} listening on 127.0.0.1:{listening.getHost().port}")
    sys.stdout.flush()
    forever: Deferred[None] = Deferred()
    await forever


def main(
    argv: List[str],
    module: str = "tests.upstream_process",
    make_site: Optional[Callable[[str, Any], Site]] = None,
) -> None:
    """
    Serve as ``python -m MODULE PORT NAME`` says, with ``make_site(name,
    reactor)`` if given.
    """
    if len(argv) != 2 or not argv[0].isdigit():
        raise SystemExit(f"usage: python -m {module} PORT NAME")
    port, name = int(argv[0]), argv[1]

    def run(reactor: Any) -> Deferred[None]:
        site = make_site(name, reactor) if make_site is not None else None
        return Deferred.fromCoroutine(serve(reactor, port, name, site))

    react(run)


if __name__ == "__main__":
    main(sys.argv[1:])
