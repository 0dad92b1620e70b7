"""
``provider = "file"``: servers listed in a file of their own, written as
static ones are, re-read when it changes (inotify where the reactor and
the system have it, else a look every ``poll_interval`` seconds); a file
that is missing or wrong leaves the servers as they were, with an error.

    [upstreams.api]
    provider = "file"
    file = "api-servers.toml"     # relative to the configuration file

    # api-servers.toml
    [[servers]]
    path = "10.0.0.5:8080"
    weight = 2
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from attrs import frozen
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import LoopingCall
from twisted.python.filepath import FilePath
from zope.interface import implementer

from gourmet.config.load import ConfigError, parse_server_list
from gourmet.discovery.provider import (
    IProviderFactory,
    IServerProvider,
    IServerSink,
    OptionError,
)

#: Seconds after a change is seen before the file is read: an editor's
#: write, rename and chmod come as one change.
SETTLE = 0.05


@frozen
class FileOptions:
    """
    The file, made absolute, and how often it is looked at without inotify.
    """

    path: Path
    poll_interval: float = 1.0


@implementer(IProviderFactory)
class FileProviderFactory:
    """
    ``provider = "file"``: ``file`` (required) and ``poll_interval``.
    """

    name = "file"
    keys = frozenset({"file", "poll_interval"})

    def options(self, raw: Mapping[str, Any], directory: Path) -> FileOptions:
        name = raw.get("file")
        if not isinstance(name, str) or not name:
            raise OptionError(
                "file", 'expected the servers\' file, such as "servers.toml"'
            )
        interval = raw.get("poll_interval", 1.0)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise OptionError("poll_interval", f"expected seconds, got {interval!r}")
        if not interval > 0:
            raise OptionError("poll_interval", f"expected above 0, got {interval!r}")
        return FileOptions(directory / name, float(interval))

    def provider(
        self, options: FileOptions, upstream: str, reactor: Any
    ) -> WatchedFile:
        return WatchedFile(options, reactor)


FACTORY = FileProviderFactory()


@implementer(IServerProvider)
class WatchedFile:
    """
    The servers of one file, read at start and again at each change.
    """

    def __init__(self, options: FileOptions, reactor: Any) -> None:
        self._options = options
        self._reactor = reactor
        self._sink: Optional[IServerSink] = None
        self._seen: Optional[Tuple[int, int, int]] = None
        self._inotify: Any = None
        self._polling: Optional[LoopingCall] = None
        self._pending: Any = None

    def start(self, sink: IServerSink) -> None:
        self._sink = sink
        self._read()
        if not self._watch():
            self._polling = LoopingCall(self._poll)
            self._polling.clock = self._reactor
            self._polling.start(self._options.poll_interval, now=False)

    def stop(self) -> None:
        self._sink = None
        if self._polling is not None and self._polling.running:
            self._polling.stop()
        if self._inotify is not None:
            self._inotify.loseConnection()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()

    def _watch(self) -> bool:
        """
        Watch the file's directory with inotify, when there is one: an
        editor replaces a file rather than write it in place.
        """
        if not IReactorFDSet.providedBy(self._reactor):
            return False
        try:
            from twisted.internet import inotify

            watcher = inotify.INotify(self._reactor)
            watcher.startReading()
            watcher.watch(
                FilePath(str(self._options.path.parent)),
                mask=inotify.IN_CLOSE_WRITE
                | inotify.IN_MOVED_TO
                | inotify.IN_CREATE
                | inotify.IN_DELETE
                | inotify.IN_MOVED_FROM
                | inotify.IN_ATTRIB,
                callbacks=[self._changed],
            )
        except (ImportError, OSError, NotImplementedError):
            return False
        self._inotify = watcher
        return True

    def _changed(self, ignored: Any, path: FilePath[Any], mask: int) -> None:
        # Twisted's inotify names the file in bytes, whatever it was given.
        name = os.fsdecode(path.basename())
        if name != self._options.path.name or self._sink is None:
            return
        if self._pending is None or not self._pending.active():
            self._pending = self._reactor.callLater(SETTLE, self._read)

    def _poll(self) -> None:
        if self._stat() != self._seen:
            self._read()

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            stat = os.stat(self._options.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _read(self) -> None:
        sink, path = self._sink, self._options.path
        if sink is None:
            return
        self._seen = self._stat()
        try:
            text = path.read_bytes().decode("utf-8")
            servers = parse_server_list(text, str(path))
        except OSError as error:
            sink.failed(f"{path}: cannot read: {error.strerror or error}")
        except UnicodeDecodeError as error:
            sink.failed(f"{path}: not valid TOML: {error}")
        except ConfigError as error:
            sink.failed(str(error))
        else:
            sink.servers(servers)
