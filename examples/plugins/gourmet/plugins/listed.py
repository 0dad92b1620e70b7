"""
An example of a third party's provider and balancer, outside Gourmet's
own package: put this directory on the Python path (``PYTHONPATH=
examples/plugins``) and a configuration may say

    [upstreams.api]
    provider = "listed"
    addresses = ["127.0.0.1:9001", "127.0.0.1:9002"]
    balancer = "first_up"

Twisted's plugin system finds the objects below in any ``gourmet/plugins``
directory on the path (with no ``__init__.py``), as ``twistd`` finds its
own plugins; Gourmet logs each it adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple

from attrs import frozen
from twisted.plugin import IPlugin
from zope.interface import implementer

from gourmet.discovery.provider import (
    IProviderFactory,
    IServerProvider,
    IServerSink,
    OptionError,
    ProvidedServer,
)
from gourmet.discovery.registry import BalancerPlugin
from gourmet.upstream.balancers import C, IBalancer


@frozen
class Listed:
    """
    The addresses a configuration lists: what ``options`` checked.
    """

    addresses: Tuple[str, ...]


@implementer(IServerProvider)
class ListedServers:
    """
    Tells the sink its addresses once: a real provider would ask a
    service registry and tell it again at each change.
    """

    def __init__(self, options: Listed) -> None:
        self.options = options

    def start(self, sink: IServerSink) -> None:
        sink.servers(
            [
                ProvidedServer(address, metadata={"listed": str(index)})
                for index, address in enumerate(self.options.addresses)
            ]
        )

    def stop(self) -> None:
        pass


@implementer(IPlugin, IProviderFactory)
class ListedFactory:
    """
    ``provider = "listed"``, with ``addresses``.
    """

    name = "listed"
    keys = frozenset({"addresses"})

    def options(self, raw: Mapping[str, Any], directory: Path) -> Listed:
        addresses = raw.get("addresses")
        if not isinstance(addresses, list) or not all(
            isinstance(each, str) for each in addresses
        ):
            raise OptionError("addresses", "expected an array of addresses")
        return Listed(tuple(addresses))

    def provider(self, options: Listed, upstream: str, reactor: Any) -> ListedServers:
        return ListedServers(options)


@implementer(IBalancer)
class FirstUp:
    """
    Every request to the first server that may take it: a primary, and
    the others as backups in order.
    """

    def __init__(self, rng: Any) -> None:
        pass

    def pick(self, candidates: Sequence[C]) -> C:
        return candidates[0]


listed = ListedFactory()
first_up = BalancerPlugin("first_up", FirstUp)
