"""
A real etcd (Debian's ``etcd-server``, which ``./dev`` installs) on
loopback for the tests of ``provider = "etcd"``, in a directory of the
test's, stopped and started again on the same ports and data; and the
keys written, deleted and compacted through its v3 JSON gateway, as an
operator's etcdctl would.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.processes import START_SECONDS, stop_process
from tests.rawhttp import sleep

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    # etcd cannot listen on port 0 and say which port it got, and it must
    # come back on the same one: a port is picked here (a start that finds
    # it taken is tried again on another, by Etcd.__init__).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Etcd:
    """
    One etcd member, alone in its cluster.

    :ivar url: its client URL, ``http://127.0.0.1:PORT``.
    """

    def __init__(self, directory: Path) -> None:
        # Not a skip: ./dev installs etcd-server, and CI must not pass
        # without these tests.
        assert Path(ETCD).exists(), "no etcd: ./dev setup installs etcd-server"
        self.directory = directory
        self.data = directory / "etcd-data"
        self.log = directory / "etcd.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        #: The root user's token, once authentication is on.
        self.token: Optional[str] = None
        for _ in range(3):
            self.client_port, self.peer_port = free_port(), free_port()
            if self.start():
                return
        raise AssertionError(f"etcd did not start: {self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> bool:
        """
        Start it on its ports and data: whether it answers within
        :data:`START_SECONDS`.
        """
        self._launch()
        deadline = time.monotonic() + START_SECONDS
        while self.process is not None and self.process.poll() is None:
            if self._healthy():
                return True
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stop()
        return False

    def _launch(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            *(ETCD, "--data-dir", str(self.data), "--name", "default"),
            *("--listen-client-urls", self.url, "--advertise-client-urls", self.url),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"default={peer}"),
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:
                return bool(json.load(answer).get("health") == "true")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    async def restart(self) -> None:
        """
        Stop it and start it again on the same ports and data, letting the
        reactor run meanwhile.
        """
        self.stop()
        self._launch()
        deadline = time.monotonic() + START_SECONDS
        while not self._healthy():
            assert self.process is not None and self.process.poll() is None
            assert time.monotonic() < deadline, "etcd did not start again"
            await sleep(0.05)

    async def call(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        headers = Headers()
        if self.token is not None:
            headers.addRawHeader("Authorization", self.token)
        response = await treq.post(
            self.url + path, json=body, headers=headers, pool=self.pool, timeout=10
        )
        answer = dict(await response.json())
        assert response.code == 200, answer
        return answer

    async def put(self, key: str, value: Any) -> int:
        """
        ``value`` as JSON (a string as it is) under ``key``: the revision.
        """
        text = value if isinstance(value, str) else json.dumps(value)
        answer = await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(text)})
        return int(answer["header"]["revision"])

    async def delete(self, key: str) -> int:
        answer = await self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(answer["header"]["revision"])

    async def enable_authentication(self, password: str) -> None:
        """
        Turn authentication on, with one user, ``root``, who may do
        anything, and go on as that user.
        """
        await self.call("/v3/auth/user/add", {"name": "root", "password": password})
        await self.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        await self.call("/v3/auth/enable", {})
        answer = await self.call(
            "/v3/auth/authenticate", {"name": "root", "password": password}
        )
        self.token = str(answer["token"])

    async def compact(self, revision: int) -> None:
        await self.call("/v3/kv/compaction", {"revision": str(revision)})

    async def close(self) -> None:
        self.stop()
        await self.pool.closeCachedConnections()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
