"""
The certificate of ``[server.acme]``, obtained and renewed while Gourmet
runs, without a restart or a reload.

At start-up (and at a reload that changes ``[server.acme]``) the
certificate the state directory keeps is served when it is still valid;
without one, a self-signed placeholder for the configured names
(:func:`gourmet.tls.acme_state.placeholder`), and an order goes to the ACME
server at once.  A certificate is renewed when a third of its lifetime is
left (day 60 of Let's Encrypt's 90), or at once when it lacks a configured
name.  An order that fails is tried again after a minute, then after twice
as long each time, up to a day; each failure is logged with the next try,
and the certificate being served stays.

ACME's certificate is served after ``[[server.certificates]]``: a manual
certificate for the same name wins, and the first manual one stays the
default for clients that ask for no name.
"""

from __future__ import annotations

import datetime
from typing import Any, Awaitable, Callable, Optional, Sequence, Tuple

from attrs import evolve, frozen
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from gourmet.config.load import ConfigError
from gourmet.config.model import AcmeConfig, GourmetConfig
from gourmet.frontend.challenge import Challenges
from gourmet.threads import ThreadPoolService
from gourmet.tls.acme import AcmeClient, certificate_request, describe
from gourmet.tls.acme_state import (
    AcmeState,
    AcmeStateError,
    is_placeholder,
    new_key,
    placeholder,
)
from gourmet.tls.certificates import Certificate, CertificateError

#: Seconds before the first try again after a failed order, doubled after
#: each failure up to :data:`LAST_RETRY`.
FIRST_RETRY = 60.0
LAST_RETRY = 24 * 3600.0

#: What an issuer gives: the certificate and its chain in PEM, and its key.
Issued = Tuple[bytes, ec.EllipticCurvePrivateKey]
#: Obtains a certificate for a configuration, with its state's account.
Issuer = Callable[[AcmeConfig, AcmeState], Awaitable[Issued]]


def renewal_time(certificate: Certificate) -> float:
    """
    When ``certificate`` is renewed (seconds since the epoch): once a
    third of its lifetime is left.
    """
    start = certificate.not_before.timestamp()
    end = certificate.not_after.timestamp()
    return end - (end - start) / 3


def next_retry(previous: Optional[float]) -> float:
    """
    Seconds to wait after a failure, the one before having waited
    ``previous`` (None: none did).
    """
    if previous is None:
        return FIRST_RETRY
    return min(previous * 2, LAST_RETRY)


def covers(certificate: Certificate, config: AcmeConfig) -> bool:
    """
    Whether ``certificate`` is ACME's for every configured name.
    """
    return not is_placeholder(certificate) and set(config.domains) <= set(
        certificate.names
    )


@frozen(eq=False)
class AcmeSetup:
    """
    One ``[server.acme]`` with its state directory, and the certificate
    served for it until the next one comes.
    """

    config: AcmeConfig
    state: AcmeState
    certificate: Certificate


def acme_setup(
    config: AcmeConfig, now: datetime.datetime, current: Optional[Certificate]
) -> AcmeSetup:
    """
    The setup of ``config``: its state directory made and read, serving
    its kept certificate, else ``current`` (ACME's certificate served now,
    if it is one), else a placeholder.

    :raises AcmeStateError: when the state directory is unusable.
    """
    state = AcmeState(config.state_dir)
    try:
        certificate = state.stored(now)
    except CertificateError:
        if current is not None and not is_placeholder(current):
            certificate = current
        else:
            certificate = placeholder(config.domains, now)
    return AcmeSetup(config, state, certificate)


def served_config(config: GourmetConfig, acme: Sequence[Certificate]) -> GourmetConfig:
    """
    ``config`` serving ``acme``'s certificates after its own.
    """
    frontend = config.frontend
    certificates = (*frontend.certificates, *acme)
    return evolve(config, frontend=evolve(frontend, certificates=certificates))


