"""
Fixtures for tests that run Gourmet in this process against real upstream
servers on loopback.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Counter,
    Iterator,
    List,
    Optional,
    Protocol,
    Tuple,
    TypeVar,
)

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from gourmet.config.load import parse_config
from gourmet.listener import Listener
from gourmet.service import GourmetService, build_service
from tests.configs import ADMIN_LISTEN, config
from tests.memory import Gourmets
from tests.processes import TEST_WORKERS, Twistd, start_twistd
from tests.rawhttp import RawClient
from tests.upstreams import Answer, ScriptedServer, UpstreamServer


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """
    With ``GOURMET_TEST_WORKERS`` (the twistd tests on worker processes),
    skip those that assert what only one process gives: each worker
    balances on its own (as each of nginx's workers does without a shared
    zone), so an exact order over two workers is not one round robin's.
    """
    if not TEST_WORKERS:
        return
    skip = pytest.mark.skip(reason="one process only: GOURMET_TEST_WORKERS is set")
    for item in items:
        if item.get_closest_marker("one_process") is not None:
            item.add_marker(skip)


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

    async def answered_by(self, path: str, count: int) -> Counter[str]:
        """
        Which upstream servers answered ``count`` requests for ``path``, one
        after the other, by name; any status but 200 counted by its code.
        """
        answered: Counter[str] = Counter()
        for _ in range(count):
            response = await self.get(path)
            body = await response.content()
            ok = response.code == 200
            answered[json.loads(body)["server"] if ok else str(response.code)] += 1
        return answered


def listening_port(listener: Listener) -> int:
    """
    The TCP port ``listener`` listens on (port 0 in a configuration is a
    free one, chosen by the kernel).
    """
    assert listener.port is not None
    port: int = listener.port.getHost().port  # type: ignore[attr-defined]
    return port


class _Server(Protocol):
    def start(self) -> object: ...

    async def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Server)


class Started:
    """
    ``started(server)`` starts a server, to be stopped after the test.
    """

    def __init__(self) -> None:
        self.servers: List[_Server] = []

    def __call__(self, server: _S) -> _S:
        server.start()
        self.servers.append(server)
        return server


@pytest_twisted.async_yield_fixture
async def started() -> AsyncIterator[Started]:
    """
    Starts servers (see :class:`Started`) and stops them after the test.
    """
    servers = Started()
    yield servers
    for server in servers.servers:
        await server.stop()


@pytest.fixture
def make_upstreams(started: Started) -> Callable[..., List[UpstreamServer]]:
    """
    ``make_upstreams("a", "b")`` starts real upstream servers on loopback.
    """

    def make(*names: str) -> List[UpstreamServer]:
        return [started(UpstreamServer(name)) for name in names]

    return make


@pytest.fixture
def scripted(started: Started) -> Callable[..., ScriptedServer]:
    """
    ``scripted(answer, ...)`` starts a raw upstream on loopback answering
    the requests it reads with those answers, in order.
    """

    def start(*answers: Answer, close_after: bool = False) -> ScriptedServer:
        return started(ScriptedServer(*answers, close_after=close_after))

    return start


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
        service.privilegedStartService()
        service.startService()
        instance = RunningGourmet(service, listening_port(service.listeners[0]))
        admin = service.admin_listener
        # A console on a unix: socket has no URL of this kind.
        if admin is not None and hasattr(admin.port and admin.port.getHost(), "port"):
            instance.admin_url = f"http://127.0.0.1:{listening_port(admin)}"
        running.append(instance)
        return instance

    yield start
    for instance in running:
        await instance.pool.closeCachedConnections()
        if instance.service.running:  # not stopped by the test itself
            await instance.service.stopService()


#: ``await proxy(server_extra="", upstream_extra="", name="one")``: see
#: :func:`proxy`.
StartProxy = Callable[..., Awaitable[Tuple[UpstreamServer, RunningGourmet]]]


@pytest.fixture
def proxy(gourmet: Any, make_upstreams: Any) -> StartProxy:
    """
    ``await proxy(server_extra, upstream_extra, name)`` starts one
    upstream and Gourmet in front of it (:func:`tests.configs.config` with
    those extra settings); it gives both.
    """

    async def start(
        server_extra: str = "", upstream_extra: str = "", name: str = "one"
    ) -> Tuple[UpstreamServer, RunningGourmet]:
        (server,) = make_upstreams(name)
        text = config(
            [server], upstream_extra=upstream_extra, server_extra=server_extra
        )
        return server, await gourmet(text)

    return start


@pytest.fixture
def scripted_proxy(
    gourmet: Any, scripted: Callable[..., ScriptedServer]
) -> Callable[..., Awaitable[Tuple[ScriptedServer, RunningGourmet]]]:
    """
    ``await scripted_proxy(answer, ..., upstream_extra="")`` starts a
    scripted upstream (see :func:`scripted`) and Gourmet in front of it;
    it gives both.
    """

    async def start(
        *answers: Answer, upstream_extra: str = ""
    ) -> Tuple[ScriptedServer, RunningGourmet]:
        upstream = scripted(*answers)
        return upstream, await gourmet(
            config([upstream], upstream_extra=upstream_extra)
        )

    return start


@pytest.fixture
def raw_socket() -> Iterator[Callable[[int], RawClient]]:
    """
    ``raw_socket(port)`` opens a :class:`tests.rawhttp.RawClient`, closed
    after the test.
    """
    clients: List[RawClient] = []

    def connect(port: int) -> RawClient:
        clients.append(RawClient(port))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def raw_proxy(
    proxy: StartProxy, raw_socket: Callable[[int], RawClient]
) -> Callable[..., Awaitable[Tuple[UpstreamServer, RunningGourmet, RawClient]]]:
    """
    ``await raw_proxy(server_extra)``: :func:`proxy`, and a raw client
    connected to Gourmet.
    """

    async def start(
        server_extra: str = "",
    ) -> Tuple[UpstreamServer, RunningGourmet, RawClient]:
        server, running = await proxy(server_extra)
        return server, running, raw_socket(running.port)

    return start


@pytest.fixture
def gourmets(tmp_path: Path) -> Iterator[Gourmets]:
    """
    ``gourmets(config_text, *servers)`` starts Gourmet in memory
    (:mod:`tests.memory`); every one is stopped and checked after the test.
    """
    started = Gourmets(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def processes() -> Iterator[List[Twistd]]:
    """
    The ``twistd gourmet`` processes a test starts (``processes.append``),
    stopped after it.
    """
    started: List[Twistd] = []
    yield started
    for process in started:
        process.stop()
        pytest_twisted.blockon(process.pool.closeCachedConnections())


@pytest.fixture
def twistd_on(
    tmp_path: Path, processes: List[Twistd]
) -> Callable[..., Awaitable[Twistd]]:
    """
    ``await twistd_on(text)``: ``twistd gourmet`` on the configuration
    ``text`` (written to ``gourmet.toml`` in the test's directory), once it
    listens (its console too, unless ``admin=False``); stopped after the
    test.  ``passed`` is a listening socket handed over as systemd does.
    """

    async def start(
        text: str, admin: bool = True, passed: Optional[socket.socket] = None
    ) -> Twistd:
        return await start_twistd(tmp_path, processes, text, admin, passed)

    return start
