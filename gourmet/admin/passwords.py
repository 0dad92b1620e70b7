"""
Password hashes for the admin console's users, and the command that makes
them::

    $ python -m gourmet.passwords
    Password:
    Again:
    scrypt$131072$8$1$...$...

A hash is scrypt's, with its parameters and salt written beside it, so that
a configuration keeps working when the defaults here grow::

    scrypt$N$r$p$<salt>$<hash>

with the salt and hash in URL-safe base64 without padding.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import sys
from collections import OrderedDict
from typing import List, Mapping, NamedTuple, Optional

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gourmet.pypy import openssl_scrypt

__all__ = [
    "PasswordChecker",
    "add_arguments",
    "check_hash",
    "hash_password",
    "main",
    "run",
    "verify_password",
]

_SCHEME = "scrypt"

#: scrypt's cost parameters for new hashes: OWASP's minimum (N=2^17, r=8,
#: p=1), about 128 MiB and a few hundred milliseconds each.
_N = 2**17
_R = 8
_P = 1
#: The least memory cost (128 * N * r bytes) a configured hash may have:
#: Gourmet's earlier default, N=2^14 with r=8 (16 MiB); weaker ones are
#: refused at start-up.
MIN_MEMORY_COST = 128 * 2**14 * 8
_SALT_SIZE = 16
_HASH_SIZE = 32
_MIN_HASH_SIZE = 16

#: The parameters a hash may have: enough for any sensible cost, and bounded
#: so that a mistyped hash cannot make each login take a minute.
_N_RANGE = (2**10, 2**20)
_R_RANGE = (1, 32)
_P_RANGE = (1, 16)

_MALFORMED = (
    "expected a hash made by `python -m gourmet.passwords`: scrypt$N$r$p$salt$hash"
)

#: Successful checks a :class:`PasswordChecker` remembers.
_CACHE_SIZE = 256


class _Hash(NamedTuple):
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _encode(text: str) -> bytes:
    # surrogatepass: a password that came in as undecodable bytes must fail
    # to match, not raise.
    return text.encode("utf-8", "surrogatepass")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_BASE64 = re.compile(r"\A[A-Za-z0-9_-]+\Z")


def _b64decode(text: str) -> bytes:
    if not _BASE64.match(text):
        raise ValueError(_MALFORMED)
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:  # A length no encoding has.
        raise ValueError(_MALFORMED) from None


def _format(n: int, r: int, p: int, salt: bytes, digest: bytes) -> str:
    return "$".join(
        [_SCHEME, str(n), str(r), str(p), _b64encode(salt), _b64encode(digest)]
    )


def _parameter(text: str, low: int, high: int) -> int:
    # int() would take " 8", "+8" and "8_000" too.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(_MALFORMED)
    value = int(text)
    if not low <= value <= high:
        raise ValueError(_MALFORMED)
    return value


def _parse(encoded: str) -> _Hash:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError(_MALFORMED)
    n = _parameter(parts[1], *_N_RANGE)
    if n & (n - 1):
        raise ValueError(_MALFORMED)
    r = _parameter(parts[2], *_R_RANGE)
    p = _parameter(parts[3], *_P_RANGE)
    salt, digest = _b64decode(parts[4]), _b64decode(parts[5])
    # scrypt's shorter outputs are prefixes of its longer ones: a hash cut
    # short when copied would still verify, only weaker.
    if len(digest) < _MIN_HASH_SIZE:
        raise ValueError(_MALFORMED)
    return _Hash(n, r, p, salt, digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    # hashlib's scrypt (CPython's, OpenSSL's) lets other threads run while
    # it works, so that a check in a thread leaves the reactor free; PyPy's
    # hashlib has none, and there OpenSSL's is called through PyPy's own
    # bindings, or failing those cryptography's (which holds the GIL).
    # OpenSSL refuses to use more memory than maxmem: what N and r need.
    needed = 128 * r * (n + p + 2) + 65536
    if _HASHLIB_SCRYPT is not None:
        return _HASHLIB_SCRYPT(
            _encode(password), salt=salt, n=n, r=r, p=p, maxmem=needed, dklen=size
        )
    if _OPENSSL_SCRYPT is not None:
        return _OPENSSL_SCRYPT(_encode(password), salt, n, r, p, needed, size)
    return Scrypt(salt=salt, length=size, n=n, r=r, p=p).derive(_encode(password))


#: hashlib's scrypt, where the Python has one; else OpenSSL's on PyPy.
_HASHLIB_SCRYPT = getattr(hashlib, "scrypt", None)
_OPENSSL_SCRYPT = None if _HASHLIB_SCRYPT is not None else openssl_scrypt()


def hash_password(password: str, *, salt: Optional[bytes] = None) -> str:
    """
    A new hash of ``password``, for the ``[admin.users]`` table.

    :param salt: the salt to use; 16 random bytes when ``None``.
    """
    if salt is None:
        salt = os.urandom(_SALT_SIZE)
    elif not salt:
        raise ValueError("the salt is empty")
    return _format(_N, _R, _P, salt, _scrypt(password, salt, _N, _R, _P, _HASH_SIZE))


def check_hash(encoded: str) -> None:
    """
    Check that ``encoded`` is a hash :func:`verify_password` can use.

    :raises ValueError: saying what a hash looks like, when it is not one,
        or that it is weaker than :data:`MIN_MEMORY_COST`.
    """
    parsed = _parse(encoded)
    cost = 128 * parsed.n * parsed.r
    if cost < MIN_MEMORY_COST:
        raise ValueError(
            f"a hash weaker than Gourmet accepts (scrypt N={parsed.n}, r={parsed.r}:"
            f" {cost // 1024} KiB, at least {MIN_MEMORY_COST // 2**20} MiB): make a"
            " new one with `python -m gourmet.passwords`"
        )


def verify_password(password: str, encoded: str) -> bool:
    """
    Whether ``password`` is the one ``encoded`` was made from; ``False`` for a
    malformed hash.
    """
    try:
        expected = _parse(encoded)
    except ValueError:
        return False
    digest = _scrypt(
        password,
        expected.salt,
        expected.n,
        expected.r,
        expected.p,
        len(expected.digest),
    )
    return hmac.compare_digest(digest, expected.digest)


#: What an unknown user's password is checked against, so that answering
#: costs as long as for a known one.  No password hashes to all zeros.
_DUMMY_HASH = _format(_N, _R, _P, bytes(_SALT_SIZE), bytes(_HASH_SIZE))


class PasswordChecker:
    """
    Checks user names and passwords against their hashes, remembering the
    ones that matched: the admin console's page polls every second with
    Basic authentication, and each scrypt costs tens of milliseconds of CPU.

    What it remembers is a salted SHA-256 of user and password, never the
    password, and never a failed attempt.

    :param users: user name → hash made by :func:`hash_password`.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)
        # Salted per checker: what is kept in memory cannot be looked up in
        # tables of SHA-256 digests made in advance.
        self._salt = os.urandom(_SALT_SIZE)
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def _key(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._salt + _encode(user + "\0" + password)).digest()

    def check(self, user: str, password: str) -> bool:
        """
        Whether ``password`` is ``user``'s.
        """
        if self.remembered(user, password):
            return True
        if not self.verify(user, password):
            return False
        self.remember(user, password)
        return True

    def remembered(self, user: str, password: str) -> bool:
        """
        Whether ``password`` matched ``user``'s hash lately: no scrypt then.
        """
        key = self._cache_key(user, password)
        if key is None or user not in self._users or key not in self._verified:
            return False
        self._verified.move_to_end(key)
        return True

    def verify(self, user: str, password: str) -> bool:
        """
        Whether ``password`` is ``user``'s, by scrypt, without looking at or
        changing what is remembered: safe to run in another thread.  An
        unknown user costs as much as a known one.
        """
        encoded = self._users.get(user)
        if encoded is None:
            verify_password(password, _DUMMY_HASH)
            return False
        return verify_password(password, encoded)

    def remember(self, user: str, password: str) -> None:
        """
        Remember that ``password`` is ``user``'s (a salted digest of both).
        """
        key = self._cache_key(user, password)
        if key is not None:
            self._verified[key] = None
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)

    def _cache_key(self, user: str, password: str) -> Optional[bytes]:
        # A NUL in the name would make the key ambiguous: user "a\0b" with
        # password "c" must not let user "a" in with password "b\0c".
        return self._key(user, password) if "\0" not in user else None


