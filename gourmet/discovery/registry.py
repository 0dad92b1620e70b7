"""
The providers and balancers configurations may name: Gourmet's own, and
those of plugins (:mod:`gourmet.plugins`), found once, when a configuration
is first read.
"""

from __future__ import annotations

import importlib
from typing import Any, Collection, Dict, Iterator, Mapping, Optional

from attrs import frozen
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface, implementer

from gourmet.discovery.provider import IProviderFactory
from gourmet.upstream.balancers import BALANCERS

log = Logger()

#: Gourmet's own providers: each module's ``FACTORY``.
BUILT_IN = {
    "dns": "gourmet.discovery.dns",
    "etcd": "gourmet.discovery.etcd",
    "file": "gourmet.discovery.file",
    "kubernetes": "gourmet.discovery.kubernetes",
}


class IBalancerPlugin(Interface):
    """
    A third party's balancer, under a name configurations use.
    """

    name = Attribute("The name configurations use: balancer = NAME.")
    factory = Attribute(
        "Called with a random.Random, it makes an IBalancer (one per"
        " upstream, made again at each reload)."
    )


@implementer(IPlugin, IBalancerPlugin)
@frozen
class BalancerPlugin:
    """
    What a plugin module holds to add a balancer::

        first = BalancerPlugin("first", First)
    """

    name: str
    factory: Any


class _Providers(Mapping[str, IProviderFactory]):
    """
    Every provider by name, built-in or a plugin's, found on first use.
    """

    def __init__(self) -> None:
        self._found: Optional[Dict[str, IProviderFactory]] = None

    def _all(self) -> Dict[str, IProviderFactory]:
        if self._found is None:
            found = {
                name: importlib.import_module(module).FACTORY
                for name, module in BUILT_IN.items()
            }
            for plugin in _plugins(IProviderFactory):
                _add(found, plugin.name, plugin, "provider")
            self._found = found
        return self._found

    def __getitem__(self, name: str) -> IProviderFactory:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


#: Every provider but ``static`` (the file's own servers), by name.
PROVIDERS = _Providers()


class _Names(Collection[str]):
    """
    The names ``provider`` may have: ``static`` and :data:`PROVIDERS`'.
    """

    def __contains__(self, name: object) -> bool:
        return name == "static" or name in PROVIDERS

    def __iter__(self) -> Iterator[str]:
        return iter(["static", *PROVIDERS])

    def __len__(self) -> int:
        return 1 + len(PROVIDERS)


PROVIDER_NAMES = _Names()
_balancers_loaded = False


def load_balancer_plugins() -> None:
    """
    Add plugins' balancers to :data:`BALANCERS`, once.
    """
    global _balancers_loaded
    if _balancers_loaded:
        return
    _balancers_loaded = True
    found: Dict[str, Any] = dict(BALANCERS)
    for plugin in _plugins(IBalancerPlugin):
        if _add(found, plugin.name, plugin.factory, "balancer"):
            BALANCERS[plugin.name] = plugin.factory


def _plugins(interface: Any) -> Iterator[Any]:
    import gourmet.plugins

    return iter(getPlugins(interface, gourmet.plugins))


def _add(found: Dict[str, Any], name: str, value: Any, kind: str) -> bool:
    if name in found or name == "static":
        log.warn(
            "a plugin's {kind} {name!r} is ignored: Gourmet has one by that name",
            kind=kind,
            name=name,
        )
        return False
    found[name] = value
    log.info("{kind} {name!r} from a plugin", kind=kind, name=name)
    return True
