"""
HTTPS upstreams: certificates and host names are verified unless a server
says ``tls_verify = false``.  The certificate authority is made here, and
trusted through OpenSSL's ``SSL_CERT_FILE``, as an operator would trust a
private CA.

HTTPS listeners: an ``ssl:`` endpoint's files are found beside the
configuration file, and a missing or mismatched one stops twistd in one line.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl as stdlib_ssl
import subprocess
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

from tests.configs import LISTEN
from tests.processes import GOURMET_LISTENING, TWISTD, ports_of, wait_reported
from tests.upstreams import UpstreamServer

Key = ec.EllipticCurvePrivateKey


def _certificate(
    name: str,
    key: Key,
    issuer: Tuple[str, Key],
    is_ca: bool = False,
    *,
    names: Optional[Sequence[str]] = None,
    valid_from: float = -1,
    valid_until: float = 1,
) -> x509.Certificate:
    """
    A certificate for ``name`` (and ``names`` in its subjectAltName, just
    ``name`` by default), valid from ``valid_from`` to ``valid_until``
    days from now.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=valid_from))
        .not_valid_after(now + datetime.timedelta(days=valid_until))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
    )
    if not is_ca:
        alternative = [_general_name(each) for each in names or [name]]
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative), False)
    return builder.sign(issuer[1], hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    """
    An IP address's or a host name's subjectAltName entry.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(key: Key, certificate: x509.Certificate) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + certificate.public_bytes(serialization.Encoding.PEM)


def certificate_files(
    directory: Path, password: Optional[bytes] = None
) -> Tuple[Path, Path]:
    """
    A new private key and a self-signed certificate for ``localhost``, in
    ``key.pem`` and ``cert.pem`` in ``directory`` (made if need be); the key
    encrypted with ``password`` when one is given.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate("localhost", key, ("localhost", key))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    key_path, certificate_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, certificate_path


@pytest.fixture
def authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """
    A private CA that OpenSSL trusts for this test; calling it makes a TLS
    server context for a host name, signed by the CA.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Gourmet Test CA", ca_key, ("Gourmet Test CA", ca_key), True)
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    def server_context(host: str) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _certificate(host, key, ("Gourmet Test CA", ca_key))
        return ssl.PrivateCertificate.loadPEM(_pem(key, certificate)).options()

    return server_context


def tls_config(server: UpstreamServer, extra: str = "") -> str:
    return (
        f"[upstreams.secure]\n[[upstreams.secure.servers]]\n"
        f'path = "https://localhost:{server.port_number}"\n{extra}\n'
        f"[server]\n{LISTEN}\n"
        '[[server.locations]]\nlocation = "^/"\nupstream = "secure"\n'
    )


def https_upstream(authority: Any, certificate_host: str) -> UpstreamServer:
    server = UpstreamServer("secure", tls=authority(certificate_host))
    server.start()
    return server


@pytest_twisted.ensureDeferred
async def test_verified_https_upstream(gourmet: Any, authority: Any) -> None:
    server = https_upstream(authority, "localhost")
    try:
        running = await gourmet(tls_config(server))
        response = await running.get("/hello")
        assert response.code == 200
        assert json.loads(await response.content())["uri"] == "/hello"
        # The upstream saw its own name as Host, port included.
        assert (
            server.seen[0].header(b"host") == f"localhost:{server.port_number}".encode()
        )
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_host_name_is_refused(gourmet: Any, authority: Any) -> None:
    server = https_upstream(authority, "not-localhost.example")
    try:
        running = await gourmet(tls_config(server))
        response = await running.get("/hello", headers={"Accept": "application/json"})
        assert response.code == 502
        assert json.loads(await response.content())["status"] == 502
        assert server.seen == []
        failing = running.upstream("secure").servers[0]
        assert failing.failures == 1
        assert "DNSMismatch" in failing.health.last_error
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_tls_verify_false_accepts_any_certificate(
    gourmet: Any, authority: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = https_upstream(authority, "not-localhost.example")
    monkeypatch.delenv("SSL_CERT_FILE")
    try:
        running = await gourmet(tls_config(server, "tls_verify = false"))
        response = await running.get("/hello")
        assert response.code == 200
        assert len(server.seen) == 1
    finally:
        await server.stop()


def https_listener_config(directory: Path, listen: str) -> Path:
    """
    A configuration file in ``directory`` whose one listener is ``listen``,
    sending every request to a server that is not there.
    """
    path = directory / "gourmet.toml"
    path.write_text(
        "[upstreams.b]\n[[upstreams.b.servers]]\npath = '127.0.0.1:1'\n"
        f"[server]\nlisten = ['{listen}']\n"
        "[[server.locations]]\nlocation = '^/'\nupstream = 'b'\n"
        "[log]\naccess_log = 'off'\n[admin]\nlisten = 'off'\n"
    )
    return path


def test_an_https_listener_reads_its_files_beside_the_configuration(
    tmp_path: Path,
) -> None:
    _, certificate = certificate_files(tmp_path / "etc" / "tls")
    config = https_listener_config(
        tmp_path / "etc",
        "ssl:0:interface=127.0.0.1:privateKey=tls/key.pem:certKey=tls/cert.pem",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = tmp_path / "twistd.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "gourmet", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=elsewhere,
        )
    try:
        (listening,) = wait_reported(process, log, [GOURMET_LISTENING])
        port = ports_of(listening["addresses"])[0]
        client = stdlib_ssl.create_default_context()
        # The test compares the certificate itself: no CA to verify it by.
        client.check_hostname = False
        client.verify_mode = stdlib_ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            served = tls.getpeercert(binary_form=True)
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reply = tls.recv(65536)
    finally:
        process.terminate()
        process.wait(10)
    pem = x509.load_pem_x509_certificate(certificate.read_bytes())
    assert served == pem.public_bytes(serialization.Encoding.DER)
    # Gourmet's own answer, over TLS: the upstream is not there.
    assert reply.startswith(b"HTTP/1.1 502 ")


def twistd_refusal(config: Path) -> Tuple[int, List[str]]:
    """
    How twistd stops on ``config``: its exit status and standard error's
    lines.
    """
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "gourmet", "--config", str(config)],
        capture_output=True,
        timeout=60,
        cwd=config.parent,
    )
    return result.returncode, result.stderr.decode().splitlines()


def test_a_missing_or_mismatched_certificate_stops_twistd_in_one_line(
    tmp_path: Path,
) -> None:
    _, certificate = certificate_files(tmp_path / "tls")
    other_key, _ = certificate_files(tmp_path / "other")
    problems = {
        "privateKey=tls/key.pem:certKey=tls/nowhere.pem": (
            f"cannot read {tmp_path / 'tls' / 'nowhere.pem'}: No such file or directory"
        ),
        "privateKey=other/key.pem:certKey=tls/cert.pem": (
            f"the private key in {other_key} does not match the certificate in"
            f" {certificate}"
        ),
    }
    for files, problem in problems.items():
        config = https_listener_config(tmp_path, f"ssl:0:{files}")
        assert twistd_refusal(config) == (
            1,
            [f"gourmet: {config}: server.listen[0]: {problem}"],
        )
