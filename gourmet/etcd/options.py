"""
Where etcd is and who Gourmet is to it: checked where the configuration is
loaded, for ``provider = "etcd"`` and ``[cluster]`` alike.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from attrs import field, frozen


@frozen
class EtcdOptions:
    """
    Where etcd is and which keys are read.

    :ivar dial_timeout: seconds to connect and get an answer's head (the
        whole answer, but for the watch's).
    :ivar username: with :ivar password:, who Gourmet is to an etcd with
        authentication on; None: no one.
    """

    endpoints: Tuple[str, ...]
    prefix: str
    dial_timeout: float = 5.0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)


class BadOption(ValueError):
    """
    One option is not valid: ``key`` names it, the message says why.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def endpoints_of(endpoints: Any) -> Tuple[str, ...]:
    """
    A list of etcd URLs, checked, without their trailing ``/``.

    :raises BadOption: at ``endpoints``.
    """
    if not isinstance(endpoints, list) or not endpoints:
        raise BadOption(
            "endpoints",
            'expected a list of etcd URLs, such as ["http://127.0.0.1:2379"]',
        )
    for endpoint in endpoints:
        _check_endpoint("endpoints", endpoint)
    return tuple(each.rstrip("/") for each in endpoints)


def _check_endpoint(key: str, endpoint: object) -> None:
    if not isinstance(endpoint, str):
        raise BadOption(key, f"expected URLs, got {endpoint!r}")
    url = urlsplit(endpoint)
    try:
        # urllib checks the port only when asked for it.
        port = url.port
    except ValueError as error:
        raise BadOption(key, f"{endpoint!r}: {error}") from None
    if url.scheme not in ("http", "https") or not url.hostname or port == 0:
        raise BadOption(
            key,
            f"expected http://host:port or https://host:port, got {endpoint!r}",
        )
    if url.path.strip("/") or url.query or url.fragment:
        raise BadOption(
            key, f"expected no path: Gourmet adds /v3/..., got {endpoint!r}"
        )


def timeout_of(key: str, timeout: Any) -> float:
    """
    Seconds above 0.

    :raises BadOption: at ``key``.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise BadOption(key, f"expected seconds, got {timeout!r}")
    if not timeout > 0:
        raise BadOption(key, f"expected above 0, got {timeout!r}")
    return float(timeout)


def credentials_of(username: Any, password: Any) -> Tuple[Optional[str], Optional[str]]:
    """
    ``username`` and ``password``: both, or neither.

    :raises BadOption: at the one wrong or missing.
    """
    checked: Sequence[Tuple[str, Any]] = (
        ("username", username),
        ("password", password),
    )
    for key, value in checked:
        if value is not None and (not isinstance(value, str) or not value):
            raise BadOption(key, "expected a string")
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise BadOption(missing, "username and password go together")
    return username, password
