"""
Routing: the first matching location wins, and pass_match rewrites the path.
"""

from __future__ import annotations

import re
from typing import Optional

import pytest

from gourmet.config.model import LocationConfig
from gourmet.frontend.routing import Router


def location(
    pattern: str, upstream: str, host: Optional[str] = None, pass_match: bool = False
) -> LocationConfig:
    return LocationConfig(re.compile(pattern), upstream, host, pass_match)


REFERENCE = Router(
    [location("api/(.+/?)", "backend"), location("static/.+/?", "front")]
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/api/users", (0, b"/api/users")),
        (b"/static/app.js", (1, b"/static/app.js")),
        (b"/v1/api/x", (0, b"/v1/api/x")),
        (b"/other", None),
        (b"/api/", None),
    ],
)
def test_reference_locations(path: bytes, expected: object) -> None:
    assert REFERENCE.route(path, b"", None) == expected


def test_first_match_wins() -> None:
    router = Router([location("^/a", "one"), location("^/a/b", "two")])
    assert router.route(b"/a/b", b"", None) == (0, b"/a/b")


def test_query_is_kept() -> None:
    assert REFERENCE.route(b"/api/users", b"page=2&x=%20", None) == (
        0,
        b"/api/users?page=2&x=%20",
    )


def test_pass_match_forwards_the_last_group() -> None:
    router = Router([location("^/api/(v1)/(.*)", "b", pass_match=True)])
    assert router.route(b"/api/v1/users/7", b"q=1", None) == (0, b"/users/7?q=1")


def test_pass_match_without_groups_forwards_the_whole_match() -> None:
    router = Router([location("static/[a-z]+", "b", pass_match=True)])
    assert router.route(b"/x/static/css/y", b"", None) == (0, b"/static/css")


def test_pass_match_does_not_double_a_slash() -> None:
    router = Router([location("^/api(/.*)", "b", pass_match=True)])
    assert router.route(b"/api/users", b"", None) == (0, b"/users")


def test_host_restricts_a_location() -> None:
    router = Router([location("/", "a", host="Example.com"), location("/", "b")])
    assert router.route(b"/", b"", b"example.COM:8080") == (0, b"/")
    assert router.route(b"/", b"", b"other.org") == (1, b"/")
    assert router.route(b"/", b"", None) == (1, b"/")
