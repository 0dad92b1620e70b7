"""
Sticky sessions (``sticky_cookie``) end to end through real loopback
upstreams, plain and over TLS; and the tokens themselves.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, List

import pytest_twisted
import treq
from twisted.web.http_headers import Headers

from gourmet.http.cookies import cookie_value, set_cookie, without_cookie
from gourmet.upstream.state import AdminState
from gourmet.upstream.sticky import StickyTokens
from tests.configs import ADMIN_LISTEN, config
from tests.test_proxy import json_body
from tests.test_tls import certificate_files
from tests.test_tls_listeners import connect, get
from tests.test_upstreams import make

STICKY = 'sticky_cookie = "gourmet_srv"'
ADMIN_TOKEN = "a-token-of-twenty-chars"
TOKEN = re.compile(r"gourmet_srv=([0-9a-f]{16}); Path=/; HttpOnly; SameSite=Lax\Z")


def set_cookies(response: Any) -> List[str]:
    values: List[str] = response.headers.getRawHeaders("set-cookie", [])
    return values


@pytest_twisted.ensureDeferred
async def test_the_cookie_keeps_100_requests_on_one_server_until_it_is_drained(
    gourmet: Any, make_upstreams: Any
) -> None:
    servers = make_upstreams("a", "b", "c")
    console = f'[admin]\nlisten = "{ADMIN_LISTEN}"\ntoken = "{ADMIN_TOKEN}"\n'
    running = await gourmet(config(servers, upstream_extra=STICKY) + console)
    first = await running.get("/")
    (cookie,) = set_cookies(first)
    match = TOKEN.match(cookie)
    assert match is not None, cookie
    token = match[1]
    # Opaque: neither the address nor the port shows.
    for server in servers:
        host, port = server.address.rsplit(":", 1)
        assert host not in token and port not in token
    owner = (await json_body(first))["server"]

    headers = {"Cookie": f"theme=dark; gourmet_srv={token}; lang=en"}
    answered: Counter[str] = Counter()
    for _ in range(100):
        response = await running.get("/", headers=headers)
        answered[(await json_body(response))["server"]] += 1
        # Set already: not set again.
        assert set_cookies(response) == []
    assert answered == {owner: 100}
    # The application never sees Gourmet's cookie, and sees its own.
    (chosen,) = [server for server in servers if server.name == owner]
    assert chosen.seen[-1].header(b"cookie") == b"theme=dark; lang=en"

    # Drained from the console: the same cookie goes elsewhere, and is
    # reset to that server.
    upstream = running.upstream("backend")
    drained = await treq.patch(
        f"{running.admin_url}/api/upstreams/backend/servers/"
        + upstream.server(chosen.address).id,
        json={"state": "drain"},
        headers=Headers({"Authorization": [f"Bearer {ADMIN_TOKEN}"]}),
        pool=running.pool,
    )
    assert drained.code == 200, await drained.text()
    moved = await running.get("/", headers=headers)
    other = (await json_body(moved))["server"]
    assert other != owner
    (reset,) = set_cookies(moved)
    new = TOKEN.match(reset)
    assert new is not None and new[1] != token
    answered.clear()
    for _ in range(20):
        response = await running.get("/", headers={"Cookie": f"gourmet_srv={new[1]}"})
        answered[(await json_body(response))["server"]] += 1
    assert answered == {other: 20}
    # Back up: the old cookie finds its server again.
    upstream.server(chosen.address).admin_state = AdminState.UP
    response = await running.get("/", headers=headers)
    assert (await json_body(response))["server"] == owner


@pytest_twisted.ensureDeferred
async def test_a_down_server_loses_its_clients_and_a_bad_cookie_is_reset(
    gourmet: Any, make_upstreams: Any
) -> None:
    servers = make_upstreams("a", "b")
    running = await gourmet(config(servers, upstream_extra=STICKY))
    response = await running.get("/", headers={"Cookie": "gourmet_srv=forged"})
    assert response.code == 200
    (cookie,) = set_cookies(response)
    assert TOKEN.match(cookie)
    owner = (await json_body(response))["server"]
    token = TOKEN.match(cookie)[1]  # type: ignore[index]
    (chosen,) = [server for server in servers if server.name == owner]
    running.upstream("backend").server(chosen.address).failed("connect failed")
    moved = await running.get("/", headers={"Cookie": f"gourmet_srv={token}"})
    assert (await json_body(moved))["server"] != owner
    assert len(set_cookies(moved)) == 1


@pytest_twisted.ensureDeferred
async def test_over_tls_the_cookie_is_secure(
    gourmet: Any, make_upstreams: Any, tmp_path: Path
) -> None:
    (server,) = make_upstreams("a")
    key, certificate = certificate_files(tmp_path)
    text = config([server], upstream_extra=STICKY).replace(
        "tcp:0:interface=127.0.0.1",
        f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}",
    )
    running = await gourmet(text)
    client = await connect(running.port, "localhost")
    try:
        status, headers, _ = await get(client, "/")
    finally:
        client.close()
    assert status == 200
    assert re.fullmatch(
        r"gourmet_srv=[0-9a-f]{16}; Path=/; HttpOnly; SameSite=Lax; Secure",
        headers["set-cookie"],
    )


def test_tokens_are_keyed_and_stable_with_a_secret() -> None:
    secret = "a secret of some length"
    one = StickyTokens("backend", secret)
    two = StickyTokens("backend", secret)
    address = "10.0.0.5:8080"
    # Several Gourmets, or one restarted, with the same secret agree.
    assert one.token(address) == two.token(address)
    assert one.token(address) != one.token("10.0.0.6:8080")
    assert one.token(address) != StickyTokens("other", secret).token(address)
    # Without one, each upstream draws its own key: nobody can make tokens.
    assert StickyTokens("backend", None).token(address) != one.token(address)
    random_key = StickyTokens("backend", None)
    before = random_key.token(address)
    random_key.rekey(None)  # a reload without a secret keeps the key
    assert random_key.token(address) == before
    random_key.rekey(secret)
    assert random_key.token(address) == one.token(address)


def test_cookie_syntax() -> None:
    headers = [(b"Cookie", b"a=1; s=x"), (b"cookie", b's="y"; b=2'), (b"Host", b"h")]
    assert cookie_value(headers, b"s") == b"x"
    assert cookie_value(headers, b"b") == b"2"
    assert cookie_value(headers, b"missing") is None
    assert without_cookie(headers, b"s") == [
        (b"Cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"Host", b"h"),
    ]
    assert without_cookie([(b"Cookie", b"s=x")], b"s") == []
    assert (
        set_cookie(b"s", b"t", secure=False) == b"s=t; Path=/; HttpOnly; SameSite=Lax"
    )
    assert set_cookie(b"s", b"t", secure=True).endswith(b"; Secure")


def test_a_reload_keeps_the_values_and_a_new_secret_changes_them() -> None:
    upstream, _ = make(3, STICKY)
    server = upstream.servers[1]
    token = upstream.sticky_tokens.token(server.name)
    upstream.reconfigure(upstream.config)
    assert upstream.pick(sticky=token) is server
    secret = 'sticky_secret = "0123456789abcdef0123"'
    upstream.reconfigure(make(3, f"{STICKY}\n{secret}")[0].config)
    assert upstream.sticky_tokens.token(server.name) != token
