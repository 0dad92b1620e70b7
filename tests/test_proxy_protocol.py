"""
The PROXY protocol both ways.

From load balancers in front (``[server] accept_proxy_protocol``), on a
real ``twistd -n gourmet``: the client's address a listed balancer sends is
the one the access log and the upstream see, on plain and TLS listeners,
in HTTP/1.1 and HTTP/2; a header from an address not listed, a broken
header, or none at all from a listed balancer closes the connection.  The
reader's deadline in memory, on a Clock.  TLS clients block, so they run
in a thread: the upstreams answer from this process's reactor.

To upstream servers (``[upstreams.NAME] proxy_protocol``): Debian's nginx
reads the v1 and v2 headers Gourmet sends, over IPv4 and IPv6 and before
TLS, and says what they told it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from gourmet.config.model import FrontendConfig
from gourmet.frontend.proxy_protocol import ProxyHeaderFactory
from gourmet.net.proxy_header import encode_v1, encode_v2
from tests.h2client import H2Client
from tests.processes import Twistd
from tests.rawhttp import RawClient, sleep, status_of
from tests.test_operations import access_lines, wait_for_log
from tests.test_tls_listeners import (
    Authority,
    read_response,
    start,
    tls_text,
    trusting_anything,
)

CLIENT = ("203.0.113.7", 51000)
CLIENT6 = ("2001:db8::7", 51001)
GET = b"GET /who HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


async def started(
    tmp_path: Path,
    processes: List[Twistd],
    make_upstreams: Any,
    authority: Authority,
    accept: str,
) -> Tuple[Any, Twistd, int]:
    """
    An upstream, and twistd in front of it with a plain and a TLS listener
    reading PROXY headers from ``accept``, its JSON access log in
    ``access.log``: the upstream, twistd and its TLS port.
    """
    (upstream,) = make_upstreams("up")
    authority.issue("a", ["a.test"])
    extra = f"accept_proxy_protocol = {accept}\nheader_timeout = 1\n"
    text = tls_text(upstream.address, "a", extra)
    return (upstream, *await start(tmp_path, processes, text))


async def plain_exchange(port: int, data: bytes) -> bytes:
    client = RawClient(port)
    try:
        await client.send(data)
        return await client.read_until_closed()
    finally:
        client.close()


def tls_exchange(port: int, before: bytes) -> Tuple[int, Dict[str, str], bytes]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(before)
    with trusting_anything().wrap_socket(raw, server_hostname="a.test") as tls:
        tls.sendall(GET)
        return read_response(tls)


async def logged_addresses(tmp_path: Path, count: int) -> List[str]:
    """
    The client addresses of the access log's first ``count`` lines, once
    it has them (it is written every second).
    """
    deadline = time.monotonic() + 10
    while len(lines := access_lines(tmp_path)) < count:
        assert time.monotonic() < deadline, lines
        await sleep(0.1)
    return [json.loads(line)["remote_addr"] for line in lines]


@pytest_twisted.ensureDeferred
async def test_a_listed_balancers_client_address_is_the_one_logged_and_forwarded(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any, authority: Authority
) -> None:
    upstream, gourmet, tls_port = await started(
        tmp_path, processes, make_upstreams, authority, '["10.0.0.0/8", "127.0.0.1"]'
    )
    plain = gourmet.port
    here = ("127.0.0.1", plain)
    # v1 and v2 over plain HTTP, the request in the same packet as the header.
    for header in (encode_v1(CLIENT, here), encode_v2(CLIENT, here)):
        reply = await plain_exchange(plain, header + GET)
        assert status_of(reply) == 200, reply
    # IPv6 clients, and the header and request arriving apart.
    client = RawClient(plain)
    await client.send(encode_v2(CLIENT6, ("::1", plain)))
    await sleep(0.05)
    await client.send(GET)
    assert status_of(await client.read_until_closed()) == 200
    client.close()
    # Under TLS: the header comes before the handshake.
    status, _, _ = await deferToThread(
        tls_exchange, tls_port, encode_v1(CLIENT, ("127.0.0.1", tls_port))
    )
    assert status == 200
    # HTTP/2 over TLS.
    h2 = await deferToThread(
        H2Client, tls_port, before_tls=encode_v2(CLIENT6, ("::1", tls_port))
    )
    assert h2.alpn == "h2"
    answer = await deferToThread(h2.get, "/who")
    h2.close()
    assert answer.status == 200
    forwarded = [seen.header(b"x-forwarded-for") for seen in upstream.seen]
    assert forwarded == [
        b"203.0.113.7",
        b"203.0.113.7",
        b"2001:db8::7",
        b"203.0.113.7",
        b"2001:db8::7",
    ]
    assert upstream.seen[0].header(b"x-real-ip") == b"203.0.113.7"
    assert b'for="[2001:db8::7]"' in (upstream.seen[2].header(b"forwarded") or b"")
    assert await logged_addresses(tmp_path, 5) == [
        "203.0.113.7",
        "203.0.113.7",
        "2001:db8::7",
        "203.0.113.7",
        "2001:db8::7",
    ]
    # A refused request: its client reads the 400, and the log names it.
    bad = b"GET / HTTP/1.1\r\nHost: a.test\r\nno colon\r\n\r\n"
    reply = await plain_exchange(plain, encode_v1(CLIENT, here) + bad)
    assert status_of(reply) == 400, reply
    await wait_for_log(gourmet, "refused a request from 203.0.113.7: 400")


@pytest_twisted.ensureDeferred
async def test_a_listed_balancer_must_send_a_valid_header_in_time(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any, authority: Authority
) -> None:
    upstream, gourmet, tls_port = await started(
        tmp_path, processes, make_upstreams, authority, '["127.0.0.1"]'
    )
    # A health check (v2 LOCAL, v1 UNKNOWN) keeps the balancer's own address.
    for header in (encode_v2(None, None), encode_v1(None, None)):
        reply = await plain_exchange(gourmet.port, header + GET)
        assert status_of(reply) == 200, reply
    assert [seen.header(b"x-forwarded-for") for seen in upstream.seen] == [
        b"127.0.0.1",
        b"127.0.0.1",
    ]
    # No header: the request is not served, the connection closed.
    reply = await plain_exchange(gourmet.port, GET)
    assert reply == b""
    await wait_for_log(gourmet, "closed a connection from 127.0.0.1: no PROXY")
    # A broken one: the same.
    reply = await plain_exchange(gourmet.port, b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n" + GET)
    assert reply == b""
    await wait_for_log(gourmet, "not an IPv4 address")
    # Silence: closed after header_timeout (1 s here), without a word.
    client = RawClient(gourmet.port)
    await client.send(b"PROXY TCP4 ")
    started_at = time.monotonic()
    assert await client.read_until_closed(timeout=5) == b""
    assert client.closed and time.monotonic() - started_at < 4
    client.close()
    await wait_for_log(gourmet, "no whole PROXY protocol header within header_timeout")
    # Under TLS too: a ClientHello where the header should be.
    with pytest.raises((ssl.SSLError, OSError)):
        await deferToThread(tls_exchange, tls_port, b"")
    assert len(upstream.seen) == 2
    # The admin console reads no header, from anyone.
    assert gourmet.admin_port is not None
    console = (
        b"GET /api/upstreams HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert status_of(await plain_exchange(gourmet.admin_port, console)) == 200


@pytest_twisted.ensureDeferred
async def test_a_header_from_an_address_not_listed_is_refused(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any, authority: Authority
) -> None:
    upstream, gourmet, tls_port = await started(
        tmp_path, processes, make_upstreams, authority, '["10.0.0.0/8"]'
    )
    here = ("127.0.0.1", gourmet.port)
    for header in (encode_v1(CLIENT, here), encode_v2(CLIENT, here)):
        reply = await plain_exchange(gourmet.port, header + GET)
        assert reply == b""
    log = await wait_for_log(gourmet, "refused a PROXY protocol header from 127.0.0.1")
    assert log.count("refused a PROXY protocol header from 127.0.0.1") == 2
    with pytest.raises((ssl.SSLError, OSError)):
        await deferToThread(tls_exchange, tls_port, encode_v1(CLIENT, here))
    assert upstream.seen == []
    # Its clients without a header are served as ever, with their own address.
    reply = await plain_exchange(gourmet.port, GET)
    assert status_of(reply) == 200
    status, _, _ = await deferToThread(tls_exchange, tls_port, b"")
    assert status == 200
    assert [seen.header(b"x-forwarded-for") for seen in upstream.seen] == [
        b"127.0.0.1",
        b"127.0.0.1",
    ]
    assert await logged_addresses(tmp_path, 2) == ["127.0.0.1", "127.0.0.1"]


# -- the reader in memory, on a Clock ------------------------------------------


class Recorder(Protocol):
    """
    The listener's own protocol: what it heard, and from whom.
    """

    def __init__(self) -> None:
        self.received = b""
        self.peer: Any = None
        self.lost = False

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: List[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        self.built.append(Recorder())
        return self.built[-1]


def reader(
    accept: Tuple[str, ...], peer: str = "127.0.0.1"
) -> Tuple[Any, StringTransport, RecorderFactory, Clock]:
    clock = Clock()
    site = SimpleNamespace(
        clock=clock,
        frontend=FrontendConfig(
            locations=(), accept_proxy_protocol=accept, header_timeout=3
        ),
    )
    own = RecorderFactory()
    factory = ProxyHeaderFactory(own, site)
    address = IPv4Address("TCP", peer, 40000)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport, own, clock


def test_without_accept_proxy_protocol_no_reader_is_there() -> None:
    protocol, _, own, _ = reader(())
    assert protocol is own.built[0]


def test_the_header_may_come_a_byte_at_a_time_within_header_timeout() -> None:
    protocol, transport, own, clock = reader(("127.0.0.0/8",))
    data = encode_v1(CLIENT, ("127.0.0.1", 8080)) + GET
    (recorder,) = own.built
    for index in range(len(data)):
        clock.advance(0.01)
        protocol.dataReceived(data[index : index + 1])
    assert recorder.peer == IPv4Address("TCP", *CLIENT)
    assert recorder.received == GET
    clock.advance(10)
    assert not transport.disconnecting and not recorder.lost


def test_a_header_not_whole_within_header_timeout_closes() -> None:
    protocol, transport, own, clock = reader(("127.0.0.1",))
    protocol.dataReceived(b"PROXY TCP4 203.0.113.7")
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    # The listener's own protocol never heard of the connection.
    assert own.built[0].peer is None and not own.built[0].lost
    assert clock.getDelayedCalls() == []


def test_an_unlisted_peer_is_served_at_once_without_a_deadline() -> None:
    protocol, transport, own, clock = reader(("10.0.0.0/8",))
    (recorder,) = own.built
    assert recorder.peer == IPv4Address("TCP", "127.0.0.1", 40000)
    assert clock.getDelayedCalls() == []
    protocol.dataReceived(b"GE")
    protocol.dataReceived(b"T / HTTP/1.1\r\n")
    assert recorder.received == b"GET / HTTP/1.1\r\n"
    protocol.dataReceived(b"more")
    assert recorder.received.endswith(b"more")
    assert not transport.disconnecting


# -- to upstream servers: nginx reads the header --------------------------------


class NginxReader:
    """
    Debian's nginx reading PROXY headers (``listen ... proxy_protocol``) on
    127.0.0.1 and ::1, and before TLS on another port of 127.0.0.1 (with
    a certificate for ``up.test``), answering each request with what the
    header said and its connection's number: ``203.0.113.7 51000 c=3``.

    The test binds the sockets (port 0) and nginx inherits them, as it
    does on a binary upgrade (``NGINX=fd;fd;``): no port number is picked
    and released.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sockets = [
            _listening(socket.AF_INET, "127.0.0.1"),
            _listening(socket.AF_INET6, "::1"),
            _listening(socket.AF_INET, "127.0.0.1"),
        ]
        self.port4, self.port6, self.tls_port = (
            each.getsockname()[1] for each in self.sockets
        )
        Authority(directory).issue("up", ["up.test"])
        answer = (
            "        location / { return 200"
            ' "$proxy_protocol_addr $proxy_protocol_port c=$connection"; }\n'
        )
        temp = directory / "nginx-temp"
        conf = directory / "nginx.conf"
        conf.write_text(
            "daemon off;\nmaster_process on;\nworker_processes 1;\n"
            f"pid {directory}/nginx.pid;\nerror_log {directory}/nginx-error.log info;\n"
            "events { worker_connections 64; }\nhttp {\n"
            f"    client_body_temp_path {temp}; proxy_temp_path {temp};\n"
            f"    fastcgi_temp_path {temp}; uwsgi_temp_path {temp};\n"
            f"    scgi_temp_path {temp};\n    access_log off;\n"
            "    server {\n"
            f"        listen 127.0.0.1:{self.port4} proxy_protocol;\n"
            f"        listen [::1]:{self.port6} proxy_protocol;\n"
            f"{answer}    }}\n"
            "    server {\n"
            f"        listen 127.0.0.1:{self.tls_port} ssl proxy_protocol;\n"
            f"        ssl_certificate {directory}/up.pem;\n"
            f"        ssl_certificate_key {directory}/up.key;\n"
            f"{answer}    }}\n}}\n"
        )
        fds = [each.fileno() for each in self.sockets]
        self.process = subprocess.Popen(
            ["nginx", "-p", str(directory), "-c", str(conf), "-e", "stderr"],
            env={**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)},
            pass_fds=fds,
            stdout=subprocess.DEVNULL,
            stderr=(directory / "nginx.err").open("wb"),
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        for each in self.sockets:
            each.close()


