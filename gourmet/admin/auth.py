"""
Who may read and change what through the admin console, and the defences a
web page that changes a running proxy needs: credentials, a CSRF token for
browsers, a Host check against DNS rebinding, and headers that keep the page
out of frames and foreign scripts.

- The API takes ``Authorization: Bearer <token>``; a token is never sent by a
  browser on its own, so it needs no CSRF token.
- Browsers sign in with HTTP Basic authentication against ``[admin.users]``.
  A browser attaches those credentials to any request to this origin, even
  one a hostile page makes it send, so every change made with them must
  also carry ``X-CSRF-Token`` (which only our own page can read) and must
  not come from another origin.
- Reading needs no credentials on a loopback listener, and credentials
  otherwise; changing always needs them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Dict, Optional, Set, Tuple

from attrs import frozen
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from gourmet.admin.passwords import PasswordChecker
from gourmet.admin.throttle import SignInThrottle
from gourmet.config.model import AdminConfig
from gourmet.http.hosts import host_name
from gourmet.threads import ThreadPoolService

#: Headers on every admin response.
SECURITY_HEADERS: Dict[bytes, bytes] = {
    b"x-frame-options": b"DENY",
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; "
        b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}
REALM = b'Basic realm="Gourmet admin", charset="UTF-8"'
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


#: Password checks waiting for a thread at most; more get 429 at once, so
#: that a flood of guesses cannot queue without bound.
MAX_PENDING_CHECKS = 32


class Refused(Exception):
    """
    The request may not go on: answer ``status`` with ``message``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        challenge: bool = False,
        retry_after: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: Whether to ask the browser for credentials (401 with Basic).
        self.challenge = challenge
        #: Seconds to say in ``Retry-After`` (with 429).
        self.retry_after = retry_after


class PasswordThreads(ThreadPoolService):
    """
    The threads that run scrypt for the console's password checks: tens of
    milliseconds of CPU each, which on the reactor's thread would stall
    every proxied request behind them.

    :param size: threads at most.
    """

    def __init__(self, size: int = 2) -> None:
        super().__init__("gourmet-passwords", size)


@frozen
class Principal:
    """
    Who made a request: a user name, or ``"token"`` or ``"read token"``
    for a bearer token.

    :ivar may_change: whether these credentials may change anything (users
        and the token) or only read (viewers and the read token).
    """

    name: str
    by_token: bool
    may_change: bool = True


