"""
Demo upstreams: tiny HTTP servers Gourmet starts itself when a
configuration's ``[demo]`` section asks for them, so that a newcomer sees
requests balanced without setting up any backend.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

from gourmet.config.origin import parse_origin
from gourmet.listener import Listener


class DemoResource(Resource):
    """
    Answers every request with the name of the server that answered it.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Any) -> bytes:
        document = {
            "server": self.name,
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "forwarded_for": (request.getHeader(b"x-forwarded-for") or b"").decode(
                "latin-1"
            ),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(document).encode("utf-8") + b"\n"


class DemoSite(Site):
    """
    A demo server's site: Gourmet's own access log already shows each
    request, so the demo servers keep quiet.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


def demo_service(reactor: Any, addresses: Any) -> MultiService:
    """
    A service that runs one demo server for each ``host:port`` address.
    """
    service = MultiService()
    for address in addresses:
        origin = parse_origin(address)
        host = origin.host.replace(":", "\\:")
        endpoint = serverFromString(reactor, f"tcp:{origin.port}:interface={host}")
        site = DemoSite(DemoResource(f"demo {address}"), reactor=reactor)
        # A port already in use stops start-up with an error.
        Listener(endpoint, site).setServiceParent(service)
    return service
