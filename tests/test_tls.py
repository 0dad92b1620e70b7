"""
HTTPS upstreams: certificates and host names are verified unless a server
says ``tls_verify = false``.  The certificate authority is made here, and
trusted through OpenSSL's ``SSL_CERT_FILE``, as an operator would trust a
private CA.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Tuple

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

from tests.configs import LISTEN
from tests.upstreams import UpstreamServer

Key = ec.EllipticCurvePrivateKey


def _certificate(
    name: str, key: Key, issuer: Tuple[str, Key], is_ca: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), False
        )
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(key: Key, certificate: x509.Certificate) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + certificate.public_bytes(serialization.Encoding.PEM)


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