class AdminSecurity:
    """
    The checks for one admin listener.

    :param secret: keys the CSRF tokens; random for each run by default, so
        a restart signs every browser out of making changes until it reloads.
    :param clock: for the wait after failed sign-ins.
    :param threads: where passwords are checked; without them, on the
        calling thread (for tests).
    """

    log = Logger()

    def __init__(
        self,
        config: AdminConfig,
        secret: Optional[bytes] = None,
        clock: Optional[IReactorTime] = None,
        threads: Optional[Tuple[IReactorFromThreads, PasswordThreads]] = None,
    ) -> None:
        self.config = config
        self._token = config.token.encode("utf-8") if config.token else None
        self._read_token = (
            config.read_token.encode("utf-8") if config.read_token else None
        )
        self._passwords = PasswordChecker(dict(config.users + config.viewers))
        self._changers = {name for name, _ in config.users}
        self._secret = secret or os.urandom(32)
        #: Where the console's time comes from.
        self.clock: IReactorTime = clock or Clock()
        self.throttle = SignInThrottle(self.clock)
        self._threads = threads
        self._pending = 0
        self.allowed_hosts: Set[str] = set(_LOOPBACK_HOSTS) | {
            host.lower() for host in config.hosts
        }

    def with_config(self, config: AdminConfig) -> AdminSecurity:
        """
        The same checks for a reload's configuration: the CSRF tokens given
        out stay valid, and password guessers keep their wait.
        """
        security = AdminSecurity(config, self._secret, self.clock, self._threads)
        security.throttle = self.throttle
        return security

    # -- Host ---------------------------------------------------------------

    def check_host(self, request: IRequest) -> None:
        """
        Refuse a Host header not configured: a page on a hostile domain that
        resolves to 127.0.0.1 (DNS rebinding) must not reach the console.
        """
        host = request.getHeader(b"host")
        if host is None:
            raise Refused(400, "The request has no Host header.")
        name = host_name(host.decode("latin-1"))
        if name not in self.allowed_hosts:
            raise Refused(
                403,
                f"Host {name!r} is not one of this console's names; "
                "add it to [admin] hosts.",
            )

    # -- credentials ----------------------------------------------------------

    async def principal(self, request: IRequest) -> Optional[Principal]:
        """
        Who the request's credentials say it is; None without credentials.
        A password is checked in :class:`PasswordThreads`, never on the
        reactor's thread, unless it matched lately.

        :raises Refused: 401 for credentials that are wrong; 429 while the
            client's address must wait after too many wrong ones.
        """
        header = request.getHeader(b"authorization")
        if not header:
            return None
        scheme, _, value = header.partition(b" ")
        scheme = scheme.lower()
        user: Optional[str] = None
        address = getattr(request.getClientAddress(), "host", "unix")
        if scheme == b"bearer":
            token = value.strip()
            if self._token is not None and hmac.compare_digest(token, self._token):
                return Principal("token", by_token=True)
            read = self._read_token
            if read is not None and hmac.compare_digest(token, read):
                return Principal("read token", by_token=True, may_change=False)
        elif scheme == b"basic" and (self.config.users or self.config.viewers):
            user, password = _basic(value)
            if user is not None and self._passwords.remembered(user, password):
                return self._user(user)
            self._check_throttle(address)
            if user is not None and await self._verify(user, password):
                self._passwords.remember(user, password)
                self.throttle.succeeded(address)
                return self._user(user)
        self.throttle.failed(address)
        self.log.warn(
            "admin: failed sign-in as {user} from {client}",
            user=user if user is not None else "(token)",
            client=address,
        )
        raise Refused(401, "The credentials are not valid.", challenge=True)

    def _user(self, name: str) -> Principal:
        return Principal(name, by_token=False, may_change=name in self._changers)

    def _check_throttle(self, address: str) -> None:
        wait = self.throttle.retry_after(address)
        if wait is None and self._pending >= MAX_PENDING_CHECKS:
            wait = 1
        if wait is not None:
            raise Refused(
                429,
                f"Too many failed sign-ins: try again in {wait} s.",
                retry_after=wait,
            )

    async def _verify(self, user: str, password: str) -> bool:
        if self._threads is None:
            return self._passwords.verify(user, password)
        reactor, threads = self._threads
        self._pending += 1
        try:
            verified: bool = await deferToThreadPool(
                reactor, threads.pool, self._passwords.verify, user, password
            )
        finally:
            self._pending -= 1
        return verified

    async def may_read(self, request: IRequest) -> Optional[Principal]:
        principal = await self.principal(request)
        if principal is None and self.config.reading_needs_credentials:
            raise Refused(401, "Credentials are needed.", challenge=True)
        return principal

    async def may_change(self, request: IRequest) -> Principal:
        """
        :raises Refused: 401 without credentials, 403 for a browser request
            without the CSRF token or from another origin.
        """
        if not self.config.has_credentials:
            raise Refused(
                403,
                "Changes are turned off: configure [admin] token or "
                "[admin.users] to allow them.",
            )
        principal = await self.principal(request)
        if principal is None:
            raise Refused(401, "Credentials are needed to make changes.", True)
        if not principal.may_change:
            raise Refused(403, "These credentials may read, not change.")
        if not principal.by_token:
            self._check_same_origin(request, principal)
        return principal

    # -- CSRF -----------------------------------------------------------------

    def csrf_token(self, principal: Principal) -> str:
        digest = hmac.new(self._secret, principal.name.encode("utf-8"), hashlib.sha256)
        return digest.hexdigest()

    def _check_same_origin(self, request: IRequest, principal: Principal) -> None:
        # As bytes: compare_digest refuses str with non-ASCII characters.
        sent = request.getHeader(b"x-csrf-token") or b""
        expected = self.csrf_token(principal).encode("ascii")
        if not hmac.compare_digest(sent, expected):
            raise Refused(403, "The CSRF token is missing or wrong; reload the page.")
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host") or b""
        if origin is not None and origin.split(b"://", 1)[-1].lower() != host.lower():
            raise Refused(403, "Changes from another origin are refused.")
        site = request.getHeader(b"sec-fetch-site")
        if site is not None and site not in (b"same-origin", b"none"):
            raise Refused(403, "Changes from another site are refused.")


def _basic(value: bytes) -> Tuple[Optional[str], str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else (None, "")
