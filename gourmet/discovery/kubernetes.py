"""
``provider = "kubernetes"``: the endpoints of a Service, from its
EndpointSlices (``discovery.k8s.io/v1``), listed once and then watched, as
client-go's informers do: each event changes the set at once, a bookmark
moves the version a new watch starts from, a ``410 Gone`` (the version is
too old for the server to resume from) lists again, and a watch that breaks
is opened again from the last version.

    [upstreams.api]
    provider = "kubernetes"
    namespace = "shop"
    service = "api"
    port = "http"                 # the Service port's name

In a pod it needs nothing else: the service account's token and CA, and
the API server in ``KUBERNETES_SERVICE_HOST`` and ``_PORT``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http_headers import Headers
from zope.interface import implementer

from gourmet.config.origin import parse_origin
from gourmet.discovery.provider import (
    IProviderFactory,
    IServerProvider,
    IServerSink,
    OptionError,
    ProvidedServer,
)

#: Where Kubernetes mounts a pod's service account.
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The label the EndpointSlice controller puts on a Service's slices.
SERVICE_LABEL = "kubernetes.io/service-name"
#: RFC 1123 labels: namespaces, Service names and port names.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
#: The longest watch line read: a slice holds at most 1,000 endpoints.
MAX_LINE = 16 * 1024 * 1024


@frozen
class Timing:
    """
    How long things may take, apart from the options: tests shorten them.

    :ivar first_retry: seconds before the first retry after a failure,
        doubled at each one after, up to ``last_retry``.
    :ivar token_refresh: seconds a token read is used before the file is
        read again (kubelet rotates bound tokens; client-go rereads each
        minute).
    :ivar watch_seconds: the ``timeoutSeconds`` a watch asks for; the
        server ends it then, and it is opened again at once.
    :ivar silence: seconds a watch may stay silent before it counts as
        broken (a connection dead without a FIN): bookmarks come about
        each minute, and the server ends it after ``watch_seconds``.
    """

    first_retry: float = 1.0
    last_retry: float = 30.0
    token_refresh: float = 60.0
    watch_seconds: int = 300
    silence: float = 330.0
    connect_timeout: float = 10.0
    request_timeout: float = 30.0


@frozen
class KubernetesOptions:
    """
    Which Service's endpoints, and how to reach and trust the API server.

    :ivar port: the name of the Service's port; None: its only one.
    :ivar api_server: ``https://host:port``.
    """

    namespace: str
    service: str
    port: Optional[str]
    api_server: str
    token_file: Path
    ca_file: Path


@implementer(IProviderFactory)
class KubernetesProviderFactory:
    """
    ``provider = "kubernetes"``: ``namespace`` and ``service`` (required),
    ``port``, ``api_server``, ``token_file`` and ``ca_file``.
    """

    name = "kubernetes"
    keys = frozenset(
        {"namespace", "service", "port", "api_server", "token_file", "ca_file"}
    )

    def options(self, raw: Mapping[str, Any], directory: Path) -> KubernetesOptions:
        port = raw.get("port")
        return KubernetesOptions(
            namespace=_name(raw, "namespace", 63),
            service=_name(raw, "service", 63),
            port=None if port is None else _name(raw, "port", 15),
            api_server=_api_server(raw.get("api_server"), os.environ),
            token_file=_file(raw, "token_file", directory, SERVICE_ACCOUNT / "token"),
            ca_file=_file(raw, "ca_file", directory, SERVICE_ACCOUNT / "ca.crt"),
        )

    def provider(
        self, options: KubernetesOptions, upstream: str, reactor: Any
    ) -> EndpointSlices:
        return EndpointSlices(options, reactor, upstream=upstream)


FACTORY = KubernetesProviderFactory()


def _name(raw: Mapping[str, Any], key: str, longest: int) -> str:
    value = raw.get(key)
    if value is None:
        raise OptionError(
            key, f'missing key: expected the {key}\'s name, such as "api"'
        )
    if not isinstance(value, str):
        raise OptionError(key, f"expected the {key}'s name, got {value!r}")
    if len(value) > longest or not _NAME.match(value):
        raise OptionError(
            key,
            f"expected a Kubernetes name (lower case letters, digits and '-',"
            f" at most {longest}), got {value!r}",
        )
    return value


def _api_server(value: Any, environ: Mapping[str, str]) -> str:
    """
    ``api_server``, or the one a pod is told of in its environment.
    """
    if value is None:
        host = environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise OptionError(
                "api_server",
                'missing key: expected "https://host:port" outside a pod'
                " (KUBERNETES_SERVICE_HOST is not set)",
            )
        host = f"[{host}]" if ":" in host else host
        value = f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}"
    if not isinstance(value, str):
        raise OptionError("api_server", f'expected "https://host:port", got {value!r}')
    try:
        origin = parse_origin(value)
    except ValueError as error:
        raise OptionError("api_server", f"{value!r}: {error}") from None
    if origin.scheme != "https":
        raise OptionError("api_server", f"expected https://, got {value!r}")
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    return f"https://{host}:{origin.port}"


def _file(raw: Mapping[str, Any], key: str, directory: Path, default: Path) -> Path:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise OptionError(key, f"expected a file name, got {value!r}")
    return directory / value


# What a slice says: pure functions of its JSON.


def slice_servers(
    endpoint_slice: Mapping[str, Any], port_name: Optional[str]
) -> List[ProvidedServer]:
    """
    The servers of one EndpointSlice: its ready endpoints, and those that
    still serve while terminating as draining (no new requests, those in
    flight finish).  Others, and every endpoint of a slice without the
    port, are left out.

    :raises ValueError: the slice has several ports and ``port_name`` is
        None, or a field is not what the API documents.
    """
    port = _slice_port(endpoint_slice.get("ports") or [], port_name)
    if port is None:
        return []
    found = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        state = endpoint_state(endpoint.get("conditions") or {})
        addresses = endpoint.get("addresses") or []
        if state is None or not addresses:
            continue
        # The controller writes one address; kube-proxy also uses the first.
        host = str(addresses[0])
        host = f"[{host}]" if ":" in host else host
        found.append(
            ProvidedServer(
                address=f"{host}:{port}",
                draining=state == "draining",
                metadata=_metadata(endpoint),
            )
        )
    return found


def endpoint_state(conditions: Mapping[str, Any]) -> Optional[str]:
    """
    ``"ready"``, ``"draining"`` or None (not a server), by the API's rules:
    a nil ``ready`` is ready, a nil ``serving`` defers to ``ready``, a nil
    ``terminating`` is not terminating.
    """
    if conditions.get("ready") in (None, True):
        return "ready"
    if conditions.get("serving") is True and conditions.get("terminating") is True:
        return "draining"
    return None


def _slice_port(ports: Sequence[Mapping[str, Any]], name: Optional[str]) -> Any:
    tcp = [each for each in ports if each.get("protocol", "TCP") == "TCP"]
    if name is None:
        if len(tcp) > 1:
            names = ", ".join(repr(each.get("name", "")) for each in tcp)
            raise ValueError(f"the service has ports {names}: say which with port")
        chosen = tcp[0] if tcp else None
    else:
        chosen = next((each for each in tcp if each.get("name", "") == name), None)
    port = None if chosen is None else chosen.get("port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"port {port!r} is not from 1 to 65535")
    return port


def _metadata(endpoint: Mapping[str, Any]) -> Dict[str, str]:
    found = {
        "pod": (endpoint.get("targetRef") or {}).get("name"),
        "node": endpoint.get("nodeName"),
        "zone": endpoint.get("zone"),
    }
    return {key: str(value) for key, value in found.items() if value}


def service_servers(
    slices: Mapping[str, Mapping[str, Any]], port_name: Optional[str]
) -> List[ProvidedServer]:
    """
    The servers of all a Service's slices, each address once: ready if a
    slice says so (an endpoint moving between slices may be in two).
    """
    found: Dict[str, ProvidedServer] = {}
    for name in sorted(slices):
        for server in slice_servers(slices[name], port_name):
            if server.address not in found or found[server.address].draining:
                found[server.address] = server
    return list(found.values())


# Talking to the API server.


class _Refused(Exception):
    """
    What the API server answered, or what could not be read, in words.
    """


class _Relist(Exception):
    """
    The watch's version is gone (410): list again.
    """


class _Broken(Exception):
    """
    An open watch stopped without the server ending it.
    """


def _status_message(body: bytes, code: int) -> str:
    """
    The message of the ``Status`` object an API error's body is, or the code.
    """
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    return _status_text(status, code)


def _status_text(status: Any, code: Any) -> str:
    message = status.get("message") if isinstance(status, dict) else None
    return f"HTTP {code}: {message}" if message else f"HTTP {code}"


def _why(failure: Failure) -> str:
    """
    A failure in words; for treq's and Agent's, the first reason inside.
    """
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return _why(reasons[0])
    return failure.getErrorMessage() or repr(failure.value)


class _WatchStream(Protocol):
    """
    A watch response's body: one JSON event a line, each given to
    ``on_event`` as it comes.  ``done`` fires when the body ends: None when
    the server ended it, else the reason (``_Relist``, ``_Refused`` from
    ``on_event``, or ``_Broken``).
    """

    def __init__(
        self, on_event: Callable[[Mapping[str, Any]], None], reactor: Any, idle: float
    ) -> None:
        self._on_event = on_event
        self._reactor = reactor
        self._idle = idle
        self._buffer = b""
        self._outcome: Optional[Exception] = None
        self._silence: Any = None
        self.done: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self._silence = self._reactor.callLater(self._idle, self._silent)

    def dataReceived(self, data: bytes) -> None:
        if self._outcome is not None:
            return
        if self._silence is not None and self._silence.active():
            self._silence.reset(self._idle)
        self._buffer += data
        lines = self._buffer.split(b"\n")
        self._buffer = lines.pop()
        try:
            if len(self._buffer) > MAX_LINE:
                raise _Refused(f"watch: an event over {MAX_LINE} bytes")
            for line in lines:
                if line.strip():
                    self._on_event(_event(line))
        except (_Relist, _Refused) as reason:
            self.stop(reason)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            self.stop(_Refused(f"watch: an event Gourmet cannot read: {error!r}"))

    def stop(self, reason: Exception) -> None:
        if self._outcome is None:
            self._outcome = reason
            self.transport.stopProducing()  # type: ignore[union-attr]

    def _silent(self) -> None:
        self.stop(_Broken(f"watch: nothing heard for {self._idle:g} s"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
        if self._outcome is None and not reason.check(ResponseDone):
            self._outcome = _Broken(f"watch broken: {reason.getErrorMessage()}")
        # done is cancelled, and fired already, when the provider stops.
        if self.done.called:
            pass
        elif self._outcome is None:
            self.done.callback(None)
        else:
            self.done.errback(self._outcome)
        self.closed.callback(None)


def _event(line: bytes) -> Mapping[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        raise _Refused(f"watch: not JSON: {line[:80]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise _Refused(f"watch: not an event: {line[:80]!r}")
    return event


def _trust_root(path: Path) -> Any:
    """
    Every certificate of a CA bundle, trusted alone (not the system's).
    """
    try:
        text = path.read_bytes()
    except OSError as error:
        raise _Refused(f"{path}: cannot read the CA: {error.strerror}") from None
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end for block in text.split(end) if b"-----BEGIN" in block]
    try:
        return trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    except Exception as error:  # OpenSSL's errors name nothing useful
        raise _Refused(f"{path}: not a PEM CA certificate: {error}") from None


@implementer(IServerProvider)
class EndpointSlices:
    """
    A Service's EndpointSlices, listed then watched, as servers.

    :ivar version: the ``resourceVersion`` the next watch starts from.
    """

    log = Logger()

    def __init__(
        self,
        options: KubernetesOptions,
        reactor: Any,
        timing: Timing = Timing(),
        upstream: str = "",
    ) -> None:
        self._options = options
        self._upstream = upstream
        self._reactor = reactor
        self._timing = timing
        self._sink: Optional[IServerSink] = None
        self._client: Optional[HTTPClient] = None
        self._token: Optional[Tuple[float, str]] = None
        self._slices: Dict[str, Mapping[str, Any]] = {}
        self.version: Optional[str] = None
        self._retry = timing.first_retry
        self._failing = False
        self._pending: Any = None
        self._request: Optional[Deferred[Any]] = None
        self._stream: Optional[_WatchStream] = None

    @property
    def watching(self) -> bool:
        """
        Whether a watch is open: its response's head came, events may.
        """
        return self._stream is not None

    def start(self, sink: IServerSink) -> None:
        self._sink = sink
        self._step(self._list)

    def stop(self) -> Any:
        self._sink = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        stream, self._stream = self._stream, None
        if self._request is not None:
            self._request.cancel()
        if stream is not None and stream.transport is not None:
            stream.stop(CancelledError())
            return stream.closed
        return None

    # Each step is one request; it says which comes next.

    def _step(self, step: Callable[[], Any]) -> None:
        self._pending = None
        if self._sink is None:
            return
        request = Deferred.fromCoroutine(step())
        self._request = request
        request.addCallbacks(self._next, self._attempt_failed)

    def _next(self, following: Optional[Callable[[], Any]]) -> None:
        self._request = None
        if following is not None:
            self._step(following)

    async def _list(self) -> Callable[[], Any]:
        selector = f"{SERVICE_LABEL}={self._options.service}"
        response = await self._get({"labelSelector": selector})
        body = await self._body(response)
        if response.code != 200:
            raise _Refused(f"list: {_status_message(body, response.code)}")
        try:
            listed = json.loads(body)
            items = {each["metadata"]["name"]: each for each in listed["items"] or []}
            version = str(listed["metadata"]["resourceVersion"])
        except (ValueError, KeyError, TypeError) as error:
            raise _Refused(f"list: not an EndpointSliceList: {error!r}") from None
        self._slices, self.version = items, version
        self._answered()
        self._report()
        return self._watch

    async def _watch(self) -> Optional[Callable[[], Any]]:
        response = await self._get(
            {
                "labelSelector": f"{SERVICE_LABEL}={self._options.service}",
                "watch": "1",
                "resourceVersion": self.version or "",
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(self._timing.watch_seconds),
            }
        )
        if response.code == 410:
            await self._body(response)
            self.log.info(
                "upstream {upstream}: version {version} gone: listing again",
                upstream=self._upstream,
                version=self.version,
            )
            return self._list
        if response.code != 200:
            body = await self._body(response)
            raise _Refused(f"watch: {_status_message(body, response.code)}")
        self._answered()
        began = self._reactor.seconds()
        stream = self._stream = _WatchStream(
            self._event, self._reactor, self._timing.silence
        )
        response.deliverBody(stream)
        try:
            await stream.done
        except _Relist:
            return self._list
        finally:
            self._stream = None
        if self._reactor.seconds() - began < self._timing.first_retry:
            # A server that ends each watch at once is not let spin.
            raise _Broken("watch: ended as soon as it began")
        return self._watch

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, found = event.get("type"), event["object"]
        if kind == "ERROR":
            if found.get("code") == 410:
                self.log.info(
                    "upstream {upstream}: watch: {message}: listing again",
                    upstream=self._upstream,
                    message=found.get("message"),
                )
                raise _Relist()
            raise _Refused(f"watch: {_status_text(found, found.get('code'))}")
        metadata = found.get("metadata") or {}
        version = metadata.get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._slices[metadata["name"]] = found
        elif kind == "DELETED":
            self._slices.pop(metadata.get("name", ""), None)
        elif kind != "BOOKMARK":
            raise _Refused(f"watch: an event of type {kind!r}")
        if version:
            self.version = str(version)
        if kind != "BOOKMARK":
            self._report()

    def _report(self) -> None:
        if self._sink is None:
            return
        try:
            found = service_servers(self._slices, self._options.port)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            self._sink.failed(f"an EndpointSlice Gourmet cannot use: {error}")
            return
        self._sink.servers(found)

    def _answered(self) -> None:
        """
        The server answered: retries start short again, and a failure
        reported is over (the sink hears the set again).
        """
        self._retry = self._timing.first_retry
        if self._failing:
            self._failing = False
            self._report()

    def _attempt_failed(self, failure: Failure) -> None:
        self._request = None
        if self._sink is None or failure.check(CancelledError):
            return
        # With a version, a new watch resumes where the last one was.
        following = self._list if self.version is None else self._watch
        if failure.check(_Broken):
            self.log.info(
                "upstream {upstream}: {reason}; watching again from {version}",
                upstream=self._upstream,
                reason=_why(failure),
                version=self.version,
            )
        else:
            self._failing = True
            self._sink.failed(f"{self._options.api_server}: {_why(failure)}")
        delay, self._retry = self._retry, min(self._retry * 2, self._timing.last_retry)
        self._pending = self._reactor.callLater(delay, self._step, following)

    async def _get(self, query: Mapping[str, str]) -> Any:
        options = self._options
        url = (
            f"{options.api_server}/apis/discovery.k8s.io/v1/namespaces/"
            f"{options.namespace}/endpointslices"
        )
        client = self._connect()
        headers = Headers(
            {
                "Authorization": [f"Bearer {self.token()}"],
                "Accept": ["application/json"],
                "User-Agent": ["gourmet"],
            }
        )
        request = client.get(url, params=dict(query), headers=headers)
        request.addTimeout(self._timing.request_timeout, self._reactor)
        return await request

    async def _body(self, response: Any) -> bytes:
        reading = response.content()
        reading.addTimeout(self._timing.request_timeout, self._reactor)
        return bytes(await reading)

    def _connect(self) -> HTTPClient:
        if self._client is None:
            policy = BrowserLikePolicyForHTTPS(_trust_root(self._options.ca_file))
            # One connection a request: a watch holds its own for minutes.
            pool = HTTPConnectionPool(self._reactor, persistent=False)
            agent = Agent(
                self._reactor,
                contextFactory=policy,
                connectTimeout=self._timing.connect_timeout,
                pool=pool,
            )
            self._client = HTTPClient(agent)
        return self._client

    def token(self) -> str:
        """
        The bearer token: the file's, read again once ``token_refresh``
        seconds have passed.
        """
        now = self._reactor.seconds()
        if (
            self._token is not None
            and now - self._token[0] < self._timing.token_refresh
        ):
            return self._token[1]
        path = self._options.token_file
        try:
            token = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise _Refused(f"{path}: cannot read the token: {error}") from None
        if not token:
            raise _Refused(f"{path}: the token is empty")
        self._token = (now, token)
        return token
