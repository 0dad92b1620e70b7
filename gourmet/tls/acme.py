"""
The ACME protocol (RFC 8555), spoken with certbot's ``acme`` library: the
account of the state directory's key, an order for the configured names,
their http-01 challenges, and the certificate once the server has
validated them.

Every method of :class:`AcmeClient` blocks on the network (``acme`` is
built on ``requests``): :mod:`gourmet.tls.renewal` calls them in a
thread, and the challenges are answered from the reactor's thread
(:mod:`gourmet.frontend.challenge`) between :meth:`AcmeClient.order` and
:meth:`AcmeClient.finish`.
"""

from __future__ import annotations

import datetime
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Tuple, cast

from acme import challenges, client, crypto_util, errors, messages
from attrs import frozen
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

import gourmet
from gourmet.config.model import AcmeConfig
from gourmet.tls.acme_state import key_pem

#: Seconds one HTTP request to the ACME server may take.
NETWORK_TIMEOUT = 20
#: Seconds the server has to validate the challenges and issue: its
#: answer usually comes within seconds; a stop waits for this at worst.
ISSUE_TIMEOUT = 60


class AcmeError(Exception):
    """
    What went wrong with an ACME server, in one line.
    """


@frozen
class Challenge:
    """
    One http-01 challenge of an order: what Gourmet answers, and where.
    """

    body: messages.ChallengeBody
    token: str
    key_authorization: str


@frozen
class PendingOrder:
    """
    An order whose challenges are to be answered.
    """

    order: messages.OrderResource
    challenges: Tuple[Challenge, ...]


class AcmeClient:
    """
    A client of the ACME server of ``config``, with the account of
    ``account_key``: registered (or found again) at each order, so that an
    account the server forgot is made anew.  One order at a time.
    """

    def __init__(self, config: AcmeConfig, account_key: ec.EllipticCurvePrivateKey):
        self.config = config
        self.jwk = JWKEC(key=account_key)
        self._client: Optional[client.ClientV2] = None

    def order(self, csr_pem: bytes) -> PendingOrder:
        """
        A new order for the names of ``csr_pem``, with the http-01
        challenge of each name not yet valid for this account.

        :raises AcmeError: for any failure.
        """
        with _failures():
            acme = self._client = self._connect()
            order = acme.new_order(csr_pem)
            pending = tuple(
                self._http01(authorization)
                for authorization in order.authorizations
                if authorization.body.status != messages.STATUS_VALID
            )
            return PendingOrder(order, pending)

    def finish(self, pending: PendingOrder) -> str:
        """
        Tell the server the challenges are ready, wait for it to validate
        them, finalize the order: the certificate, then its chain, in PEM.

        :raises AcmeError: for any failure (a challenge the server could
            not validate names the domain and why).
        """
        acme = self._client
        if acme is None:
            raise AcmeError("no order to finish")
        with _failures():
            for each in pending.challenges:
                acme.answer_challenge(each.body, each.body.response(self.jwk))
            deadline = datetime.datetime.now() + datetime.timedelta(
                seconds=ISSUE_TIMEOUT
            )
            done = acme.poll_and_finalize(pending.order, deadline)
            return done.fullchain_pem

    def _connect(self) -> client.ClientV2:
        network = client.ClientNetwork(
            self.jwk,
            alg=ES256,
            # requests takes a CA bundle's path where acme says bool.
            verify_ssl=cast(Any, self.config.ca_file or True),
            user_agent=f"Gourmet/{gourmet.__version__}",
            timeout=NETWORK_TIMEOUT,
        )
        acme = client.ClientV2(
            client.ClientV2.get_directory(self.config.directory, network), network
        )
        email = self.config.email
        registration = messages.NewRegistration.from_data(
            email=email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as existing:
            # This key has an account already: use it.
            network.account = messages.RegistrationResource(
                body=messages.Registration(), uri=existing.location
            )
        return acme

    def _http01(self, authorization: messages.AuthorizationResource) -> Challenge:
        for body in authorization.body.challenges:
            if isinstance(body.chall, challenges.HTTP01):
                return Challenge(
                    body,
                    body.chall.encode("token"),
                    body.chall.validation(self.jwk),
                )
        name = authorization.body.identifier.value
        raise AcmeError(f"the server offers no http-01 challenge for {name}")


def certificate_request(
    key: ec.EllipticCurvePrivateKey, domains: Tuple[str, ...]
) -> bytes:
    """
    The PEM certificate signing request of ``key`` for ``domains``.
    """
    return crypto_util.make_csr(key_pem(key), list(domains))


@contextmanager
def _failures() -> Iterator[None]:
    """
    Every error on the way (the server's problem documents, the network's,
    a malformed answer) as one :class:`AcmeError` line.
    """
    try:
        yield
    except AcmeError:
        raise
    except Exception as error:
        raise AcmeError(describe(error)) from error


def describe(error: Exception) -> str:
    """
    ``error`` in one line, with its kind when it says nothing by itself.
    """
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, errors.TimeoutError) or not text:
        return f"{type(error).__name__} {text}".strip()
    return text
