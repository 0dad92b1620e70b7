"""
Reads into a shared buffer (gourmet.reads), switched on here whatever the
interpreter, so that CPython runs check the path PyPy takes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict

import pytest
import pytest_twisted
from twisted.internet import tcp

from gourmet import reads


@pytest.fixture
def buffered_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads, "ENABLED", True)


@pytest_twisted.ensureDeferred
async def test_bodies_both_ways_arrive_intact_through_buffered_reads(
    buffered_reads: None, proxy: Any
) -> None:
    server, running = await proxy()
    upload = bytes(range(256)) * 3_900  # under 1 MiB: many reads all the same
    response = await running.request("POST", "/up", data=upload)
    assert response.code == 200, await response.content()
    answer = json.loads(await response.content())
    assert answer["body_length"] == len(upload)
    assert answer["body_sha256"] == hashlib.sha256(upload).hexdigest()
    # 5 MB down: many reads by the upstream connection.
    response = await running.get("/big/5000000")
    assert response.code == 200
    assert await response.content() == b"x" * 5_000_000
    # Small requests on the same connections, one after another.
    for number in range(20):
        response = await running.get(f"/small/{number}")
        assert json.loads(await response.content())["uri"] == f"/small/{number}"
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_both_sides_read_into_the_buffer(
    buffered_reads: None, proxy: Any
) -> None:
    _, running = await proxy()
    reads_by: Dict[type, int] = {}
    original = reads._BufferedRead.install

    def counting(self: Any, connection: tcp.Connection) -> None:
        original(self, connection)
        # The reactor calls the instance's own doRead, not the class's.
        buffered: Any = vars(connection).get("doRead")
        kind = type(connection)
        reads_by.setdefault(kind, 0)

        def counted() -> Any:
            reads_by[kind] += 1
            return buffered()

        if buffered is not None:
            connection.doRead = counted  # type: ignore[method-assign]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reads._BufferedRead, "install", counting)
        response = await running.get("/hello")
        assert json.loads(await response.content())["uri"] == "/hello"
    # The client's connection to Gourmet, and Gourmet's to the upstream.
    assert reads_by.get(tcp.Server, 0) >= 1
    assert reads_by.get(tcp.Client, 0) >= 1
