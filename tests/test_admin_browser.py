"""
The admin console as an operator uses it: a real browser (Debian's
chromium, driven by Playwright) on the page a real ``twistd gourmet``
process serves, balancing real traffic over two upstream servers that run
in processes of their own (so that one can be killed and started again).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import socket
import subprocess
import threading
import time
from base64 import b64encode
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Protocol,
    Tuple,
    Union,
)

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    expect,
    sync_playwright,
)

import gourmet
import twisted
from gourmet.admin.passwords import hash_password
from gourmet.upstream.state import server_ids
from tests.etcd import Etcd
from tests.processes import (
    ADMIN_CONSOLE,
    GOURMET_LISTENING,
    TWISTD,
    UpstreamProcess,
    port_of,
    ports_of,
    stop_process,
    wait_reported,
)
from tests.test_sni import key_and_certificate

ROOT = Path(__file__).parents[1]
#: The README's picture of the console; set GOURMET_SCREENSHOT=1 to take it
#: again (otherwise it goes to the test's temporary folder, leaving the
#: checkout as it was).
SCREENSHOT = ROOT / "docs" / "admin-console.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER = "admin"
PASSWORD = "s3cret-pass"
TOKEN = "a-token-of-at-least-16-chars"
#: The servers' fail_timeout in the configuration.
FAIL_TIMEOUT = 1.0


# -- processes ----------------------------------------------------------------


class _StatusHandler(BaseHTTPRequestHandler):
    """
    ``GET /status/NNN`` answers with status NNN.
    """

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status = int(self.path.rsplit("/", 1)[1])
        body = f"status {status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test says what went wrong, not each request


class StatusServer:
    """
    An upstream server in a thread of the test's own process that answers
    with the status its path asks for: the answers (404, 500...) that the
    demo servers of the other upstreams never give.
    """

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="statuses", daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def id(self) -> str:
        (id_,) = server_ids([self.address])
        return id_

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


#: A server of an upstream, as the tests name it.
Upstream = Union[UpstreamProcess, StatusServer]


class GourmetProcess:
    """
    ``twistd -n --pidfile= gourmet --config FILE``, once it said where it
    and its console listen.

    :ivar port: the port of its (one) listener.
    :ivar admin_port: the console's port.
    """

    def __init__(self, config: Path) -> None:
        self.log = config.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "gourmet", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=config.parent,
            )
        try:
            listening, admin = wait_reported(
                self.process, self.log, [GOURMET_LISTENING, ADMIN_CONSOLE]
            )
        except BaseException:
            stop_process(self.process)
            raise
        (self.port,) = ports_of(listening["addresses"])
        self.admin_port = port_of(admin["address"])

    def stop(self) -> None:
        stop_process(self.process)


CONFIG = """\
[upstreams.backend]
{balancing}max_fail = 1
fail_timeout = {fail_timeout}
{health_check}

{servers}
{statuses_upstream}
[server]
listen = ["tcp:{port}:interface=127.0.0.1"]
{statuses_location}
{certificates}
[[server.locations]]
location = "^/"
upstream = "backend"

[log]
access_log = "off"

[admin]
listen = "tcp:{admin_port}:interface=127.0.0.1"
token = "{token}"

[admin.users]
{user} = "{password_hash}"
{streams}{cluster}"""

#: The backend's balancing by default, and with ``balancing=True``: by a
#: header's hash, with active health checks and slow start.
ROUND_ROBIN = 'balancer = "round_robin"\n'
BALANCING = """\
balancer = "hash"
hash_key = "header:X-User"
slow_start = 60
"""
HEALTH_CHECK = """\
[upstreams.backend.health_check]
interval = 0.5
timeout = 0.4
"""

#: The backend's servers, in the file or, with ``provider=True``, in a file
#: of their own that provider = "file" watches.
STATIC_SERVERS = """\
[[upstreams.backend.servers]]
path = "{a}"
weight = 1

[[upstreams.backend.servers]]
path = "{b}"
weight = 1
"""
FILE_PROVIDER = 'provider = "file"\nfile = "servers.toml"\n'

#: With ``streams=True``: a TCP stream to ``backend``'s servers.
STREAM = """
[[streams]]
listen = "tcp:0:interface=127.0.0.1"
upstream = "backend"
"""

#: With ``cluster=True``: ``[cluster]`` on the deployment's etcd.
CLUSTER = """
[cluster]
etcd = ["{url}"]
name = "browser-test"
"""

#: With a StatusServer: the upstream ``statuses`` for paths ``/status/NNN``.
STATUSES_UPSTREAM = """
[upstreams.statuses]
balancer = "round_robin"

