"""
Certificates and private keys read from PEM files and checked as a client
would check them, before anything is served with them: the file can be
read, holds a certificate (the leaf, then its chain) and a private key
without a passphrase, the key is the certificate's, and the certificate is
valid now.  Each problem is a :class:`CertificateError` naming the file.

No Twisted and no pyOpenSSL here: :mod:`gourmet.tls.store` makes OpenSSL
contexts of what this reads.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Optional, Tuple, Union

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )


#: The kinds of private key a TLS server signs its handshakes with.
ServingKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
]
_SERVING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class CertificateError(ValueError):
    """
    A certificate or key Gourmet cannot serve with.

    :ivar part: which file is at fault: ``"cert"`` or ``"key"``.
    :ivar index: which of a list of certificates, when known.
    """

    def __init__(
        self, message: str, part: str = "cert", index: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.part = part
        self.index = index


@frozen(eq=False)
class Certificate:
    """
    A certificate with its chain and private key, read and checked.

    :ivar cert_file: the file of the certificate and its chain.
    :ivar key_file: the file of the private key.
    :ivar chain: the certificates after the leaf, as the file has them.
    :ivar names: the DNS names it is for, lower-cased, from its
        subjectAltName (its common name when it has none); a wildcard
        such as ``*.example.com`` stays one.
    """

    cert_file: str
    key_file: str
    leaf: x509.Certificate
    chain: Tuple[x509.Certificate, ...]
    key: ServingKey
    names: Tuple[str, ...]

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc


def read_file(path: str, part: str = "cert") -> bytes:
    """
    The bytes of the file at ``path``.

    :raises CertificateError: when it cannot be read.
    """
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CertificateError(
            f"cannot read {path}: {error.strerror or error}", part
        ) from None


def certificates_in(pem: bytes, path: str) -> Tuple[x509.Certificate, ...]:
    """
    The PEM certificates in ``pem`` (read from ``path``), in order.

    :raises CertificateError: when there is none.
    """
    try:
        found = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        found = ()
    if not found:
        raise CertificateError(f"no PEM certificate in {path}")
    return found


def private_key_in(pem: bytes, path: str) -> PrivateKeyTypes:
    """
    The first PEM private key in ``pem`` (read from ``path``).

    :raises CertificateError: when there is none, or it needs a passphrase.
    """
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CertificateError(
            f"the private key in {path} is encrypted: Gourmet needs it"
            " without a passphrase",
            "key",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"no PEM private key in {path}", "key") from None


def check_key_matches(
    key: PrivateKeyTypes,
    certificate: x509.Certificate,
    key_path: str,
    certificate_path: str,
) -> None:
    """
    :raises CertificateError: when ``key`` is not ``certificate``'s.
    """
    if _public_bytes(key.public_key()) != _public_bytes(certificate.public_key()):
        raise CertificateError(
            f"the private key in {key_path} does not match the certificate in"
            f" {certificate_path}",
            "key",
        )


def check_valid_at(
    certificate: x509.Certificate, path: str, now: datetime.datetime
) -> None:
    """
    :raises CertificateError: when ``certificate`` has expired at ``now``
        or is not valid yet: every client would refuse it.
    """
    if now > certificate.not_valid_after_utc:
        raise CertificateError(
            f"the certificate in {path} expired on"
            f" {_when(certificate.not_valid_after_utc)}"
        )
    if now < certificate.not_valid_before_utc:
        raise CertificateError(
            f"the certificate in {path} is not valid until"
            f" {_when(certificate.not_valid_before_utc)}"
        )


def certificate_names(certificate: x509.Certificate) -> Tuple[str, ...]:
    """
    The DNS names ``certificate`` is for, lower-cased, in its order: its
    subjectAltName's, or its common name when it has none.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        names = [
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(
                NameOID.COMMON_NAME
            )
        ]
    else:
        names = extension.value.get_values_for_type(x509.DNSName)
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in names))


def load_certificate(
    cert_file: str, key_file: str, now: Optional[datetime.datetime] = None
) -> Certificate:
    """
    Read and check a certificate (and its chain) and its private key.

    :param now: when it must be valid; the time now when None.
    :raises CertificateError: for the first problem, naming the file.
    """
    pem = read_file(cert_file)
    key_pem = read_file(key_file, "key")
    leaf, *chain = certificates_in(pem, cert_file)
    key = private_key_in(key_pem, key_file)
    if not isinstance(key, _SERVING_KEYS):
        raise CertificateError(
            f"the private key in {key_file} is of a kind TLS cannot sign with"
            " (expected RSA, ECDSA, Ed25519 or Ed448)",
            "key",
        )
    check_key_matches(key, leaf, key_file, cert_file)
    check_valid_at(leaf, cert_file, now or datetime.datetime.now(datetime.timezone.utc))
    return Certificate(
        cert_file=cert_file,
        key_file=key_file,
        leaf=leaf,
        chain=tuple(chain),
        key=key,
        names=certificate_names(leaf),
    )


def _public_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
