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
from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import react

from gourmet.demo import DemoResource, DemoSite


async def serve(reactor: Any, port: int, name: str) -> None:
    """
    Listen until the reactor stops: twistd's usual signal handling makes
    SIGTERM (and SIGINT) stop it, and :func:`react` then exits with 0.
    """
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    listening = await endpoint.listen(DemoSite(DemoResource(name), reactor=reactor))
    # The test reads the port from this line (tests.processes).
    print(f"upstream {name} listening on 127.0.0.1:{listening.getHost().port}")
    sys.stdout.flush()
    forever: Deferred[None] = Deferred()
    await forever


def main(argv: List[str]) -> None:
    if len(argv) != 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m tests.upstream_process PORT NAME")
    port, name = int(argv[0]), argv[1]
    react(lambda reactor: Deferred.fromCoroutine(serve(reactor, port, name)))


if __name__ == "__main__":
    main(sys.argv[1:])