class ThreadedIssuer(ThreadPoolService):
    """
    Obtains certificates with :class:`AcmeClient`, whose calls block, in a
    thread of its own, answering the order's challenges meanwhile.

    A stop waits for a call under way (:data:`gourmet.tls.acme.ISSUE_TIMEOUT`
    at worst).
    """

    def __init__(self, reactor: Any, challenges: Challenges) -> None:
        super().__init__("gourmet-acme", 1)
        self.reactor = reactor
        self.challenges = challenges

    def __call__(self, config: AcmeConfig, state: AcmeState) -> Awaitable[Issued]:
        return ensureDeferred(self._issue(config, state))

    async def _issue(self, config: AcmeConfig, state: AcmeState) -> Issued:
        key = new_key()
        client = AcmeClient(config, state.account_key)
        request = certificate_request(key, config.domains)
        pending = await self._in_thread(client.order, request)
        for each in pending.challenges:
            self.challenges.add(each.token, each.key_authorization)
        try:
            chain = await self._in_thread(client.finish, pending)
        finally:
            for each in pending.challenges:
                self.challenges.remove(each.token)
        return chain.encode("ascii"), key

    def _in_thread(self, call: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(self.reactor, self.pool, call, *args)


class AcmeRenewal(Service):
    """
    The ACME certificate served now, and the next order's timer.

    :param clock: for the timers, and the time certificates are checked at.
    :param issue: what obtains a certificate (:class:`ThreadedIssuer`).
    :param on_change: called once a new certificate is :attr:`certificates`,
        to serve it.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, issue: Issuer, on_change: Callable[[], None]
    ) -> None:
        self.clock = clock
        self.issue = issue
        self.on_change = on_change
        self.setup: Optional[AcmeSetup] = None
        self._timer: Optional[IDelayedCall] = None
        self._retry: Optional[float] = None
        # Each setup's orders are its own: one finishing after a reload
        # changed [server.acme], or after a stop, is dropped.
        self._generation = 0

    @property
    def certificates(self) -> Tuple[Certificate, ...]:
        """
        ACME's certificate (or the placeholder) to serve, if configured.
        """
        return () if self.setup is None else (self.setup.certificate,)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(
            self.clock.seconds(), datetime.timezone.utc
        )

    def setup_for(self, config: GourmetConfig) -> Optional[AcmeSetup]:
        """
        The setup ``config`` asks for: the one running when its
        ``[server.acme]`` is the same.

        :raises ConfigError: when the state directory is unusable.
        """
        acme = config.frontend.acme
        current = self.setup
        if acme is None or (current is not None and current.config == acme):
            return None if acme is None else current
        served = None if current is None else current.certificate
        try:
            return acme_setup(acme, self.now(), served)
        except AcmeStateError as error:
            raise ConfigError(
                config.source, "server.acme.state_dir", str(error)
            ) from None

    def configure(self, setup: Optional[AcmeSetup]) -> None:
        """
        Serve ``setup`` from now on (None: no ACME), ordering when due.
        """
        if setup is self.setup:
            return
        self._stop_timer()
        self.setup = setup
        if self.running:
            self._start()

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> Any:
        super().stopService()
        self._stop_timer()

    def _start(self) -> None:
        setup = self.setup
        if setup is None:
            return
        certificate = setup.certificate
        if covers(certificate, setup.config):
            self.log.info(
                "ACME certificate for {names} from {file}, valid until {until};"
                " renewed from {renewal}",
                names=", ".join(certificate.names),
                file=certificate.cert_file,
                until=_when(certificate.not_after.timestamp()),
                renewal=_when(renewal_time(certificate)),
            )
            self._after(renewal_time(certificate) - self.clock.seconds())
        else:
            self.log.info(
                "ACME certificate for {names} to be ordered from {directory};"
                " TLS clients get {served} meanwhile",
                names=", ".join(setup.config.domains),
                directory=setup.config.directory,
                served=_served(certificate),
            )
            self._after(0)

    def _stop_timer(self) -> None:
        self._generation += 1
        self._retry = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _after(self, delay: float) -> None:
        self._timer = self.clock.callLater(max(0.0, delay), self._order)

    def _order(self) -> None:
        self._timer = None
        setup = self.setup
        assert setup is not None  # a timer runs only with a setup
        generation = self._generation
        ordered = ensureDeferred(self._obtain(setup))
        ordered.addCallbacks(
            self._obtained,
            self._failed,
            callbackArgs=(setup, generation),
            errbackArgs=(setup, generation),
        )
        ordered.addErrback(lambda failure: self.log.failure("ACME", failure))

    async def _obtain(self, setup: AcmeSetup) -> Certificate:
        chain, key = await self.issue(setup.config, setup.state)
        try:
            return setup.state.store(chain, key)
        except (AcmeStateError, CertificateError) as error:
            raise _NotKept(str(error)) from None

    def _obtained(
        self, certificate: Certificate, setup: AcmeSetup, generation: int
    ) -> None:
        if generation != self._generation:
            return
        self._retry = None
        self.setup = evolve(setup, certificate=certificate)
        self.log.info(
            "ACME certificate for {names} obtained from {directory}, valid until"
            " {until}; renewed from {renewal}",
            names=", ".join(certificate.names),
            directory=setup.config.directory,
            until=_when(certificate.not_after.timestamp()),
            renewal=_when(renewal_time(certificate)),
        )
        self.on_change()
        self._after(renewal_time(certificate) - self.clock.seconds())

    def _failed(self, failure: Failure, setup: AcmeSetup, generation: int) -> None:
        if generation != self._generation:
            return
        self._retry = next_retry(self._retry)
        self.log.error(
            "ACME certificate for {names} not obtained from {directory}: {error};"
            " TLS clients still get {served}; next try in {delay:.0f} seconds",
            names=", ".join(setup.config.domains),
            directory=setup.config.directory,
            error=describe(failure.value),  # type: ignore[arg-type]
            served=_served(setup.certificate),
            delay=self._retry,
        )
        self._after(self._retry)


class _NotKept(Exception):
    """
    A certificate obtained that the state directory could not keep.
    """


def _served(certificate: Certificate) -> str:
    if is_placeholder(certificate):
        return "a self-signed placeholder"
    return f"the certificate valid until {_when(certificate.not_after.timestamp())}"


def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
