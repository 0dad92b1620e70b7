"""
Gourmet's own errors come as JSON or HTML as the client prefers.
"""

from __future__ import annotations

import json
from typing import Optional

import pytest

from gourmet.errors import ErrorPages, prefers_json


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", True),
        ("application/*", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("application/json;q=0.9, text/html", False),
        ("application/json, text/html;q=0.5", True),
        ("text/html;q=0, */*", True),
        ("application/json;q=0", False),
        ("application/json;q=abc", False),
    ],
)
def test_accept_negotiation(accept: Optional[str], expected: bool) -> None:
    assert prefers_json(accept) is expected


def test_json_body() -> None:
    content_type, body = ErrorPages().body(502, "down", "application/json")
    assert content_type == b"application/json"
    assert json.loads(body) == {
        "status": 502,
        "status_text": "Bad Gateway",
        "description": "down",
    }


def test_html_page_escapes_and_names_the_status() -> None:
    content_type, body = ErrorPages().body(503, "<b>all down</b>", "*/*")
    assert content_type.startswith(b"text/html")
    assert b"503 Service Unavailable" in body
    assert b"&lt;b&gt;all down&lt;/b&gt;" in body


def test_template_override() -> None:
    pages = ErrorPages("<p>$status: $description { css }</p>")
    assert pages.body(404, "nope", None)[1] == b"<p>404: nope { css }</p>"
