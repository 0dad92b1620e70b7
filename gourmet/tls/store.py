"""
Gourmet's TLS server side: an OpenSSL context per certificate, built once
with modern settings, and the store that picks one for each connection by
the name the client asks for (SNI).  Twisted's ``TLSMemoryBIOFactory``
wraps the proxy's site in TLS with the store as its connection creator, as
Twisted's own ``ssl:`` endpoint does with its ``CertificateOptions``.

A reload builds a whole new set of contexts (:func:`build_contexts`) and
swaps it in (:meth:`CertificateStore.replace`): connections made after get
the new certificates; those open keep theirs.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from attrs import frozen
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gourmet.tls.certificates import Certificate, CertificateError
from gourmet.tls.sni import NameIndex

#: The TLS 1.2 ciphers of Mozilla's "intermediate" configuration (v5.7),
#: ECDHE only: forward secrecy, AEAD ciphers.  TLS 1.3's suites are
#: OpenSSL's defaults, which are that configuration's too.
INTERMEDIATE_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: ``min_tls_version`` as OpenSSL numbers it.
TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

#: The application protocols offered with ALPN, preferred first (the
#: server's preference decides, as nginx's does): HTTP/2, then HTTP/1.1.
ALPN_PROTOCOLS: Tuple[bytes, ...] = (b"h2", b"http/1.1")
#: Without ``http2``.
ALPN_HTTP1: Tuple[bytes, ...] = (b"http/1.1",)


def _protocol_chooser(protocols: Tuple[bytes, ...]) -> Callable[..., Any]:
    def choose(connection: SSL.Connection, offered: List[bytes]) -> Any:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        # Go on without ALPN: the client may speak HTTP/1.1 all the same.
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return choose


def tls_details(handle: SSL.Connection) -> Tuple[str, Optional[str]]:
    """
    The TLS version a connection speaks and the name its client asked for
    (SNI), from its pyOpenSSL connection: for the access log.
    """
    name = handle.get_servername()
    return (
        handle.get_protocol_version_name(),
        name.decode("ascii", "replace") if name else None,
    )


def server_context(
    certificate: Certificate,
    min_version: str,
    on_server_name: Callable[[SSL.Connection], None],
    protocols: Tuple[bytes, ...] = ALPN_PROTOCOLS,
) -> SSL.Context:
    """
    The OpenSSL context that serves ``certificate``: TLS ``min_version``
    ("1.2" or "1.3") and newer, Mozilla's intermediate ciphers, no
    compression, no renegotiation; session tickets and ECDHE groups as
    OpenSSL has them by default.

    :param on_server_name: called with each connection once its hello
        has said which name it asks for (every context has the same one,
        so that a connection is switched wherever it starts).
    :param protocols: what ALPN offers, preferred first.
    :raises CertificateError: when OpenSSL refuses the certificate or key.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(TLS_VERSIONS[min_version])
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    context.set_cipher_list(INTERMEDIATE_CIPHERS)
    try:
        context.use_certificate(certificate.leaf)
        for each in certificate.chain:
            context.add_extra_chain_cert(each)
        context.use_privatekey(certificate.key)
        context.check_privatekey()
    except SSL.Error as error:
        raise CertificateError(
            f"OpenSSL cannot serve the certificate in {certificate.cert_file}"
            f" with the key in {certificate.key_file}: {error}"
        ) from None
    context.set_alpn_select_callback(_protocol_chooser(protocols))
    context.set_tlsext_servername_callback(on_server_name)
    return context


@frozen
class ServerContexts:
    """
    One set of certificates and their contexts, by name: what a reload
    replaces whole.
    """

    certificates: Tuple[Certificate, ...]
    index: NameIndex[SSL.Context]


def build_contexts(
    store: CertificateStore,
    certificates: Sequence[Certificate],
    min_version: str,
    http2: bool = True,
) -> Optional[ServerContexts]:
    """
    The contexts for ``certificates`` (None when there is none), for
    ``store``'s connections, offering HTTP/2 with ``http2``.

    :raises CertificateError: when OpenSSL refuses one (its ``index`` says
        which).
    """
    if not certificates:
        return None
    contexts = []
    for index, each in enumerate(certificates):
        try:
            context = server_context(
                each,
                min_version,
                store.server_name_received,
                ALPN_PROTOCOLS if http2 else ALPN_HTTP1,
            )
        except CertificateError as error:
            error.index = index
            raise
        contexts.append((each.names, context))
    return ServerContexts(tuple(certificates), NameIndex(contexts))


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore:
    """
    The certificates TLS connections are served with now, and the
    connection creator Twisted's TLS wrapper asks for each new connection.
    """

    def __init__(self) -> None:
        self._contexts: Optional[ServerContexts] = None

    @property
    def certificates(self) -> Tuple[Certificate, ...]:
        """
        The certificates in use, the default one first.
        """
        contexts = self._contexts
        return contexts.certificates if contexts is not None else ()

    def replace(self, contexts: Optional[ServerContexts]) -> None:
        """
        Serve new connections with ``contexts`` from now on.
        """
        self._contexts = contexts

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N803
        contexts = self._contexts
        if contexts is None:
            raise CertificateError("no certificate to serve TLS with")
        # The default certificate's context until the hello names another.
        return SSL.Connection(contexts.index.default, None)

    def server_name_received(self, connection: SSL.Connection) -> None:
        """
        Switch a connection to the context of the name it asks for.
        """
        contexts = self._contexts
        if contexts is None:
            return
        context = contexts.index.select(connection.get_servername())
        if context is not connection.get_context():
            connection.set_context(context)
