"""
Gourmet's own errors come as JSON or HTML as the client prefers, and say
who made them.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any, Optional

import pytest
import pytest_twisted
import treq

from gourmet.frontend.errors import ErrorPages, prefers_json
from tests.configs import config


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


@pytest_twisted.ensureDeferred
async def test_gourmet_names_itself_without_a_version(
    gourmet: Any, raw_socket: Any
) -> None:
    # Nothing listens on port 9: Gourmet's own 502, then its 404, and the
    # console: all say Server: Gourmet.
    running = await gourmet(config(["127.0.0.1:9"]).replace('"^/"', '"^/api/"'))
    answers = [
        await running.get("/api/x"),
        await running.get("/elsewhere"),
        await treq.get(running.admin_url + "/api/upstreams"),
    ]
    assert [answer.code for answer in answers] == [502, 404, 200]
    for answer in answers:
        await answer.content()
        assert answer.headers.getRawHeaders("server") == ["Gourmet"]
    # And what twisted.web answers itself.
    client = raw_socket(running.port)
    await client.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    head = (await client.read_response()).partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nServer: Gourmet\r\n" in head


@pytest_twisted.ensureDeferred
async def test_server_header_off_names_nothing(gourmet: Any, raw_socket: Any) -> None:
    text = config(["127.0.0.1:9"], server_extra="server_header = false")
    running = await gourmet(text.replace('"^/"', '"^/api/"'))
    answers = [
        await running.get("/elsewhere"),
        await treq.get(running.admin_url + "/api/upstreams"),
    ]
    assert [answer.code for answer in answers] == [404, 200]
    for answer in answers:
        await answer.content()
        assert answer.headers.getRawHeaders("server") is None
    client = raw_socket(running.port)
    await client.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused
    reply = await client.read_until_closed()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"Server:" not in reply


@pytest_twisted.ensureDeferred
async def test_gourmet_dates_its_own_answers(gourmet: Any) -> None:
    running = await gourmet(config(["127.0.0.1:9"]).replace('"^/"', '"^/api/"'))
    before = time.time()
    answer = await running.get("/elsewhere")
    await answer.content()
    assert answer.code == 404
    (date,) = answer.headers.getRawHeaders("date")
    stamp = parsedate_to_datetime(date).timestamp()
    assert int(before) <= stamp <= time.time()
