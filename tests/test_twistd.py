"""
Gourmet as users run it: ``twistd -n gourmet --config FILE`` in a process
of its own, spoken to over TCP.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from gourmet import __version__ as gourmet_version
from tests.processes import (
    GOURMET,
    TWISTD,
)
from tests.rawhttp import sleep
from tests.reference import reference_config

#: Listen settings for a port the system picks, which twistd then tells.
LISTEN = "tcp:0:interface=127.0.0.1"


@pytest.mark.one_process
@pytest_twisted.ensureDeferred
async def test_reference_configuration_runs_under_twistd(
    twistd_on: Any, make_upstreams: Any
) -> None:
    servers = make_upstreams("api1", "api2", "api3", "static1", "static2", "static3")
    text = reference_config()
    for server in servers:
        text = text.replace(f'"{server.name}.foo.bar"', f'"{server.address}"')
    # server.port takes 1 to 65535: a port the system picks needs listen.
    text = text.replace("port=80", f"listen=['{LISTEN}']")
    assert "foo.bar" not in text
    text += f'\n[admin]\nlisten = "{LISTEN}"\n'
    gourmet = await twistd_on(text)
    api = []
    for _ in range(7):
        response = await gourmet.get("/api/users")
        assert response.code == 200
        api.append(json.loads(await response.content())["server"])
    # weights 5, 1, 1
    assert api == ["api1", "api1", "api2", "api1", "api3", "api1", "api1"]
    response = await gourmet.get("/static/css/site.css")
    assert json.loads(await response.content())["server"] == "static1"
    response = await gourmet.get("/elsewhere")
    assert response.code == 404
    await response.content()
    # The admin console of the same process counts what went where.
    console = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams/backend",
        pool=gourmet.pool,
    )
    counted = {s["address"]: s["requests"] for s in (await console.json())["servers"]}
    assert counted == {
        servers[0].address: 5,
        servers[1].address: 1,
        servers[2].address: 1,
    }
    # Which Gourmet this is, and the 404 it answered itself.
    console = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams", pool=gourmet.pool
    )
    everything = await console.json()
    instance = everything["instance"]
    assert instance["pid"] == gourmet.process.pid
    assert instance["config_file"] == str(gourmet.config.resolve())
    assert instance["version"] == gourmet_version
    assert 0 < instance["uptime"] < 60
    proxy = everything["listeners"][0]
    assert proxy["addresses"] == [f"127.0.0.1:{gourmet.port}"]
    assert proxy["refusals"] == {"404": 1}
    # A graceful stop: nothing was in flight, and it exits 0.
    assert gourmet.stop() == 0
    log = gourmet.stderr.read_text()
    assert "received SIGTERM: stopping" in log
    assert "Main loop terminated" in log
    access_log = gourmet.stdout.read_text()
    assert '"GET /api/users HTTP/1.1" 200' in access_log
    assert f"upstream={servers[0].address}" in access_log
    assert "gourmet listening on" in gourmet.stderr.read_text()


BAD_CONFIGS = [
    (
        "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\nweight=-1\n"
        "[server]\n[[server.locations]]\nlocation='/'\nupstream='b'\n",
        "upstreams.b.servers[0].weight",
    ),
    (
        "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\nwieght=2\n"
        "[server]\n[[server.locations]]\nlocation='/'\nupstream='b'\n",
        "did you mean 'weight'",
    ),
    (
        "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\n"
        "[server]\n[[server.locations]]\nlocation='/'\nupstream='c'\n",
        "server.locations[0].upstream",
    ),
    (
        "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\n"
        "[server]\nlisten=['nonsense:1']\n"
        "[[server.locations]]\nlocation='/'\nupstream='b'\n",
        "server.listen[0]",
    ),
    ("[upstreams\n", "gourmet.toml"),
]


@pytest.mark.parametrize(("text", "named"), BAD_CONFIGS)
def test_bad_configuration_stops_twistd_with_one_line(
    tmp_path: Path, text: str, named: str
) -> None:
    config = tmp_path / "gourmet.toml"
    config.write_text(text)
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "gourmet", "--config", str(config)],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"gourmet: {config}")
    assert named in lines[0]
    # `gourmet check` (the installed command) finds it first, in that line.
    checked = subprocess.run(
        [*GOURMET, "check", str(config)], capture_output=True, timeout=60
    )
    assert (checked.returncode, checked.stdout) == (1, b"")
    assert checked.stderr == result.stderr


@pytest_twisted.ensureDeferred
async def test_slow_client_does_not_make_the_proxy_buffer(
    twistd_on: Any, make_upstreams: Any
) -> None:
    """
    A client reading slowly holds the upstream back instead of filling the
    proxy's memory (stock ReverseProxyResource would buffer it all).
    """
    (server,) = make_upstreams("big")
    gourmet = await twistd_on(
        f"[upstreams.b]\n[[upstreams.b.servers]]\npath='{server.address}'\n"
        f"[server]\nlisten=['{LISTEN}']\n"
        "[[server.locations]]\nlocation='/'\nupstream='b'\n"
        "[log]\naccess_log='off'\n[admin]\nlisten='off'\n",
        admin=False,
    )
    size = 96 * 1024 * 1024
    client = socket.create_connection(("127.0.0.1", gourmet.port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    client.setblocking(False)
    received = 0
    start_rss = gourmet.rss_kib()
    rate = 16 * 1024 * 1024  # bytes per second
    started = time.monotonic()
    deadline = started + 60
    while received < size and time.monotonic() < deadline:
        allowed = (time.monotonic() - started) * rate - received
        while allowed > 0:
            try:
                data = client.recv(min(65536, int(allowed) + 1))
            except BlockingIOError:
                break
            if not data:
                break
            received += len(data)
            allowed -= len(data)
        await sleep(0.01)
    client.close()
    grown = gourmet.rss_kib("VmHWM") - start_rss
    assert received >= size, received
    # The response is 96 MiB; the proxy may hold a few socket buffers.
    assert grown < 32 * 1024, f"proxy grew by {grown} KiB"


def test_twistd_lists_the_plugin_and_its_config_option() -> None:
    result = subprocess.run(
        [*TWISTD, "gourmet", "--help"], capture_output=True, timeout=60, check=True
    )
    usage = result.stdout.decode()
    assert "--config=" in usage
    assert "/etc/gourmet/gourmet.toml" in usage


def test_a_port_in_use_stops_twistd_with_one_clear_line(tmp_path: Path) -> None:
    # Held listening for as long as twistd runs: the port is surely in use.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "gourmet.toml"
        config.write_text(
            "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\n"
            f"[server]\nlisten=['{LISTEN}']\n"
            "[[server.locations]]\nlocation='/'\nupstream='b'\n"
            f"[admin]\nlisten='tcp:{port}:interface=127.0.0.1'\n"
        )
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "gourmet", "--config", str(config)],
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert f"cannot start: Couldn't listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


@pytest_twisted.ensureDeferred
async def test_a_100_mb_body_to_the_console_is_a_json_413_in_bounded_memory(
    twistd_on: Any, make_upstreams: Any
) -> None:
    """
    A chunked body (no Content-Length to refuse it by) sent to the console
    without credentials: refused with a JSON 413 once it passes
    ``[admin] max_body_size``, without the rest being kept anywhere, and
    without a traceback.
    """
    (server,) = make_upstreams("a")
    gourmet = await twistd_on(
        f"[upstreams.b]\n[[upstreams.b.servers]]\npath='{server.address}'\n"
        f"[server]\nlisten=['{LISTEN}']\n"
        "[[server.locations]]\nlocation='/'\nupstream='b'\n"
        f"[log]\naccess_log='off'\n[admin]\nlisten='{LISTEN}'\n"
    )
    before = gourmet.rss_kib()
    client = socket.create_connection(("127.0.0.1", gourmet.admin_port), timeout=10)
    client.sendall(
        b"PATCH /api/upstreams/b/servers/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"100000\r\n" + b"[" * 0x100000 + b"\r\n"
    sent = 0
    with contextlib.suppress(OSError):  # refused: the rest is not wanted
        while sent < 100 * 2**20:
            client.sendall(chunk)
            sent += 0x100000
    reply = b""
    with contextlib.suppress(OSError):
        while data := client.recv(65536):
            reply += data
    client.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert json.loads(body)["status"] == 413
    # Past 64 KiB the rest is read and dropped for a few seconds (so that
    # the client can read its answer, as nginx's lingering close does),
    # never kept.
    assert gourmet.rss_kib() - before < 10 * 1024
    assert "Traceback" not in gourmet.stderr.read_text()
