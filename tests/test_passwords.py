"""
Password hashes for the admin console: what verifies, what a configuration
may not hold, the checker's memory of successes, and the command that makes
hashes.
"""

from __future__ import annotations

import getpass
import platform
import subprocess
import sys
from typing import Callable, List

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gourmet.admin import passwords
from gourmet.admin.passwords import (
    PasswordChecker,
    check_hash,
    hash_password,
    verify_password,
)
from gourmet.pypy import openssl_scrypt

#: hash_password("s3cret") with a fixed salt, made once: scrypt is slow.
SALT = bytes(range(16))
HASH = hash_password("s3cret", salt=SALT)
SALT_TEXT = HASH.split("$")[4]
DIGEST_TEXT = HASH.split("$")[5]


def test_hash_format() -> None:
    scheme, n, r, p, salt, digest = HASH.split("$")
    # OWASP's minimum for scrypt.
    assert (scheme, n, r, p) == ("scrypt", "131072", "8", "1")
    assert salt == "AAECAwQFBgcICQoLDA0ODw"
    assert len(digest) == 43
    assert "=" not in HASH


def test_roundtrip() -> None:
    assert verify_password("s3cret", HASH)
    check_hash(HASH)


@pytest.mark.parametrize("password", ["s3cre", "s3cret ", "S3cret", ""])
def test_wrong_password(password: str) -> None:
    assert not verify_password(password, HASH)


def test_unicode_password() -> None:
    encoded = hash_password("pässwörd ☕", salt=SALT)
    assert verify_password("pässwörd ☕", encoded)
    assert not verify_password("passwörd ☕", encoded)
    # Undecodable input turned into lone surrogates fails; it does not raise.
    assert not verify_password("\udcff", encoded)


def test_every_scrypt_gives_the_same_hash() -> None:
    """
    The hash does not depend on which scrypt this Python has (hashlib's,
    OpenSSL's through PyPy's bindings, cryptography's): a configuration
    made on CPython works on PyPy.  On PyPy the one that lets other threads
    run is the one in use.
    """
    expected = Scrypt(salt=SALT, length=32, n=2**14, r=8, p=2).derive(b"s3cret")
    assert passwords._scrypt("s3cret", SALT, 2**14, 8, 2, 32) == expected
    scrypt = openssl_scrypt()
    if platform.python_implementation() == "PyPy":
        assert scrypt is not None
        assert scrypt(b"s3cret", SALT, 2**14, 8, 2, 2**26, 32) == expected
        with pytest.raises(ValueError, match="refused the scrypt parameters"):
            scrypt(b"s3cret", SALT, 2**14, 8, 2, 2**20, 32)
    else:
        assert scrypt is None


def test_random_salts_differ() -> None:
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second
    assert first.split("$")[4] != second.split("$")[4]
    assert verify_password("s3cret", first)
    assert verify_password("s3cret", second)


def test_other_parameters_verify() -> None:
    """
    A hash keeps its own parameters: the earlier default (N=2^14), and
    other ones at or above the floor, still verify.
    """
    digest = passwords._scrypt("s3cret", SALT, 2**14, 8, 2, 32)
    encoded = f"scrypt$16384$8$2${SALT_TEXT}${passwords._b64encode(digest)}"
    check_hash(encoded)
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret", encoded.replace("$8$2$", "$8$1$"))


def test_a_hash_below_the_floor_is_refused_with_the_command() -> None:
    digest = passwords._scrypt("s3cret", SALT, 2**10, 4, 2, 32)
    encoded = f"scrypt$1024$4$2${SALT_TEXT}${passwords._b64encode(digest)}"
    with pytest.raises(ValueError) as refused:
        check_hash(encoded)
    assert str(refused.value) == (
        "a hash weaker than Gourmet accepts (scrypt N=1024, r=4: 512 KiB, at"
        " least 16 MiB): make a new one with `python -m gourmet.passwords`"
    )


def replace(index: int, value: str) -> str:
    parts = HASH.split("$")
    parts[index] = value
    return "$".join(parts)