def _listening(family: socket.AddressFamily, host: str) -> socket.socket:
    listening = socket.socket(family)
    if family == socket.AF_INET6:
        listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listening.bind((host, 0))
    listening.listen(64)
    listening.set_inheritable(True)
    return listening


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxReader]:
    if shutil.which("nginx") is None:
        pytest.skip("Debian's nginx is not installed (./dev setup installs it)")
    reader = NginxReader(tmp_path)
    yield reader
    reader.stop()


def sending(nginx: NginxReader, server_extra: str = "") -> str:
    """
    Gourmet on 127.0.0.1 and ::1, with an upstream per PROXY version and
    server address family, each at ``/VERSION/FAMILY``.
    """
    lines = []
    for version in ("v1", "v2"):
        for family, path in (
            ("4", f"127.0.0.1:{nginx.port4}"),
            ("6", f"[::1]:{nginx.port6}"),
        ):
            name = f"{version}_{family}"
            lines += [
                f"[upstreams.{name}]",
                f'proxy_protocol = "{version}"',
                f"[[upstreams.{name}.servers]]",
                f'path = "{path}"',
            ]
    lines += [
        "[upstreams.tls]",
        'proxy_protocol = "v2"',
        "[[upstreams.tls.servers]]",
        f'path = "https://127.0.0.1:{nginx.tls_port}"',
        "tls_verify = false",
        "[server]",
        "listen = ['tcp:0:interface=127.0.0.1', 'tcp6:0:interface=\\:\\:1']",
        server_extra,
        "[[server.locations]]",
        'location = "^/tls"',
        'upstream = "tls"',
    ]
    for version in ("v1", "v2"):
        for family in ("4", "6"):
            lines += [
                "[[server.locations]]",
                f'location = "^/{version}/{family}"',
                f'upstream = "{version}_{family}"',
            ]
    return "\n".join(lines) + "\n"


