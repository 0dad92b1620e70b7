"""
Host names as HTTP carries them: a ``Host`` header or a URL's authority is
a host (a name, an IPv4 address or a bracketed IPv6 address) and an
optional port.
"""

from __future__ import annotations


def host_name(host: str) -> str:
    """
    The host of a ``Host`` header's value, lower-cased and without its
    port: ``Example.com:8080`` is ``example.com``, ``[::1]:8080`` is
    ``[::1]``.
    """
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    # One colon separates a port; more are an IPv6 address without its
    # brackets, which a valid Host never holds, kept whole.
    return host.rpartition(":")[0] if host.count(":") == 1 else host