MALFORMED = {
    "empty": "",
    "plain password": "s3cret",
    "other scheme": replace(0, "bcrypt"),
    "scheme case": replace(0, "SCRYPT"),
    "too few parts": HASH.rsplit("$", 1)[0],
    "too many parts": HASH + "$x",
    "n not a number": replace(1, "lots"),
    "n signed": replace(1, "+16384"),
    "n not a power of 2": replace(1, "16000"),
    "n too small": replace(1, "512"),
    "n too large": replace(1, str(2**21)),
    "r zero": replace(2, "0"),
    "r too large": replace(2, "33"),
    "r empty": replace(2, ""),
    "p zero": replace(3, "0"),
    "p too large": replace(3, "17"),
    "p not ascii digits": replace(3, "\N{SUPERSCRIPT ONE}"),
    "salt empty": replace(4, ""),
    "hash empty": replace(5, ""),
    "salt padded": replace(4, SALT_TEXT + "=="),
    "hash not url-safe": replace(5, DIGEST_TEXT[:-2] + "+/"),
    "hash not base64": replace(5, DIGEST_TEXT[:-1] + "!"),
    "hash impossible length": replace(5, DIGEST_TEXT + "AA"),
    "hash cut short": replace(5, DIGEST_TEXT[:20]),
}


@pytest.mark.parametrize("encoded", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_hash(encoded: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_hash(encoded)
    assert str(caught.value) == (
        "expected a hash made by `python -m gourmet.passwords`: scrypt$N$r$p$salt$hash"
    )
    assert verify_password("s3cret", encoded) is False


def test_empty_salt_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("s3cret", salt=b"")


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """
    The hashes :func:`verify_password` computes from here on.
    """
    calls: List[str] = []
    verify: Callable[[str, str], bool] = passwords.verify_password

    def counting(password: str, encoded: str) -> bool:
        calls.append(encoded)
        return verify(password, encoded)

    monkeypatch.setattr(passwords, "verify_password", counting)
    return calls


def test_checker_remembers_success(verifications: List[str]) -> None:
    checker = PasswordChecker({"alice": HASH})
    assert checker.check("alice", "s3cret")
    assert checker.check("alice", "s3cret")
    assert verifications == [HASH]


def test_checker_does_not_remember_failure(verifications: List[str]) -> None:
    checker = PasswordChecker({"alice": HASH})
    assert not checker.check("alice", "wrong")
    assert not checker.check("alice", "wrong")
    assert verifications == [HASH, HASH]
    # Nor does a success let another password in.
    assert checker.check("alice", "s3cret")
    assert not checker.check("alice", "s3cret ")
    assert len(verifications) == 4


def test_checker_success_is_per_user(verifications: List[str]) -> None:
    other = hash_password("s3cret", salt=b"another salt")
    checker = PasswordChecker({"alice": HASH, "bob": other})
    assert checker.check("alice", "s3cret")
    assert checker.check("bob", "s3cret")
    assert verifications == [HASH, other]


def test_checker_unknown_user_costs_a_hash(verifications: List[str]) -> None:
    checker = PasswordChecker({"alice": HASH})
    assert not checker.check("mallory", "s3cret")
    assert not checker.check("Alice", "s3cret")
    assert len(verifications) == 2
    assert HASH not in verifications


def test_checker_nul_cannot_borrow_a_success(verifications: List[str]) -> None:
    """
    ``user + "\\0" + password`` is ambiguous when the name has a NUL: such
    a user's success is not remembered for another.
    """
    checker = PasswordChecker({"a\0b": hash_password("c", salt=SALT)})
    assert checker.check("a\0b", "c")
    assert not checker.check("a", "b\0c")
    assert checker.check("a\0b", "c")
    assert len(verifications) == 3


def test_checker_forgets_the_oldest(
    monkeypatch: pytest.MonkeyPatch, verifications: List[str]
) -> None:
    monkeypatch.setattr(passwords, "_CACHE_SIZE", 2)
    checker = PasswordChecker({"alice": HASH, "bob": HASH, "carol": HASH})
    for user in ["alice", "bob", "alice", "carol", "alice", "bob"]:
        assert checker.check(user, "s3cret")
    # Each verifies once, but bob, used least recently, made room for carol.
    assert len(verifications) == 4


def run_cli(*arguments: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gourmet.passwords", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_stdin() -> None:
    result = run_cli("--stdin", stdin="s3cret\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.endswith("\n")
    encoded = result.stdout[:-1]
    check_hash(encoded)
    assert verify_password("s3cret", encoded)


def test_cli_stdin_empty() -> None:
    result = run_cli("--stdin", stdin="\n")
    assert (result.returncode, result.stdout) == (1, "")
    assert "empty" in result.stderr


def test_cli_asks_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["s3cret", "s3cret"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(answers))
    assert passwords.main([]) == 0
    out, err = capsys.readouterr()
    assert verify_password("s3cret", out.rstrip("\n"))
    assert err == ""


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (["s3cret", "s3cre7"], "do not match"),
        (["", ""], "empty"),
    ],
)
def test_cli_refuses(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answers: List[str],
    message: str,
) -> None:
    typed = iter(answers)
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(typed))
    assert passwords.main([]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
