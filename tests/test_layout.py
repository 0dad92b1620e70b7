"""
The layout shows the design: no module of ``gourmet`` imports one that
imports it back (even for type checking only), and the HTTP syntax in
``gourmet.http`` stands without Twisted.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

GOURMET = Path(__file__).resolve().parents[1] / "gourmet"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(GOURMET.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: Set[str]) -> Set[str]:
    """
    The modules of ``modules`` that ``path`` imports, anywhere in it.
    """
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # "from gourmet.admin import passwords" imports a module.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & modules


def import_graph() -> Dict[str, Set[str]]:
    paths = sorted(GOURMET.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports(path, modules) for path in paths}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """
    Every import cycle, each as the path that closes it.
    """
    found: List[List[str]] = []
    done: Set[str] = set()

    def visit(module: str, path: List[str]) -> None:
        if module in path:
            found.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 30  # every module was read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_http_syntax_needs_no_twisted() -> None:
    for path in sorted((GOURMET / "http").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("twisted"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("twisted") for a in node.names)
