"""
The Python baseline: Twisted's stock ``ReverseProxyResource`` in front of one
upstream, with an access log to a file, as a few lines of a user's script
would set it up.

    .venv/bin/python -m benchmarks.stock_twisted PORT UPSTREAM_PORT ACCESS_LOG
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import Site


def main() -> None:
    port, upstream_port, access_log = sys.argv[1:]
    resource = ReverseProxyResource("127.0.0.1", int(upstream_port), b"")
    site: Any = Site(resource, logPath=access_log)
    reactor.listenTCP(int(port), site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
