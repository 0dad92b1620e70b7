"""
Listeners' backlog: a burst of new connections waits in the kernel's
queue rather than being dropped and retried seconds later.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from gourmet.config.endpoints import (
    DEFAULT_BACKLOG,
    default_backlog,
    with_backlog,
    with_unix_mode,
)
from tests.configs import config


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8080", "tcp:8080:backlog=4096"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=4096"),
        ("tcp6:8080", "tcp6:8080:backlog=4096"),
        ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=4096"),
        ("unix:/run/g.sock", "unix:/run/g.sock:backlog=4096"),
        # An explicit backlog wins, as keyword or as tcp6's second argument.
        ("tcp:8080:backlog=50", "tcp:8080:backlog=50"),
        ("tcp:8080:backlog=50:interface=::1", "tcp:8080:backlog=50:interface=::1"),
        ("tcp6:8080:50:::1", "tcp6:8080:50:::1"),
        # A socket systemd made listens already.
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_with_backlog(description: str, expected: str) -> None:
    assert with_backlog(description, 4096) == expected


def test_default_backlog_is_somaxconn_but_never_below_nginx(tmp_path: Path) -> None:
    limit = tmp_path / "somaxconn"
    limit.write_text("4096\n")
    assert default_backlog(str(limit)) == 4096
    limit.write_text("128\n")
    assert default_backlog(str(limit)) == DEFAULT_BACKLOG == 511
    assert default_backlog(str(tmp_path / "absent")) == 511


def listen_queue(port: int) -> int:
    """
    The listen queue's length the kernel reports for a listening port
    (``ss``: Send-Q of a listening socket is its backlog).
    """
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("no ss (iproute2) to read the listen queue with")
    output = subprocess.run(
        [ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    (line,) = output.splitlines()
    return int(line.split()[2])


@pytest_twisted.ensureDeferred
async def test_listeners_get_the_default_backlog(gourmet: Any) -> None:
    running = await gourmet(config(["127.0.0.1:9"]))
    assert listen_queue(running.port) == default_backlog()


@pytest_twisted.ensureDeferred
async def test_backlog_setting_and_an_explicit_one_in_the_endpoint(
    gourmet: Any,
) -> None:
    running = await gourmet(config(["127.0.0.1:9"], server_extra="backlog = 700"))
    assert listen_queue(running.port) == 700
    text = config(["127.0.0.1:9"], server_extra="backlog = 700").replace(
        "interface=127.0.0.1", "interface=127.0.0.1:backlog=60"
    )
    running = await gourmet(text)
    assert listen_queue(running.port) == 60


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("unix:/run/gourmet/admin.sock", "unix:/run/gourmet/admin.sock:mode=660"),
        ("unix:address=/run/a.sock:mode=600", "unix:address=/run/a.sock:mode=600"),
        ("tcp:8081:interface=127.0.0.1", "tcp:8081:interface=127.0.0.1"),
    ],
)
def test_with_unix_mode(description: str, expected: str) -> None:
    assert with_unix_mode(description, "660") == expected


@pytest_twisted.ensureDeferred
async def test_the_consoles_unix_socket_is_not_for_every_user(
    gourmet: Any, tmp_path: Path
) -> None:
    socket_path = tmp_path / "admin.sock"
    await gourmet(config(["127.0.0.1:9"]) + f'[admin]\nlisten = "unix:{socket_path}"\n')
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
