"""
An upstream server in a process of its own that answers after a delay the
request itself gives, per server name, so that one test or benchmark can
make one server slow and then fast again without touching it::

    python -m tests.delayed_upstream PORT NAME

It listens on 127.0.0.1:PORT (0: a port the system picks), prints
``upstream NAME listening on 127.0.0.1:PORT`` as
:mod:`tests.upstream_process` does, and answers ``GET /?slow=0.02&a=0.002``
after 0.02 s if it is ``slow``, 0.002 s if it is ``a``, at once if its name
is not in the query, with ``ok`` and an ``X-Upstream: NAME`` header.
"""

from __future__ import annotations

import sys
from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import react
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class DelayedResource(Resource):
    """
    Answers every request after the delay its query gives this server.
    """

    isLeaf = True

    def __init__(self, name: str, reactor: Any) -> None:
        super().__init__()
        self.name = name
        self._reactor = reactor

    def render(self, request: Any) -> Any:
        request.setHeader(b"x-upstream", self.name.encode())
        request.setHeader(b"content-length", b"2")
        delay = float(request.args.get(self.name.encode(), [b"0"])[0])
        call = self._reactor.callLater(delay, self._answer, request)
        request.notifyFinish().addErrback(lambda _: call.cancel())
        return NOT_DONE_YET

    def _answer(self, request: Any) -> None:
        request.write(b"ok")
        request.finish()


class QuietSite(Site):
    """No access log: thousands of lines would cost the load they measure."""

    def log(self, request: Any) -> None:
        pass


async def serve(reactor: Any, port: int, name: str) -> None:
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    listening = await endpoint.listen(QuietSite(DelayedResource(name, reactor)))
    print(f"upstream {name} listening on 127.0.0.1:{listening.getHost().port}")
    sys.stdout.flush()
    forever: Deferred[None] = Deferred()
    await forever


def main(argv: List[str]) -> None:
    if len(argv) != 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m tests.delayed_upstream PORT NAME")
    port, name = int(argv[0]), argv[1]
    react(lambda reactor: Deferred.fromCoroutine(serve(reactor, port, name)))


if __name__ == "__main__":
    main(sys.argv[1:])
