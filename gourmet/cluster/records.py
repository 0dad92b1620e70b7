"""
What ``[cluster]`` keeps in etcd, under its prefix: one key a server an
operator changed, ``servers/UPSTREAM/ADDRESS``, and one key an instance
running, ``instances/NAME``, under that instance's lease; their values
JSON.

    /gourmet/cluster/servers/api/10.0.0.5:80
        {"weight": null, "state": "drain", "who": "alice",
         "instance": "gourmet-1:8081", "when": 1795000000.5}
    /gourmet/cluster/instances/gourmet-1:8081
        {"name": "gourmet-1:8081", "admin": "127.0.0.1:8081", "pid": 812,
         "version": "0.9", "started": 1794999000.0, "seen": 1795000001.2}

The upstream's name and the address are percent-encoded in the key (an
address may hold ``/``).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Tuple, Union
from urllib.parse import quote, unquote

from attrs import asdict, frozen

from gourmet.config.model import MAX_WEIGHT, is_weight
from gourmet.upstream.state import AdminState, Server

SERVERS = "servers/"
INSTANCES = "instances/"
_STATES = {state.value: state for state in AdminState}


def server_key(prefix: str, upstream: str, address: str) -> bytes:
    """
    The key of one server's settings.
    """
    path = quote(upstream, safe="") + "/" + quote(address, safe=":[]")
    return (prefix + SERVERS + path).encode("utf-8")


def instance_key(prefix: str, name: str) -> bytes:
    """
    The key of one instance's heartbeat.
    """
    return (prefix + INSTANCES + quote(name, safe=":@")).encode("utf-8")


@frozen
class ServerKey:
    """
    A key that names a server: its upstream and address.
    """

    upstream: str
    address: str


@frozen
class InstanceKey:
    """
    A key that names an instance.
    """

    name: str


def parse_key(prefix: str, key: bytes) -> Union[ServerKey, InstanceKey, None]:
    """
    What a key under ``prefix`` names; None for what is not Gourmet's.
    """
    text = key.decode("utf-8", "replace")
    if not text.startswith(prefix):
        return None
    rest = text[len(prefix) :]
    if rest.startswith(SERVERS):
        parts = rest[len(SERVERS) :].split("/")
        if len(parts) == 2 and all(parts):
            return ServerKey(unquote(parts[0]), unquote(parts[1]))
    elif rest.startswith(INSTANCES) and len(rest) > len(INSTANCES):
        return InstanceKey(unquote(rest[len(INSTANCES) :]))
    return None


def _object(value: bytes) -> Any:
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _text(data: Any, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ValueError(f'"{name}": expected a string, got {value!r}')
    return value


def _seconds(data: Any, name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'"{name}": expected seconds, got {value!r}')
    return float(value)


@frozen
class Setting:
    """
    What an operator set for a server, in which console, when.

    :ivar weight: the weight set; None: the configured one.
    """

    weight: Optional[int]
    state: AdminState
    who: str
    instance: str
    when: float

    @classmethod
    def of(cls, server: Server, who: str, instance: str, when: float) -> Setting:
        """
        What ``server`` is set to now.
        """
        return cls(server.weight_override, server.admin_state, who, instance, when)

    def to_json(self) -> bytes:
        document = {**asdict(self), "state": self.state.value}
        return json.dumps(document, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, value: bytes) -> Setting:
        """
        :raises ValueError: saying what is wrong with ``value``.
        """
        data = _object(value)
        weight = data.get("weight")
        if weight is not None and not is_weight(weight):
            raise ValueError(f'"weight": expected 0 to {MAX_WEIGHT} or null')
        state = data.get("state")
        if state not in _STATES:
            raise ValueError(f'"state": expected up, drain or disabled, got {state!r}')
        return cls(
            weight,
            _STATES[state],
            _text(data, "who"),
            _text(data, "instance"),
            _seconds(data, "when"),
        )

    @property
    def settings(self) -> Tuple[Optional[int], AdminState]:
        """
        What it sets, as a server holds it.
        """
        return (self.weight, self.state)

    def holds_for(self, server: Server) -> bool:
        """
        Whether ``server`` has this setting already.
        """
        return (server.weight_override, server.admin_state) == self.settings

    def apply(self, server: Server) -> None:
        server.set_weight(self.weight)
        server.admin_state = self.state


@frozen
class InstanceRecord:
    """
    One instance, as its heartbeat says: its name, its console's address
    (None without one), its process, and when it started and last said so.
    """

    name: str
    admin: Optional[str]
    pid: int
    version: str
    started: float
    seen: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, value: bytes) -> InstanceRecord:
        """
        :raises ValueError: saying what is wrong with ``value``.
        """
        data = _object(value)
        admin = data.get("admin")
        pid = data.get("pid")
        if admin is not None and not isinstance(admin, str):
            raise ValueError(f'"admin": expected an address, got {admin!r}')
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ValueError(f'"pid": expected a number, got {pid!r}')
        return cls(
            _text(data, "name"),
            admin,
            pid,
            _text(data, "version"),
            _seconds(data, "started"),
            _seconds(data, "seen"),
        )