async def ask(
    port: int, path: str, host: str = "127.0.0.1", head: str = ""
) -> Tuple[str, int]:
    """
    What nginx says the PROXY header told it about a request for ``path``
    from a new client on ``host``, and that client's own port.
    """
    client = RawClient(port, host)
    try:
        return await ask_on(client, path, head), client.socket.getsockname()[1]
    finally:
        client.close()


async def ask_on(client: RawClient, path: str, head: str = "") -> str:
    await client.send(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n{head}\r\n".encode())
    reply = await client.read_response()
    assert status_of(reply) == 200, reply
    return reply.partition(b"\r\n\r\n")[2].decode()


@pytest_twisted.ensureDeferred
async def test_upstreams_read_the_clients_address_from_v1_and_v2_headers(
    gourmet: Any, nginx: NginxReader
) -> None:
    running = await gourmet(sending(nginx))
    port6 = running.service.listeners[1].port_number()
    for version in ("v1", "v2"):
        for family in ("4", "6"):
            # An IPv4 client, then an IPv6 one, to each server.
            said, port = await ask(running.port, f"/{version}/{family}")
            assert said.startswith(f"127.0.0.1 {port} c="), (version, family, said)
            said, port = await ask(port6, f"/{version}/{family}", host="::1")
            assert said.startswith(f"::1 {port} c="), (version, family, said)
    # To an HTTPS server, the header goes before the TLS handshake.
    said, port = await ask(running.port, "/tls")
    assert said.startswith(f"127.0.0.1 {port} c=")


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_carries_one_clients_requests_only(
    gourmet: Any, nginx: NginxReader
) -> None:
    running = await gourmet(sending(nginx))
    first, second = RawClient(running.port), RawClient(running.port)
    try:
        one = await ask_on(first, "/v2/4")
        other = await ask_on(second, "/v2/4")
        again = await ask_on(first, "/v2/4")
        other_again = await ask_on(second, "/v2/4")
        port_of = {c: c.socket.getsockname()[1] for c in (first, second)}
    finally:
        first.close()
        second.close()
    address, connection = one.rsplit(" ", 1)
    # Each client's requests go on its own upstream connection, kept alive
    # and reused for it alone.
    assert address == f"127.0.0.1 {port_of[first]}"
    assert again == one
    assert other.rsplit(" ", 1)[0] == f"127.0.0.1 {port_of[second]}"
    assert other_again == other
    assert other.rsplit(" ", 1)[1] != connection
    pool = running.service.pools["v2_4"]
    assert pool.idle_count() == 2


@pytest_twisted.ensureDeferred
async def test_the_header_carries_the_address_gourmet_believes(
    gourmet: Any, nginx: NginxReader
) -> None:
    # Behind a balancer that sends PROXY headers and is a trusted proxy.
    running = await gourmet(
        sending(
            nginx,
            'accept_proxy_protocol = ["127.0.0.1"]\ntrusted_proxies = ["127.0.0.1"]',
        )
    )
    here = ("127.0.0.1", running.port)
    client = RawClient(running.port)
    try:
        # The client's address from the balancer's PROXY header...
        await client.send(encode_v1(CLIENT, here))
        said = await ask_on(client, "/v1/4")
    finally:
        client.close()
    assert said.startswith("203.0.113.7 51000 c=")
    # ... or from its X-Forwarded-For, when its header is LOCAL: a port
    # the balancer does not tell is sent as 0, which nginx shows as none.
    client = RawClient(running.port)
    try:
        await client.send(encode_v2(None, None))
        said = await ask_on(client, "/v2/6", "X-Forwarded-For: 198.51.100.9\r\n")
    finally:
        client.close()
    assert said.startswith("198.51.100.9  c=")


def test_bytes_after_a_refusal_reach_nobody() -> None:
    # A broken header from a listed balancer: its own protocol never hears.
    protocol, transport, own, _ = reader(("127.0.0.1",))
    protocol.dataReceived(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n")
    assert transport.disconnecting
    protocol.dataReceived(GET)
    assert own.built[0].received == b"" and own.built[0].peer is None
    # A header from elsewhere: its own protocol hears the connection end,
    # never the header nor what follows.
    protocol, transport, own, _ = reader(("10.0.0.0/8",))
    protocol.dataReceived(encode_v2(CLIENT, ("127.0.0.1", 80)))
    assert transport.disconnecting
    protocol.dataReceived(GET)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert own.built[0].received == b"" and own.built[0].lost
