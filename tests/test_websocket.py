"""
WebSockets through a real ``twistd -n gourmet``: the handshake balanced as
any request, then the two connections spliced until either side ends.  The
servers are the ``websockets`` library's (tests.websocket_peer, a process
each), the clients its synchronous client, in threads.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.configs import ADMIN_LISTEN as LISTEN
from tests.processes import Twistd, UpstreamProcess
from tests.rawhttp import sleep
from tests.test_tls_listeners import HTTPS_ADDRESS, Authority

TOKEN = "websocket-token-of-some-length"
MIB = 1024 * 1024
#: Large enough for the 16 MiB messages.
MAX_MESSAGE = 32 * MIB
# No keep-alive pings from the client: the tests ping when they mean to, and
# websockets' keep-alive thread joins the reader thread as recv() does, which
# PyPy 3.9's threading races on when a connection closes ("cannot release
# un-acquired lock", seen in CI on the idle-timeout test).
CLIENT_OPTIONS: Dict[str, Any] = dict(
    max_size=MAX_MESSAGE, open_timeout=10, compression=None, ping_interval=None
)


class Gourmet:
    """
    Gourmet in front of WebSocket servers, and ways to reach it.
    """

    def __init__(self, twistd: Twistd, peers: List[UpstreamProcess]) -> None:
        self.twistd = twistd
        self.peers = peers
        #: The authority of its TLS listener's certificate, if it has one.
        self.authority: Optional[Authority] = None

    @property
    def tls_port(self) -> int:
        match = HTTPS_ADDRESS.search(self.log())
        assert match is not None
        return int(match[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.twistd.port}"

    def connect(self, path: str = "/chat") -> ClientConnection:
        # Uncompressed, so that the bytes through Gourmet are the messages'.
        return connect(self.url + path, **CLIENT_OPTIONS)

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.twistd.admin_port}{path}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def active(self) -> Dict[str, int]:
        """
        Each server's requests in flight, by address, as the console says.
        """
        servers = self.api("/api/upstreams/ws")["servers"]
        return {server["address"]: server["active"] for server in servers}

    def access_log(self) -> List[Dict[str, Any]]:
        path = self.twistd.stderr.parent / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def log(self) -> str:
        return self.twistd.stderr.read_text()


def peer_log(peer: UpstreamProcess) -> str:
    return peer.log.read_text()


async def until(check: Callable[[], Any], within: float = 10.0) -> Any:
    """
    Poll ``check`` without blocking the reactor until it returns something
    true; that.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "still not so"
        await sleep(0.05)


def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return deferToThread(function, *args)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """
    Start WebSocket servers of the given weights and Gourmet in front of
    them; everything is stopped after the test.
    """
    started: List[Any] = []

    async def start(
        weights: Tuple[int, ...] = (1,), server: str = "", tls: bool = False
    ) -> Gourmet:
        peers = []
        for index, _ in enumerate(weights):
            peer = UpstreamProcess(f"ws{index}", tmp_path, "tests.websocket_peer")
            started.append(peer)
            peer.start()
            peers.append(peer)
        text = "[upstreams.ws]\n"
        for peer, weight in zip(peers, weights):
            text += (
                f"[[upstreams.ws.servers]]\npath='{peer.address}'\nweight={weight}\n"
            )
        authority = Authority(tmp_path) if tls else None
        if authority is not None:
            authority.issue("a", ["a.test"])
            server += (
                f"\ntls_listen=['{LISTEN}']\n"
                "[[server.certificates]]\ncert='a.pem'\nkey='a.key'\n"
            )
        text += (
            f"[server]\nlisten=['{LISTEN}']\n{server}\n"
            "[[server.locations]]\nlocation='/'\nupstream='ws'\n"
            "[log]\naccess_log='access.log'\naccess_log_format='json'\n"
            f"[admin]\nlisten='{LISTEN}'\ntoken='{TOKEN}'\n"
        )
        config = tmp_path / "gourmet.toml"
        config.write_text(text)
        twistd = Twistd(config)
        started.append(twistd)
        await twistd.ready(admin=True)
        gourmet = Gourmet(twistd, peers)
        gourmet.authority = authority
        return gourmet

    yield start
    for each in reversed(started):
        each.stop()


