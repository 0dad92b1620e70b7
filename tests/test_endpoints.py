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
    check_tls_files,
    default_backlog,
    tls_files,
    with_backlog,
    with_files_from,
    with_unix_mode,
)
from tests.configs import config
from tests.test_tls import certificate_files


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


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (
            "ssl:8443:privateKey=key.pem:certKey=cert.pem",
            "ssl:8443:privateKey=/etc/g/key.pem:certKey=/etc/g/cert.pem",
        ),
        # Positional, as Twisted names them: port, privateKey, certKey,
        # sslmethod, interface, backlog, extraCertChain, dhParameters.
        (
            "ssl:8443:k.pem:c.pem:SSLv23_METHOD:127.0.0.1:50:chain.pem:dh.pem",
            "ssl:8443:/etc/g/k.pem:/etc/g/c.pem:SSLv23_METHOD:127.0.0.1:50"
            ":/etc/g/chain.pem:/etc/g/dh.pem",
        ),
        (
            "ssl:8443:privateKey=tls/k.pem:extraCertChain=../chain.pem",
            "ssl:8443:privateKey=/etc/g/tls/k.pem:extraCertChain=/etc/chain.pem",
        ),
        # Twisted's default key file, server.pem, is found there too.
        (
            "ssl:8443:interface=\\:\\:1",
            "ssl:8443:interface=\\:\\:1:privateKey=/etc/g/server.pem",
        ),
        # Escapes survive: a colon in a file name.
        ("ssl:8443:privateKey=a\\:b.pem", "ssl:8443:privateKey=/etc/g/a\\:b.pem"),
        # Absolute names, and other endpoint types, are left as they are.
        (
            "ssl:8443:privateKey=/k.pem:certKey=/c.pem",
            "ssl:8443:privateKey=/k.pem:certKey=/c.pem",
        ),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
        ("unix:key.pem", "unix:key.pem"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_certificate_files_are_found_from_the_configuration(
    description: str, expected: str
) -> None:
    assert with_files_from(description, "/etc/g") == expected


def test_the_files_of_an_ssl_endpoint_are_those_twisted_reads() -> None:
    assert tls_files("ssl:8443:privateKey=/k.pem") == {
        "privateKey": "/k.pem",
        "certKey": "/k.pem",
    }
    assert tls_files("ssl:8443:/k.pem:/c.pem:dhParameters=/dh.pem") == {
        "privateKey": "/k.pem",
        "certKey": "/c.pem",
        "dhParameters": "/dh.pem",
    }
    assert tls_files("tcp:8443") == {}


def test_tls_files_that_go_together_pass(tmp_path: Path) -> None:
    key, certificate = certificate_files(tmp_path)
    check_tls_files(f"ssl:8443:privateKey={key}:certKey={certificate}")
    # Key and certificate in one file, as Twisted's server.pem.
    both = tmp_path / "server.pem"
    both.write_bytes(key.read_bytes() + certificate.read_bytes())
    check_tls_files(f"ssl:8443:privateKey={both}")
    check_tls_files("tcp:8443:privateKey=/nowhere.pem")


def test_tls_files_that_do_not_go_together_say_which(tmp_path: Path) -> None:
    key, certificate = certificate_files(tmp_path)
    other_key, _ = certificate_files(tmp_path / "other")
    problems = {
        f"privateKey={tmp_path / 'no.pem'}:certKey={certificate}": (
            f"cannot read {tmp_path / 'no.pem'}: No such file or directory"
        ),
        f"privateKey={other_key}:certKey={certificate}": (
            f"the private key in {other_key} does not match the certificate in"
            f" {certificate}"
        ),
        f"privateKey={key}:certKey={key}": f"no PEM certificate in {key}",
        f"privateKey={certificate}:certKey={certificate}": (
            f"no PEM private key in {certificate}"
        ),
    }
    for arguments, problem in problems.items():
        with pytest.raises(ValueError) as raised:
            check_tls_files(f"ssl:8443:{arguments}")
        assert str(raised.value) == problem


def test_an_encrypted_private_key_is_refused_in_one_line(tmp_path: Path) -> None:
    key, certificate = certificate_files(tmp_path, password=b"secret")
    with pytest.raises(ValueError) as raised:
        check_tls_files(f"ssl:8443:privateKey={key}:certKey={certificate}")
    assert str(raised.value) == (
        f"the private key in {key} is encrypted: Gourmet needs it without a passphrase"
    )
