"""
Gourmet's configuration: frozen values, built and validated in one place
(:mod:`gourmet.config.load`) and never changed afterwards.  Runtime state
(health, counters, a weight an operator set) lives in :mod:`gourmet.upstream.state`
and points here.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

from attrs import field, frozen

from gourmet.config.endpoints import endpoint_is_loopback
from gourmet.config.origin import Origin
from gourmet.http.rules import HeaderRules
from gourmet.tls.certificates import Certificate

#: The largest weight a server may have, in configuration or at runtime.
MAX_WEIGHT = 1000


def is_weight(value: object) -> bool:
    """
    Whether ``value``, from JSON (the console's API, etcd), is a weight: a
    whole number from 0 to :data:`MAX_WEIGHT` (``true`` is not 1).
    """
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_WEIGHT
    )


DEFAULT_CONFIG_PATH = "/etc/gourmet/gourmet.toml"


@frozen
class UpstreamServerConfig:
    """
    One upstream server.

    :ivar path: the address as written in the configuration; it names the
        server in logs and in the admin console.
    :ivar origin: where the server lives.
    :ivar weight: its share of requests relative to its peers; 0 drains it.
    :ivar max_fail: failures within ``fail_timeout`` that take it out of
        rotation; 0 turns failure accounting off.
    :ivar fail_timeout: seconds: the window failures are counted in, and how
        long the server then stays out.
    """

    path: str
    origin: Origin
    weight: int = 1
    max_fail: int = 1
    fail_timeout: float = 10.0


@frozen
class HealthCheckConfig:
    """
    An upstream's ``health_check`` table: active checks of its servers
    (:mod:`gourmet.upstream.checks`).

    :ivar type: ``"http"`` (a ``GET`` of ``path``) or ``"tcp"`` (a connect).
    :ivar interval: seconds from one check of a server to the next.
    :ivar timeout: seconds a check may take, connecting included.
    :ivar rise: consecutive good checks that bring a server back.
    :ivar fall: consecutive failed checks that take a server out.
    :ivar expect: the statuses that count as healthy; empty: 200 to 399.
    :ivar host: the Host header; None: the server's address.
    """

    type: str = "http"
    path: str = "/"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    expect: frozenset[int] = frozenset()
    host: Optional[str] = None

    def healthy_status(self, status: int) -> bool:
        if self.expect:
            return status in self.expect
        return 200 <= status < 400


@frozen
class UpstreamConfig:
    """
    A named group of servers and how requests are spread over them.
    """

    name: str
    servers: Tuple[UpstreamServerConfig, ...]
    balancer: str = "round_robin"
    #: Where the servers come from: ``"static"``, ``servers`` above; any
    #: other, a provider (:mod:`gourmet.discovery`), and ``servers`` is
    #: its latest set.
    provider: str = "static"
    #: What the provider's factory made of its keys (frozen, comparable).
    provider_options: Any = None
    #: Passive health's settings for servers that do not set their own
    #: (a provider's too).
    max_fail: int = 1
    fail_timeout: float = 10.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    #: How many servers one request may try; 0 means each available server once.
    tries: int = 3
    #: Upstream statuses counted as a failure of the server by passive
    #: health; none by default: a status is the application's answer, not
    #: the server failing (nginx counts none unless told to).
    fail_status: frozenset[int] = frozenset()
    #: Upstream statuses on which the request is tried on another server,
    #: within ``tries`` (nginx's ``proxy_next_upstream http_503``).
    retry_status: frozenset[int] = frozenset()
    #: When fewer than this percentage of the servers in rotation are
    #: healthy, requests are balanced over all of them, healthy or not
    #: (Envoy's panic threshold); 0 turns this off.
    panic_threshold: int = 50
    preserve_host: bool = False
    #: Rewrite ``Location``, ``Content-Location`` and ``Refresh`` URLs that
    #: name the server to name the proxy (:mod:`gourmet.http.redirects`).
    redirect_rewrite: bool = True
    #: Idle keep-alive connections kept open to each server.
    keepalive: int = 32
    #: Seconds an idle keep-alive connection is kept.
    keepalive_timeout: float = 60.0
    #: Seconds over which a response time's weight in each server's moving
    #: average falls to 1/e (``p2c_ewma`` balances by it).
    ewma_decay: float = 10.0
    #: Seconds from sending a request until the response head has arrived.
    header_timeout: float = 60.0
    #: The PROXY protocol header (``"v1"`` or ``"v2"``) every new connection
    #: to a server starts with, carrying the client's address; None: none.
    proxy_protocol: Optional[str] = None
    #: Active health checks of the servers; None: passive health only.
    health_check: Optional[HealthCheckConfig] = None
    #: Seconds over which a server that comes back up, or that a reload
    #: adds, ramps from a small share to its full weight; 0: at once.
    slow_start: float = 0.0
    #: What ``balancer = "hash"`` hashes: ``"ip"``, ``"uri"``,
    #: ``"header:NAME"`` or ``"cookie:NAME"``; None for other balancers.
    hash_key: Optional[str] = None
    #: Bounded loads: no server takes more than this times its weighted
    #: share of the requests in flight; 0: off (HAProxy's and Envoy's
    #: ``hash_balance_factor``).
    hash_balance_factor: float = 0.0
    #: The cookie that keeps a client on the server that first answered it;
    #: None: no sticky sessions.
    sticky_cookie: Optional[str] = None
    #: The key sticky cookies' values are made with, the same in every
    #: Gourmet that should recognise them; None: a random one per upstream
    #: and process.
    sticky_secret: Optional[str] = None


@frozen
class LocationConfig:
    """
    A route: requests whose path the pattern is found in go to ``upstream``.

    :ivar pattern: searched (not anchored) in the request path.
    :ivar host: when set, only requests for this host (case-insensitive,
        port ignored) match.
    :ivar pass_match: forward ``/`` + the last capture group (or the whole
        match) instead of the original path.
    """

    pattern: re.Pattern[str]
    upstream: str
    host: Optional[str] = None
    pass_match: bool = False
    #: Headers set, added and removed on the requests sent upstream
    #: (``request_headers``); None: none.
    request_headers: Optional[HeaderRules] = None
    #: The same, on the upstream's responses (``response_headers``).
    response_headers: Optional[HeaderRules] = None


@frozen
class AcmeConfig:
    """
    The ``[server.acme]`` table: a certificate for ``domains`` that Gourmet
    obtains from an ACME server (RFC 8555) and renews itself, answering
    the server's http-01 challenges on its plain listeners.

    :ivar directory: the ACME server's directory URL (``https://``).
    :ivar domains: the DNS names of the one certificate, lower-cased.
    :ivar state_dir: where the account key and the certificate are kept
        (mode 0600, the directory 0700), made at start-up if need be.
    :ivar email: the account's contact, for the server's expiry notices.
    :ivar ca_file: PEM certificates to trust the server's HTTPS with,
        instead of the system's (a private server such as pebble).
    """

    directory: str
    domains: Tuple[str, ...]
    state_dir: str
    email: Optional[str] = None
    ca_file: Optional[str] = None


@frozen
class FrontendConfig:
    """
    The ``[server]`` section: where Gourmet listens and what it routes.

    :ivar listen: Twisted endpoint strings; empty means ``tcp:<port>``.
    :ivar max_body_size: largest request body in bytes; 0 means no limit.
    :ivar error_page: a file whose HTML replaces Gourmet's error page.
    """

    locations: Tuple[LocationConfig, ...]
    port: int = 8080
    listen: Tuple[str, ...] = ()
    max_body_size: int = 1024 * 1024
    error_page: Optional[str] = None
    #: Longest request line in bytes (414 beyond).
    max_request_line: int = 8192
    #: Largest request head (request line and headers) in bytes (431 beyond).
    max_header_size: int = 32768
    #: Most header lines in a request (431 beyond).
    max_headers: int = 100
    #: Seconds a client has to send a whole request head (408 after).
    header_timeout: float = 10.0
    #: Slowest request body accepted, in bytes per second averaged from the
    #: end of the head (408 below it); 0 turns the check off.
    body_min_rate: int = 1024
    #: Seconds an idle keep-alive client connection is kept open.
    idle_timeout: float = 75.0
    #: Client connections served at once; more are refused (0: no limit).
    max_connections: int = 10000
    #: Seconds a stop waits for requests in flight before cutting them.
    shutdown_timeout: float = 30.0
    #: Worker processes that serve the listeners (``"auto"`` in the file
    #: is one per core); 1: Gourmet serves in its one process.
    workers: int = 1
    #: Seconds an upgraded connection (a WebSocket) may pass no byte
    #: either way before it is closed; 0: never.
    tunnel_idle_timeout: float = 3600.0
    #: Addresses or networks (CIDR) of proxies in front of Gourmet whose
    #: X-Forwarded-For and Forwarded headers are believed.
    trusted_proxies: Tuple[str, ...] = ()
    #: Addresses or networks (CIDR) of load balancers whose connections
    #: must start with a PROXY protocol header (v1 or v2), which gives the
    #: client's address; empty: none is read.
    accept_proxy_protocol: Tuple[str, ...] = ()
    #: What to do with a request header whose name has ``_``: ``"drop"`` it,
    #: ``"refuse"`` the request (400) or ``"pass"`` it on.  CGI-style servers
    #: read ``X_Real_IP`` as ``X-Real-IP``, a header Gourmet sets, so it is
    #: not passed by default (nginx's ``underscores_in_headers off``).
    underscores_in_headers: str = "drop"
    #: Whether Gourmet's own responses (errors, refusals, the console) say
    #: ``Server: Gourmet``; never with a version.
    server_header: bool = True
    #: The listen backlog of Gourmet's listeners whose endpoint string sets
    #: none; None: the kernel's ``somaxconn``, at least 511
    #: (:func:`gourmet.config.endpoints.default_backlog`).
    backlog: Optional[int] = None
    #: Endpoint strings of plain sockets Gourmet serves TLS on itself,
    #: with ``certificates``.
    tls_listen: Tuple[str, ...] = ()
    #: The certificates of ``tls_listen``, read and checked; the first
    #: serves clients that ask for no name, or for one none is for.
    certificates: Tuple[Certificate, ...] = ()
    #: The oldest TLS version ``tls_listen`` accepts: ``"1.2"`` or ``"1.3"``.
    min_tls_version: str = "1.2"
    #: Whether plain listeners answer every request with a redirect (308)
    #: to HTTPS on the first of ``tls_listen``, rather than proxy it.
    redirect_to_https: bool = False
    #: The ``Strict-Transport-Security`` value of every response to a TLS
    #: client whose upstream sent none; None: not sent.
    hsts: Optional[str] = None
    #: Whether TLS listeners offer HTTP/2 (ALPN ``h2``) before HTTP/1.1.
    http2: bool = True
    #: Streams an HTTP/2 client may have open at once on one connection
    #: (nginx's ``http2_max_concurrent_streams``); more are refused.
    http2_max_concurrent_streams: int = 128
    #: Certificates from an ACME server, served after ``certificates``.
    acme: Optional[AcmeConfig] = None
    #: Whether every request gets an ID (``X-Request-ID``: upstream, in the
    #: response, the access log and Gourmet's error pages).
    request_id: bool = True

    @property
    def endpoints(self) -> Tuple[str, ...]:
        return self.listen or (f"tcp:{self.port}",)


@frozen
class StreamConfig:
    """
    One ``[[streams]]`` table: TCP connections accepted on ``listen`` and
    joined byte for byte to a server of ``upstream`` (nginx's ``stream``
    block, HAProxy's ``mode tcp``).

    :ivar listen: a Twisted endpoint string, as ``[server] listen``'s.
    :ivar upstream: the name of the ``[upstreams.NAME]`` whose balancer,
        weights, ``connect_timeout``, ``tries`` and passive health it uses.
    :ivar proxy_protocol: ``"v1"`` or ``"v2"``: the PROXY protocol header
        sent to the server first; None: none.
    :ivar idle_timeout: seconds without a byte either way after which the
        connection is closed; 0: never.
    """

    listen: str
    upstream: str
    proxy_protocol: Optional[str] = None
    idle_timeout: float = 600.0


@frozen
class LogConfig:
    """
    :ivar access_log: ``"stdout"``, ``"off"``, or a file path.
    :ivar access_log_format: ``"combined"`` or ``"json"``.
    """

    access_log: str = "stdout"
    access_log_format: str = "combined"


@frozen
class DemoConfig:
    """
    Built-in demo upstreams Gourmet starts itself, for trying it out.

    :ivar listen: ``host:port`` addresses, each served by a tiny HTTP server
        that answers with its own name.
    """

    listen: Tuple[str, ...] = ()


@frozen
class AdminConfig:
    """
    The admin console's listener and credentials.
    """

    #: A Twisted endpoint string; None turns the console off.
    listen: Optional[str] = "tcp:8081:interface=127.0.0.1"
    #: The bearer token for the JSON API (from ``token`` or ``token_file``).
    token: Optional[str] = None
    #: User name → password hash (:mod:`gourmet.admin.passwords`) for the browser.
    users: Tuple[Tuple[str, str], ...] = ()
    #: A bearer token that may read everything and change nothing (for
    #: scrapers and dashboards).
    read_token: Optional[str] = None
    #: Users who may read everything and change nothing.
    viewers: Tuple[Tuple[str, str], ...] = ()
    #: Whether reading needs credentials on a loopback listener too.
    read_requires_credentials: bool = False
    #: Host header names accepted besides localhost and loopback addresses.
    hosts: Tuple[str, ...] = ()
    #: Largest request body the console takes (413 beyond, before any
    #: credential is checked): a change is a few bytes of JSON.
    max_body_size: int = 64 * 1024
    #: Console connections at once; more are refused (503), so that they
    #: cannot use up what the proxy needs.
    max_connections: int = 256

    @property
    def has_credentials(self) -> bool:
        """
        Whether anyone can sign in to make changes: without such
        credentials the console is read-only.
        """
        return self.token is not None or bool(self.users)

    @property
    def has_readers(self) -> bool:
        """
        Whether any credentials at all are configured, read-only ones too.
        """
        return self.has_credentials or self.read_token is not None or bool(self.viewers)

    @property
    def reading_needs_credentials(self) -> bool:
        """
        Whether reading needs credentials: off loopback always, and on
        loopback when ``read_requires_credentials`` says so.
        """
        return self.read_requires_credentials or not self.loopback

    @property
    def loopback(self) -> bool:
        """
        Whether the console listens on loopback only.
        """
        return self.listen is not None and endpoint_is_loopback(self.listen)


#: Where ``[cluster]`` keeps its keys unless told.
CLUSTER_PREFIX = "/gourmet/cluster/"


@frozen
class ClusterConfig:
    """
    ``[cluster]``: instances that share the console's changes through etcd.

    :ivar etcd: etcd's client URLs; none: no cluster.
    :ivar name: this instance's name among the others; None: the host's
        name and the console's port, once it listens.
    :ivar lease_ttl: seconds an instance stays listed after its last
        heartbeat.
    """

    etcd: Tuple[str, ...] = ()
    prefix: str = CLUSTER_PREFIX
    name: Optional[str] = None
    lease_ttl: int = 5
    dial_timeout: float = 5.0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.etcd)


@frozen
class GourmetConfig:
    """
    The whole configuration, as loaded from ``source``.
    """

    source: str
    upstreams: Tuple[UpstreamConfig, ...]
    #: The ``[server]`` section: Gourmet's own server, facing the clients.
    frontend: FrontendConfig
    log: LogConfig = field(factory=LogConfig)
    demo: DemoConfig = field(factory=DemoConfig)
    admin: AdminConfig = field(factory=AdminConfig)
    #: The ``[[streams]]``: TCP load balancing.
    streams: Tuple[StreamConfig, ...] = ()
    #: ``[cluster]``: the console's changes shared through etcd.
    cluster: ClusterConfig = field(factory=ClusterConfig)

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)
