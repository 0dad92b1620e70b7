"""
What Gourmet needs from PyPy: a large enough young generation for its
garbage collector, and an scrypt that lets other threads run.

PyPy sizes its young generation (the nursery) from the CPU's cache: 1 MiB
on the machine the benchmark ran on.  A proxied request allocates tens of
KiB, so that nursery was collected thousands of times a second (a quarter
of the proxy's time, by ``PYPYLOG=gc``), and the 64 KiB pieces of a large
response outgrew it and lived on in the old generation until a major
collection.  With ``PYPY_GC_NURSERY=32MB`` the same build went from about
9,500 to 15,000 requests/s and from 310 to 620 MB/s on 1 MiB bodies, and
a slow client's download no longer grew the heap.  The size is read when
PyPy starts, so it can only be set in the environment; Gourmet says so at
start-up when it is too small.
"""

from __future__ import annotations

import gc
import platform
import re
from typing import Callable, Optional

#: The nursery Gourmet is measured and tested with on PyPy.
RECOMMENDED_NURSERY = "32MB"
#: Below this many bytes, start-up warns.
_SMALL_NURSERY = 8 * 2**20
_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def parse_size(text: str) -> Optional[int]:
    """
    Bytes in a size as PyPy prints it (``"1.0MB"``, ``"512.0kB"``), or None.
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]?[bB]?)\s*", text)
    if match is None:
        return None
    try:
        number = float(match[1])
    except ValueError:
        return None
    return int(number * _UNITS[match[2].upper()])


def running_nursery() -> Optional[str]:
    """
    The nursery's size as the running PyPy prints it; None on CPython.
    """
    if platform.python_implementation() != "PyPy":
        return None
    return str(gc.get_stats().nursery_size)  # type: ignore[attr-defined]


def nursery_warning(nursery: Optional[str]) -> Optional[str]:
    """
    Why a nursery of this size (as PyPy prints it; None on CPython) should
    be larger, or None.
    """
    size = None if nursery is None else parse_size(nursery)
    if size is None or size >= _SMALL_NURSERY:
        return None
    return (
        f"PyPy's nursery is {nursery}: Gourmet runs much faster with "
        f"PYPY_GC_NURSERY={RECOMMENDED_NURSERY} in its environment "
        "(see the README's section on PyPy)"
    )


#: scrypt(password, salt, n, r, p, maxmem, size) -> hash.
Scrypt = Callable[[bytes, bytes, int, int, int, int, int], bytes]


def openssl_scrypt() -> Optional[Scrypt]:
    """
    OpenSSL's scrypt through PyPy's own bindings (those its ``ssl`` and
    ``hashlib`` use), or None where they do not have it.

    PyPy's ``hashlib`` has no scrypt, and cryptography's (Rust, below 44
    on PyPy 3.9) keeps the GIL while it hashes, so a password check in a
    thread would still stall the reactor for a few hundred milliseconds.
    A call through cffi lets other threads run, as CPython's hashlib does.
    ``_pypy_openssl`` is PyPy's private module: when it is missing or
    lacks the function, Gourmet falls back to cryptography.
    """
    try:
        from _pypy_openssl import ffi, lib  # type: ignore[import-not-found]
    except ImportError:
        return None
    function = getattr(lib, "EVP_PBE_scrypt", None)
    if function is None:
        return None

    def scrypt(
        password: bytes, salt: bytes, n: int, r: int, p: int, maxmem: int, size: int
    ) -> bytes:
        out = ffi.new("unsigned char[]", size)
        if (
            function(
                password, len(password), salt, len(salt), n, r, p, maxmem, out, size
            )
            != 1
        ):
            raise ValueError("OpenSSL refused the scrypt parameters")
        return bytes(ffi.buffer(out, size))

    return scrypt
