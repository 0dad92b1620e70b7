"""
Which certificate a TLS client gets for the name it asks for, and the
``[server]`` TLS settings a configuration may have: pure logic, no sockets.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Tuple

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gourmet.config.load import ConfigError, parse_config
from gourmet.frontend.https import https_location
from gourmet.tls.certificates import CertificateError, load_certificate
from gourmet.tls.sni import NameIndex
from tests.test_tls import _certificate, _pem


def index() -> NameIndex[str]:
    return NameIndex(
        [
            (["example.com", "www.example.com"], "first"),
            (["*.example.com"], "wildcard"),
            (["api.example.com", "example.com"], "api"),
            (["Other.Test"], "other"),
        ]
    )


def test_an_exact_name_wins_over_a_wildcard() -> None:
    assert index().select(b"api.example.com") == "api"
    assert index().select(b"www.example.com") == "first"


def test_a_wildcard_covers_one_label_only() -> None:
    names = index()
    assert names.select(b"shop.example.com") == "wildcard"
    # Not two labels, and not the name itself (RFC 6125).
    assert names.select(b"a.shop.example.com") == "first"
    assert NameIndex([(["x.test"], "x"), (["*.example.com"], "w")]).select(
        b"example.com"
    ) == ("x")


def test_no_name_or_an_unknown_one_gets_the_first_certificate() -> None:
    names = index()
    assert names.select(None) == "first"
    assert names.select(b"") == "first"
    assert names.select(b"nobody.test") == "first"
    assert names.select("bücher.test".encode()) == "first"


def test_names_compare_without_case_or_a_final_dot() -> None:
    names = index()
    assert names.select(b"OTHER.test") == "other"
    assert names.select(b"other.test.") == "other"
    assert names.select(b"SHOP.Example.COM") == "wildcard"


def test_the_first_certificate_listed_keeps_a_name_two_have() -> None:
    # example.com is in the first and the third: the first has it.
    assert index().select(b"example.com") == "first"


def test_an_index_needs_a_certificate() -> None:
    with pytest.raises(ValueError):
        NameIndex([])


def key_and_certificate(
    directory: Path, names: Tuple[str, ...], valid_from: float, valid_until: float
) -> Tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(
        names[0],
        key,
        (names[0], key),
        names=names,
        valid_from=valid_from,
        valid_until=valid_until,
    )
    both = _pem(key, certificate)
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(both[: both.index(b"-----BEGIN CERTIFICATE")])
    cert_path.write_bytes(both[both.index(b"-----BEGIN CERTIFICATE") :])
    return key_path, cert_path


def test_a_certificate_is_read_with_its_names_and_checked_for_dates(
    tmp_path: Path,
) -> None:
    key, cert = key_and_certificate(tmp_path, ("a.test", "*.A.test"), -1, 30)
    loaded = load_certificate(str(cert), str(key))
    assert loaded.names == ("a.test", "*.a.test")
    assert loaded.chain == ()
    days = (loaded.not_after - datetime.datetime.now(datetime.timezone.utc)).days
    assert days == 29
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=31)
    with pytest.raises(CertificateError, match=f"the certificate in {cert} expired"):
        load_certificate(str(cert), str(key), now=later)


def test_https_location() -> None:
    assert (
        https_location(b"Example.test:8080", "10.0.0.1", b"/a?b=1", 8443)
        == b"https://example.test:8443/a?b=1"
    )
    assert https_location(b"example.test", "10.0.0.1", b"/", 443) == (
        b"https://example.test/"
    )
    # HTTP/1.0 without Host: the address the client connected to.
    assert https_location(None, "::1", b"/x", None) == b"https://[::1]/x"


def config_text(server: str, certificates: str = "") -> str:
    return (
        "[upstreams.b]\n[[upstreams.b.servers]]\npath = '127.0.0.1:9'\n"
        f"[server]\n{server}\n{certificates}"
        "[[server.locations]]\nlocation = '^/'\nupstream = 'b'\n"
    )


def refusal(text: str, base_dir: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gourmet.toml", str(base_dir))
    return str(raised.value)


def test_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    key_and_certificate(tmp_path, ("a.test",), -1, 1)
    certificate = "[[server.certificates]]\ncert = 'cert.pem'\nkey = 'key.pem'\n"
    listen = "tls_listen = ['tcp:8443']"
    assert refusal(config_text(listen), tmp_path) == (
        "gourmet.toml: server.tls_listen: TLS listeners need at least one"
        " [[server.certificates]] table (cert and key), or [server.acme]"
    )
    assert refusal(config_text("redirect_to_https = true"), tmp_path) == (
        "gourmet.toml: server.redirect_to_https: redirects to HTTPS need"
        " server.tls_listen, a listener to send clients to"
    )
    assert refusal(
        config_text("tls_listen = ['ssl:8443:privateKey=key.pem']", certificate),
        tmp_path,
    ).startswith(
        "gourmet.toml: server.tls_listen[0]: expected a plain endpoint such as tcp:443"
    )
    assert refusal(config_text(f"{listen}\nhsts = 'includeSubDomains'"), tmp_path) == (
        "gourmet.toml: server.hsts: expected a Strict-Transport-Security value"
        ' such as "max-age=31536000; includeSubDomains", got "includeSubDomains"'
    )
    assert refusal(config_text("min_tls_version = '1.1'"), tmp_path) == (
        "gourmet.toml: server.min_tls_version: expected one of '1.2', '1.3',"
        ' got "1.1"'
    )
    missing_key = "[[server.certificates]]\ncert = 'cert.pem'\n"
    assert refusal(config_text(listen, missing_key), tmp_path) == (
        "gourmet.toml: server.certificates[0].key: missing key: expected 'key'"
        " (the private key's PEM file)"
    )


def test_certificates_without_tls_listen_are_checked_and_kept(
    tmp_path: Path,
) -> None:
    key_and_certificate(tmp_path, ("a.test",), -1, 1)
    certificate = "[[server.certificates]]\ncert = 'cert.pem'\nkey = 'key.pem'\n"
    config = parse_config(
        config_text("hsts = 'max-age=60'", certificate), "g.toml", str(tmp_path)
    )
    (loaded,) = config.frontend.certificates
    assert loaded.names == ("a.test",)
    assert loaded.cert_file == str(tmp_path / "cert.pem")
    assert config.frontend.hsts == "max-age=60"
    assert config.frontend.min_tls_version == "1.2"