def _ask() -> str:
    """
    The new password, typed twice.

    :raises ValueError: when the two differ.
    """
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Again: "):
        raise ValueError("the passwords do not match")
    return password


def _read_line() -> str:
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    The password command's options, on ``parser``: this module's ``main``
    and ``gourmet hash-password`` take the same.
    """
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from one line of standard input (for scripts)",
    )


def run(options: argparse.Namespace, prog: str) -> int:
    """
    Write the hash of the password typed (or read, with ``--stdin``) to
    standard output; an error is one line on standard error.

    :param prog: the command's name, to begin an error line with.
    :return: the exit status.
    """
    try:
        password = _read_line() if options.stdin else _ask()
    except (ValueError, EOFError) as error:
        sys.stderr.write(f"{prog}: {str(error) or 'no password given'}\n")
        return 1
    if not password:
        sys.stderr.write(f"{prog}: the password is empty\n")
        return 1
    sys.stdout.write(hash_password(password) + "\n")
    return 0


#: What the command says it does, in ``--help``.
DESCRIPTION = "Make a password hash for Gourmet's [admin.users] table."


def main(argv: Optional[List[str]] = None) -> int:
    """
    Write the hash of a password to standard output.

    :param argv: the command's arguments, without the program's name.
    :return: the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m gourmet.passwords", description=DESCRIPTION
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
