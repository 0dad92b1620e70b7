"""
The ``gourmet`` command as an operator uses it: ``gourmet check`` says what
start-up would say, ``gourmet init`` writes a file that runs, the versions,
password hashes, and ``gourmet reload`` reaching a running twistd.

The installed console script (``.venv/bin/gourmet``) runs as a process
where what is tested is the command itself; the many configurations are
checked by calling :func:`gourmet.cli.main` in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
import pytest_twisted
import treq

import twisted
from gourmet import __version__, tap
from gourmet.admin.passwords import verify_password
from gourmet.cli import main, starter_config
from gourmet.config.load import load_config
from tests import test_configfile
from tests.processes import (
    ADMIN_CONSOLE,
    GOURMET,
    GOURMET_LISTENING,
    TWISTD,
    Twistd,
    port_of,
    wait_reported,
)
from tests.processes import start_twistd as start
from tests.test_operations import served_by
from tests.test_tls import certificate_files
from tests.test_twistd import LISTEN


def twistd_command(config: Path, pidfile: str = "") -> List[str]:
    return [*TWISTD, "-n", f"--pidfile={pidfile}", "gourmet", "--config", str(config)]


def run(command: List[str], cwd: Path) -> Tuple[int, List[str], List[str]]:
    """
    A command's exit status and the lines it wrote to stdout and stderr.
    """
    result = subprocess.run(command, capture_output=True, timeout=60, cwd=cwd)
    return (
        result.returncode,
        result.stdout.decode().splitlines(),
        result.stderr.decode().splitlines(),
    )


def run_gourmet(cwd: Path, *arguments: str) -> Tuple[int, List[str], List[str]]:
    """
    The installed ``gourmet`` command, run with ``arguments`` in ``cwd``.
    """
    return run([*GOURMET, *arguments], cwd)


def start_up_line(path: Path) -> str:
    """
    The line ``twistd gourmet`` stops with on the file at ``path``, from
    the very code twistd runs (:func:`gourmet.tap.makeService`).
    """
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    with pytest.raises(SystemExit) as exited:
        tap.makeService(options)
    return str(exited.value)


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> Tuple[int, str, str]:
    """
    ``gourmet check`` in this process: its exit status, stdout and stderr.
    """
    status = main(["check", str(path)])
    out, err = capsys.readouterr()
    return status, out, err


# -- gourmet check ----------------------------------------------------------------


def whole_files(tmp_path: Path) -> Iterator[Tuple[str, Path]]:
    """
    Every bad file the configuration tests know, written out, each with
    the key it is wrong at.
    """
    for index, (text, key, _) in enumerate(test_configfile.BAD):
        path = tmp_path / f"bad-{index}.toml"
        path.write_text(text)
        yield key, path
    syntax = tmp_path / "syntax.toml"
    syntax.write_text(test_configfile.config() + "[server\n")
    yield "", syntax
    not_utf8 = tmp_path / "not-utf8.toml"
    not_utf8.write_bytes(b"\xff = 1\n")
    yield "", not_utf8
    yield "", tmp_path / "nowhere.toml"
    token = tmp_path / "admin.token"
    token.write_text(test_configfile.TOKEN)
    token.chmod(0o644)
    shared = tmp_path / "token-shared.toml"
    shared.write_text(
        test_configfile.config(tail='[admin]\ntoken_file = "admin.token"')
    )
    yield "admin.token_file", shared


def test_check_gives_start_ups_line_for_every_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = list(whole_files(tmp_path))
    assert len(files) > 50
    for key, path in files:
        expected = start_up_line(path)
        assert expected.startswith(f"gourmet: {path}: {key}"), expected
        assert check(path, capsys) == (1, "", expected + "\n")


def tls_config(directory: Path, files: str) -> Path:
    path = directory / "gourmet.toml"
    path.write_text(test_configfile.config(frontend=f"listen = ['ssl:8443:{files}']"))
    return path


def test_check_refuses_missing_and_mismatched_certificates_as_twistd_does(
    tmp_path: Path,
) -> None:
    _, certificate = certificate_files(tmp_path / "tls")
    other_key, _ = certificate_files(tmp_path / "other")
    missing = tls_config(tmp_path, "privateKey=tls/key.pem:certKey=tls/none.pem")
    problems = [
        (missing, f"cannot read {tmp_path / 'tls' / 'none.pem'}: No such file"),
        (
            tls_config(
                tmp_path / "other", "privateKey=key.pem:certKey=../tls/cert.pem"
            ),
            f"the private key in {other_key} does not match the certificate in"
            f" {certificate}",
        ),
    ]
    for config, problem in problems:
        started = run(twistd_command(config), tmp_path)
        checked = run_gourmet(tmp_path, "check", str(config))
        assert checked == (1, [], started[2])
        (line,) = checked[2]
        assert line.startswith(f"gourmet: {config}: server.listen[0]: {problem}")


def test_check_says_what_a_good_file_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, certificate = certificate_files(tmp_path / "tls")
    config = tmp_path / "gourmet.toml"
    listen = [
        "tcp:8080:interface=127.0.0.1",
        "ssl:8443:privateKey=tls/key.pem:certKey=tls/cert.pem",
        "systemd:domain=INET:index=0",
    ]
    config.write_text(
        starter_config().replace('["tcp:8080:interface=127.0.0.1"]', json.dumps(listen))
    )
    # Nothing listens: a port in use, or a systemd socket that only
    # exists under systemd, is start-up's to find.
    assert check(config, capsys) == (
        0,
        f"gourmet: {config}: ok (1 upstream, 1 location, listening on"
        f" tcp:8080:interface=127.0.0.1, ssl:8443:privateKey={key}"
        f":certKey={certificate}, systemd:domain=INET:index=0, admin console"
        " on tcp:8081:interface=127.0.0.1)\n",
        "",
    )


def test_check_reads_the_default_file_when_given_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    named = main(["check", "/etc/gourmet/gourmet.toml"]), capsys.readouterr()
    assert (main(["check"]), capsys.readouterr()) == named
    assert "/etc/gourmet/gourmet.toml: " in "".join(named[1])


# -- gourmet init -------------------------------------------------------------------


def test_init_writes_what_check_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init"]) == 0
    written = capsys.readouterr().out
    assert written == starter_config()
    config = tmp_path / "gourmet.toml"
    assert main(["init", str(config)]) == 0
    assert capsys.readouterr().out == (
        f"gourmet: wrote {config}; check it with: gourmet check {config}\n"
    )
    assert config.read_text() == written
    status, out, _ = check(config, capsys)
    assert (status, out) == (
        0,
        f"gourmet: {config}: ok (1 upstream, 1 location, listening on"
        " tcp:8080:interface=127.0.0.1, admin console on"
        " tcp:8081:interface=127.0.0.1)\n",
    )
    loaded = load_config(str(config))
    assert [server.path for server in loaded.upstreams[0].servers] == [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
    ]
    assert loaded.admin.loopback


def test_init_never_writes_over_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gourmet.toml"
    config.write_text("# mine\n")
    assert main(["init", str(config)]) == 1
    assert capsys.readouterr() == (
        "",
        f"gourmet: {config}: exists already; not overwritten\n",
    )
    assert config.read_text() == "# mine\n"


@pytest_twisted.ensureDeferred
async def test_twistd_runs_what_init_writes(
    tmp_path: Path, processes: List[Twistd], make_upstreams: Any
) -> None:
    first, second = make_upstreams("first", "second")
    config = tmp_path / "gourmet.toml"
    status, _, _ = run_gourmet(tmp_path, "init", str(config))
    assert status == 0
    # The same file, on ports the system picks and the test's servers.
    text = (
        config.read_text()
        .replace("tcp:8080:interface=127.0.0.1", LISTEN)
        .replace("tcp:8081:interface=127.0.0.1", LISTEN)
        .replace("127.0.0.1:9001", first.address)
        .replace("127.0.0.1:9002", second.address)
    )
    gourmet = await start(tmp_path, processes, text)
    assert await served_by(gourmet, 4) == ["first", "second", "first", "second"]
    console = await treq.get(
        f"http://127.0.0.1:{gourmet.admin_port}/api/upstreams", pool=gourmet.pool
    )
    assert console.code == 200
    await console.content()


# -- versions and password hashes -------------------------------------------------


def test_versions(tmp_path: Path) -> None:
    status, out, err = run_gourmet(tmp_path, "--version")
    assert (status, err) == (0, [])
    (line,) = out
    assert line.startswith(f"gourmet {__version__} (Twisted {twisted.__version__}, ")
    status, out, err = run([*TWISTD, "gourmet", "--version"], tmp_path)
    assert (status, out, err) == (0, [line], [])


def test_hash_password_from_the_command_and_the_module(tmp_path: Path) -> None:
    for command in (
        [*GOURMET, "hash-password", "--stdin"],
        [sys.executable, "-m", "gourmet.passwords", "--stdin"],
    ):
        result = subprocess.run(
            command, input=b"s3cret phrase\n", capture_output=True, timeout=60
        )
        assert (result.returncode, result.stderr) == (0, b"")
        assert verify_password("s3cret phrase", result.stdout.decode().strip())
    result = subprocess.run(
        [*GOURMET, "hash-password", "--stdin"],
        input=b"\n",
        capture_output=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"gourmet hash-password: the password is empty\n"


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["frobnicate"],
        ["check", "a.toml", "b.toml"],
        ["reload", "--admin", "http://127.0.0.1:8081"],
        ["reload", "--token-file", "admin.token"],
        [
            "reload",
            "--pidfile",
            "twistd.pid",
            "--admin",
            "http://x",
            "--token-file",
            "t",
        ],
    ],
)
def test_a_command_line_it_cannot_take_is_a_usage_error(
    arguments: List[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: gourmet")


# -- gourmet reload -------------------------------------------------------------------


def test_reload_without_a_pid_file_or_with_a_stale_one(tmp_path: Path) -> None:
    status, out, err = run_gourmet(tmp_path, "reload")
    assert (status, out) == (1, [])
    assert err == [
        "gourmet: cannot read the pid file twistd.pid: No such file or directory"
    ]
    # A pid file left behind, its number now another program's: that
    # program is not sent SIGHUP (which would stop it).
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "gourmet.pid"
        pidfile.write_text(f"{other.pid}\n")
        status, out, err = run_gourmet(tmp_path, "reload", "--pidfile", str(pidfile))
        assert (status, out) == (1, [])
        assert err == [
            f"gourmet: process {other.pid} (from {pidfile}) is not Gourmet: is the"
            " pid file stale?"
        ]
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def reload_config(tmp_path: Path, weight: int) -> Path:
    config = tmp_path / "gourmet.toml"
    config.write_text(
        "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\n"
        f"weight={weight}\n[server]\nlisten=['{LISTEN}']\n"
        "[[server.locations]]\nlocation='/'\nupstream='b'\n"
        f"[log]\naccess_log='off'\n[admin]\nlisten='{LISTEN}'\n"
        "token_file='admin.token'\n"
    )
    return config


def console_weight(port: int) -> int:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/api/upstreams/b", timeout=10
    ) as response:
        (server,) = json.load(response)["servers"]
    return int(server["weight"])


def test_reload_reaches_a_running_twistd(tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text("reload-token-of-some-length\n")
    token.chmod(0o600)
    config = reload_config(tmp_path, weight=1)
    pidfile = tmp_path / "gourmet.pid"
    log = tmp_path / "twistd.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            twistd_command(config, str(pidfile)),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
        )
    try:
        _, admin = wait_reported(process, log, [GOURMET_LISTENING, ADMIN_CONSOLE])
        port = port_of(admin["address"])
        assert console_weight(port) == 1
        # By the pid file twistd wrote: SIGHUP.
        reload_config(tmp_path, weight=5)
        status, out, err = run_gourmet(tmp_path, "reload", "--pidfile", str(pidfile))
        assert (status, err) == (0, [])
        assert out == [
            f"gourmet: sent SIGHUP to process {process.pid}: its log says how the"
            " reload went"
        ]
        wait_for(lambda: console_weight(port) == 5)
        # By the console, with the token.
        reload_config(tmp_path, weight=7)
        url = f"http://127.0.0.1:{port}"
        command = [*GOURMET, "reload", "--admin", url, "--token-file", str(token)]
        status, out, err = run(command, tmp_path)
        assert (status, err) == (0, [])
        (line,) = out
        assert line.startswith("gourmet: reloaded: ")
        assert console_weight(port) == 7
        # Not the console's token: refused, and said so.
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-token-of-the-console")
        status, out, err = run([*command[:-1], str(wrong)], tmp_path)
        assert (status, out) == (1, [])
        assert err == [
            f"gourmet: reload: {url}/api/reload: 401 The credentials are not valid."
        ]
        # A file that does not load: start-up's line, and nothing changes.
        config.write_text(config.read_text().replace("weight=7", "weight=-1"))
        status, out, err = run(command, tmp_path)
        assert (status, out) == (1, [])
        assert err == [
            f"gourmet: {config}: upstreams.b.servers[0].weight: expected a whole"
            " number from 0 to 1000, got -1"
        ]
        assert console_weight(port) == 7
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert not pidfile.exists()


def wait_for(condition: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_reload_by_the_console_says_why_it_was_refused(tmp_path: Path) -> None:
    token = tmp_path / "wrong.token"
    token.write_text("x" * 20)
    status, out, err = run(
        [
            *GOURMET,
            "reload",
            "--admin",
            "http://127.0.0.1:9",
            "--token-file",
            str(token),
        ],
        tmp_path,
    )
    assert (status, out) == (1, [])
    (line,) = err
    assert line.startswith(
        "gourmet: reload: cannot reach http://127.0.0.1:9/api/reload: "
    )
    assert os.path.exists(token)
