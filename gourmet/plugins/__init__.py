"""
Third-party providers and balancers: any module of a ``gourmet/plugins``
directory on the Python path (no ``__init__.py`` of its own beside this
one's) whose objects provide Twisted's ``IPlugin`` and
:class:`gourmet.discovery.provider.IProviderFactory` or
:class:`gourmet.discovery.registry.IBalancerPlugin`, found by Twisted's
plugin system as ``twistd`` finds its own (``examples/plugins``).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
