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

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests import upstream_process


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


def main(argv: List[str]) -> None:
    upstream_process.main(
        argv,
        "tests.delayed_upstream",
        lambda name, reactor: QuietSite(DelayedResource(name, reactor)),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