[[upstreams.statuses.servers]]
path = "{address}"
"""
STATUSES_LOCATION = """
[[server.locations]]
location = "^/status/"
upstream = "statuses"
"""


class Deployment:
    """
    Gourmet balancing ``backend`` over upstreams ``a`` and ``b``, and with
    ``statuses=True`` the upstream ``statuses`` over a :class:`StatusServer`.

    :ivar port: Gourmet's port, once started.
    :ivar admin_port: its console's port, once started.
    """

    def __init__(
        self,
        directory: Path,
        statuses: bool = False,
        certificates: bool = False,
        streams: bool = False,
        balancing: bool = False,
        provider: bool = False,
        cluster: bool = False,
    ) -> None:
        self.directory = directory
        #: With ``cluster=True``: an etcd for ``[cluster]``, started first.
        self.etcd: Optional[Etcd] = None
        self.cluster = cluster
        self.balancing = balancing
        self.provider = provider
        self.certificates = certificates
        self.streams = streams
        self.a = UpstreamProcess("alpha", directory)
        self.b = UpstreamProcess("beta", directory)
        self.statuses = StatusServer() if statuses else None
        self.password_hash = hash_password(PASSWORD)
        self.port = 0
        self.admin_port = 0
        self.config = directory / "gourmet.toml"
        self.gourmet: Optional[GourmetProcess] = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def server_count(self) -> int:
        return 3 if self.statuses else 2

    def start(self) -> None:
        if self.cluster:
            (self.directory / "etcd").mkdir()
            self.etcd = Etcd(self.directory / "etcd")
        self.a.start()
        self.b.start()
        if self.statuses:
            self.statuses.start()
        self.start_gourmet()

    def start_gourmet(self) -> None:
        """
        Start Gourmet in front of the upstreams.

        The first start listens on port 0, ports the system picks. A
        restart listens on those ports again, as a restarted Gourmet does:
        the page in the browser keeps the console's address (its origin),
        and the traffic Gourmet's.
        """
        self.config.write_text(
            CONFIG.format(
                balancing=(BALANCING if self.balancing else ROUND_ROBIN)
                + (FILE_PROVIDER if self.provider else ""),
                servers=self.servers_table(),
                health_check=HEALTH_CHECK if self.balancing else "",
                fail_timeout=FAIL_TIMEOUT,
                a=self.a.address,
                b=self.b.address,
                port=self.port,
                admin_port=self.admin_port,
                token=TOKEN,
                user=USER,
                password_hash=self.password_hash,
                statuses_upstream=(
                    STATUSES_UPSTREAM.format(address=self.statuses.address)
                    if self.statuses
                    else ""
                ),
                statuses_location=STATUSES_LOCATION if self.statuses else "",
                certificates=self.certificate_tables() if self.certificates else "",
                streams=STREAM if self.streams else "",
                cluster=(
                    CLUSTER.format(url=self.etcd.url) if self.etcd is not None else ""
                ),
            )
        )
        self.gourmet = GourmetProcess(self.config)
        self.port, self.admin_port = self.gourmet.port, self.gourmet.admin_port

    def servers_table(self) -> str:
        """
        The backend's servers for the configuration; with ``provider``,
        none there: they go to ``servers.toml``.
        """
        servers = STATIC_SERVERS.format(a=self.a.address, b=self.b.address)
        if not self.provider:
            return servers
        (self.directory / "servers.toml").write_text(
            servers.replace("upstreams.backend.", "")
        )
        return ""

    def certificate_tables(self) -> str:
        """
        Two certificates (served by no listener, but listed): ``a.test``'s
        for 30 days, and ``b.test``'s for 5.
        """
        tables = ""
        for name, days in (("a", 30), ("b", 5)):
            directory = self.directory / name
            directory.mkdir(exist_ok=True)
            key, cert = key_and_certificate(
                directory, (f"{name}.test", f"*.{name}.test"), -1, days
            )
            tables += f"[[server.certificates]]\ncert = '{cert}'\nkey = '{key}'\n"
        return tables

    def stop_gourmet(self) -> None:
        if self.gourmet is not None:
            self.gourmet.stop()

    def stop(self) -> None:
        # Gourmet first, so it sees no upstream go away.
        self.stop_gourmet()
        self.a.stop()
        self.b.stop()
        if self.statuses:
            self.statuses.stop()
        if self.etcd is not None:
            self.etcd.stop()


#: ``@WITH_STATUSES`` on a test: its deployment has the upstream ``statuses``.
WITH_STATUSES = pytest.mark.parametrize(
    "deployment", [{"statuses": True}], indirect=True, ids=["statuses"]
)


@pytest.fixture
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """
    Gourmet and its upstreams; a test parametrized with :data:`WITH_STATUSES`
    has the upstream ``statuses`` too.
    """
    running = Deployment(tmp_path, **getattr(request, "param", {}))
    try:
        running.start()
        yield running
    finally:
        running.stop()


# -- traffic --------------------------------------------------------------------


def send_requests(port: int, count: int, timeout: float = 5.0) -> Counter[str]:
    """
    Send ``count`` requests through Gourmet one after the other, and count
    which server answered each (or what went wrong).
    """
    answered: Counter[str] = Counter()
    for index in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", f"/traffic/{index}")
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                answered[json.loads(body)["server"]] += 1
            else:
                answered[f"status {response.status}"] += 1
        except (OSError, http.client.HTTPException) as error:
            answered[f"error {type(error).__name__}"] += 1
        finally:
            connection.close()
    return answered


class Traffic:
    """
    Requests through Gourmet in a background thread, one every
    ``interval`` seconds, until stopped or ``limit`` requests or
    ``seconds`` have gone by.
    """

    def __init__(
        self, port: int, interval: float = 0.02, limit: int = 2000, seconds: float = 40
    ) -> None:
        self.port = port
        self.interval = interval
        self.limit = limit
        self.seconds = seconds
        self.answered: Counter[str] = Counter()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        sent = 0
        while not self._stopped.is_set() and sent < self.limit:
            if time.monotonic() > deadline:
                break
            self.answered.update(send_requests(self.port, 1, timeout=2.0))
            sent += 1
            self._stopped.wait(self.interval)

    def wait(self) -> None:
        """
        Wait for the limit in requests or seconds to be reached.
        """
        self._thread.join(self.seconds + 10)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    text: str


def raw_get(url: str, path: str, authorization: Optional[str] = None) -> Answer:
    """
    A GET's answer as it comes over the wire.
    """
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        headers = {"Authorization": authorization} if authorization else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8")
        return Answer(response.status, response.headers, text)
    finally:
        connection.close()


def exchange(port: int, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
    """
    One request through Gourmet (a POST when it has a body): the status and
    the body of its answer.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("POST" if body else "GET", path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[None]:
    """
    ``count`` client connections to ``port`` that send nothing, while in
    the block.
    """
    sockets = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(count)]
    try:
        yield
    finally:
        for sock in sockets:
            sock.close()


def refused_status(port: int, head: bytes) -> int:
    """
    The status of Gourmet's answer to a request head it will not read.
    """
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(head)
        answer = sock.recv(65536)
    return int(answer.split(b" ", 2)[1])


