"""
Providers: where an upstream's servers come from when they are not listed
in the configuration file (``provider = "dns"``, ``"etcd"``,
``"kubernetes"``, ``"file"``, or a plugin's).

A provider is made by an :class:`IProviderFactory` (one per name) from the
options it read out of the upstream's table.  Once started it tells an
:class:`IServerSink` the whole current set of servers, and every later set
as it changes; when it cannot find out, it says why, and the upstream keeps
the last set it had.  Gourmet applies each set as a reload applies the
file's servers (:mod:`gourmet.discovery.updates`).

A third party's provider is an object providing :class:`IProviderFactory`
in a module of the ``gourmet.plugins`` package, anywhere on the Python
path (Twisted's plugin system, as ``twistd`` finds its own plugins); see
``examples/plugins`` in the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from attrs import field, frozen
from zope.interface import Attribute, Interface

__all__ = [
    "IProviderFactory",
    "IServerProvider",
    "IServerSink",
    "OptionError",
    "ProvidedServer",
]


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


@frozen
class ProvidedServer:
    """
    One server as a provider found it.

    :ivar address: written as a static server's ``path`` is:
        ``host:port``, ``http://host:port`` or ``https://host:port``.
    :ivar weight: its weight; None: the upstream's default, 1.
    :ivar draining: it takes no new requests but finishes those it has (a
        Kubernetes endpoint that is terminating).
    :ivar max_fail: passive health's ``max_fail`` for it; None: the
        upstream's.
    :ivar fail_timeout: passive health's ``fail_timeout``; None: the
        upstream's.
    :ivar tls_verify: whether an ``https://`` server's certificate is
        verified.
    :ivar metadata: what the provider knows of it besides (a zone, a pod's
        name), shown in the console.
    """

    address: str
    weight: Optional[int] = None
    draining: bool = False
    max_fail: Optional[int] = None
    fail_timeout: Optional[float] = None
    tls_verify: bool = True
    metadata: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)


class OptionError(Exception):
    """
    An option a provider cannot run with: the configuration error names
    ``upstreams.NAME.<key>`` and says ``message``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message


class IServerSink(Interface):
    """
    What a provider tells of its upstream's servers.
    """

    def servers(found: Sequence[ProvidedServer]) -> None:
        """
        The whole current set of servers (an empty one is applied too: the
        service has none); servers that stay keep their state.
        """

    def failed(reason: str) -> None:
        """
        The provider cannot find out the servers now: the upstream keeps
        the last set, and ``reason`` is logged and shown.
        """


class IServerProvider(Interface):
    """
    One upstream's source of servers, running.
    """

    def start(sink: IServerSink) -> None:
        """
        Begin finding servers: the first set (or failure) as soon as known,
        then each change, to ``sink``.
        """

    def stop() -> Any:
        """
        Stop: nothing more reaches the sink.  May return a Deferred that
        fires once connections are closed.
        """


class IProviderFactory(Interface):
    """
    A kind of provider, under the name an upstream's ``provider`` gives.
    """

    name = Attribute("The name configurations use: provider = NAME.")
    keys = Attribute(
        "The keys of the upstream's table it reads, a frozenset of strings:"
        " others are refused as unknown."
    )

    def options(raw: Mapping[str, Any], directory: Path) -> Any:
        """
        Check the values of :attr:`keys` present in the upstream's table
        (as TOML gave them), when the configuration is loaded.

        :param directory: the configuration file's directory, which
            relative file names are relative to.
        :return: a frozen, comparable object: a reload that gives equal
            options keeps the running provider and its servers.
        :raises OptionError: naming the key at fault.
        """

    def provider(options: Any, upstream: str, reactor: Any) -> IServerProvider:
        """
        A provider for the upstream named ``upstream``, from what
        :meth:`options` returned.
        """
