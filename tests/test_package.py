"""
Gourmet as a user installs it: ``python -m build`` makes an sdist and a
wheel that hold what a user needs, ``twine check`` passes them, and the
wheel installed into a fresh virtual environment (and the checkout
installed with ``pip install -e``) gives a working ``twistd gourmet`` and
``gourmet`` command; and a venv root installed, run by another user, says
nothing about Twisted's plugin cache once README's install step ran.

These build and install Gourmet (two fresh venvs, each with Twisted and the
rest from pip's cache or PyPI: a minute or two), so they run only with
``GOURMET_TEST_PACKAGE=1``, which ``tox -e package`` sets (and ``.ci/run``
runs).  Nothing is skipped there but the other user's test where the
suite is not root: without network and without pip's cache the installs
fail, saying so in pip's words.  This file imports nothing of
Gourmet's or Twisted's: it is run with ``--noconftest`` by a tox
environment that has only pytest, build and twine.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator, List, Sequence, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("GOURMET_TEST_PACKAGE"),
        reason="builds Gourmet and installs it into fresh venvs (a minute or"
        " two): tox -e package runs it",
    ),
]

#: Seconds an install may take (from PyPI when pip's cache is cold).
INSTALL_SECONDS = 600
#: Seconds a command of the installed Gourmet may take.
COMMAND_SECONDS = 60
#: Seconds twistd may take to say where it listens.
START_SECONDS = 30
#: The example files the wheel installs into ``<venv>/share/gourmet``.
SHARED = ["gourmet.toml", "demo.toml", "gourmet.service", "gourmet.socket"]
#: What the checkout holds that the sdist leaves out on purpose: working
#: notes, git's own files, benchmark results (data, not code).
NOT_IN_SDIST = re.compile(r"NOTES-.*\.md|\.gitignore|benchmarks/results/.*")
#: Gourmet's start-up line, naming the addresses its listeners got.
LISTENING = re.compile(r"gourmet listening on 127\.0\.0\.1:(\d+) ")
#: The console's line right after it.
CONSOLE = re.compile(r"admin console on 127\.0\.0\.1:(\d+) ")


def run(command: List[str], timeout: float = COMMAND_SECONDS) -> str:
    """
    Run ``command``; what it wrote (standard output and error together).

    :raises AssertionError: with everything it said, if it fails.
    """
    result = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    output: str = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output}"
    return output


def fresh_venv(path: Path) -> Path:
    """
    A new virtual environment at ``path`` with nothing but pip (no system
    site packages); its ``bin`` directory.
    """
    run([sys.executable, "-m", "venv", str(path)])
    return path / "bin"


def pip_install(bin_dir: Path, *arguments: str) -> None:
    run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", *arguments],
        timeout=INSTALL_SECONDS,
    )


def tracked_files() -> Set[str]:
    """
    The files git tracks in the checkout, or none outside a git checkout
    (an unpacked sdist).
    """
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return set()
    listed = run(["git", "-C", str(ROOT), "ls-files"])
    return {name for name in listed.splitlines() if (ROOT / name).is_file()}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """
    The sdist and the wheel ``python -m build`` makes of the checkout (the
    wheel built from the sdist, as build does by default).
    """
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], 300)
    (sdist,) = out.glob("gourmet-*.tar.gz")
    (wheel,) = out.glob("gourmet-*-py3-none-any.whl")
    return sdist, wheel


def wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def test_the_wheel_holds_what_a_user_needs(dist: Tuple[Path, Path]) -> None:
    _, wheel = dist
    version = wheel_version(wheel)
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {"twisted/plugins/gourmet_plugin.py", "gourmet/py.typed"}
    # Every module and every data file of the package: the console's page,
    # the error page's template, what gourmet init writes.
    for path in (ROOT / "gourmet").rglob("*"):
        if path.is_file() and path.suffix not in (".pyc", ".cache"):
            needed.add(path.relative_to(ROOT).as_posix())
    needed |= {f"gourmet-{version}.data/data/share/gourmet/{name}" for name in SHARED}
    assert needed - names == set()
    assert "gourmet/admin/static/admin.js" in needed
    assert "gourmet/frontend/templates/error.html" in needed
    # Twisted's namespace stays Twisted's; the suite and benchmarks stay out.
    unwanted = {
        name
        for name in names
        if name.startswith(("tests/", "benchmarks/", "twisted/__init__", "etc/"))
        or name in ("twisted/plugins/__init__.py",)
        or name.endswith(("dropin.cache", ".pyc"))
    }
    assert unwanted == set()
    metadata = zipfile.ZipFile(wheel).read(f"gourmet-{version}.dist-info/METADATA")
    assert b"\nLicense-Expression: MIT\n" in metadata
    entry_points = zipfile.ZipFile(wheel).read(
        f"gourmet-{version}.dist-info/entry_points.txt"
    )
    assert b"gourmet = gourmet.cli:main" in entry_points


def test_the_sdist_holds_the_checkout(dist: Tuple[Path, Path]) -> None:
    sdist, _ = dist
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in (
        "NEWS.rst",
        "Containerfile",
        "README.rst",
        "pyproject.toml",
        "twisted/plugins/gourmet_plugin.py",
        "etc/gourmet.service",
        "etc/container.toml",
        "docs/admin-console.png",
        "tests/test_package.py",
        "dev",
        "tox.ini",
    ):
        assert name in names
    tracked = {name for name in tracked_files() if not NOT_IN_SDIST.fullmatch(name)}
    assert tracked - names == set()
    assert not [name for name in names if name.startswith("NOTES-")]
    assert not [name for name in names if name.endswith((".pyc", "dropin.cache"))]


def test_twine_check_passes(dist: Tuple[Path, Path]) -> None:
    output = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)])
    assert output.count("PASSED") == 2, output


class Upstream(http.server.BaseHTTPRequestHandler):
    """
    A server Gourmet proxies to: says hello and which path it was asked.
    """

    def do_GET(self) -> None:
        body = json.dumps({"upstream": "hello", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    """
    The address of an :class:`Upstream` on a loopback port the system
    picked.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def get(url: str) -> Tuple[int, bytes]:
    """
    GET ``url`` straight (never through a proxy of the environment's).
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def healthcheck(admin_port: int) -> List[str]:
    """
    The Containerfile's HEALTHCHECK command, asking the console on
    ``admin_port`` instead of 8081.
    """
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    found = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", text, re.M | re.S)
    assert found is not None, "no HEALTHCHECK ... CMD [...] in the Containerfile"
    command: List[str] = json.loads(found[1].replace("\\\n", ""))
    return [part.replace(":8081/", f":{admin_port}/") for part in command]


def serve_through(
    bin_dir: Path, directory: Path, upstream: str, as_user: Sequence[str] = ()
) -> str:
    """
    Start ``twistd -n gourmet`` from ``bin_dir`` in front of ``upstream``,
    GET through it, ask its console as the container's health check does,
    and stop it with SIGTERM: it exits 0.

    :param as_user: a command that runs the rest as another user.
    :return: what twistd logged.
    """
    config = directory / "gourmet.toml"
    config.write_text(
        "[upstreams.backend]\n"
        "[[upstreams.backend.servers]]\n"
        f'path = "{upstream}"\n'
        "[server]\n"
        'listen = ["tcp:0:interface=127.0.0.1"]\n'
        "[[server.locations]]\n"
        'location = "^/"\n'
        'upstream = "backend"\n'
        "[admin]\n"
        'listen = "tcp:0:interface=127.0.0.1"\n'
    )
    config.chmod(0o644)  # for as_user too, whatever the umask
    log = directory / "twistd.log"
    command = [*as_user, str(bin_dir / "twistd"), "-n", "--pidfile=", "gourmet"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            text = log.read_text(errors="replace")
            port, admin = LISTENING.search(text), CONSOLE.search(text)
            if port and admin:
                break
            assert process.poll() is None, f"twistd exited:\n{text}"
            assert time.monotonic() < deadline, f"twistd said nothing:\n{text}"
            time.sleep(0.1)
        status, body = get(f"http://127.0.0.1:{port[1]}/through/gourmet")
        assert (status, json.loads(body)) == (
            200,
            {"upstream": "hello", "path": "/through/gourmet"},
        )
        status, body = get(f"http://127.0.0.1:{admin[1]}/api/upstreams")
        assert status == 200
        assert [u["name"] for u in json.loads(body)["upstreams"]] == ["backend"]
        probe = healthcheck(int(admin[1]))
        probe[0] = str(bin_dir / "python")
        run(probe)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    text = log.read_text(errors="replace")
    assert status == 0, text
    assert "Server Shut Down." in text
    assert "Traceback" not in text
    assert subprocess.run(probe, timeout=COMMAND_SECONDS).returncode == 1
    return text


@pytest.fixture(scope="module")
def installed(dist: Tuple[Path, Path]) -> Iterator[Path]:
    """
    A fresh venv with the wheel installed, in a directory every user may
    enter (another user runs Gourmet from it): the venv's ``bin``.
    """
    top = Path(tempfile.mkdtemp(prefix="gourmet-package-"))
    # Readable by all, as pip makes it with the usual umask.
    umask = os.umask(0o022)
    try:
        top.chmod(0o755)
        bin_dir = fresh_venv(top / "venv")
        pip_install(bin_dir, str(dist[1]))
        os.umask(umask)
        yield bin_dir
    finally:
        os.umask(umask)
        shutil.rmtree(top)


def test_the_wheel_in_a_fresh_venv(
    dist: Tuple[Path, Path], installed: Path, tmp_path: Path, upstream: str
) -> None:
    version = wheel_version(dist[1])
    bin_dir = installed
    said = run([str(bin_dir / "gourmet"), "--version"])
    assert said.startswith(f"gourmet {version} (Twisted ")
    assert run([str(bin_dir / "twistd"), "gourmet", "--version"]) == said
    metadata = run(
        [
            str(bin_dir / "python"),
            "-c",
            "import importlib.metadata; print(importlib.metadata.version('gourmet'))",
        ]
    )
    assert metadata.strip() == version
    assert "gourmet" in run([str(bin_dir / "twistd"), "--help"])
    assert "--config=" in run([str(bin_dir / "twistd"), "gourmet", "--help"])
    share = bin_dir.parent / "share" / "gourmet"
    for name in SHARED:
        assert (share / name).read_bytes() == (ROOT / "etc" / name).read_bytes()
    # The image's configuration is one that loads.
    checked = run([str(bin_dir / "gourmet"), "check", str(ROOT / "etc/container.toml")])
    assert ": ok (" in checked
    serve_through(bin_dir, tmp_path, upstream)


def test_an_editable_install_in_a_fresh_venv(tmp_path: Path, upstream: str) -> None:
    """
    ``pip install -e .`` in a clean copy of the checkout, with no
    config-settings: ``twistd gourmet`` works, and runs the copy's code.
    """
    checkout = tmp_path / "checkout"
    tracked = tracked_files()
    if tracked:
        for name in tracked:
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    else:
        shutil.copytree(ROOT, checkout)
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, "-e", str(checkout))
    assert "gourmet" in run([str(bin_dir / "twistd"), "--help"])
    # An edit to the checkout is what runs: the version, here.
    version_file = checkout / "gourmet" / "__init__.py"
    text = version_file.read_text()
    edited = re.sub(r'__version__ = "[^"]+"', '__version__ = "9.9"', text)
    version_file.write_text(edited)
    said = run([str(bin_dir / "twistd"), "gourmet", "--version"])
    assert said.startswith("gourmet 9.9 (Twisted ")
    version_file.write_text(text)
    serve_through(bin_dir, tmp_path, upstream)


def plugin_cache_step() -> List[str]:
    """
    The command README's Installing section has root run after installing,
    which writes Twisted's plugin cache; the Containerfile runs the same,
    and the systemd unit's comment says it.
    """
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    found = re.search(r"^ +sudo /opt/gourmet/bin/python -c '(.+)'$", readme, re.M)
    assert found is not None, "README: no plugin cache step"
    containerfile = (ROOT / "Containerfile").read_text(encoding="utf-8")
    assert f"/opt/gourmet/bin/python -c \\\n    '{found[1]}'\n" in containerfile
    unit = (ROOT / "etc" / "gourmet.service").read_text(encoding="utf-8")
    assert f"#   /opt/gourmet/bin/python -c '{found[1]}'\n" in unit
    return ["-c", found[1]]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="installs as root and runs Gourmet as nobody: needs root and setpriv",
)
def test_installed_by_root_run_by_nobody(installed: Path, upstream: str) -> None:
    """
    A venv root installed, run by an unprivileged user (the systemd unit's
    DynamicUser, the container's user): Twisted cannot write its plugin
    cache there and says so at every start, until root writes it once as
    README's Installing says.
    """
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    cache = next(installed.parent.glob("lib/*/site-packages/twisted/plugins"))
    # As pip leaves it (the other tests' commands, run as root, wrote it).
    (cache / "dropin.cache").unlink(missing_ok=True)
    directory = installed.parent.parent
    complaint = f"Unable to write to plugin cache {cache}/dropin.cache"
    for _ in range(2):
        assert complaint in serve_through(installed, directory, upstream, nobody)
    # With the umask of the install: a cache only root may read is
    # rewritten at every start, as a missing one is.
    umask = os.umask(0o022)
    try:
        run([str(installed / "python"), *plugin_cache_step()])
    finally:
        os.umask(umask)
    assert (cache / "dropin.cache").is_file()
    for _ in range(2):
        log = serve_through(installed, directory, upstream, nobody)
        assert "plugin cache" not in log
