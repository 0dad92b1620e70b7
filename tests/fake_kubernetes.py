"""
A fake Kubernetes API server, for the tests of ``provider = "kubernetes"``:
no real one can run here.  It serves the EndpointSlices of one namespace
(``GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices``) over
HTTPS on 127.0.0.1, with a certificate for ``localhost`` signed by a CA
made here, to clients that send its bearer token, as the API reference
and "API Concepts" (efficient detection of changes) document it:

- a list filtered by ``labelSelector=KEY=VALUE`` answers an
  ``EndpointSliceList`` whose ``metadata.resourceVersion`` is the
  collection's version;
- ``watch=1&resourceVersion=V`` streams one JSON event a line (``ADDED``,
  ``MODIFIED``, ``DELETED``) for every change after V, the object carrying
  its new ``resourceVersion``, then each change as it comes; with
  ``allowWatchBookmarks=true``, :meth:`bookmark` sends a ``BOOKMARK`` whose
  object holds only the current version;
- a V older than the history kept (:meth:`compact`) is ``410 Gone``:
  either an HTTP 410 with a ``Status`` body, or (what the watch cache
  does) a 200 whose one event is an ``ERROR`` with a ``Status`` of code
  410, after which the server ends the watch;
- errors are ``Status`` objects (``401 Unauthorized`` for a wrong token).

Versions are one counter for all writes, as etcd's revision is:
:meth:`other_writes` moves it as other objects' changes would, so a
bookmark can carry a version no slice has.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.test_tls import _certificate, _pem

RECORDED = Path(__file__).resolve().parent / "data" / "endpointslice.json"
PREFIX = "/apis/discovery.k8s.io/v1/namespaces/"


def recorded_slice() -> Dict[str, Any]:
    """
    An EndpointSlice as a real cluster's API server returned it.
    """
    return dict(json.loads(RECORDED.read_text()))


def endpoint(
    ip: str,
    *,
    ready: Optional[bool] = True,
    serving: Optional[bool] = None,
    terminating: Optional[bool] = None,
    pod: str = "",
) -> Dict[str, Any]:
    """
    One endpoint as the EndpointSlice controller writes it (a condition
    None is left out, as the API leaves out a nil one).
    """
    conditions = {
        name: value
        for name, value in (
            ("ready", ready),
            ("serving", ready if serving is None else serving),
            ("terminating", terminating),
        )
        if value is not None
    }
    name = pod or "api-" + ip.replace(".", "-").replace(":", "-")
    return {
        "addresses": [ip],
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": name},
        "nodeName": "worker-1",
        "zone": "zone-a",
    }


def status(code: int, reason: str, message: str) -> Dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKubernetes(Resource):
    """
    The API server, as a Twisted Web resource, and how a test changes it.

    :ivar requests: each request's query arguments and ``authorization``.
    :ivar gone_as: how a watch from a compacted version is refused:
        ``"event"`` (an ERROR event) or ``"status"`` (an HTTP 410).
    """

    isLeaf = True

    def __init__(self, directory: Path, namespace: str = "shop") -> None:
        super().__init__()
        self.namespace = namespace
        self.token = "token-1"
        directory.mkdir(parents=True, exist_ok=True)
        self.token_file = directory / "token"
        self.token_file.write_text(self.token + "\n")
        self.ca_file, self._context = _authority(directory)
        self.version = 1000
        self._oldest = self.version
        self._history: List[Tuple[int, Dict[str, Any]]] = []
        self.slices: Dict[str, Dict[str, Any]] = {}
        self.watches: List[Tuple[Request, bool]] = []
        self.requests: List[Dict[str, str]] = []
        self.gone_as = "event"
        self._port: Any = None
        self.port_number = 0

    # Running.

    def start(self) -> None:
        self._port = cast(Any, reactor).listenSSL(
            self.port_number, Site(self), self._context, interface="127.0.0.1"
        )
        self.port_number = self._port.getHost().port

    def stop(self) -> Deferred[Any]:
        """
        Stop listening and cut every watch, as a server that goes away.
        """
        self.break_watches()
        port, self._port = self._port, None
        return maybeDeferred(port.stopListening) if port else succeed(None)

    @property
    def api_server(self) -> str:
        return f"https://localhost:{self.port_number}"

    def config(
        self, service: str = "api", port: str = "http", host: str = "localhost"
    ) -> str:
        """
        An upstream's provider keys for ``service`` here.
        """
        return (
            f'provider = "kubernetes"\nnamespace = "{self.namespace}"\n'
            f'service = "{service}"\nport = "{port}"\n'
            f'api_server = "https://{host}:{self.port_number}"\n'
            f'token_file = "{self.token_file}"\nca_file = "{self.ca_file}"\n'
        )

    def lists(self) -> List[Dict[str, str]]:
        return [each for each in self.requests if "watch" not in each]

    def watch_requests(self) -> List[Dict[str, str]]:
        return [each for each in self.requests if "watch" in each]

    def watched_from(self) -> List[str]:
        """
        The version each watch asked to start from, in order.
        """
        return [each["resourceVersion"] for each in self.watch_requests()]

    # Changes, as controllers and etcd make them.

    def write(
        self,
        name: str,
        endpoints: List[Dict[str, Any]],
        port: int = 8080,
        service: str = "api",
    ) -> None:
        """
        Create or replace the slice ``name`` of ``service``.
        """
        kind = "MODIFIED" if name in self.slices else "ADDED"
        found = self.slices.get(name) or _new_slice(name, service, self.namespace)
        found = copy.deepcopy(found)
        found["endpoints"] = endpoints
        found["ports"] = [{"name": "http", "protocol": "TCP", "port": port}]
        self.slices[name] = found
        self._changed(kind, found)

    def delete(self, name: str) -> None:
        self._changed("DELETED", copy.deepcopy(self.slices.pop(name)))

    def other_writes(self, count: int) -> None:
        """
        Other objects change: the version moves, no slice event.
        """
        self.version += count

    def bookmark(self) -> None:
        event = {
            "type": "BOOKMARK",
            "object": {
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.version)},
            },
        }
        for request, bookmarks in self.watches:
            if bookmarks:
                _send(request, event)

    def compact(self) -> None:
        """
        Forget the history: a watch from any older version is gone.
        """
        self._oldest = self.version
        self._history = []

    def expire_watches(self) -> None:
        """
        Compact, and tell the open watches their version is gone.
        """
        self.compact()
        for request, _ in list(self.watches):
            _send(request, _gone_event(self.version))
            request.finish()

    def end_watches(self) -> None:
        """
        End every watch as its ``timeoutSeconds`` would.
        """
        for request, _ in list(self.watches):
            request.finish()

    def break_watches(self) -> None:
        for request, _ in list(self.watches):
            request.transport.abortConnection()  # type: ignore[union-attr]

    def _changed(self, kind: str, found: Dict[str, Any]) -> None:
        self.version += 1
        found["metadata"]["resourceVersion"] = str(self.version)
        event = {"type": kind, "object": found}
        self._history.append((self.version, event))
        for request, _ in self.watches:
            if _selected(found, request):
                _send(request, event)

    # The API.

    def render_GET(self, request: Request) -> Any:
        args = {
            key.decode(): values[-1].decode() for key, values in request.args.items()
        }
        args["authorization"] = request.getHeader("authorization") or ""
        self.requests.append(args)
        request.setHeader("content-type", "application/json")
        path = request.path.decode()
        if path != f"{PREFIX}{self.namespace}/endpointslices":
            return _error(request, status(404, "NotFound", f"{path} not found"))
        if args["authorization"] != f"Bearer {self.token}":
            return _error(request, status(401, "Unauthorized", "Unauthorized"))
        if args.get("watch") in ("1", "true"):
            return self._watch(request, args)
        items = [each for each in self.slices.values() if _selected(each, request)]
        listed = {
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.version)},
            "items": items,
        }
        return json.dumps(listed).encode()

    def _watch(self, request: Request, args: Dict[str, str]) -> Any:
        since = int(args.get("resourceVersion") or 0)
        if since and since < self._oldest:
            if self.gone_as == "status":
                message = f"too old resource version: {since} ({self._oldest})"
                return _error(request, status(410, "Expired", message))
            _send(request, _gone_event(since))
            request.finish()
            return NOT_DONE_YET
        # The API server sends the response's head at once, events or not.
        request.write(b"")
        for version, event in self._history:
            if version > since and _selected(event["object"], request):
                _send(request, event)
        watch = (request, args.get("allowWatchBookmarks") == "true")
        self.watches.append(watch)
        request.notifyFinish().addBoth(lambda _: self.watches.remove(watch))
        return NOT_DONE_YET


def _gone_event(version: int) -> Dict[str, Any]:
    message = f"too old resource version: {version}"
    return {"type": "ERROR", "object": status(410, "Expired", message)}


def _selected(found: Dict[str, Any], request: Request) -> bool:
    """
    Whether ``found`` has the labels of the request's ``labelSelector``
    (``key=value``, the one form the provider uses).
    """
    selector = request.args.get(b"labelSelector", [b""])[-1].decode()
    if not selector:
        return True
    key, _, value = selector.partition("=")
    return bool(found["metadata"].get("labels", {}).get(key) == value)


def _send(request: Request, event: Dict[str, Any]) -> None:
    request.write(json.dumps(event).encode() + b"\n")


def _error(request: Request, body: Dict[str, Any]) -> bytes:
    request.setResponseCode(body["code"])
    return json.dumps(body).encode()


def _new_slice(name: str, service: str, namespace: str) -> Dict[str, Any]:
    found = recorded_slice()
    metadata = found["metadata"]
    metadata.update(name=name, namespace=namespace, generateName=f"{service}-")
    metadata["labels"]["kubernetes.io/service-name"] = service
    return found


def _authority(directory: Path) -> Tuple[Path, Any]:
    """
    A CA in ``ca.crt`` (as a service account's), and a TLS context for
    ``localhost`` and ``127.0.0.1`` signed by it.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = "Fake Kubernetes CA"
    ca = _certificate(name, ca_key, (name, ca_key), True)
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    # In a pod the API server is reached by its Service's IP address.
    names = ["localhost", "127.0.0.1"]
    certificate = _certificate("localhost", key, (name, ca_key), names=names)
    context = ssl.PrivateCertificate.loadPEM(_pem(key, certificate)).options()
    return ca_file, context