# -- messages ------------------------------------------------------------------

SIZES = [1, 125, 126, 65535, 65536, MIB, 16 * MIB]


def echo_every_size(gourmet: Gourmet) -> Tuple[List[int], str]:
    """
    Each size as text and as binary, sent and echoed; and a ping answered.

    :return: the sizes echoed, and the request ID the 101 said.
    """
    echoed = []
    with gourmet.connect() as client:
        assert client.response is not None
        request_id = client.response.headers["X-Request-ID"]
        for size in SIZES:
            text = "é" * (size // 2) + "a" * (size % 2)
            client.send(text)
            assert client.recv(timeout=30) == text
            binary = os.urandom(size)
            client.send(binary)
            assert client.recv(timeout=30) == binary
            echoed.append(size)
        assert client.ping(b"are you there").wait(10)
    return echoed, request_id


@pytest_twisted.ensureDeferred
async def test_text_and_binary_messages_of_1_byte_to_16_mib_and_pings_pass(
    start: Any,
) -> None:
    gourmet = await start()
    echoed, request_id = await in_thread(echo_every_size, gourmet)
    assert echoed == SIZES
    (peer,) = gourmet.peers
    # The tunnel's end is logged, with its bytes each way, and its access
    # log line says 101 and which server it went to.
    await until(lambda: "tunnel to" in gourmet.log())
    (line,) = await until(gourmet.access_log)
    assert line["status"] == 101
    assert line["upstream"] == peer.address
    assert line["upstream_status"] == "101"
    # The handshake's answer carried the ID the access log has for it.
    assert line["request_id"] == request_id and len(request_id) == 32
    # Each size twice, as text (UTF-8) and binary, plus frame headers.
    echoed_bytes = sum(len(("é" * (s // 2)).encode()) + s % 2 + s for s in SIZES)
    assert echoed_bytes < line["body_bytes_sent"] < echoed_bytes + 64 * 1024
    assert f"bytes to the server, {line['body_bytes_sent']} to the client" in (
        gourmet.log()
    )


def close_with(gourmet: Gourmet, code: int, reason: str) -> None:
    with gourmet.connect() as client:
        client.close(code, reason)


def closed_by_server(gourmet: Gourmet) -> Tuple[int, str]:
    with gourmet.connect() as client:
        client.send("close 4002 server says bye")
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=10)
    received = closed.value.rcvd
    assert received is not None
    return received.code, received.reason


@pytest_twisted.ensureDeferred
async def test_close_codes_pass_both_ways(start: Any) -> None:
    gourmet = await start()
    (peer,) = gourmet.peers
    await in_thread(close_with, gourmet, 4001, "client says bye")
    await until(lambda: "closed 4001 client says bye" in peer_log(peer))
    assert await in_thread(closed_by_server, gourmet) == (4002, "server says bye")


def refused(gourmet: Gourmet) -> Tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as refusal:
        gourmet.connect("/refuse")
    response = refusal.value.response
    return response.status_code, bytes(response.body or b"")


@pytest_twisted.ensureDeferred
async def test_an_upgrade_the_server_refuses_gets_its_answer(start: Any) -> None:
    gourmet = await start()
    assert await in_thread(refused, gourmet) == (403, b"refused by the upstream\n")
    # And the connection's next handshake is a tunnel as usual.
    (peer,) = gourmet.peers
    await in_thread(close_with, gourmet, 1000, "fine")
    await until(lambda: "closed 1000 fine" in peer_log(peer))


def wss_echo(gourmet: Gourmet) -> str:
    assert gourmet.authority is not None
    with connect(
        f"wss://127.0.0.1:{gourmet.tls_port}/secure",
        ssl=gourmet.authority.verifying(),
        server_hostname="a.test",
        **CLIENT_OPTIONS,
    ) as client:
        client.send("path")
        path = client.recv(timeout=10)
        message = os.urandom(MIB)
        client.send(message)
        assert client.recv(timeout=10) == message
        client.close(4003, "tls bye")
    return str(path)


@pytest_twisted.ensureDeferred
async def test_a_tunnel_over_tls_passes_messages_and_its_close(start: Any) -> None:
    gourmet = await start(tls=True)
    (peer,) = gourmet.peers
    try:
        echoed = await in_thread(wss_echo, gourmet)
    except TimeoutError as error:
        # Once in five full PyPy runs the 101 never came after the TLS
        # handshake, and neither log said a word: say what Gourmet's access
        # log (written when the client gave up) and console saw, next time.
        await sleep(1.0)
        raise AssertionError(
            f"{error}\n--- gourmet:\n{gourmet.log()[-4000:]}"
            f"\n--- server:\n{peer_log(peer)[-2000:]}"
            f"\n--- access log:\n{gourmet.access_log()}"
            f"\n--- console:\n{gourmet.api('/api/upstreams')}"
        ) from error
    assert echoed == "/secure"
    await until(lambda: "closed 4003 tls bye" in peer_log(peer))
    (line,) = await until(gourmet.access_log)
    assert (line["status"], line["tls"], line["sni"]) == (101, "TLSv1.3", "a.test")


# -- many tunnels --------------------------------------------------------------

TUNNELS = 500


async def hold_tunnels(gourmet: Gourmet) -> Tuple[Dict[str, int], Dict[str, int]]:
    """
    Open TUNNELS at once and ask each which server it reached; while all
    are open, read the console's count of each server's active requests.
    """
    opening = asyncio.Semaphore(100)

    async def one() -> Any:
        async with opening:
            client = await connect_async(gourmet.url + "/many", open_timeout=30)
        await client.send("who")
        return client, await asyncio.wait_for(client.recv(), 30)

    opened = await asyncio.gather(*(one() for _ in range(TUNNELS)))
    names: Dict[str, int] = {}
    for _, name in opened:
        names[name] = names.get(name, 0) + 1
    active = await asyncio.to_thread(gourmet.active)
    await asyncio.gather(*(client.close() for client, _ in opened))
    return names, active


@pytest_twisted.ensureDeferred
async def test_500_tunnels_are_balanced_by_weight_and_count_as_active(
    start: Any,
) -> None:
    gourmet = await start(weights=(3, 1))
    heavy, light = gourmet.peers
    names, active = await in_thread(asyncio.run, hold_tunnels(gourmet))
    assert sum(names.values()) == TUNNELS
    assert abs(names["ws0"] - TUNNELS * 3 // 4) <= 5, names
    # While open, each tunnel is a request in flight on its server.
    assert active == {heavy.address: names["ws0"], light.address: names["ws1"]}
    await until(lambda: set(gourmet.active().values()) == {0})


# -- ends ------------------------------------------------------------------------


def killed_mid_tunnel(gourmet: Gourmet) -> float:
    (peer,) = gourmet.peers
    with gourmet.connect() as client:
        client.send("hello")
        assert client.recv(timeout=10) == "hello"
        assert peer.process is not None
        peer.process.kill()
        killed = time.monotonic()
        with pytest.raises(ConnectionClosed):
            client.recv(timeout=10)
        return time.monotonic() - killed


@pytest_twisted.ensureDeferred
async def test_a_server_killed_mid_tunnel_closes_the_clients_side(start: Any) -> None:
    gourmet = await start()
    assert await in_thread(killed_mid_tunnel, gourmet) < 5
    await until(lambda: "ended" in gourmet.log())
    assert "(server " in gourmet.log()


def idle_then_active(gourmet: Gourmet) -> Tuple[float, float]:
    """
    How long an idle tunnel lasted; how long one with a ping every 0.3 s
    was kept (at least 2.5 s, when it is kept).
    """
    with gourmet.connect() as idle:
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed):
            idle.recv(timeout=10)
        lasted = time.monotonic() - opened
    with gourmet.connect() as busy:
        opened = time.monotonic()
        while time.monotonic() - opened < 2.5:
            assert busy.ping().wait(5)
            time.sleep(0.3)
        busy.send("still here")
        assert busy.recv(timeout=5) == "still here"
        kept = time.monotonic() - opened
    return lasted, kept


@pytest_twisted.ensureDeferred
async def test_a_tunnel_idle_past_the_timeout_is_closed(start: Any) -> None:
    # Real seconds: the timeout runs in another process, on its reactor's
    # clock (tests/test_splice.py checks it on a Clock).
    gourmet = await start(server="tunnel_idle_timeout = 1")
    lasted, kept = await in_thread(idle_then_active, gourmet)
    assert 0.9 < lasted < 6
    assert kept >= 2.5
    await until(lambda: "(idle)" in gourmet.log())


def echo_after(gourmet: Gourmet, stopping: Callable[[], None]) -> str:
    with gourmet.connect() as client:
        stopping()
        time.sleep(0.5)
        client.send("after the stop")
        return str(client.recv(timeout=10))


@pytest_twisted.ensureDeferred
async def test_a_graceful_stop_lets_a_tunnel_finish(start: Any) -> None:
    gourmet = await start(server="shutdown_timeout = 30")
    process = gourmet.twistd.process

    def stop() -> None:
        process.send_signal(signal.SIGTERM)

    # The tunnel is still served after the signal; once it ends, Gourmet
    # exits at once rather than after shutdown_timeout.
    assert await in_thread(echo_after, gourmet, stop) == "after the stop"
    closed = time.monotonic()
    await until(lambda: process.poll() is not None)
    assert process.returncode == 0
    assert time.monotonic() - closed < 10


def held_through_stop(gourmet: Gourmet, stopping: Callable[[], None]) -> float:
    with gourmet.connect() as client:
        stopping()
        stopped = time.monotonic()
        with pytest.raises(ConnectionClosed):
            client.recv(timeout=15)
        return time.monotonic() - stopped


@pytest_twisted.ensureDeferred
async def test_a_tunnel_still_open_after_shutdown_timeout_is_closed(
    start: Any,
) -> None:
    gourmet = await start(server="shutdown_timeout = 1")
    process = gourmet.twistd.process
    lasted = await in_thread(
        held_through_stop, gourmet, lambda: process.send_signal(signal.SIGTERM)
    )
    assert 0.9 < lasted < 5
    await until(lambda: process.poll() is not None)
    assert process.returncode == 0


# -- a client that stops reading ---------------------------------------------


def handshake(port: int, before: bytes = b"") -> socket.socket:
    """
    A WebSocket handshake by hand (after ``before``), on a socket with a
    small receive buffer.
    """
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.sendall(
        before + b"GET /flood HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += client.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return client


def echoed_through_a_balancer(port: int) -> bytes:
    """
    A tunnel from a load balancer in front that says, in a PROXY header,
    which client it is for; what the server echoes.
    """
    client = handshake(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 55555 80\r\n")
    client.sendall(masked_text(b"hello from behind"))
    # An unmasked text frame: 0x81, its length, the text.
    echoed = b""
    while len(echoed) < 2 + len(b"hello from behind"):
        echoed += client.recv(1024)
    client.close()
    return echoed[2:]


@pytest_twisted.ensureDeferred
async def test_a_tunnel_from_a_listed_balancer_is_logged_for_its_client(
    start: Any,
) -> None:
    gourmet = await start(server="accept_proxy_protocol = ['127.0.0.1']")
    port = gourmet.twistd.port
    assert await in_thread(echoed_through_a_balancer, port) == b"hello from behind"
    (line,) = await until(gourmet.access_log)
    assert (line["remote_addr"], line["status"]) == ("203.0.113.7", 101)


def masked_text(text: bytes) -> bytes:
    mask = os.urandom(4)
    payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(text))
    return bytes([0x81, 0x80 | len(text)]) + mask + payload


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_does_not_grow_gourmets_memory(
    start: Any,
) -> None:
    gourmet = await start()
    client = await in_thread(handshake, gourmet.twistd.port)
    before = gourmet.twistd.rss_kib()
    # 200 MiB asked for, none read: the server is held back by TCP through
    # Gourmet rather than Gourmet holding the bytes.
    client.sendall(masked_text(b"flood 200"))
    await sleep(3)
    grown = gourmet.twistd.rss_kib() - before
    client.close()
    assert grown < 40 * 1024, f"{grown} KiB more"
    (peer,) = gourmet.peers
    await until(lambda: "closed" in peer_log(peer))
