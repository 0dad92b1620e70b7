"""
Request IDs: every request gets one (or keeps a trusted proxy's), and the
same ID is what its server was sent, what its client got, what the access
log says and what Gourmet's own error pages show, so that one failure can
be followed through every log.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, List, Optional

import pytest
import pytest_twisted

from gourmet.frontend.accesslog import _request_id_field
from gourmet.http.request_id import RequestIds, kept_request_id
from tests.configs import ADMIN_LISTEN, access_log, config
from tests.h2client import H2Client
from tests.test_http2 import in_thread, start_h2

NEW_ID = re.compile(r"[0-9a-f]{32}")


def test_new_ids_are_128_random_bits_in_hex() -> None:
    source = RequestIds()
    # Past the bytes read ahead: 256 IDs' worth.
    ids = {source.new() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(NEW_ID.fullmatch(each.decode()) for each in ids)


@pytest.mark.parametrize(
    ("values", "kept"),
    [
        ([b"edge-7f3a"], b"edge-7f3a"),
        ([b"x" * 200], b"x" * 200),
        ([b"x" * 201], None),
        ([b"has space"], None),
        ([b"tab\there"], None),
        ([b"caf\xc3\xa9"], None),
        ([b""], None),
        ([b"one", b"two"], None),
        (None, None),
    ],
)
def test_only_a_sane_incoming_id_is_kept(
    values: Optional[List[bytes]], kept: Optional[bytes]
) -> None:
    assert kept_request_id(values) == kept


def sent_ids(server: Any) -> List[bytes]:
    ids: List[bytes] = server.seen[-1].headers.get(b"x-request-id", [])
    return ids


@pytest_twisted.ensureDeferred
async def test_an_untrusted_clients_id_is_replaced_everywhere(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (server,) = make_upstreams("a")
    log_file = tmp_path / "access.log"
    text = config([server]) + access_log(log_file, "json")
    running = await gourmet(text)
    response = await running.get("/", headers={"X-Request-ID": "forged-by-client"})
    assert response.code == 200
    await response.content()
    (request_id,) = response.headers.getRawHeaders("x-request-id")
    assert NEW_ID.fullmatch(request_id)
    assert sent_ids(server) == [request_id.encode()]
    await running.service.stopService()  # flushes the log
    (line,) = log_file.read_text().splitlines()
    assert json.loads(line)["request_id"] == request_id


@pytest_twisted.ensureDeferred
async def test_a_trusted_proxys_sane_id_is_kept_and_others_replaced(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("a")
    running = await gourmet(
        config([server], server_extra='trusted_proxies = ["127.0.0.0/8"]')
    )
    response = await running.get("/", headers={"X-Request-ID": "edge-7f3a"})
    await response.content()
    assert response.headers.getRawHeaders("x-request-id") == ["edge-7f3a"]
    assert sent_ids(server) == [b"edge-7f3a"]
    # Too long to log, or two of them: even a trusted proxy's is replaced.
    for sent in (["x" * 201], ["one", "two"]):
        response = await running.get("/", headers={"X-Request-ID": sent})
        await response.content()
        (request_id,) = response.headers.getRawHeaders("x-request-id")
        assert NEW_ID.fullmatch(request_id)
        assert sent_ids(server) == [request_id.encode()]


@pytest_twisted.ensureDeferred
async def test_gourmets_own_pages_show_the_id(gourmet: Any) -> None:
    text = config(["127.0.0.1:9"]).replace('"^/"', '"^/api/"')
    running = await gourmet(text)
    response = await running.get("/elsewhere", headers={"Accept": "text/html"})
    assert response.code == 404
    (request_id,) = response.headers.getRawHeaders("x-request-id")
    page = (await response.content()).decode()
    assert f"Request ID <code>{request_id}</code>" in page
    response = await running.get("/api/", headers={"Accept": "application/json"})
    assert response.code == 502
    (request_id,) = response.headers.getRawHeaders("x-request-id")
    assert json.loads(await response.content())["request_id"] == request_id


@pytest_twisted.ensureDeferred
async def test_request_ids_can_be_turned_off(gourmet: Any, make_upstreams: Any) -> None:
    (server,) = make_upstreams("a")
    running = await gourmet(config([server], server_extra="request_id = false"))
    response = await running.get("/", headers={"X-Request-ID": "the-clients"})
    await response.content()
    assert not response.headers.hasHeader("x-request-id")
    # Gourmet leaves the header alone, as any other.
    assert sent_ids(server) == [b"the-clients"]
    await server.stop()
    response = await running.get("/", headers={"Accept": "application/json"})
    assert response.code == 502
    assert "request_id" not in json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_http2_requests_get_ids_too(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (server,), _, port = await start_h2(gourmet, make_upstreams, tmp_path)

    def two() -> Any:
        client = H2Client(port)
        answers = [client.get("/"), client.get("/")]
        client.close()
        return answers

    answers = await in_thread(two)
    ids = [answer.header(b"x-request-id") or b"" for answer in answers]
    assert all(NEW_ID.fullmatch(each.decode()) for each in ids)
    assert ids[0] != ids[1]
    assert [seen.headers[b"x-request-id"] for seen in server.seen] == [
        [ids[0]],
        [ids[1]],
    ]


@pytest_twisted.ensureDeferred
async def test_one_request_followed_through_twistd_its_server_and_its_502(
    twistd_on: Any, make_upstreams: Any
) -> None:
    """
    Under twistd, as users run Gourmet: a request's ID is the one its
    server got, the one its client got and the one at the end of its
    access log line; a failed request's is in the 502 document too; a
    trusted proxy's ID goes through unchanged.
    """
    (server,) = make_upstreams("a")
    text = config([server], server_extra='trusted_proxies = ["127.0.0.1"]')
    twistd = await twistd_on(
        text + f'[admin]\nlisten = "{ADMIN_LISTEN}"\n', admin=False
    )

    response = await twistd.get("/served")
    assert response.code == 200
    await response.content()
    (served,) = response.headers.getRawHeaders("x-request-id")
    assert NEW_ID.fullmatch(served)
    assert sent_ids(server) == [served.encode()]

    response = await twistd.get("/edge", headers={"X-Request-ID": "lb-0042"})
    await response.content()
    assert response.headers.getRawHeaders("x-request-id") == ["lb-0042"]
    assert sent_ids(server) == [b"lb-0042"]

    await server.stop()
    response = await twistd.get("/failed", headers={"Accept": "application/json"})
    assert response.code == 502
    (failed,) = response.headers.getRawHeaders("x-request-id")
    document = json.loads(await response.content())
    assert document["request_id"] == failed != served

    assert twistd.stop() == 0
    lines = twistd.stdout.read_text().splitlines()
    assert len(lines) == 3
    # By request: with workers, each writes its own lines when it finishes.
    for target, status, request_id in [
        ("/served", 200, served),
        ("/edge", 200, "lb-0042"),
        ("/failed", 502, failed),
    ]:
        (line,) = [each for each in lines if f'"GET {target} HTTP/1.1"' in each]
        assert f'"GET {target} HTTP/1.1" {status} ' in line
        assert line.endswith(f' request_id="{request_id}"')


def test_a_kept_id_is_quoted_in_the_combined_line() -> None:
    assert _request_id_field(b'lb-"7"\\') == ' request_id="lb-\\"7\\"\\\\"'
    assert _request_id_field(None) == ""
