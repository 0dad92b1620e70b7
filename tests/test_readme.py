"""
The README is what a newcomer reads first: it must render, show the
console's screenshot, and start with the two commands that work.  The
changelog must render and name the version being made.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import docutils.nodes

from gourmet import __version__

ROOT = Path(__file__).resolve().parents[1]


def parse(path: Path) -> docutils.nodes.document:
    errors = io.StringIO()
    document = docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"),
        settings_overrides={"warning_stream": errors, "report_level": 2},
    )
    assert errors.getvalue() == "", path
    return document


def test_docs_render_without_warnings() -> None:
    for path in (ROOT / "docs").glob("*.rst"):
        parse(path)


def test_readme_renders_without_warnings() -> None:
    document = parse(ROOT / "README.rst")
    images = [node["uri"] for node in document.findall(docutils.nodes.image)]
    assert "docs/admin-console.png" in images
    for uri in images:
        assert (ROOT / uri).is_file(), uri


def test_quick_start_is_two_commands() -> None:
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    quick_start = text.split("Quick start\n-----------\n", 1)[1]
    block = quick_start.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["./dev demo", "./dev test"]


def test_news_has_this_version_on_top() -> None:
    """
    The changelog renders, and its top section is this version's: unreleased
    while the version is a development one, dated once released.
    """
    parse(ROOT / "NEWS.rst")
    text = (ROOT / "NEWS.rst").read_text(encoding="utf-8")
    top = re.search(r"^(\S+) \((.+)\)\n-+\n", text, re.MULTILINE)
    assert top is not None, "NEWS.rst: no section such as '0.1.0 (unreleased)'"
    release, when = top.groups()
    base, dev, _ = __version__.partition(".dev")
    assert release == base
    if dev:
        assert when == "unreleased"
    else:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", when), when
