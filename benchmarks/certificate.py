"""
A self-signed certificate for the benchmark's HTTPS listeners on loopback,
written into the run's directory: Gourmet's own placeholder for ACME, an
ECDSA P-256 key (what certificate authorities issue by default today) for
``localhost``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from attrs import frozen
from cryptography.hazmat.primitives import serialization

from gourmet.tls.acme_state import placeholder


@frozen
class Tls:
    """
    A TLS listener's certificate and key files.
    """

    cert: Path
    key: Path


def write(directory: Path) -> Tls:
    """
    A new key and its certificate as ``tls.pem`` and ``tls.key`` in
    ``directory``.
    """
    made = placeholder(["localhost"], datetime.datetime.now(datetime.timezone.utc))
    tls = Tls(directory / "tls.pem", directory / "tls.key")
    tls.cert.write_bytes(made.leaf.public_bytes(serialization.Encoding.PEM))
    # Read by nginx's master and by Gourmet, both this user's.
    tls.key.touch(mode=0o600)
    tls.key.write_bytes(
        made.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls
