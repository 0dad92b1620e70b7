"""
Fixtures for tests that run Gourmet in this process against real upstream
servers on loopback.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, List, Optional

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from gourmet.configfile import parse_config
from gourmet.tap import GourmetService, build_service
from tests.upstreams import UpstreamServer

#: A listen setting for a free loopback port.
LISTEN = 'listen = ["tcp:0:interface=127.0.0.1"]'
#: The admin console's listen setting for a free loopback port.
ADMIN_LISTEN = "tcp:0:interface=127.0.0.1"


class RunningGourmet:
    """
    Gourmet started in this process from a configuration text, listening on
    a free loopback port, with an HTTP client of its own.
    """

    def __init__(self, service: GourmetService, port: int) -> None:
        self.service = service
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url: Optional[str] = None
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def get(self, path: str, **kwargs: Any) -> Any:
        return treq.get(self.url + path, pool=self.pool, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return treq.request(method, self.url + path, pool=self.pool, **kwargs)

    def upstream(self, name: str) -> Any:
        return self.service.upstreams[name]


@pytest_twisted.async_yield_fixture
async def make_upstreams() -> AsyncIterator[Callable[..., List[UpstreamServer]]]:
    """
    ``make_upstreams("a", "b")`` starts real upstream servers on loopback.
    """
    started: List[UpstreamServer] = []

    def make(*names: str) -> List[UpstreamServer]:
        servers = [UpstreamServer(name) for name in names]
        for server in servers:
            server.start()
        started.extend(servers)
        return servers

    yield make
    for server in started:
        await server.stop()


@pytest_twisted.async_yield_fixture
async def gourmet() -> AsyncIterator[Callable[[str], Any]]:
    """
    ``await gourmet(config_text)`` starts Gourmet from a configuration,
    whose ``[server]`` should listen on ``LISTEN``.
    """
    running: List[RunningGourmet] = []

    async def start(text: str) -> RunningGourmet:
        if "[admin]" not in text:
            # The console on a free port, not the default 8081.
            text += f"\n[admin]\nlisten = {ADMIN_LISTEN!r}\n"
        config = parse_config(text, "test.toml")
        service = build_service(config, reactor)
        service.startService()
        # The endpoint service keeps the port it listened on privately.
        listener = next(child for child in service if hasattr(child, "_waitingForPort"))
        port = await listener._waitingForPort
        instance = RunningGourmet(service, port.getHost().port)
        if service.admin_listener is not None:
            admin_port = await service.admin_listener._waitingForPort  # type: ignore[attr-defined]
            instance.admin_url = f"http://127.0.0.1:{admin_port.getHost().port}"
        running.append(instance)
        return instance

    yield start
    for instance in running:
        await instance.pool.closeCachedConnections()
        await instance.service.stopService()
