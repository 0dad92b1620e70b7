"""
Certificates from ACME (``[server.acme]``): end to end against pebble,
Let's Encrypt's test server (``tests/pebble.py``), with a real ``twistd``
whose plain listener pebble validates http-01 challenges on: issued at
start-up and served by SNI after the manual certificates, renewed while
HTTPS load runs with no failed request, kept across a restart without a
new order, and kept when the ACME server fails, with the error logged.
The schedule (a third of the lifetime, the backoff) on a ``Clock``; the
state directory's modes; the configuration's errors.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from gourmet.config.load import ConfigError, load_config, parse_config
from gourmet.config.model import AcmeConfig
from gourmet.tls.acme import AcmeError
from gourmet.tls.acme_state import AcmeState, AcmeStateError, is_placeholder
from gourmet.tls.certificates import Certificate
from gourmet.tls.renewal import AcmeRenewal, Issued, renewal_time
from tests.configs import ADMIN_LISTEN, LISTEN
from tests.pebble import PEBBLE_ISSUER, Pebble
from tests.processes import Twistd
from tests.rawhttp import sleep
from tests.test_cli import check
from tests.test_operations import TOKEN, wait_for_log
from tests.test_systemd import listening_socket
from tests.test_tls_listeners import (
    HTTPS_ADDRESS,
    Authority,
    Client,
    _pem,
    console,
)
from tests.upstreams import UpstreamServer

#: Pebble's certificates in the renewal test: renewed a third before the
#: end, 14 s after issue, which leaves 7 s for the renewal to come.
SHORT_VALIDITY = 21
#: The load loop's bounds.
LOAD_SECONDS = 60.0
LOAD_REQUESTS = 4000

DOMAINS = ["a.test", "b.test"]
OBTAINED = "ACME certificate for a.test, b.test obtained from"
NOT_OBTAINED = "ACME certificate for a.test, b.test not obtained from"


@pytest.fixture
def plain_socket() -> Iterator[socket.socket]:
    """
    Gourmet's plain listener, made by the test (as systemd would) so that
    pebble is told its port before Gourmet starts.
    """
    passed = listening_socket()
    yield passed
    passed.close()


@pytest.fixture
def pebbles(tmp_path: Path) -> Iterator[List[Pebble]]:
    started: List[Pebble] = []
    yield started
    for each in started:
        each.close()


def acme_text(upstream: str, pebble: Pebble, manual: bool = True) -> str:
    """
    Gourmet on the test's plain socket (redirecting to HTTPS, but for
    ACME's challenges) and a TLS listener, with a manual certificate for
    ``manual.test`` and ACME's for ``a.test`` and ``b.test``.
    """
    certificate = "[[server.certificates]]\ncert='manual.pem'\nkey='manual.key'\n"
    return (
        f"[upstreams.b]\n[[upstreams.b.servers]]\npath='{upstream}'\n"
        "[server]\nlisten=['systemd:domain=INET:name=http']\n"
        f"tls_listen=['{ADMIN_LISTEN}']\nredirect_to_https=true\n"
        f"[server.acme]\ndirectory='{pebble.url}'\nemail='ops@a.test'\n"
        f"domains={json.dumps(DOMAINS)}\nstate_dir='acme'\n"
        f"ca_file='{pebble.ca_file}'\n"
        f"{certificate if manual else ''}"
        "[[server.locations]]\nlocation='^/'\nupstream='b'\n"
        "[log]\naccess_log='off'\n"
        f"[admin]\nlisten='{ADMIN_LISTEN}'\ntoken='{TOKEN}'\n"
    )


class Rig:
    """
    One end-to-end test's pebble, upstream and plain socket, and the
    twistd processes it starts on them.
    """

    def __init__(
        self,
        tmp_path: Path,
        processes: List[Twistd],
        upstream: UpstreamServer,
        plain: socket.socket,
        pebbles: List[Pebble],
    ) -> None:
        self.tmp_path = tmp_path
        self.processes = processes
        self.upstream = upstream
        self.plain = plain
        self.pebbles = pebbles

    def pebble(self, validity: int) -> Pebble:
        pebble = Pebble(self.tmp_path / "pebble", self.plain.getsockname()[1], validity)
        self.pebbles.append(pebble)
        return pebble

    async def start(self, text: str) -> Tuple[Twistd, int]:
        """
        twistd on ``text`` with the plain socket, and its TLS port.
        """
        config = self.tmp_path / "gourmet.toml"
        config.write_text(text)
        gourmet = Twistd(config, self.plain)
        self.processes.append(gourmet)
        await gourmet.ready(admin=True)
        match = HTTPS_ADDRESS.search(gourmet.stderr.read_text())
        assert match is not None
        return gourmet, int(match[1])


@pytest.fixture
def rig(
    tmp_path: Path,
    processes: List[Twistd],
    make_upstreams: Any,
    plain_socket: socket.socket,
    pebbles: List[Pebble],
) -> Rig:
    (upstream,) = make_upstreams("up")
    return Rig(tmp_path, processes, upstream, plain_socket, pebbles)


def served(port: int, name: Optional[str]) -> x509.Certificate:
    """
    The certificate a client asking for ``name`` gets (blocking).
    """
    client = Client(port, name)
    client.close()
    assert client.certificate is not None
    return x509.load_der_x509_certificate(client.certificate)


async def served_to(port: int, name: Optional[str]) -> x509.Certificate:
    certificate: x509.Certificate = await deferToThread(served, port, name)
    return certificate


def common_name(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def dns_names(certificate: x509.Certificate) -> List[str]:
    extension = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return sorted(extension.value.get_values_for_type(x509.DNSName))


def kept_chain(tmp_path: Path) -> List[x509.Certificate]:
    return x509.load_pem_x509_certificates(
        (tmp_path / "acme" / "certificate.pem").read_bytes()
    )


def assert_from_pebble(certificate: x509.Certificate, tmp_path: Path) -> None:
    """
    ``certificate`` is pebble's for ACME's names: the one the state
    directory keeps, signed by the pebble intermediate kept beside it.
    """
    leaf, intermediate, *_ = kept_chain(tmp_path)
    assert certificate == leaf
    assert PEBBLE_ISSUER.fullmatch(common_name(certificate.issuer))
    certificate.verify_directly_issued_by(intermediate)
    assert dns_names(certificate) == DOMAINS


def https_load(port: int, first: x509.Certificate) -> Tuple[int, List[str], int]:
    """
    HTTPS requests for a.test, each on a new connection (a new handshake,
    so each gets the certificate served at that moment), until the
    certificate has changed from ``first`` and 50 more requests have been
    answered (or the bounds are reached): the requests made, the failures,
    and the number of them served the renewed certificate.
    """
    deadline = time.monotonic() + LOAD_SECONDS
    failures: List[str] = []
    renewed = 0
    made = 0
    while made < LOAD_REQUESTS and time.monotonic() < deadline and renewed < 50:
        made += 1
        try:
            client = Client(port, "a.test")
            status, _, body = client.get(f"/load/{made}")
            client.close()
        except (OSError, AssertionError) as error:
            failures.append(f"request {made}: {error!r}")
            continue
        if status != 200 or json.loads(body)["server"] != "up":
            failures.append(f"request {made}: {status} {body[:100]!r}")
        certificate = x509.load_der_x509_certificate(client.certificate or b"")
        if certificate.serial_number != first.serial_number:
            renewed += 1
    return made, failures, renewed


def acme_entries(document: Any) -> List[Tuple[str, List[str], float, bool]]:
    return [
        (each["file"], each["names"], each["not_after"], each["default"])
        for each in document["certificates"]
    ]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_issued_at_start_up_served_by_sni_and_renewed_under_load(
    tmp_path: Path, rig: Rig
) -> None:
    manual = Authority(tmp_path).issue("manual", ["manual.test"])
    pebble = rig.pebble(SHORT_VALIDITY)
    gourmet, port = await rig.start(acme_text(rig.upstream.address, pebble))
    await wait_for_log(gourmet, OBTAINED, within=30)
    # ACME's certificate for its names; the manual one for its own and
    # for clients that ask for no name or another (the default).
    first = await served_to(port, "a.test")
    assert_from_pebble(first, tmp_path)
    assert await served_to(port, "B.test") == first
    for other in ["manual.test", None, "c.test"]:
        assert await served_to(port, other) == manual, other
    # A reload that leaves [server.acme] alone keeps ACME's certificate.
    gourmet.process.send_signal(signal.SIGHUP)
    await wait_for_log(gourmet, "gourmet reloaded")
    assert await served_to(port, "a.test") == first
    # Renewed while clients keep coming, none of them failing.
    kept = await deferToThread(Client, port, "a.test")
    status, _, _ = await deferToThread(kept.get, "/load/kept")
    assert status == 200
    made, failures, renewed = await deferToThread(https_load, port, first)
    assert failures == []
    assert renewed == 50, (made, gourmet.stderr.read_text())
    second = await served_to(port, "a.test")
    assert second.serial_number != first.serial_number
    # A connection opened before keeps its certificate, and works.
    assert kept.certificate == first.public_bytes(serialization.Encoding.DER)
    status, _, _ = await deferToThread(kept.get, "/load/kept-after")
    assert status == 200
    kept.close()
    assert_from_pebble(second, tmp_path)
    log = gourmet.stderr.read_text()
    assert log.count(OBTAINED) >= 2
    # The console lists it after the manual one, the metric has it.
    document = json.loads(await console(gourmet, "/api/upstreams"))
    state_file = str(tmp_path / "acme" / "certificate.pem")
    assert acme_entries(document) == [
        (str(tmp_path / "manual.pem"), ["manual.test"], expiry(manual), True),
        (state_file, DOMAINS, expiry(second), False),
    ]
    metrics = await console(gourmet, "/metrics")
    sample = f'gourmet_certificate_expiry_seconds{{file="{state_file}",name="b.test"}} '
    (value,) = [
        line[len(sample) :] for line in metrics.splitlines() if line.startswith(sample)
    ]
    assert float(value) == expiry(second)
    # The challenges were Gourmet's to answer: none reached the upstream,
    # and its only requests were the load's.
    seen = rig.upstream.seen
    assert all(each.uri.startswith(b"/load/") for each in seen)
    assert len(seen) == made + 2


def expiry(certificate: x509.Certificate) -> float:
    return certificate.not_valid_after_utc.timestamp()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_restart_serves_the_kept_certificate_without_a_new_order(
    tmp_path: Path, rig: Rig
) -> None:
    pebble = rig.pebble(3600)
    text = acme_text(rig.upstream.address, pebble, manual=False)
    gourmet, port = await rig.start(text)
    await wait_for_log(gourmet, OBTAINED, within=30)
    first = await served_to(port, "a.test")
    assert_from_pebble(first, tmp_path)
    # Without a manual certificate, ACME's is everyone's.
    assert await served_to(port, None) == first
    # The state is its owner's only.
    state = tmp_path / "acme"
    assert mode(state) == 0o700
    assert sorted(each.name for each in state.iterdir()) == [
        "account.key",
        "certificate.pem",
    ]
    assert {mode(each) for each in state.iterdir()} == {0o600}
    assert gourmet.stop() == 0
    # Started again: the kept certificate, and no order to pebble.
    again, port = await rig.start(text)
    kept = state / "certificate.pem"
    await wait_for_log(again, f"ACME certificate for a.test, b.test from {kept}")
    assert await served_to(port, "b.test") == first
    assert pebble.orders() == 1
    assert OBTAINED not in again.stderr.read_text()


def log_lines(gourmet: Twistd, text: str) -> List[str]:
    return [each for each in gourmet.stderr.read_text().splitlines() if text in each]


async def wait_for_lines(gourmet: Twistd, text: str, count: int) -> List[str]:
    deadline = time.monotonic() + 30
    while len(lines := log_lines(gourmet, text)) < count:
        assert time.monotonic() < deadline, gourmet.stderr.read_text()
        await sleep(0.05)
    return lines


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_failing_acme_server_leaves_the_certificate_served_and_is_logged(
    tmp_path: Path, rig: Rig
) -> None:
    pebble = rig.pebble(9)
    pebble.stop()
    # No ACME server at start-up: a placeholder, the error, a retry.
    gourmet, port = await rig.start(
        acme_text(rig.upstream.address, pebble, manual=False)
    )
    (line,) = await wait_for_lines(gourmet, NOT_OBTAINED, 1)
    assert f"{NOT_OBTAINED} {pebble.url}: " in line
    assert "Connection refused" in line
    assert line.endswith(
        "; TLS clients still get a self-signed placeholder; next try in 60 seconds"
    )
    placeholder = await served_to(port, "a.test")
    assert placeholder.issuer == placeholder.subject
    assert dns_names(placeholder) == DOMAINS
    # The server back, elsewhere: a reload with its address orders at once.
    pebble.start()
    (tmp_path / "gourmet.toml").write_text(
        acme_text(rig.upstream.address, pebble, manual=False)
    )
    gourmet.process.send_signal(signal.SIGHUP)
    await wait_for_log(gourmet, OBTAINED, within=30)
    first = await served_to(port, "a.test")
    assert_from_pebble(first, tmp_path)
    # The server gone when the renewal is due (6 s after issue): the
    # certificate stays, and the error is logged with the next try.
    pebble.stop()
    _, line = await wait_for_lines(gourmet, NOT_OBTAINED, 2)
    until = first.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert line.endswith(
        f"; TLS clients still get the certificate valid until {until};"
        " next try in 60 seconds"
    )
    assert await served_to(port, "a.test") == first


# -- the schedule, on a Clock ------------------------------------------------------


def acme_config(tmp_path: Path, acme: str = "", server: str = "") -> str:
    """
    A configuration with TLS from ACME only, its state in ``tmp_path``.
    """
    return (
        "[upstreams.b]\n[[upstreams.b.servers]]\npath='127.0.0.1:1'\n"
        f"[server]\n{LISTEN}\ntls_listen=['{ADMIN_LISTEN}']\n{server}\n"
        "[server.acme]\ndirectory='https://127.0.0.1:1/directory'\n"
        f"domains={json.dumps(DOMAINS)}\nstate_dir='{tmp_path / 'acme'}'\n{acme}\n"
        "[[server.locations]]\nlocation='^/'\nupstream='b'\n"
    )


class Orders:
    """
    The ACME server of the schedule's tests: each order waits for the test
    to say how it ends.
    """

    def __init__(self) -> None:
        self.pending: List[Deferred[Issued]] = []

    def __call__(self, config: AcmeConfig, state: AcmeState) -> Deferred[Issued]:
        order: Deferred[Issued] = Deferred()
        self.pending.append(order)
        return order

    def fail(self) -> None:
        self.pending[-1].errback(AcmeError("the server said no"))

    def issue(self, authority: Authority, days: int) -> x509.Certificate:
        leaf = authority.issue("issued", DOMAINS, valid_from=0, valid_until=days)
        directory = authority.directory
        key = serialization.load_pem_private_key(
            (directory / "issued.key").read_bytes(), None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.pending[-1].callback(((directory / "issued.pem").read_bytes(), key))
        return leaf


def wall_clock() -> Clock:
    """
    A clock at the time now: certificates are checked against it.
    """
    clock = Clock()
    clock.advance(time.time())
    return clock


def next_call(clock: Clock) -> float:
    (call,) = clock.getDelayedCalls()
    return call.getTime() - clock.seconds()


def test_orders_are_retried_after_a_minute_doubling_to_a_day_until_one_succeeds(
    tmp_path: Path,
) -> None:
    clock = wall_clock()
    orders = Orders()
    changes: List[Tuple[Certificate, ...]] = []
    renewal = AcmeRenewal(clock, orders, lambda: changes.append(renewal.certificates))
    renewal.configure(renewal.setup_for(parse_config(acme_config(tmp_path), "g.toml")))
    (placeholder,) = renewal.certificates
    assert is_placeholder(placeholder)
    with capturedLogs() as events:
        renewal.startService()
        assert next_call(clock) == 0  # nothing kept: an order at once
        clock.advance(0)
        waits = []
        for _ in range(13):
            orders.fail()
            waits.append(next_call(clock))
            clock.advance(waits[-1])
    assert waits == [60 * 2**n for n in range(11)] + [86400, 86400]
    # Every failure logged; the placeholder served all along.
    lines = [formatEvent(each) for each in events]
    assert lines[0] == (
        "ACME certificate for a.test, b.test to be ordered from"
        " https://127.0.0.1:1/directory; TLS clients get a self-signed"
        " placeholder meanwhile"
    )
    assert lines[1] == (
        "ACME certificate for a.test, b.test not obtained from"
        " https://127.0.0.1:1/directory: the server said no; TLS clients still"
        " get a self-signed placeholder; next try in 60 seconds"
    )
    assert len(lines) == 14
    assert lines[-1].endswith("; next try in 86400 seconds")
    assert renewal.certificates == (placeholder,)
    assert changes == []
    # Issued at last: served, kept, and renewed with 30 of 90 days left.
    leaf = orders.issue(Authority(tmp_path), 90)
    ((served,),) = changes
    assert served.leaf == leaf
    assert served.cert_file == str(tmp_path / "acme" / "certificate.pem")
    (renewal_call,) = clock.getDelayedCalls()
    day_60 = served.not_after.timestamp() - 30 * 86400
    assert renewal_call.getTime() == pytest.approx(day_60)
    # A failure then starts again from a minute.
    clock.advance(next_call(clock))
    orders.fail()
    assert next_call(clock) == 60
    assert renewal.certificates == (served,)
    renewal.stopService()
    assert clock.getDelayedCalls() == []


def test_a_kept_certificate_is_served_until_a_third_of_its_life_is_left(
    tmp_path: Path,
) -> None:
    clock = wall_clock()
    orders = Orders()
    config = parse_config(acme_config(tmp_path), "g.toml")
    renewal = AcmeRenewal(clock, orders, lambda: None)
    renewal.configure(renewal.setup_for(config))
    renewal.startService()
    clock.advance(0)
    orders.issue(Authority(tmp_path), 30)
    renewal.stopService()
    # As after a restart: the kept one, renewed on day 20 of 30.
    again = AcmeRenewal(clock, orders, lambda: None)
    again.configure(again.setup_for(config))
    (kept,) = again.certificates
    assert kept.cert_file == str(tmp_path / "acme" / "certificate.pem")
    assert renewal_time(kept) == pytest.approx(kept.not_after.timestamp() - 10 * 86400)
    again.startService()
    assert next_call(clock) == pytest.approx(20 * 86400, abs=1)
    assert len(orders.pending) == 1
    # A reload adding a name orders at once, serving the kept one meanwhile.
    more = acme_config(tmp_path).replace('"b.test"]', '"b.test", "c.test"]')
    setup = again.setup_for(parse_config(more, "g.toml"))
    assert setup is not None and setup.certificate.leaf == kept.leaf
    again.configure(setup)
    assert next_call(clock) == 0
    # The same [server.acme] again changes nothing.
    assert again.setup_for(parse_config(more, "g.toml")) is setup
    again.stopService()


def test_the_state_directory_is_its_owners_only_and_keeps_the_account(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        state = AcmeState(str(tmp_path / "lib" / "acme"))
    finally:
        os.umask(old)
    assert mode(tmp_path / "lib" / "acme") == 0o700
    assert mode(tmp_path / "lib" / "acme" / "account.key") == 0o600
    again = AcmeState(str(tmp_path / "lib" / "acme"))
    assert again.account_key.private_numbers() == state.account_key.private_numbers()
    (tmp_path / "file").write_text("")
    with pytest.raises(AcmeStateError, match="cannot make"):
        AcmeState(str(tmp_path / "file" / "acme"))


# -- configuration -----------------------------------------------------------------


def test_tls_from_acme_alone_and_its_paths_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(_pem(Authority(tmp_path).root))
    text = acme_config(tmp_path, "email='ops@a.test'\nca_file='ca.pem'").replace(
        f"'{tmp_path / 'acme'}'", "'acme'"
    )
    acme = parse_config(text, "g.toml", str(tmp_path)).frontend.acme
    assert acme == AcmeConfig(
        directory="https://127.0.0.1:1/directory",
        domains=("a.test", "b.test"),
        state_dir=str(tmp_path / "acme"),
        email="ops@a.test",
        ca_file=str(tmp_path / "ca.pem"),
    )


BAD = [
    ("directory='https://127.0.0.1:1/directory'", "directory='http://x/dir'",
     "server.acme.directory: expected an https:// URL"),
    ("directory='https://127.0.0.1:1/directory'", "",
     "server.acme.directory: missing key"),
    ('"a.test", "b.test"', '"*.a.test"',
     "server.acme.domains[0]: an http-01 challenge cannot prove a wildcard name"),
    ('"a.test", "b.test"', '"a.test", "a b"',
     'server.acme.domains[1]: expected a DNS name such as "example.com", got "a b"'),
    ('"a.test", "b.test"', '"10.0.0.1"',
     "server.acme.domains[0]: expected a DNS name, not an address"),
    ('["a.test", "b.test"]', "[]", "server.acme.domains: expected at least one"),
    ("state_dir=", "stat_dir=",
     "server.acme.stat_dir: unknown key; did you mean 'state_dir'?"),
    ("\n[[server.locations]]", "email='not an address'\n[[server.locations]]",
     "server.acme.email: expected an address"),
    ("\n[[server.locations]]", "ca_file='nowhere.pem'\n[[server.locations]]",
     "server.acme.ca_file: no such file"),
    ("\n[[server.locations]]", "ca_file='g.toml'\n[[server.locations]]",
     "server.acme.ca_file: no PEM certificate in"),
    (f"tls_listen=['{ADMIN_LISTEN}']", "",
     "server.acme: ACME certificates are for TLS listeners: set server.tls_listen"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "message"), BAD, ids=[m for _, _, m in BAD])
def test_a_bad_acme_table_names_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    message: str,
) -> None:
    path = tmp_path / "g.toml"
    text = acme_config(tmp_path)
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert str(raised.value).startswith(f"{path}: {message}")
    # gourmet check refuses it with the same line.
    status, _, err = check(path, capsys)
    assert status == 1
    assert err.startswith(f"gourmet: {path}: {message}")


def test_gourmet_check_accepts_acme_without_certificates_and_makes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "g.toml"
    path.write_text(acme_config(tmp_path))
    status, out, _ = check(path, capsys)
    assert status == 0
    assert f"TLS on {ADMIN_LISTEN} (0 certificates, ACME's for a.test, b.test)" in out
    assert not (tmp_path / "acme").exists()


# -- the challenges, in this process -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_pending_token_is_answered_and_others_are_proxied(
    tmp_path: Path, gourmet: Any, make_upstreams: Any
) -> None:
    (upstream,) = make_upstreams("up")
    text = acme_config(tmp_path).replace("127.0.0.1:1'", f"{upstream.address}'", 1)
    running = await gourmet(text)
    running.service.challenges.add("token-1", "token-1.thumbprint")
    path = "/.well-known/acme-challenge/"
    response = await running.get(path + "token-1")
    assert response.code == 200
    assert await response.text() == "token-1.thumbprint"
    assert response.headers.getRawHeaders("content-type") == ["text/plain"]
    # A token Gourmet was not given, and one no longer pending, go upstream.
    running.service.challenges.remove("token-1")
    for token in ["token-2", "token-1"]:
        response = await running.get(path + token)
        assert json.loads(await response.content())["server"] == "up"
    assert [each.uri for each in upstream.seen] == [
        f"{path}token-2".encode(),
        f"{path}token-1".encode(),
    ]
