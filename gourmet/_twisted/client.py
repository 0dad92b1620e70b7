"""
HTTP client connection pools whose connections do not each log two lines
("Starting factory", "Stopping factory"): a provider's watch reconnecting
through an outage would fill the log with them.

Should Twisted rename its private client factory (checked at start-up,
:mod:`gourmet._twisted.check`), the pool is Twisted's own and only the
lines come back.
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool

try:
    from twisted.web.client import _HTTP11ClientFactory
except ImportError:  # pragma: no cover - a Twisted without it
    QuietPool = HTTPConnectionPool
else:

    class _QuietFactory(_HTTP11ClientFactory):
        noisy = False

    class QuietPool(HTTPConnectionPool):  # type: ignore[no-redef]
        """
        Twisted's pool, with connections that start and stop silently.
        """

        _factory = _QuietFactory


__all__ = ["QuietPool"]
