"""
The cluster's state as this instance knows it, and how it meets the
servers: settings read from etcd are applied to the servers of the same
upstream and address; an operator's change here waits (pending) until
etcd has it, and is written only if no other instance changed that server
since this one last saw it (otherwise the other's, already in etcd,
wins everywhere, this instance included).

No I/O here: :mod:`gourmet.cluster.member` reads and writes etcd.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from attrs import frozen
from twisted.logger import Logger

from gourmet.cluster.records import (
    InstanceKey,
    InstanceRecord,
    ServerKey,
    Setting,
    parse_key,
)
from gourmet.etcd.watch import KeyValue
from gourmet.upstream.state import AdminState, Server, Upstream


@frozen
class Stored:
    """
    A server's setting in etcd, and the revision that last changed it.
    """

    setting: Setting
    revision: int


@frozen
class Pending:
    """
    An operator's change made here and not in etcd yet, and the revision
    of the key it was made over (0: the key did not exist).
    """

    setting: Setting
    base: int


@frozen
class Applied:
    """
    A setting from etcd applied to a server here: what it had before
    (its weight override and state), and the setting.
    """

    upstream: str
    server: Server
    before: Tuple[Optional[int], AdminState]
    setting: Setting


class SharedState:
    """
    Settings and instances under one prefix, and the changes of this
    instance not written yet.

    :ivar settings: each server's setting in etcd.
    :ivar instances: the instances whose heartbeat is in etcd.
    :ivar pending: changes made here, not in etcd yet.
    """

    log = Logger()

    def __init__(self, prefix: str, upstreams: Mapping[str, Upstream]) -> None:
        self.prefix = prefix
        self.upstreams = upstreams
        self.settings: Dict[ServerKey, Stored] = {}
        self.instances: Dict[str, InstanceRecord] = {}
        self.pending: Dict[ServerKey, Pending] = {}

    # -- from etcd ------------------------------------------------------------

    def received(self, changes: Sequence[KeyValue], whole: bool) -> List[Applied]:
        """
        Take what the watch told (``whole``: every key there is); apply
        each new setting to its server, unless a change made here waits.

        :return: the settings applied.
        """
        if whole:
            self.settings, self.instances = {}, {}
        applied: List[Applied] = []
        for change in changes:
            key = parse_key(self.prefix, change.key)
            if isinstance(key, InstanceKey):
                self._instance(key, change)
            elif isinstance(key, ServerKey):
                applied.extend(self._setting(key, change))
        return applied

    def _instance(self, key: InstanceKey, change: KeyValue) -> None:
        if change.value is None:
            self.instances.pop(key.name, None)
            return
        try:
            self.instances[key.name] = InstanceRecord.from_json(change.value)
        except ValueError as error:
            self._left_out(change, error)

    def _setting(self, key: ServerKey, change: KeyValue) -> List[Applied]:
        if change.value is None:
            # Deleted (with etcdctl): the servers keep what they have.
            self.settings.pop(key, None)
            return []
        try:
            setting = Setting.from_json(change.value)
        except ValueError as error:
            self._left_out(change, error)
            return []
        self.settings[key] = Stored(setting, change.mod_revision)
        if key in self.pending:
            # Written by this instance now, or to be decided when it is.
            return []
        return self._apply(key, setting)

    def _left_out(self, change: KeyValue, error: ValueError) -> None:
        self.log.error(
            "cluster: etcd key {key} is left out: {error}",
            key=change.key.decode("utf-8", "replace"),
            error=str(error),
        )

    def _apply(self, key: ServerKey, setting: Setting) -> List[Applied]:
        server = self.server(key)
        if server is None or setting.holds_for(server):
            return []
        before = (server.weight_override, server.admin_state)
        setting.apply(server)
        return [Applied(key.upstream, server, before, setting)]

    def server(self, key: ServerKey) -> Optional[Server]:
        """
        This instance's server of that upstream and address, if it has one.
        """
        upstream = self.upstreams.get(key.upstream)
        if upstream is None:
            return None
        for server in upstream.servers:
            if server.name == key.address:
                return server
        return None

    def reapply(self) -> List[Applied]:
        """
        Give the settings in etcd to servers that differ (servers a reload
        or a provider added since), but for those with a change waiting.
        """
        applied: List[Applied] = []
        for key, stored in list(self.settings.items()):
            if key not in self.pending:
                applied.extend(self._apply(key, stored.setting))
        return applied

    # -- changes made here ------------------------------------------------------

    def changed_here(self, upstream: str, setting: Setting, address: str) -> ServerKey:
        """
        An operator changed a server here (already applied to it): it waits
        to be written over the revision seen now.
        """
        key = ServerKey(upstream, address)
        waiting = self.pending.get(key)
        if waiting is not None:
            # Not written yet: still over the revision the first was made on.
            base = waiting.base
        else:
            stored = self.settings.get(key)
            base = 0 if stored is None else stored.revision
        self.pending[key] = Pending(setting, base)
        return key

    def written(self, key: ServerKey, setting: Setting, revision: int) -> None:
        """
        etcd took ``setting`` at ``revision``.
        """
        self.settings[key] = Stored(setting, revision)
        waiting = self.pending.get(key)
        if waiting is None:
            return
        if waiting.setting is setting:
            del self.pending[key]
        else:
            # A later change here: over this one's revision.
            self.pending[key] = Pending(waiting.setting, revision)

    def refused(
        self, key: ServerKey, current: Optional[KeyValue]
    ) -> Tuple[Optional[Setting], List[Applied]]:
        """
        etcd refused the change waiting for ``key``: another instance
        changed the server first, to ``current``'s value (None: the key was
        deleted).  The other's setting applies here too.

        :return: the change made here that lost, and what was applied;
            none lost when the key was deleted: the change waits again, to
            be written over no key.
        """
        waiting = self.pending.pop(key, None)
        if current is None or current.value is None:
            # Deleted meanwhile: nobody's setting stands against this one,
            # which is written again, over no key.
            self.settings.pop(key, None)
            if waiting is not None:
                self.pending[key] = Pending(waiting.setting, 0)
            return None, []
        lost = None if waiting is None else waiting.setting
        return lost, self._setting(key, current)
