"""
The parts of the running service that a configuration makes, made the
same way at start-up and at a reload: an upstream's connection pool, the
proxy site's routing root, and listeners.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from gourmet.config.endpoints import with_backlog, with_unix_mode
from gourmet.config.load import ConfigError
from gourmet.config.model import GourmetConfig, UpstreamConfig
from gourmet.frontend.challenge import Challenges
from gourmet.frontend.errors import ErrorPages
from gourmet.frontend.https import HttpsRedirect
from gourmet.frontend.negotiation import ProtocolByAlpnFactory
from gourmet.frontend.proxy_protocol import ProxyHeaderFactory
from gourmet.frontend.routing import Router
from gourmet.frontend.site import RoutingResource
from gourmet.listener import Listener
from gourmet.proxy.resource import LocationResource
from gourmet.systemd import systemd_endpoint_problem
from gourmet.tls.certificates import CertificateError
from gourmet.tls.store import CertificateStore, ServerContexts, build_contexts
from gourmet.upstream.pool import ConnectionPool
from gourmet.upstream.state import Upstream
from gourmet.workers.inherited import inherited_endpoint, shared_name
from gourmet.workers.reuseport import reserved_endpoint

#: The keys of the listeners worker processes serve.
_SHARED_KEYS = ("server.listen", "server.port", "server.tls_listen", "streams[")

#: The mode of a ``unix:`` socket file for the admin console that sets none.
ADMIN_SOCKET_MODE = "660"


def proxy_endpoints(config: GourmetConfig) -> List[Tuple[str, str]]:
    """
    Each endpoint string the proxy listens on, with its key in the file.
    """
    frontend = config.frontend
    key = "server.listen[{}]" if frontend.listen else "server.port"
    return [(key.format(index), each) for index, each in enumerate(frontend.endpoints)]


def tls_endpoints(config: GourmetConfig) -> List[Tuple[str, str]]:
    """
    Each endpoint string the proxy serves TLS on, with its key in the file.
    """
    return [
        (f"server.tls_listen[{index}]", each)
        for index, each in enumerate(config.frontend.tls_listen)
    ]


def tls_contexts(
    config: GourmetConfig, store: CertificateStore
) -> Optional[ServerContexts]:
    """
    The OpenSSL contexts of the configuration's certificates, for
    ``store``'s connections (None without certificates), built once.

    :raises ConfigError: when OpenSSL refuses a certificate or key.
    """
    frontend = config.frontend
    try:
        return build_contexts(
            store, frontend.certificates, frontend.min_tls_version, frontend.http2
        )
    except CertificateError as error:
        key = f"server.certificates[{error.index}].{error.part}"
        raise ConfigError(config.source, key, str(error)) from None


def tls_factory(site: Site, store: CertificateStore, reactor: Any) -> IProtocolFactory:
    """
    The factory of the proxy's TLS listeners: ``site`` in TLS, served with
    the certificates ``store`` has when each connection starts, over
    HTTP/2 or HTTP/1.1 as ALPN agrees; under TLS, the PROXY protocol's
    header read from the load balancers ``accept_proxy_protocol`` lists.
    """
    tls = TLSMemoryBIOFactory(store, False, ProtocolByAlpnFactory(site), clock=reactor)
    return ProxyHeaderFactory(tls, site)


def plain_factory(site: Site) -> IProtocolFactory:
    """
    The factory of the proxy's plain listeners: ``site``, behind the PROXY
    protocol's header from the load balancers ``accept_proxy_protocol``
    lists.
    """
    return ProxyHeaderFactory(site, site)


def admin_endpoint(config: GourmetConfig) -> Optional[Tuple[str, str]]:
    """
    The console's endpoint string and its key, if it has one: a ``unix:``
    socket file for its owner and group only, unless it says otherwise.
    """
    listen = config.admin.listen
    if listen is None:
        return None
    return "admin.listen", with_unix_mode(listen, ADMIN_SOCKET_MODE)


def upstream_pool(config: UpstreamConfig, reactor: Any) -> ConnectionPool:
    """
    The connection pool of the upstream ``config`` configures.
    """
    return ConnectionPool(
        reactor,
        max_idle_per_origin=config.keepalive,
        idle_timeout=config.keepalive_timeout,
        connect_timeout=config.connect_timeout,
    )


def routing_root(
    config: GourmetConfig,
    upstreams: Dict[str, Upstream],
    pools: Dict[str, ConnectionPool],
    reactor: Any,
    https_port: Callable[[], Optional[int]] = lambda: None,
    challenges: Optional[Challenges] = None,
) -> RoutingResource:
    """
    The proxy site's root resource: its locations, each proxying to its
    upstream; and, with ``redirect_to_https``, the redirect that plain
    listeners answer with instead.

    :param https_port: the port of the first TLS listener, for redirects.
    :param challenges: ACME's pending http-01 challenges, answered first.
    :raises ConfigError: when the error page cannot be read.
    """
    error_pages = ErrorPages(_error_page(config))
    frontend = config.frontend
    locations = [
        LocationResource(
            upstreams[location.upstream],
            pools[location.upstream],
            error_pages,
            reactor,
            max_body_size=frontend.max_body_size,
            trusted_proxies=frontend.trusted_proxies,
            request_rules=location.request_headers,
            response_rules=location.response_headers,
        )
        for location in frontend.locations
    ]
    redirect = (
        HttpsRedirect(error_pages, https_port) if frontend.redirect_to_https else None
    )
    return RoutingResource(
        Router(frontend.locations), locations, error_pages, redirect, challenges
    )


def listener_for(
    config: GourmetConfig,
    key: str,
    description: str,
    backlog: int,
    factory: IProtocolFactory,
    reactor: Any,
    tls: bool = False,
) -> Listener:
    """
    A listener for ``factory`` (a site, or with ``tls`` a site in TLS) on
    the endpoint ``description`` (the configuration's ``key``), with
    ``backlog`` unless it sets its own.

    :raises ConfigError: when Twisted cannot parse the endpoint.
    """
    endpoint = endpoint_for(config, key, description, backlog, reactor)
    return Listener(endpoint, factory, description, tls, key)


def endpoint_for(
    config: GourmetConfig, key: str, description: str, backlog: int, reactor: Any
) -> IStreamServerEndpoint:
    """
    The endpoint ``description`` (the configuration's ``key``) names, with
    ``backlog`` unless it sets its own: parsed, not listening (``gourmet
    check`` parses every listener's this way).

    :raises ConfigError: when Twisted cannot parse the endpoint.
    """
    # In a worker process, the supervisor's socket for it.
    inherited = inherited_endpoint(reactor, shared_name(key, description))
    if inherited is not None:
        return inherited
    if config.frontend.workers > 1 and key.startswith(_SHARED_KEYS):
        # In their supervisor, an address for each worker's own socket.
        reserved = reserved_endpoint(reactor, description, backlog)
        if reserved is not None:
            return reserved
    try:
        return serverFromString(reactor, with_backlog(description, backlog))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        problem = systemd_endpoint_problem(description, error)
        raise ConfigError(
            config.source, key, problem or f"not a Twisted endpoint string: {error}"
        ) from None


def check_shareable(config: GourmetConfig) -> None:
    """
    Nothing, with one process; with ``workers`` above 1:

    :raises ConfigError: for what worker processes cannot share: ACME's
        certificates, an ``ssl:`` listener (Twisted wraps TLS into the listening port
        itself; ``tls_listen`` is Gourmet's own TLS, and is shared).
    """
    if config.frontend.workers == 1:
        return
    if config.frontend.acme is not None:
        raise ConfigError(
            config.source,
            "server.workers",
            "ACME certificates ([server.acme]) need workers = 1 for now",
        )
    for key, description in proxy_endpoints(config):
        if description.lower().startswith("ssl:"):
            raise ConfigError(
                config.source,
                key,
                "an ssl: endpoint cannot be shared by workers: with workers"
                " above 1 listen on tcp: in server.tls_listen instead",
            )


def _error_page(config: GourmetConfig) -> Optional[str]:
    path = config.frontend.error_page
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as page:
            return page.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(config.source, "server.error_page", str(error)) from None
