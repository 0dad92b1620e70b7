"""
Twisted's private names behind one fence: the start-up check finds a name
gone from Twisted, stops Gourmet with one clear line when a defence needs
it, and falls back to Twisted's stock code when only speed does.  And no
module outside :mod:`gourmet._twisted` uses one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Iterator, List, Set, Tuple

import attrs
import pytest
import pytest_twisted
from twisted.internet import tcp
from twisted.logger import capturedLogs, formatEvent
from twisted.web import http

import twisted
from gourmet import tap
from gourmet._twisted import check, sockets
from gourmet._twisted.check import FENCED, TwistedMismatch, check_twisted
from gourmet._twisted.requirements import Requirement
from tests.configs import config

GOURMET = Path(__file__).resolve().parents[1] / "gourmet"


def test_the_installed_twisted_has_every_name() -> None:
    assert check_twisted(log_fallbacks=False) == []
    # Each fenced module is listed, with what it needs.
    assert {each.module for each in FENCED} == {
        "gourmet._twisted.channel",
        "gourmet._twisted.headers",
        "gourmet._twisted.sockets",
        "gourmet._twisted.pollloop",
        "gourmet._twisted.client",
    }


def test_a_name_a_defence_needs_stops_start_up_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(http.HTTPChannel, "_respondToBadRequestAndDisconnect")
    with pytest.raises(TwistedMismatch) as raised:
        check_twisted()
    message = str(raised.value)
    assert "lacks twisted.web.http.HTTPChannel._respondToBadRequestAndDisconnect" in (
        message
    )
    assert "gourmet._twisted.channel (the strict reading of requests" in message
    # As twistd runs it: a one-line exit, before anything is built.
    path = tmp_path / "gourmet.toml"
    path.write_text(config(["127.0.0.1:9"]))
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    with pytest.raises(SystemExit) as exited:
        tap.makeService(options)
    assert str(exited.value) == f"gourmet: {message}"
    assert "\n" not in str(exited.value)


def test_a_name_set_in_init_is_looked_for_on_an_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = http._ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH

    def forgets_length(self: Any) -> bool:
        done: bool = original(self)
        if done and hasattr(self, "length"):
            del self.length
        return done

    # A Twisted that stopped keeping the chunk's size where Gourmet reads it.
    monkeypatch.setattr(
        http._ChunkedTransferDecoder, "_dataReceived_CHUNK_LENGTH", forgets_length
    )
    with pytest.raises(TwistedMismatch, match=r"_ChunkedTransferDecoder\.length"):
        check_twisted()


@pytest.fixture
def speedups_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sockets, "speedups", True)
    yield


@pytest_twisted.ensureDeferred
async def test_a_name_only_speed_needs_falls_back_to_stock_twisted(
    monkeypatch: pytest.MonkeyPatch, speedups_restored: None, proxy: Any
) -> None:
    # A Twisted that renamed something the eager writes rely on (deleting
    # a real name would break Twisted itself).
    renamed = Requirement("twisted.internet.tcp", "Connection", "_renamedLater")
    fenced = tuple(
        attrs.evolve(each, requires=(*each.requires, renamed))
        if each.module == "gourmet._twisted.sockets"
        else each
        for each in FENCED
    )
    monkeypatch.setattr(check, "FENCED", fenced)
    with capturedLogs() as events:
        server, running = await proxy()
    said = [formatEvent(event) for event in events]
    assert (
        f"Twisted {twisted.__version__} lacks twisted.internet.tcp.Connection"
        "._renamedLater: doing without eager writes and buffered reads (speed only)"
    ) in said
    assert sockets.speedups is False
    # Gourmet works as before, on Twisted's own writes.
    response = await running.get("/hello")
    assert response.code == 200
    assert (await response.json())["server"] == server.name


# -- no private Twisted name outside the fence ------------------------------


def _private_twisted_uses(path: Path) -> Set[Tuple[str, str]]:
    """
    The private names a module imports from Twisted, and the private
    attributes it reads on anything but ``self`` and its own classes: a
    module that subclasses a Twisted class reaches Twisted's internals
    through ``self``, which the names it defines itself tell apart.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    uses: Set[Tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "twisted"
        ):
            uses.update(
                (str(node.module), alias.name)
                for alias in node.names
                if alias.name.startswith("_")
            )
    return uses


def _names_twisted_defines_privately() -> Set[str]:
    """
    Private attribute names of the Twisted classes Gourmet subclasses or
    holds: any of them used outside the fence is a private use.
    """
    names: Set[str] = set()
    for cls in (http.HTTPChannel, http.Request, tcp.Connection):
        for klass in cls.__mro__:
            names.update(
                name
                for name in vars(klass)
                if name.startswith("_") and not name.startswith("__")
            )
    for instance in (http.HTTPChannel(),):
        names.update(name for name in vars(instance) if name.startswith("_"))
    return names


def _modules_outside_the_fence() -> List[Path]:
    return [
        path
        for path in sorted(GOURMET.rglob("*.py"))
        if "_twisted" not in path.relative_to(GOURMET).parts
    ]


def test_no_private_twisted_name_outside_gourmet_twisted() -> None:
    imported = {
        str(path.relative_to(GOURMET)): _private_twisted_uses(path)
        for path in _modules_outside_the_fence()
    }
    assert {path: uses for path, uses in imported.items() if uses} == {}
    private = _names_twisted_defines_privately()
    touched = {}
    for path in _modules_outside_the_fence():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        }
        own |= {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in private
        }
        if used - own:
            touched[str(path.relative_to(GOURMET))] = sorted(used - own)
    assert touched == {}
