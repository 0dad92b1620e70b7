"""
TCP load balancing end to end: ``twistd gourmet`` with ``[[streams]]`` in
front of TCP servers on loopback and a real Redis server, its figures in
the console's API and ``/metrics``, a graceful stop with a stream open, and
reloads that add, change and remove streams.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import pytest_twisted
import treq

from tests.processes import TEST_WORKERS, Twistd
from tests.processes import start_twistd as start
from tests.rawhttp import sleep
from tests.streams import Firehose, TcpClient, TcpServer, connect
from tests.test_operations import (
    TOKEN,
    exited,
    reload_by_console,
    wait_for_log,
)
from tests.test_streams import stream_config

#: Gourmet's line for each stream, once listening (gourmet.tcp.listeners).
STREAM_LISTENING = re.compile(r"stream (\S+) on (\S+) to upstream (\S+)")

REDIS = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def with_console(text: str, extra_streams: str = "") -> str:
    return (
        text
        + extra_streams
        + "[admin]\nlisten = 'tcp:0:interface=127.0.0.1'\n"
        + f"token = '{TOKEN}'\n"
    )


async def echo_stream(
    tmp_path: Path, processes: List[Twistd], started: Any, shutdown_timeout: float
) -> Tuple[Twistd, int, TcpClient]:
    """
    Gourmet with a stream to an echo server, and a client that has sent
    ``x`` through it and read its echo.
    """
    echo = started(TcpServer())
    text = stream_config([echo.address]).replace(
        "[server]\n", f"[server]\nshutdown_timeout = {shutdown_timeout}\n"
    )
    gourmet = await start(tmp_path, processes, with_console(text))
    (port,) = stream_ports(gourmet).values()
    client = await connect(port)
    client.send(b"x")
    assert await client.read(1) == b"x"
    return gourmet, port, client


def stream_ports(gourmet: Twistd, log: str = "") -> Dict[str, int]:
    """
    Each stream's port by its ``listen`` string, as the latest lines say.
    """
    found = STREAM_LISTENING.findall(log or gourmet.stderr.read_text())
    return {listen: int(address.rsplit(":", 1)[1]) for listen, address, _ in found}


async def api(gourmet: Twistd) -> Dict[str, Any]:
    response = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams", pool=gourmet.pool
    )
    document: Dict[str, Any] = await response.json()
    return document


async def metrics(gourmet: Twistd) -> str:
    response = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/metrics", pool=gourmet.pool
    )
    text: str = await response.text()
    return text


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            names, value = line.rsplit(" ", 1)
            found = ",".join(sorted(names[len(name) + 1 : -1].split(",")))
            if found == wanted:
                return float(value)
    raise AssertionError(f"no {name}{{{wanted}}} in {text}")


@pytest_twisted.ensureDeferred
async def test_streams_balance_by_weight_skip_a_down_server_and_count_bytes(
    tmp_path: Path, processes: List[Twistd], started: Any
) -> None:
    a = started(TcpServer(greeting=b"a"))
    b = started(TcpServer(greeting=b"b"))
    down = started(TcpServer(greeting=b"down"))
    await down.stop()  # refuses connections
    text = stream_config(
        [a.address, b.address, down.stopped_address], weights=[3, 1, 1]
    )
    gourmet = await start(tmp_path, processes, with_console(text))
    (port,) = stream_ports(gourmet).values()
    seen: Counter[bytes] = Counter()
    sent = 0
    for index in range(40):
        client = await connect(port)
        greeting = await client.read(1)
        payload = b"%d:" % index + b"z" * (1000 * index)
        client.send(payload)
        sent += len(payload)
        assert (await client.read(len(greeting) + len(payload)))[1:] == payload
        seen[greeting] += 1
        client.shutdown_write()
        await client.read_to_end()
    # The down server was tried once, counted as failed and skipped; its
    # client went to another server and saw nothing of it.
    assert seen[b"a"] + seen[b"b"] == 40 and b"down" not in seen
    assert 28 <= seen[b"a"] <= 31 and 9 <= seen[b"b"] <= 12
    assert a.received + b.received == sent
    await sleep(0.2)
    document = await api(gourmet)
    (stream,) = document["streams"]
    assert stream["upstream"] == "tcp"
    assert stream["connections"] == {"active": 0, "total": 40, "failed": 0}
    # Each client got its server's one-byte greeting and its echo.
    assert stream["bytes"] == {"received": sent, "sent": sent + 40}
    (upstream,) = document["upstreams"]
    servers = {server["address"]: server for server in upstream["servers"]}
    assert servers[down.stopped_address]["state"] == "down"
    assert "Connection refused" in servers[down.stopped_address]["last_error"]
    assert servers[down.stopped_address]["errors"]["hidden"] == 1
    assert servers[a.address]["bytes"]["sent"] == a.received
    text = await metrics(gourmet)
    labels = {"stream": "tcp:0:interface=127.0.0.1", "upstream": "tcp"}
    assert metric(text, "gourmet_stream_connections_total", **labels) == 40
    assert metric(text, "gourmet_stream_active_connections", **labels) == 0
    assert metric(text, "gourmet_stream_received_bytes_total", **labels) == sent
    assert metric(text, "gourmet_stream_sent_bytes_total", **labels) == sent + 40
    server_labels = {"upstream": "tcp", "server": b.address}
    assert metric(text, "gourmet_upstream_sent_bytes_total", **server_labels) == (
        b.received
    )
    # One line per connection, when it ends.
    log = gourmet.stderr.read_text()
    assert (
        len(
            re.findall(r"stream tcp:0:interface=127\.0\.0\.1 127\.0\.0\.1:\d+ to ", log)
        )
        == 40
    )
    assert "bytes from the client" in log and "ended: closed" in log
    # And nothing else per connection: no "Starting factory" line of
    # Twisted's for each server connection (the site's, at start, is all:
    # one per process, with workers).
    assert log.count("Starting factory") == 1 + int(TEST_WORKERS or 0)


# -- Redis through a stream ----------------------------------------------------


def on_a_free_port(
    command: Callable[[int], List[str]], ready: Callable[[int], bool]
) -> Iterator[int]:
    """
    Run ``command(port)`` on a free loopback port until it exits (the
    generator closed): its port, once ``ready(port)``.

    Redis cannot listen on port 0 and say which port it got (its ``--port
    0`` means no TCP at all), nor can nginx: a port is picked here, and the
    start tried again on another if something took it meanwhile.
    """
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        process = subprocess.Popen(
            command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if ready(port):
                try:
                    yield port
                finally:
                    process.terminate()
                    process.wait(10)
                return
            time.sleep(0.05)
        process.kill()
        process.wait(10)
    raise AssertionError(f"{command(0)[0]} did not start")


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[str]:
    """
    A Redis server on loopback, in its own directory, without persistence:
    its address.
    """
    if REDIS is None or REDIS_CLI is None:
        pytest.skip("needs Debian's redis-server and redis-tools (./dev setup)")
    redis = REDIS

    def command(port: int) -> List[str]:
        return [
            *(redis, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(tmp_path), "--daemonize", "no"),
        ]

    for port in on_a_free_port(command, lambda port: redis_cli(port, "PING") == "PONG"):
        yield f"127.0.0.1:{port}"


def redis_cli(port: int, *command: str, data: bytes = b"") -> str:
    assert REDIS_CLI is not None
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *command],
        input=data,
        capture_output=True,
        timeout=10,
    )
    return done.stdout.decode().strip()


@pytest_twisted.ensureDeferred
async def test_redis_through_a_stream(
    tmp_path: Path, processes: List[Twistd], redis: str
) -> None:
    text = stream_config([redis])
    gourmet = await start(tmp_path, processes, with_console(text))
    (port,) = stream_ports(gourmet).values()
    assert redis_cli(port, "SET", "greeting", "hello through gourmet") == "OK"
    assert redis_cli(port, "GET", "greeting") == "hello through gourmet"
    # A value of 2 MiB, from standard input (-x), and its length read back.
    big = b"v" * (2 * 1024 * 1024)
    assert redis_cli(port, "-x", "SET", "big", data=big) == "OK"
    assert redis_cli(port, "STRLEN", "big") == str(len(big))
    redis_port = int(redis.rsplit(":", 1)[1])
    # Seen by Redis itself, not only through Gourmet.
    assert redis_cli(redis_port, "GET", "greeting") == "hello through gourmet"
    document = await api(gourmet)
    (stream,) = document["streams"]
    assert stream["connections"]["total"] == 4
    assert stream["bytes"]["received"] > len(big)


# -- PROXY protocol headers read by nginx ----------------------------------------

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
)
NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@pytest.fixture
def nginx_reader(tmp_path: Path) -> Iterator[str]:
    """
    Debian's nginx with its stream module, reading a PROXY protocol header
    on each connection and answering with what it read: its address.
    """
    if NGINX is None or not NGINX_STREAM.exists():
        pytest.skip("needs Debian's nginx and libnginx-mod-stream (./dev setup)")
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    nginx = NGINX
    config = workdir / "nginx.conf"

    def command(port: int) -> List[str]:
        config.write_text(
            f"load_module {NGINX_STREAM};\n"
            "daemon off;\nmaster_process off;\nworker_processes 1;\n"
            f"pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log warn;\n"
            "events { worker_connections 64; }\n"
            "stream {\n"
            f"    server {{\n        listen 127.0.0.1:{port} proxy_protocol;\n"
            '        return "$proxy_protocol_addr $proxy_protocol_port'
            ' $proxy_protocol_server_addr $proxy_protocol_server_port\\n";\n'
            "    }\n}\n"
        )
        return [nginx, "-p", str(workdir), "-c", str(config), "-e", "error.log"]

    for port in on_a_free_port(command, accepts):
        yield f"127.0.0.1:{port}"


@pytest_twisted.ensureDeferred
async def test_nginx_reads_the_client_from_proxy_headers_v1_and_v2(
    tmp_path: Path, processes: List[Twistd], nginx_reader: str
) -> None:
    text = stream_config([nginx_reader], stream_extra='proxy_protocol = "v1"')
    text += (
        "[[streams]]\nlisten = 'tcp:0:interface=127.0.0.2'\nupstream = 'tcp'\n"
        'proxy_protocol = "v2"\n'
    )
    gourmet = await start(tmp_path, processes, with_console(text))
    ports = stream_ports(gourmet)
    for listen, host in [
        ("tcp:0:interface=127.0.0.1", "127.0.0.1"),
        ("tcp:0:interface=127.0.0.2", "127.0.0.2"),
    ]:
        client = await connect(ports[listen], host)
        client_port = client.tcp.getHost().port
        said = await client.read_to_end()
        # nginx's $proxy_protocol_addr and _port: the client, as it
        # connected to Gourmet; the server's: Gourmet's stream listener.
        assert said == f"127.0.0.1 {client_port} {host} {ports[listen]}\n".encode()


# -- stopping and reloading ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_graceful_stop_lets_an_open_stream_finish(
    tmp_path: Path, processes: List[Twistd], started: Any
) -> None:
    gourmet, port, client = await echo_stream(tmp_path, processes, started, 20)
    gourmet.process.send_signal(signal.SIGTERM)
    await wait_for_log(gourmet, "waiting up to 20.0s")
    # No new connection is accepted, the open one goes on.
    refused = socket.socket()
    assert refused.connect_ex(("127.0.0.1", port)) != 0
    refused.close()
    client.send(b" and after")
    assert await client.read(11) == b"x and after"
    assert gourmet.process.poll() is None
    client.shutdown_write()
    await client.read_to_end()
    assert await exited(gourmet, 10) == 0
    log = gourmet.stderr.read_text()
    assert "every request in flight was answered" in log
    assert "11 bytes from the client, 11 from the server; ended: closed" in log


@pytest_twisted.ensureDeferred
async def test_a_stream_longer_than_shutdown_timeout_is_cut(
    tmp_path: Path, processes: List[Twistd], started: Any
) -> None:
    gourmet, _, client = await echo_stream(tmp_path, processes, started, 0.5)
    gourmet.process.send_signal(signal.SIGTERM)
    assert await exited(gourmet, 10) == 0
    await client.read_to_end()
    log = gourmet.stderr.read_text()
    assert "cut 1 client connections still open after 0.5s" in log
    assert "ended: cut at stop" in log


@pytest_twisted.ensureDeferred
async def test_reloads_add_change_and_remove_streams(
    tmp_path: Path, processes: List[Twistd], started: Any
) -> None:
    a = started(TcpServer(greeting=b"a"))
    b = started(TcpServer(greeting=b"b"))
    first = stream_config([a.address])
    gourmet = await start(tmp_path, processes, with_console(first))
    (port,) = stream_ports(gourmet).values()
    kept = await connect(port)
    assert await kept.read(1) == b"a"
    # The stream now goes to b, and a second one is added on another port.
    second = (
        stream_config([b.address])
        + "[[streams]]\nlisten = 'tcp:0:interface=127.0.0.2'\nupstream = 'tcp'\n"
    )
    (tmp_path / "gourmet.toml").write_text(with_console(second))
    gourmet.process.send_signal(signal.SIGHUP)
    await wait_for_log(gourmet, "gourmet reloaded")
    client = await connect(port)
    assert await client.read(1) == b"b"
    client.close()
    document = await api(gourmet)
    listens = [stream["listen"] for stream in document["streams"]]
    assert listens == ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]
    added = int(document["streams"][1]["address"].rsplit(":", 1)[1])
    assert added != port
    # The connection open across the reload is still joined to a.
    kept.send(b"still there")
    assert await kept.read(12) == b"astill there"
    # A reload that drops the first stream closes its listener; its open
    # connection runs on.
    only_second = stream_config([b.address]).replace(
        "interface=127.0.0.1'\nupstream", "interface=127.0.0.2'\nupstream"
    )
    (tmp_path / "gourmet.toml").write_text(with_console(only_second))
    gourmet.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gourmet.stderr.read_text().count("gourmet reloaded") < 2:
        assert time.monotonic() < deadline
        await sleep(0.05)
    assert len((await api(gourmet))["streams"]) == 1
    # At once in one process; with workers, once the old ones (which
    # served until the new ones did) have closed their copies.
    while not _refused(port):
        assert time.monotonic() < deadline
        await sleep(0.05)
    kept.send(b"!")
    assert await kept.read(13) == b"astill there!"
    kept.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_whose_port_is_taken_fails_the_reload(
    tmp_path: Path, processes: List[Twistd], started: Any
) -> None:
    echo = started(TcpServer(greeting=b"e"))
    text = stream_config([echo.address])
    gourmet = await start(tmp_path, processes, with_console(text))
    (port,) = stream_ports(gourmet).values()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        added = (
            f"[[streams]]\nlisten = 'tcp:{busy}:interface=127.0.0.1'\n"
            "upstream = 'tcp'\n"
        )
        (tmp_path / "gourmet.toml").write_text(with_console(text + added))
        code, answer = await reload_by_console(gourmet)
    assert code == 400
    assert "streams[1].listen: cannot listen" in answer["description"]
    assert "Address already in use" in answer["description"]
    # Nothing changed: the stream there before still serves.
    assert len((await api(gourmet))["streams"]) == 1
    client = await connect(port)
    assert await client.read(1) == b"e"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_leaves_gourmets_memory_flat(
    tmp_path: Path, processes: List[Twistd], started: Any
) -> None:
    hose = started(TcpServer(protocol=Firehose))
    gourmet = await start(
        tmp_path, processes, with_console(stream_config([hose.address]))
    )
    (port,) = stream_ports(gourmet).values()
    before = gourmet.rss_kib()
    clients = [await connect(port) for _ in range(4)]
    for client in clients:
        client.tcp.pauseProducing()  # reads nothing
    await sleep(2.0)
    sent = sum(each.sent for each in hose.firehoses)
    # Each server is held back once the sockets' buffers are full: Gourmet
    # read a few MiB per connection, and kept its memory.
    assert sent < 4 * 32 * 1024 * 1024
    assert all(each.paused for each in hose.firehoses)
    assert gourmet.rss_kib() - before < 20 * 1024
    for client in clients:
        client.close()


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0
