"""
``provider = "etcd"``: servers kept as keys under a prefix in etcd, one key
a server, its value JSON; read whole, then watched, over etcd's v3
HTTP/JSON gateway (``/v3/kv/range``, ``/v3/watch``).

    [upstreams.api]
    provider = "etcd"
    endpoints = ["http://10.0.0.2:2379", "http://10.0.0.3:2379"]
    prefix = "/gourmet/upstreams/api/"

    # etcdctl put /gourmet/upstreams/api/a '{"address": "10.0.0.5:8080"}'
    # etcdctl put /gourmet/upstreams/api/b '{"address": "10.0.0.6:8080", "weight": 2}'

``dial_timeout`` bounds connecting and each answer but the watch's;
``username`` and ``password``, for an etcd with authentication on, get a
token at each connection.

A watch that breaks (etcd restarted, the connection lost) resumes from the
revision after the last change seen, on the next endpoint, after a
backoff, so no change is missed; one whose revision was compacted
meanwhile reads every key again.  A key whose value is not a server is
left out, with an error in the log, and the others are applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from twisted.logger import Logger
from zope.interface import implementer

from gourmet.config.model import MAX_WEIGHT, is_weight
from gourmet.config.origin import parse_origin
from gourmet.discovery.provider import (
    IProviderFactory,
    IServerProvider,
    IServerSink,
    OptionError,
    ProvidedServer,
)
from gourmet.etcd.options import (
    BadOption,
    EtcdOptions,
    credentials_of,
    endpoints_of,
    timeout_of,
)
from gourmet.etcd.watch import IPrefixSink, KeyValue, PrefixWatch, range_end

__all__ = ["FACTORY", "EtcdOptions", "EtcdWatch", "range_end", "server_of"]


@implementer(IProviderFactory)
class EtcdProviderFactory:
    """
    ``provider = "etcd"``: ``endpoints`` and ``prefix`` (required),
    ``dial_timeout``, ``username`` and ``password``.
    """

    name = "etcd"
    keys = frozenset({"endpoints", "prefix", "dial_timeout", "username", "password"})

    def options(self, raw: Mapping[str, Any], directory: Path) -> EtcdOptions:
        try:
            endpoints = endpoints_of(raw.get("endpoints"))
            prefix = raw.get("prefix")
            if not isinstance(prefix, str) or not prefix:
                raise BadOption(
                    "prefix",
                    'expected the keys\' prefix, such as "/gourmet/upstreams/api/"',
                )
            timeout = timeout_of("dial_timeout", raw.get("dial_timeout", 5.0))
            username, password = credentials_of(
                raw.get("username"), raw.get("password")
            )
        except BadOption as error:
            raise OptionError(error.key, error.message) from None
        return EtcdOptions(endpoints, prefix, timeout, username, password)

    def provider(self, options: EtcdOptions, upstream: str, reactor: Any) -> EtcdWatch:
        return EtcdWatch(options, upstream, reactor)


FACTORY = EtcdProviderFactory()


# -- What etcd's keys say ------------------------------------------------------


def server_of(key: str, value: bytes) -> ProvidedServer:
    """
    The server one key's value names: ``{"address": "10.0.0.5:8080",
    "weight": 2}``, the weight optional.

    :raises ValueError: saying what is wrong with it.
    """
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError(
            'not JSON: expected {"address": "host:port", "weight": 1}'
        ) from None
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object, {"address": "host:port"}')
    address = data.get("address")
    if not isinstance(address, str) or not address:
        raise ValueError('no "address": expected {"address": "host:port"}')
    parse_origin(address)
    weight = data.get("weight")
    if weight is not None and not is_weight(weight):
        raise ValueError(f'"weight": expected 0 to {MAX_WEIGHT}, got {weight!r}')
    return ProvidedServer(address=address, weight=weight, metadata={"etcd_key": key})


# -- The provider --------------------------------------------------------------


@implementer(IServerProvider, IPrefixSink)
class EtcdWatch:
    """
    One upstream's keys, watched (:class:`PrefixWatch`), each a server.
    """

    log = Logger()

    def __init__(self, options: EtcdOptions, upstream: str, reactor: Any) -> None:
        self._upstream = upstream
        self._watch = PrefixWatch(options, f"upstream {upstream}", reactor)
        self._sink: Optional[IServerSink] = None
        self._servers: Dict[bytes, ProvidedServer] = {}
        self._failing = False

    @property
    def revision(self) -> Optional[int]:
        return self._watch.revision

    def start(self, sink: IServerSink) -> None:
        self._sink = sink
        self._watch.start(self)

    def stop(self) -> Any:
        self._sink = None
        return self._watch.stop()

    # -- What the watch tells.

    def received(self, changes: Sequence[KeyValue], whole: bool) -> None:
        if whole:
            self._servers = {}
        for change in changes:
            server = None if change.value is None else self._decode(change)
            if server is None:
                self._servers.pop(change.key, None)
            else:
                self._servers[change.key] = server
        if whole or changes:
            self._publish()

    def failed(self, reason: str) -> None:
        self._failing = True
        if self._sink is not None:
            self._sink.failed(reason)

    def live(self) -> None:
        if self._failing:
            # Said again so that the upstream no longer shows the failure.
            self._publish()

    # -- Keys to servers.

    def _decode(self, change: KeyValue) -> Optional[ProvidedServer]:
        name = change.key.decode("utf-8", "replace")
        try:
            return server_of(name, change.value or b"")
        except ValueError as error:
            # One bad key must not stop the others, nor empty the upstream.
            self.log.error(
                "upstream {upstream}: etcd key {key} is left out: {error}",
                upstream=self._upstream,
                key=name,
                error=str(error),
            )
            return None

    def _found(self) -> List[ProvidedServer]:
        found: Dict[str, ProvidedServer] = {}
        for key in sorted(self._servers):
            server = self._servers[key]
            kept = found.setdefault(server.address, server)
            if kept is not server:
                self.log.error(
                    "upstream {upstream}: etcd key {key} is left out: {address}"
                    " is already {other}'s",
                    upstream=self._upstream,
                    key=server.metadata["etcd_key"],
                    address=server.address,
                    other=kept.metadata["etcd_key"],
                )
        return list(found.values())

    def _publish(self) -> None:
        if self._sink is not None:
            self._failing = False
            self._sink.servers(self._found())
