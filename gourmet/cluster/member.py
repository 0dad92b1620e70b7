"""
This instance in ``[cluster]``: it watches the cluster's keys in etcd and
applies the settings other instances write; writes the changes its
console makes; and keeps a heartbeat key under a lease, so that the
others list it while it runs.

An instance that loses etcd keeps serving with the last state it knew and
says so (log, console, ``/metrics``); its console's changes still apply
here and wait, to be written once etcd is back unless another instance
changed the same server meanwhile (whose change then applies here too).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Dict, List, Optional, Set

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

import gourmet
from gourmet.cluster.records import (
    InstanceRecord,
    ServerKey,
    Setting,
    instance_key,
    server_key,
)
from gourmet.cluster.shared import Applied, SharedState
from gourmet.config.model import ClusterConfig
from gourmet.etcd.client import EtcdClient
from gourmet.etcd.gateway import EtcdSaid
from gourmet.etcd.options import EtcdOptions
from gourmet.etcd.watch import IPrefixSink, KeyValue, PrefixWatch, b64, key_value
from gourmet.upstream.state import Server, Upstream, describe, settings_view

#: Seconds between two writes of an instance's heartbeat record (its lease
#: is kept alive more often, every third of its TTL): what "last seen" can
#: tell, without a write to etcd's history every second.
RECORD_EVERY = 30.0
#: Seconds a stop waits for etcd to revoke the lease.
REVOKE_SECONDS = 2.0


def default_name(admin: Optional[str]) -> str:
    """
    This host's name and the console's port (``web-1:8081``), or the
    process id without a console.
    """
    host = socket.gethostname()
    if admin is None:
        return f"{host}:pid{os.getpid()}"
    return f"{host}:{admin.rsplit(':', 1)[-1]}"


@implementer(IPrefixSink)
class ClusterMember(Service):
    """
    This instance among the others.

    :ivar name: its name, known once started.
    :ivar observers: told each setting from another instance applied here.
    :ivar since: when etcd last became reachable or unreachable.
    :ivar last_error: why etcd is unreachable, while it is.
    :ivar applied: settings from other instances applied here, in all.
    :ivar lost: changes made here that another instance's overrode.
    """

    log = Logger()

    def __init__(
        self,
        config: ClusterConfig,
        upstreams: Dict[str, Upstream],
        reactor: Any,
        admin_address: Callable[[], Optional[str]],
    ) -> None:
        self.config = config
        self.state = SharedState(config.prefix, upstreams)
        self._reactor = reactor
        self._admin_address = admin_address
        options = EtcdOptions(
            config.etcd,
            config.prefix,
            config.dial_timeout,
            config.username,
            config.password,
        )
        self._watch = PrefixWatch(options, "cluster", reactor)
        self._client = EtcdClient(options, reactor)
        self.name: str = config.name or ""
        self.started = reactor.seconds()
        self.since: Optional[float] = None
        self.last_error: Optional[str] = None
        self.observers: List[Callable[[Applied], None]] = []
        self.applied = 0
        self.lost = 0
        self._reachable: Optional[bool] = None
        self._lease: Optional[str] = None
        self._recorded_at: Optional[float] = None
        self._beat_error: Optional[str] = None
        self._beat: Optional[LoopingCall] = None
        self._writing: Set[ServerKey] = set()
        self._namesake_told = False

    @property
    def connected(self) -> bool:
        """
        Whether the cluster's keys are watched now: what is known is etcd's.
        """
        return self._watch.watching

    # -- starting and stopping ---------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self.name:
            self.name = default_name(self._admin_address())
        self.log.info(
            "cluster: {name} shares its console's changes through etcd"
            " {endpoints} under {prefix}",
            name=self.name,
            endpoints=", ".join(self.config.etcd),
            prefix=self.config.prefix,
        )
        self._watch.start(self)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = self._reactor
        self._beat.start(self.config.lease_ttl / 3, now=True)

    def stopService(self) -> Any:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        await self._watch.stop()
        lease, self._lease = self._lease, None
        if lease is not None and self._reachable:
            # Leaves the others' lists now, not once the lease expires; not
            # waited for long: a stop must not hang on an etcd going away.
            revoke = Deferred.fromCoroutine(
                self._client.call("/v3/lease/revoke", {"ID": lease})
            )
            try:
                await revoke.addTimeout(REVOKE_SECONDS, self._reactor)
            except Exception as error:
                self.log.info(
                    "cluster: {name}'s lease not revoked ({error}): the others"
                    " list it until it expires",
                    name=self.name,
                    error=str(error),
                )

    # -- the heartbeat -------------------------------------------------------------

    def _heartbeat(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._beat_once())

    async def _beat_once(self) -> None:
        # Never raises: a LoopingCall whose call fails stops for good.
        try:
            await self._keep_listed()
        except Exception as error:
            text = str(error) or repr(error)
            if isinstance(error, EtcdSaid) and "lease not found" in text:
                # etcd forgot the lease (it expired during an outage).
                self._lease = None
            if text != self._beat_error:
                self.log.info(
                    "cluster: {name}'s heartbeat failed: {error}",
                    name=self.name,
                    error=text,
                )
            self._beat_error = text
        else:
            self._beat_error = None
            if self._reachable:
                # A change whose write failed is tried again (after an
                # outage, the watch's return writes them: see live).
                self._write_all()

    async def _keep_listed(self) -> None:
        now = self._reactor.seconds()
        if self._lease is not None:
            answer = await self._client.call("/v3/lease/keepalive", {"ID": self._lease})
            if int(answer.get("TTL", 0)) <= 0:
                self.log.info(
                    "cluster: {name}'s lease expired: listed again", name=self.name
                )
                self._lease = None
        if self._lease is None:
            answer = await self._client.call(
                "/v3/lease/grant", {"TTL": self.config.lease_ttl}
            )
            self._lease, self._recorded_at = str(answer["ID"]), None
        if self._recorded_at is None or now - self._recorded_at >= RECORD_EVERY:
            record = InstanceRecord(
                name=self.name,
                admin=self._admin_address(),
                pid=os.getpid(),
                version=gourmet.__version__,
                started=self.started,
                seen=now,
            )
            put = {
                "key": b64(instance_key(self.config.prefix, self.name)),
                "value": b64(record.to_json()),
                "lease": self._lease,
            }
            await self._client.call("/v3/kv/put", put)
            self._recorded_at = now

    # -- what the watch tells ----------------------------------------------------

    def received(self, changes: Any, whole: bool) -> None:
        for applied in self.state.received(changes, whole):
            self._applied(applied)
        namesake = self.state.instances.get(self.name)
        if namesake is not None and (namesake.pid, namesake.started) != (
            os.getpid(),
            self.started,
        ):
            if not self._namesake_told:
                self.log.error(
                    "cluster: another instance is named {name} too (pid {pid},"
                    " console {admin}): give each its own [cluster] name",
                    name=self.name,
                    pid=namesake.pid,
                    admin=namesake.admin,
                )
            self._namesake_told = True

    def failed(self, reason: str) -> None:
        self.last_error = reason
        if self._reachable is not False:
            self._reachable = False
            self.since = self._reactor.seconds()
            self.log.warn(
                "cluster: {reason}; {name} keeps serving with the last state"
                " it knew; changes made in its console apply here and are"
                " written once etcd is back",
                reason=reason,
                name=self.name,
            )

    def live(self) -> None:
        if self._reachable is not True:
            if self._reachable is False:
                self.log.info(
                    "cluster: etcd is reachable again; {count} changes made"
                    " here meanwhile to write",
                    count=len(self.state.pending),
                )
            self._reachable = True
            self.since = self._reactor.seconds()
            self.last_error = None
        self._write_all()

    def _applied(self, applied: Applied) -> None:
        self.applied += 1
        server, setting = applied.server, applied.setting
        before = settings_view(server, *applied.before)
        after = settings_view(server, setting.weight, setting.state)
        self.log.info(
            "cluster: {who} on {instance} changed {upstream}/{server}: {change}",
            who=setting.who,
            instance=setting.instance,
            upstream=applied.upstream,
            server=server.name,
            change=describe(before, after),
        )
        for observer in self.observers:
            observer(applied)

    # -- changes made here ---------------------------------------------------------

    def share(self, upstream: str, server: Server, who: str) -> None:
        """
        An operator changed ``server`` in this console (it applies here
        already): write it for the others.
        """
        setting = Setting.of(server, who, self.name, self._reactor.seconds())
        self._write(self.state.changed_here(upstream, setting, server.name))

    def reapply(self) -> None:
        """
        Servers were added (a reload, a provider): give them their settings.
        """
        for applied in self.state.reapply():
            self._applied(applied)

    def _write_all(self) -> None:
        for key in list(self.state.pending):
            self._write(key)

    def _write(self, key: ServerKey) -> None:
        if key in self._writing:
            # The write under way goes on with the latest change.
            return
        self._writing.add(key)
        writing = Deferred.fromCoroutine(self._write_pending(key))
        writing.addBoth(lambda ignored: self._writing.discard(key))

    async def _write_pending(self, key: ServerKey) -> None:
        try:
            await self._write_each(key)
        except Exception:
            # Not etcd's answer as Gourmet knows it: said, and the change
            # waits for the next time etcd is reachable again.
            self.log.failure(
                "cluster: {upstream}/{server}: not written",
                upstream=key.upstream,
                server=key.address,
            )

    async def _write_each(self, key: ServerKey) -> None:
        while True:
            pending = self.state.pending.get(key)
            if pending is None:
                return
            etcd_key = b64(server_key(self.config.prefix, key.upstream, key.address))
            value = pending.setting.to_json()
            transaction = {
                # Only over the revision this change was made on: if another
                # instance changed the server since, its change stands.
                "compare": [
                    {
                        "key": etcd_key,
                        "target": "MOD",
                        "mod_revision": str(pending.base),
                    }
                ],
                "success": [{"request_put": {"key": etcd_key, "value": b64(value)}}],
                "failure": [{"request_range": {"key": etcd_key}}],
            }
            try:
                answer = await self._client.call("/v3/kv/txn", transaction)
            except Exception as error:
                # Written when the watch is back (live).
                self.log.info(
                    "cluster: {upstream}/{server}: not written yet ({error})",
                    upstream=key.upstream,
                    server=key.address,
                    error=str(error) or repr(error),
                )
                return
            if answer.get("succeeded"):
                revision = int(answer["header"]["revision"])
                self.state.written(key, pending.setting, revision)
                continue
            kvs = answer["responses"][0]["response_range"].get("kvs", ())
            current: Optional[KeyValue] = key_value(kvs[0]) if kvs else None
            if current is not None and current.value == value:
                # Written after all, by a try whose answer was lost.
                self.state.written(key, pending.setting, current.mod_revision)
                continue
            lost, applied = self.state.refused(key, current)
            stored = self.state.settings.get(key)
            if lost is not None and stored is not None:
                self.lost += 1
                winner = stored.setting
                self.log.warn(
                    "cluster: {who}'s change of {upstream}/{server} here is not"
                    " shared: {other} on {instance} changed it first, and that"
                    " applies",
                    who=lost.who,
                    upstream=key.upstream,
                    server=key.address,
                    other=winner.who,
                    instance=winner.instance,
                )
            for each in applied:
                self._applied(each)

    # -- what the console shows --------------------------------------------------

    def view(self) -> Dict[str, Any]:
        """
        This instance in the cluster, and the others.
        """
        instances = [
            {
                "name": each.name,
                "admin": each.admin,
                "pid": each.pid,
                "version": each.version,
                "started": each.started,
                "seen": each.seen,
                "self": each.name == self.name,
            }
            for each in sorted(self.state.instances.values(), key=lambda i: i.name)
        ]
        return {
            "name": self.name,
            "etcd": list(self.config.etcd),
            "prefix": self.config.prefix,
            "lease_ttl": self.config.lease_ttl,
            "connected": self.connected,
            "since": self.since,
            "last_error": self.last_error,
            "pending": len(self.state.pending),
            "applied": self.applied,
            "lost": self.lost,
            "instances": instances,
        }
