"""
Single calls to etcd (a put, a transaction, a lease's grant and keepalive)
on the member that answered last, or each of the others in turn, with a
token got first when authentication is on.
"""

from __future__ import annotations

from typing import Any, List

from twisted.python.failure import Failure

from gourmet.etcd.gateway import EtcdSaid, Gateway, sign_in, why_lost
from gourmet.etcd.options import EtcdOptions


class Unreachable(Exception):
    """
    No member of etcd answered: each endpoint's reason, joined.
    """


class EtcdClient:
    """
    Calls to the members of ``options.endpoints``.
    """

    def __init__(self, options: EtcdOptions, reactor: Any) -> None:
        self._options = options
        self._gateway = Gateway(reactor, options.dial_timeout)
        self._turn = 0

    async def call(self, path: str, request: Any) -> Any:
        """
        ``request`` to ``path`` (``/v3/kv/put``...): etcd's answer.

        :raises EtcdSaid: when etcd answered with an error.
        :raises Unreachable: when no member answered.
        """
        endpoints = self._options.endpoints
        errors: List[str] = []
        for _ in endpoints:
            endpoint = endpoints[self._turn % len(endpoints)]
            try:
                return await self._call(endpoint, path, request)
            except EtcdSaid:
                raise
            except Exception:
                errors.append(f"{endpoint}: {why_lost(Failure())}")
                # A token is a member's: the next one gets its own.
                self._gateway.token = None
                self._turn += 1
        raise Unreachable("etcd unreachable: " + "; ".join(errors))

    async def _call(self, endpoint: str, path: str, request: Any) -> Any:
        if self._options.username is not None and self._gateway.token is None:
            await sign_in(self._gateway, endpoint, self._options)
        try:
            return await self._gateway.call(endpoint, path, request)
        except EtcdSaid as error:
            if self._options.username is None or "token" not in str(error):
                raise
        # The token expired (etcd's simple tokens last five minutes idle):
        # once more with a new one.
        await sign_in(self._gateway, endpoint, self._options)
        return await self._gateway.call(endpoint, path, request)
