"""
What Gourmet keeps of ACME between runs, in ``[server.acme] state_dir``:
the account's private key (``account.key``) and the last certificate
obtained, its chain and its key in one file (``certificate.pem``), so that
a restart serves it again without a new order.  The directory is its
owner's only (0700), each file too (0600); a file is written whole beside
the old one and renamed over it, so that a crash leaves one or the other.

Until a certificate has been obtained, TLS clients are served a
self-signed placeholder for the configured names (:func:`placeholder`):
their handshake completes and the client says the certificate is not
trusted, rather than the connection failing without a word.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gourmet.tls.certificates import (
    Certificate,
    CertificateError,
    certificate_names,
    load_certificate,
    private_key_in,
    read_file,
)

#: The placeholder's ``cert_file``, as the console lists it.
PLACEHOLDER_FILE = "(self-signed placeholder until ACME's certificate comes)"
#: How long a placeholder is valid: one start-up's wait, and its retries.
PLACEHOLDER_DAYS = 7


class AcmeStateError(Exception):
    """
    The state directory cannot be made, read or written.
    """


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """
    ``key`` as unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    """
    A new P-256 key: what Let's Encrypt's own clients make by default,
    and quick to make on the reactor's thread.
    """
    return ec.generate_private_key(ec.SECP256R1())


class AcmeState:
    """
    The state directory at ``directory``, made (0700) if missing.

    :ivar account_key: the ACME account's key, made and written on first
        use.
    :raises AcmeStateError: when the directory or the account key cannot
        be made or read.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.certificate_file = os.path.join(directory, "certificate.pem")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as error:
            raise AcmeStateError(
                f"cannot make {directory}: {error.strerror or error}"
            ) from None
        self.account_key = self._account_key(os.path.join(directory, "account.key"))

    def _account_key(self, path: str) -> ec.EllipticCurvePrivateKey:
        if not os.path.exists(path):
            key = new_key()
            self._write(path, key_pem(key))
            return key
        try:
            found = private_key_in(read_file(path, "key"), path)
        except CertificateError as error:
            raise AcmeStateError(str(error)) from None
        if not isinstance(found, ec.EllipticCurvePrivateKey):
            raise AcmeStateError(f"the account key in {path} is not an ECDSA key")
        return found

    def stored(self, now: Optional[datetime.datetime] = None) -> Certificate:
        """
        The certificate obtained last, checked as a configured one is.

        :raises CertificateError: when there is none, or it cannot be served
            (it expired while Gourmet was stopped, say).
        """
        return load_certificate(self.certificate_file, self.certificate_file, now)

    def store(self, chain_pem: bytes, key: ec.EllipticCurvePrivateKey) -> Certificate:
        """
        Keep a certificate just obtained (its chain, then its key), and
        read it back as :meth:`stored` will.

        :raises AcmeStateError: when it cannot be written.
        :raises CertificateError: when it cannot be served.
        """
        self._write(self.certificate_file, chain_pem + key_pem(key))
        return self.stored()

    def _write(self, path: str, data: bytes) -> None:
        temporary = f"{path}.new"
        try:
            if os.path.exists(temporary):
                os.unlink(temporary)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError as error:
            raise AcmeStateError(
                f"cannot write {path}: {error.strerror or error}"
            ) from None


def placeholder(domains: Sequence[str], now: datetime.datetime) -> Certificate:
    """
    A self-signed certificate for ``domains``, served until ACME's comes.
    """
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=PLACEHOLDER_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(each) for each in domains]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert_file=PLACEHOLDER_FILE,
        key_file=PLACEHOLDER_FILE,
        leaf=leaf,
        chain=(),
        key=key,
        names=certificate_names(leaf),
    )


def is_placeholder(certificate: Certificate) -> bool:
    """
    Whether ``certificate`` is a :func:`placeholder`.
    """
    return certificate.cert_file == PLACEHOLDER_FILE