def api_server(
    deployment: Deployment, server: Upstream, upstream: str = "backend"
) -> Any:
    """
    The server as the API shows it now.
    """
    document = json.loads(
        raw_get(deployment.admin_url, f"/api/upstreams/{upstream}").text
    )
    (found,) = [each for each in document["servers"] if each["id"] == server.id]
    return found


def local_clock(seconds: float) -> str:
    """
    Unix seconds as the page shows a time of day (the browser runs here).
    """
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def answered(status: int, count: object) -> str:
    """
    How the page counts answers by status: 502, a times sign, and the count.
    """
    return f"{status} \N{MULTIPLICATION SIGN}{count}"


def number_after(prefix: str, locator: Locator) -> int:
    """
    The whole number after ``prefix`` in an element's text, 0 without one.
    """
    match = re.search(re.escape(prefix) + r"([\d,]+)", locator.inner_text())
    return int(match.group(1).replace(",", "")) if match else 0


def leading_number(locator: Locator) -> float:
    """
    The number an element's text starts with: 12.5 of "12.5/s", 1234 of
    "1,234 failures".
    """
    text = locator.inner_text()
    match = re.match(r"[\d,.]+", text)
    assert match, text
    return float(match.group().replace(",", ""))


# -- the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Not a skip: a machine without the browser must not pass quietly.
    assert Path(CHROMIUM).exists(), f"needs {CHROMIUM}: ./dev setup installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


#: Runs in every page before its own scripts: notes the policy violations.
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


class Console:
    """
    The console open in a browser tab, and what went wrong in it.
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: List[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def row(self, server: Upstream, upstream: str = "backend") -> Locator:
        return self.page.locator(
            f'tr[data-upstream="{upstream}"][data-server="{server.id}"]'
        )

    def button(self, server: Upstream, action: str) -> Locator:
        return self.row(server).locator(f'button[data-action="{action}"]')

    def state_of(self, server: Upstream, upstream: str = "backend") -> Locator:
        return self.row(server, upstream).locator(".state")

    def section(self, upstream: str = "backend") -> Locator:
        return self.page.locator(f'[data-upstream-section="{upstream}"]')

    def figures(self, upstream: str = "backend") -> Locator:
        """
        The upstream's figures beside its chart (rates, Gourmet's answers).
        """
        return self.section(upstream).locator(".summary")

    def status_count(
        self, server: Upstream, name: str, upstream: str = "backend"
    ) -> Locator:
        """
        The count of ``name`` (``"2xx"``..., ``"failed"``) in the server's row.
        """
        return self.row(server, upstream).locator(
            f'[data-class="{name}"] .status-count'
        )

    def refreshes(self) -> int:
        count = self.page.locator("#upstreams").get_attribute("data-refreshes")
        return int(count or 0)

    def wait_for_refreshes(self, count: int) -> None:
        """
        Wait until the page fetched the servers ``count`` more times.
        """
        target = self.refreshes() + count
        deadline = time.monotonic() + 2.0 * count + 3
        while self.refreshes() < target:
            assert time.monotonic() < deadline, "the page stopped refreshing"
            self.page.wait_for_timeout(50)

    def csp_violations(self) -> List[str]:
        violations: List[str] = self.page.evaluate("window.cspViolations")
        return violations


class OpenConsole(Protocol):
    def __call__(
        self, signed_in: bool = True, width: int = 1280, height: int = 900
    ) -> Console: ...


class NewTab(Protocol):
    def __call__(
        self, signed_in: bool = True, width: int = 1280, height: int = 900
    ) -> Console: ...


@pytest.fixture
def new_tab(browser: Browser, deployment: Deployment) -> Iterator[NewTab]:
    """
    ``new_tab()`` is a blank tab of a browser that answers the console's
    Basic challenge with the test's credentials (``signed_in=False``: with
    none).
    """
    contexts: List[BrowserContext] = []

    def new(signed_in: bool = True, width: int = 1280, height: int = 900) -> Console:
        context = browser.new_context(
            base_url=deployment.admin_url,
            viewport={"width": width, "height": height},
            http_credentials=(
                {"username": USER, "password": PASSWORD} if signed_in else None
            ),
        )
        contexts.append(context)
        context.set_default_timeout(10_000)
        context.add_init_script(RECORD_CSP_VIOLATIONS)
        return Console(context.new_page())

    yield new
    for context in contexts:
        context.close()


@pytest.fixture
def open_console(new_tab: NewTab, deployment: Deployment) -> OpenConsole:
    """
    ``open_console()`` opens the console signed in (through /login, as a
    browser does after the Basic challenge); ``signed_in=False`` without
    credentials.
    """

    def open_(signed_in: bool = True, width: int = 1280, height: int = 900) -> Console:
        console = new_tab(signed_in, width, height)
        page = console.page
        page.goto("/login" if signed_in else "/")
        # /login sent the browser back to the console.
        assert page.url == deployment.admin_url + "/"
        expect(page.locator("tr[data-server]")).to_have_count(deployment.server_count)
        if signed_in:
            expect(page.locator("#session")).to_have_text(f"Signed in as {USER}")
        return console

    return open_


def state_badge(console: Console, server: Upstream) -> Locator:
    return console.row(server).locator(".state")


# -- the tests ----------------------------------------------------------------------


def test_clicking_changes_the_split(
    deployment: Deployment, open_console: OpenConsole, tmp_path: Path
) -> None:
    """
    Setting a weight and draining a server, each with a click, changes
    where the very next requests go; the page says what it did.
    """
    console = open_console()
    page = console.page
    a, b = deployment.a, deployment.b
    row_a = console.row(a)
    expect(row_a.locator(".weight-now")).to_have_text("1")

    row_a.locator("input[name=weight]").fill("3")
    console.button(a, "set-weight").click()

    expect(page.locator("#status")).to_have_text(f"backend / {a.address}: weight 1 → 3")
    expect(row_a.locator(".weight-now")).to_have_text("3")
    expect(row_a.locator(".weight-note")).to_have_text("configured 1 (override)")
    split = send_requests(deployment.port, 400)
    assert 285 <= split[a.name] <= 315, split
    assert split[a.name] + split[b.name] == 400, split

    console.button(b, "drain").click()

    expect(page.locator("#status")).to_have_text(
        f"backend / {b.address}: state up → drain"
    )
    expect(state_badge(console, b)).to_have_attribute("data-state", "drain")
    assert send_requests(deployment.port, 50) == {a.name: 50}
    # A few seconds of steady traffic, for the chart in the picture.
    with Traffic(deployment.port, seconds=3) as traffic:
        traffic.wait()
    assert set(traffic.answered) == {a.name}, traffic.answered

    # The page shows an en dash for a share it does not know yet.
    expect(row_a.locator(".share-percent")).not_to_have_text("\N{EN DASH}")
    expect(console.figures().locator(".rate-now")).not_to_have_text("0.00/s")
    console.wait_for_refreshes(1)
    target = (
        SCREENSHOT if os.environ.get("GOURMET_SCREENSHOT") else tmp_path / "console.png"
    )
    target.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000  # a real picture, not a blank page


def test_a_server_that_stops_shows_down_then_up_again(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Passive health as the operator sees it: a server killed while traffic
    flows is shown down with the error within 2 s, and up once it is back.
    """
    console = open_console()
    b = deployment.b
    badge = state_badge(console, b)
    expect(badge).to_have_attribute("data-state", "up")
    expect(console.row(b).locator(".last-error")).to_be_hidden()

    with Traffic(deployment.port) as traffic:
        wait_until(lambda: traffic.answered[b.name] >= 5, 10, "traffic to reach b")
        assert b.stop() == 0, b.log.read_text()
        killed = time.monotonic()

        expect(badge).to_have_attribute("data-state", "down", timeout=2000)
        last_error = console.row(b).locator(".last-error")
        expect(last_error).to_be_visible(
            timeout=max(killed + 2 - time.monotonic(), 0.1) * 1000
        )
        assert time.monotonic() - killed <= 2.0
        assert "connect" in last_error.inner_text().lower()
        expect(console.row(b).locator(".since")).to_contain_text("down since ")

        b.start()
        restarted = time.monotonic()
        answered_before = traffic.answered[b.name]

        expect(badge).to_have_attribute(
            "data-state", "up", timeout=(FAIL_TIMEOUT + 3) * 1000
        )
        assert time.monotonic() - restarted <= FAIL_TIMEOUT + 3
        expect(console.row(b).locator(".last-error")).to_be_hidden()
        expect(console.row(b).locator(".since")).to_contain_text("up since ")
        wait_until(
            lambda: traffic.answered[b.name] > answered_before, 5, "traffic to b again"
        )
    # Gourmet tried the other server: no client saw the outage.
    assert set(traffic.answered) == {deployment.a.name, b.name}, traffic.answered


def test_without_signing_in_the_console_is_read_only(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Without credentials the page shows everything but changes nothing,
    offers to sign in, and no secret reaches it.
    """
    console = open_console(signed_in=False)
    page = console.page

    expect(page.locator("tr[data-server] .address")).to_have_text(
        [deployment.a.address, deployment.b.address]
    )
    controls = page.locator("tr[data-server] button, tr[data-server] input")
    assert controls.count() == 2 * 6
    for control in controls.all():
        expect(control).to_be_disabled()
    sign_in = page.locator("a", has_text="Sign in")
    expect(sign_in).to_have_attribute("href", "/login")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#session")).not_to_contain_text("Signed in")
    # Following the link, a browser is asked for credentials.
    login = raw_get(deployment.admin_url, "/login")
    assert login.status == 401
    assert login.headers["WWW-Authenticate"].startswith("Basic ")

    # No secret reaches the page, signed in or not.
    secrets = [TOKEN, PASSWORD, deployment.password_hash]
    secrets += deployment.password_hash.split("$")[-2:]  # salt and hash alone
    basic = "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    answers = [page.content()]
    for authorization in (None, basic):
        for path in ("/", "/api/session", "/api/upstreams"):
            answer = raw_get(deployment.admin_url, path, authorization)
            assert answer.status == 200, (path, answer.text)
            answers.append(answer.text)
    for text in answers:
        for secret in secrets:
            assert secret not in text
    # The page's idea of "read-only" is the server's too.
    session = json.loads(raw_get(deployment.admin_url, "/api/session").text)
    assert session["can_change"] is False
    assert session["csrf_token"] is None


def test_the_console_fits_a_phone_screen(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    On a phone the page is no wider than the screen: the servers' table
    scrolls sideways inside its own box.
    """
    console = open_console(width=390, height=844)
    page = console.page
    console.wait_for_refreshes(1)

    page_width = page.evaluate("document.documentElement.scrollWidth")
    assert page_width <= 390
    # The table is wider than the screen, and scrolls inside its own box.
    box: Dict[str, int] = (
        console.section()
        .locator(".table-scroll")
        .evaluate("box => ({scroll: box.scrollWidth, client: box.clientWidth})")
    )
    assert box["client"] <= 390
    assert box["scroll"] > box["client"]
    console.button(deployment.a, "drain").scroll_into_view_if_needed()
    expect(console.button(deployment.a, "drain")).to_be_in_viewport()


def test_the_page_has_no_errors_and_no_policy_violations(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Nothing the page does breaks its Content-Security-Policy, or logs an
    error: loading, refreshing, and making changes.
    """
    console = open_console()
    b = deployment.b
    console.wait_for_refreshes(2)
    console.button(b, "disable").click()
    expect(state_badge(console, b)).to_have_attribute("data-state", "disabled")
    console.button(b, "enable").click()
    expect(state_badge(console, b)).to_have_attribute("data-state", "up")
    console.wait_for_refreshes(2)

    assert console.errors == []
    assert console.csp_violations() == []


def test_refreshing_leaves_a_weight_being_typed_alone(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    The page refreshes every second, but a weight being typed survives it;
    Enter sends it, and Reset goes back to the configured weight.
    """
    console = open_console()
    page = console.page
    a = deployment.a
    row = console.row(a)
    field = row.locator("input[name=weight]")

    field.fill("7")
    console.wait_for_refreshes(2)
    expect(field).to_have_value("7")
    expect(field).to_be_focused()
    expect(row.locator(".weight-now")).to_have_text("1")

    field.press("Enter")

    expect(page.locator("#status")).to_have_text(f"backend / {a.address}: weight 1 → 7")
    expect(row.locator(".weight-now")).to_have_text("7")

    console.button(a, "reset").click()

    expect(page.locator("#status")).to_have_text(
        f"backend / {a.address}: weight 7 → 1 (configured)"
    )
    expect(row.locator(".weight-now")).to_have_text("1")
    expect(row.locator(".weight-note")).to_be_hidden()
    expect(console.button(a, "reset")).to_be_disabled()
    assert console.errors == []


def test_the_page_rides_out_a_restart_of_gourmet(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    While Gourmet is away the page says so and keeps trying; once it is
    back the page recovers by itself, and changes work again with the new
    process's CSRF token, even after a restart the page did not notice.
    """
    console = open_console()
    page = console.page
    a, b = deployment.a, deployment.b
    banner = page.locator("#connection")
    expect(banner).to_be_hidden()

    deployment.stop_gourmet()

    expect(banner).to_be_visible(timeout=5000)
    expect(banner).to_have_text("Connection lost, retrying…")
    expect(page.locator("#upstreams")).to_have_class(re.compile(r"\bstale\b"))
    expect(page.locator("tr[data-server]")).to_have_count(2)

    deployment.start_gourmet()

    expect(banner).to_be_hidden(timeout=5000)
    console.button(a, "drain").click()
    expect(page.locator("#status")).to_have_text(
        f"backend / {a.address}: state up → drain"
    )
    expect(state_badge(console, a)).to_have_attribute("data-state", "drain")

    # Quicker than a refresh: the page may still hold the old CSRF token.
    deployment.stop_gourmet()
    deployment.start_gourmet()
    console.button(b, "drain").click()
    expect(page.locator("#status")).to_have_text(
        f"backend / {b.address}: state up → drain"
    )
    expect(state_badge(console, b)).to_have_attribute("data-state", "drain")


def test_a_panic_is_shown_on_its_upstream(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    With every server down, the upstream is in a panic (requests still go
    to all its servers) and the page says so, and counts the 502s Gourmet
    answered itself; the panic ends when the servers are back.
    """
    console = open_console()
    panic = console.section().locator(".panic")
    own_answers = console.figures().locator(".gourmet-statuses")
    expect(panic).to_be_hidden()
    expect(own_answers).to_have_text("none")
    assert deployment.a.stop() == 0
    assert deployment.b.stop() == 0
    assert send_requests(deployment.port, 4) == {"status 502": 4}
    expect(panic).to_be_visible(timeout=3000)
    expect(panic).to_have_text("panic")
    expect(own_answers).to_have_text(answered(502, 4))
    # Each 502 is counted on the server whose failure ended the request.
    own = [
        console.row(server).locator(".gourmet-statuses")
        for server in (deployment.a, deployment.b)
    ]
    wait_until(
        lambda: sum(number_after(answered(502, ""), line) for line in own) == 4,
        3,
        "502s per server",
    )
    deployment.a.start()
    deployment.b.start()
    # In a panic both servers keep being tried, and come back up.
    with Traffic(deployment.port, seconds=10) as traffic:
        expect(panic).to_be_hidden(timeout=(FAIL_TIMEOUT + 5) * 1000)
    assert traffic.answered[deployment.a.name] > 0, traffic.answered


def test_draining_the_last_server_asks_first(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Draining the last server taking requests would answer every request
    with 503: the page asks first, names the consequence, and does nothing
    unless the operator says so.
    """
    console = open_console()
    page = console.page
    a, b = deployment.a, deployment.b
    console.button(b, "drain").click()
    expect(state_badge(console, b)).to_have_attribute("data-state", "drain")

    asked: List[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    console.button(a, "drain").click()
    expect(page.locator("#status")).to_have_text(f"backend / {a.address}: not changed.")
    assert len(asked) == 1
    assert "no server taking requests: every request to it would get 503" in asked[0]
    expect(state_badge(console, a)).to_have_attribute("data-state", "up")
    assert send_requests(deployment.port, 3) == {a.name: 3}

    page.once("dialog", lambda dialog: dialog.accept())
    console.button(a, "drain").click()
    expect(state_badge(console, a)).to_have_attribute("data-state", "drain")
    assert send_requests(deployment.port, 2) == {"status 503": 2}


def test_the_changes_panel_lists_changes_and_undoes_the_latest(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Each change is listed with who made it; Undo gives the server back the
    weight it had, and the traffic follows.
    """
    console = open_console()
    page = console.page
    a = deployment.a
    row_a = console.row(a)
    undo = page.locator("#undo")
    changes = page.locator("#changes-list li")
    expect(changes).to_have_text(["No changes since Gourmet started."])
    expect(undo).to_be_disabled()
    for weight in ("3", "5"):
        row_a.locator("input[name=weight]").fill(weight)
        console.button(a, "set-weight").click()
        expect(row_a.locator(".weight-now")).to_have_text(weight)
    # Newest first.
    expect(changes).to_have_count(2)
    expect(changes.nth(0)).to_contain_text(
        f"{USER}: backend / {a.address}: weight 3 -> 5"
    )
    expect(changes.nth(1)).to_contain_text(
        f"{USER}: backend / {a.address}: weight 1 -> 3"
    )
    expect(undo).to_be_enabled()

    # The weight before the change, not the configured one.
    undo.click()
    expect(page.locator("#status")).to_have_text(
        f"Undone: backend / {a.address}: weight 3 -> 5"
    )
    expect(row_a.locator(".weight-now")).to_have_text("3")
    expect(row_a.locator(".weight-note")).to_have_text("configured 1 (override)")
    expect(changes).to_have_count(1)
    undo.click()
    expect(page.locator("#status")).to_have_text(
        f"Undone: backend / {a.address}: weight 1 -> 3"
    )
    expect(row_a.locator(".weight-now")).to_have_text("1")
    expect(changes).to_have_text(["No changes since Gourmet started."])
    expect(undo).to_be_disabled()
    split = send_requests(deployment.port, 40)
    assert split[a.name] == split[deployment.b.name] == 20, split


def test_the_reload_button_applies_the_file_or_says_why_not(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Reload reads the configuration file again: a changed weight shows and
    the traffic follows, the reload is listed with who asked for it, and
    a file that is not valid gets Gourmet's one line and changes nothing.
    """
    console = open_console()
    page = console.page
    a = deployment.a
    config = deployment.config
    text = config.read_text()
    assert text.count("weight = 1") == 2  # a's then b's
    config.write_text(text.replace("weight = 1", "weight = 3", 1))
    page.locator("#reload").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Reloaded: reloaded the configuration")
    expect(console.row(a).locator(".weight-now")).to_have_text("3")
    expect(page.locator("#changes-list li").nth(0)).to_contain_text(
        f"{USER} from 127.0.0.1: reloaded the configuration: 1 upstreams, 2 servers"
    )
    # A reload is undone by editing the file, not from the page.
    expect(page.locator("#undo")).to_be_disabled()
    split = send_requests(deployment.port, 40)
    assert (split[a.name], split[deployment.b.name]) == (30, 10), split

    config.write_text(text.replace("weight = 1", "weight = -1", 1))
    page.locator("#reload").click()
    expect(page.locator("#status")).to_contain_text(
        f"Reload refused, nothing changed: gourmet: {config}: "
        "upstreams.backend.servers[0].weight: expected"
    )
    expect(console.row(a).locator(".weight-now")).to_have_text("3")


def test_the_rates_and_answers_follow_the_traffic(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Twenty requests show on the page as they happened: the rate now (the
    last 5 s) beside the minute's average and busiest second, and per
    server its requests, 2xx answers, body bytes and pooled connection.
    """
    console = open_console()
    a, b = deployment.a, deployment.b
    received: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    started = time.monotonic()
    for index in range(20):
        # One POST, for the bytes sent.
        body = b"x" * 500 if index == 0 else None
        status, answer = exchange(deployment.port, f"/traffic/{index}", body)
        assert status == 200, answer
        name = json.loads(answer)["server"]
        received[name] += len(answer)
        sent[name] += len(body or b"")
    took = time.monotonic() - started

    figures = console.figures()
    # All 20 in the last 5 whole seconds (the one under way does not count).
    expect(figures.locator(".rate-now")).to_have_text("4.00/s", timeout=4000)
    rows_now = [
        console.row(server).locator(".rate-now").inner_text() for server in (a, b)
    ]
    assert rows_now == ["2.00/s", "2.00/s"]
    expect(figures.locator(".rate-minute")).to_have_text("0.33/s")
    peak = leading_number(figures.locator(".rate-peak"))
    assert 20 / (int(took) + 2) <= peak <= 20, (peak, took)
    for server in (a, b):
        row = console.row(server)
        expect(row.locator(".requests")).to_have_text("10 requests")
        expect(console.status_count(server, "2xx")).to_have_text("10")
        expect(row.locator(".status-class:visible")).to_have_count(1)
        expect(row.locator(".share-percent")).to_have_text("50.0%")
        expect(row.locator(".bytes")).to_have_text(
            [
                f"{sent[server.name]} B body sent",
                f"{received[server.name]} B body received",
            ]
        )
        expect(row.locator(".active")).to_have_text("0 in flight")
        # One after the other, the requests to a server share one connection.
        expect(row.locator(".pool")).to_have_text("pool 1 idle · 0 busy")
    assert console.errors == []


@WITH_STATUSES
def test_status_classes_show_what_the_server_answered(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    A server's answers are counted by class on its row, as its clients got
    them: a 404 or a 500 from the server is its answer, not a failure.
    """
    console = open_console()
    server = deployment.statuses
    assert server is not None
    statuses = [200] * 4 + [301] + [404] * 3 + [500] * 2
    got = Counter(
        exchange(deployment.port, f"/status/{status}")[0] for status in statuses
    )
    assert got == Counter(statuses)

    row = console.row(server, "statuses")
    expect(row.locator(".requests")).to_have_text("10 requests")
    for name, count in {"2xx": 4, "3xx": 1, "4xx": 3, "5xx": 2}.items():
        expect(console.status_count(server, name, "statuses")).to_have_text(str(count))
    expect(row.locator('.status-class[data-class="failed"]')).to_be_hidden()
    expect(row.locator(".failures")).to_have_text("0 failures")
    expect(row.locator(".gourmet-statuses")).to_be_hidden()
    expect(console.state_of(server, "statuses")).to_have_attribute("data-state", "up")


def test_failures_a_retry_hid_are_not_errors_clients_saw(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    A server that refuses connections fails requests that Gourmet then
    sends to the other server: clients get only 200s, and the page says the
    failures were hidden by retries, none reached clients.  The server is
    shown down since it stopped, the other up since Gourmet started.
    """
    console = open_console()
    a, b = deployment.a, deployment.b
    summary = console.section().locator(".errors-summary")
    expect(summary).to_have_text("no failures in the last 60 s")
    with Traffic(deployment.port) as traffic:
        wait_until(lambda: traffic.answered[b.name] >= 3, 10, "traffic to reach b")
        assert b.stop() == 0, b.log.read_text()
        stopped = time.time()
        # Once down, b is tried again after fail_timeout (1 s), and fails.
        retried = console.row(b).locator(".retries")
        wait_until(lambda: leading_number(retried) >= 2, 5, "retries of b's requests")
    assert set(traffic.answered) == {a.name, b.name}, traffic.answered

    row_b = console.row(b)
    failures = leading_number(row_b.locator(".failures"))
    assert failures >= 2
    expect(row_b.locator(".errors-seen")).to_have_text("0")
    expect(row_b.locator(".errors-hidden")).to_have_text(str(int(failures)))
    expect(row_b.locator(".retries")).to_have_text(f"{int(failures)} retried elsewhere")
    expect(console.status_count(b, "failed")).to_have_text(str(int(failures)))
    # The same number twice: every failure was hidden.
    hidden_all = (
        r"^(\d+) failures? in the last 60 s, 0 reached clients, \1 hidden by retries$"
    )
    expect(summary).to_have_text(re.compile(hidden_all), timeout=3000)
    expect(summary).not_to_have_class(re.compile("reached-clients"))

    down_since = api_server(deployment, b)["down_since"]
    assert stopped - 1 <= down_since <= stopped + 2
    expect(row_b.locator(".since")).to_contain_text(
        f"down since {local_clock(down_since)} ("
    )
    up_since = api_server(deployment, a)["up_since"]
    expect(console.row(a).locator(".since")).to_have_text(
        re.compile(rf"^up since {local_clock(up_since)} \(\d+ s ago\)$")
    )
    expect(console.row(a).locator(".errors-hidden")).to_have_text("0")


def test_the_page_says_which_gourmet_it_is_and_what_it_listens_on(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    The instance (version, process, configuration) is the one running, and
    the listeners show their client connections against their limits and
    the answers Gourmet gave itself.
    """
    console = open_console()
    page = console.page
    assert deployment.gourmet is not None

    def fact(name: str) -> Locator:
        return page.locator(f'[data-fact="{name}"]')

    expect(fact("version")).to_have_text(gourmet.__version__)
    expect(fact("pid")).to_have_text(str(deployment.gourmet.process.pid))
    expect(fact("config")).to_have_text(str(deployment.config))
    implementation = f"{platform.python_implementation()} {platform.python_version()}"
    expect(fact("python")).to_have_text(implementation)
    expect(fact("twisted")).to_have_text(twisted.__version__)
    expect(fact("uptime")).to_have_text(re.compile(r"^\d+ s$"))
    expect(fact("started")).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
    )

    proxy = page.locator('tr[data-listener="proxy"]')
    expect(proxy.locator(".addresses")).to_have_text(f"127.0.0.1:{deployment.port}")
    expect(proxy.locator(".connections")).to_have_text("0 of 10,000")
    with idle_connections(deployment.port, 3):
        expect(proxy.locator(".connections")).to_have_text("3 of 10,000")
    expect(proxy.locator(".connections")).to_have_text("0 of 10,000")
    expect(proxy.locator(".refusals")).to_have_text("none")
    assert refused_status(deployment.port, b"NOT HTTP\r\n\r\n") == 400
    expect(proxy.locator(".refusals")).to_have_text(answered(400, 1))

    admin = page.locator('tr[data-listener="admin"]')
    expect(admin.locator(".addresses")).to_have_text(
        f"127.0.0.1:{deployment.admin_port}"
    )
    expect(admin.locator(".connections")).to_have_text(re.compile(r"^[1-9]\d* of 256$"))
    # Signing in began with the console's challenge.
    expect(admin.locator(".refusals")).to_have_text(answered(401, 1))
    # No certificates configured: no panel for them.
    expect(page.locator("#certificates-panel")).to_be_hidden()


#: Counts the page's calls of fetch(), before its own script runs.
COUNT_FETCHES = """
window.fetches = 0;
const originalFetch = window.fetch;
window.fetch = (...args) => {
  window.fetches += 1;
  return originalFetch(...args);
};
"""


def test_an_address_with_credentials_says_how_to_sign_in(
    deployment: Deployment, new_tab: NewTab
) -> None:
    """
    Opened as http://user:password@host/, where browsers refuse the page's
    every request, the page says to open the address without them and sign
    in, links to both, and does not keep trying.
    """
    console = new_tab(signed_in=False)
    page = console.page
    page.add_init_script(COUNT_FETCHES)
    clean = deployment.admin_url + "/"
    page.goto(f"http://{USER}:{PASSWORD}@127.0.0.1:{deployment.admin_port}/")

    banner = page.locator("#connection")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("with a user name and password in its address")
    link = banner.locator("a.clean-address")
    expect(link).to_have_text(clean)
    expect(link).to_have_attribute("href", clean)
    expect(banner.get_by_role("link", name="Sign in")).to_have_attribute(
        "href", clean + "login"
    )
    page.wait_for_timeout(2500)
    expect(banner).not_to_contain_text("Connection lost")
    assert page.evaluate("window.fetches") == 0
    assert PASSWORD not in page.locator("body").inner_text()

    link.click()
    expect(page.locator("tr[data-server]")).to_have_count(2)
    expect(banner).to_be_hidden()
    assert page.url == clean
    assert console.errors == []


@pytest.mark.parametrize(
    "deployment", [{"certificates": True}], indirect=True, ids=["certificates"]
)
def test_the_page_lists_the_certificates_and_when_they_expire(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Each certificate's file, names and expiry, the default one marked, and
    one that expires within two weeks shown as a warning.
    """
    page = open_console().page
    expect(page.locator("#certificates-panel")).to_be_visible()
    first = page.locator(f'tr[data-certificate="{deployment.directory}/a/cert.pem"]')
    expect(first.locator(".file")).to_have_text(
        f"{deployment.directory}/a/cert.pem (default)"
    )
    expect(first.locator(".names div")).to_have_text(["a.test", "*.a.test"])
    expect(first.locator(".expires")).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in 29 d 23 h\)$")
    )
    expect(first.locator(".expires")).not_to_have_class(re.compile("near-limit"))
    second = page.locator(f'tr[data-certificate="{deployment.directory}/b/cert.pem"]')
    expect(second.locator(".file")).to_have_text(f"{deployment.directory}/b/cert.pem")
    expect(second.locator(".expires")).to_have_text(re.compile(r"\(in 4 d 23 h\)$"))
    expect(second.locator(".expires")).to_have_class(re.compile("near-limit"))


@pytest.mark.parametrize("deployment", [{"streams": True}], indirect=True)
def test_a_tcp_stream_shows_its_connections_and_bytes(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    The TCP streams panel lists each stream with its address, upstream,
    connections and bytes, refreshed as traffic goes through.
    """
    console = open_console()
    page = console.page
    row = page.locator("#streams-body tr")
    expect(page.locator("#streams-panel")).to_be_visible()
    expect(row.locator(".upstream")).to_have_text("backend")
    address = row.locator(".addresses").inner_text()
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    expect(row.locator(".connections")).to_have_text("0 open, 1 in all, 0 failed")
    expect(row.locator(".bytes")).to_contain_text(" B in, ")
    assert console.errors == []
    assert console.csp_violations() == []


@pytest.mark.parametrize("deployment", [{"balancing": True}], indirect=True)
def test_checks_hash_shares_and_slow_start_are_shown_per_server(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    Each server's last active check in HAProxy's words, its share of the
    hash's keys and its response-time average; a server whose checks fail
    is shown out by checks with no share of the keys, and once back, in
    slow start.
    """
    console = open_console()
    a, b = deployment.a, deployment.b
    check_b = console.row(b).locator(".check")
    for server in (a, b):
        expect(console.row(server).locator(".check")).to_have_text(
            re.compile(r"^check L7OK 200 in \d+ ms · \d+ checks, 0 downs$")
        )
    shares = [
        leading_number(console.row(server).locator(".hash-share")) for server in (a, b)
    ]
    assert sum(shares) == pytest.approx(100, abs=0.2) and min(shares) > 20, shares
    expect(console.row(a).locator(".hash-share")).to_have_text(
        re.compile(r"^\d+\.\d% of keys$")
    )
    send_requests(deployment.port, 20)
    expect(console.row(a).locator(".latency-ewma")).to_have_text(
        re.compile(r"^ewma \d")
    )

    assert b.stop() == 0, b.log.read_text()
    # Three failed checks, half a second apart, with no traffic at all.
    expect(check_b).to_have_text(
        re.compile(r"^check L4CON .* · out by checks since .* · \d+ checks, 1 downs$"),
        timeout=5000,
    )
    expect(state_badge(console, b)).to_have_attribute("data-state", "down")
    expect(console.row(b).locator(".hash-share")).to_have_text("0.0% of keys")
    expect(console.row(a).locator(".hash-share")).to_have_text("100.0% of keys")

    b.start()
    expect(check_b).to_have_text(
        re.compile(r"^check L7OK 200 in \d+ ms · \d+ checks, 1 downs$"), timeout=5000
    )
    expect(state_badge(console, b)).to_have_attribute("data-state", "up")
    expect(console.row(b).locator(".slow-start")).to_have_text(
        re.compile(r"^slow start: \d+% of its weight$")
    )
    assert console.errors == []


@pytest.mark.parametrize("deployment", [{"provider": True}], indirect=True)
def test_a_providers_servers_and_its_failures_are_shown(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    An upstream whose servers a file lists says where they come from and
    when they were found; a broken edit shows the error in red while the
    servers stay; a good edit changes the rows.
    """
    console = open_console()
    page = console.page
    provider = page.locator('[data-upstream-section="backend"] .provider')
    expect(provider).to_have_text(
        re.compile(r"^servers from file · found \d\d:\d\d:\d\d \(\d+ s ago\)$")
    )
    expect(provider).not_to_have_class(re.compile("is-down"))
    servers = deployment.directory / "servers.toml"
    servers.write_text('[[servers]]\npath = "ftp://nowhere"\n')
    expect(provider).to_have_text(
        re.compile(r"· failing since .*: .*servers\[0\]\.path"), timeout=5000
    )
    expect(provider).to_have_class(re.compile("is-down"))
    expect(page.locator("tr[data-server]")).to_have_count(2)
    servers.write_text(f'[[servers]]\npath = "{deployment.a.address}"\n')
    expect(page.locator("tr[data-server]")).to_have_count(1, timeout=5000)
    expect(provider).not_to_have_class(re.compile("is-down"))
    assert console.errors == []


@pytest.mark.parametrize(
    "deployment", [{"cluster": True}], indirect=True, ids=["cluster"]
)
def test_the_cluster_panel_lists_the_instances_and_says_when_etcd_is_lost(
    deployment: Deployment, open_console: OpenConsole
) -> None:
    """
    With ``[cluster]``, the page says which instance this is and whether
    etcd is reachable, lists the instances, and names the instance of each
    change; with etcd gone the line turns red and says why, while the
    proxy keeps the last state.
    """
    console = open_console()
    page = console.page
    status = page.locator("#cluster-status")
    expect(page.locator("#cluster-panel")).to_be_visible()
    expect(status).to_contain_text("browser-test · etcd http://127.0.0.1:")
    expect(status).to_contain_text("connected since", timeout=5000)
    expect(status).not_to_have_class(re.compile("banner-error"))
    instances = page.locator("#cluster-body tr")
    expect(instances).to_have_count(1, timeout=5000)
    expect(instances.nth(0)).to_contain_text("browser-test (this one)")
    expect(instances.nth(0)).to_contain_text(f"127.0.0.1:{deployment.admin_port}")
    b = deployment.b
    console.button(b, "drain").click()
    expect(page.locator("#changes-list li").nth(0)).to_contain_text(
        f"{USER} on browser-test: backend / {b.address}: state up -> drain"
    )

    assert deployment.etcd is not None
    deployment.etcd.stop()
    expect(status).to_contain_text("unreachable since", timeout=10000)
    expect(status).to_contain_text("Serving with the last state known")
    expect(status).to_have_class(re.compile("banner-error"))
    split = send_requests(deployment.port, 20)
    assert split[b.name] == 0, split
    assert console.errors == []
