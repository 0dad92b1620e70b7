"""
Redirects that name the upstream server are rewritten to name the proxy
(nginx's ``proxy_redirect default``); relative ones and other sites' are
left alone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from gourmet.http.redirects import RedirectRewrite, authority
from tests.configs import config
from tests.test_rfc import raw_client

SERVER = {
    authority(b"http", b"10.0.0.5:8080"),
    authority(b"http", b"api.internal"),
}
REWRITE = RedirectRewrite(
    {each for each in SERVER if each is not None}, b"https://shop.example"
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (b"http://10.0.0.5:8080/login?next=/", b"https://shop.example/login?next=/"),
        (b"HTTP://10.0.0.5:8080", b"https://shop.example"),
        (b"http://API.internal/a#top", b"https://shop.example/a#top"),
        (b"http://api.internal:80/a", b"https://shop.example/a"),
        # Not the server: another port, scheme or host, userinfo, relative.
        (b"http://10.0.0.5:8081/login", b"http://10.0.0.5:8081/login"),
        (b"https://10.0.0.5:8080/login", b"https://10.0.0.5:8080/login"),
        (b"http://example.com/x", b"http://example.com/x"),
        (b"http://u@api.internal/x", b"http://u@api.internal/x"),
        (b"/login", b"/login"),
        (b"//api.internal/x", b"//api.internal/x"),
        (b"login", b"login"),
    ],
)
def test_url(url: bytes, expected: bytes) -> None:
    assert REWRITE.url(url) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"5; url=http://api.internal/next", b"5; url=https://shop.example/next"),
        (b"0;URL='http://api.internal/n'", b"0;URL='https://shop.example/n'"),
        (b"5", b"5"),
        (b"5; url=/next", b"5; url=/next"),
    ],
)
def test_refresh(value: bytes, expected: bytes) -> None:
    assert REWRITE.header(b"refresh", value) == expected


def test_ipv6_server() -> None:
    rewrite = RedirectRewrite(
        {authority(b"http", b"[::1]:9001")},  # type: ignore[arg-type]
        b"http://proxy",
    )
    assert rewrite.url(b"http://[::1]:9001/x") == b"http://proxy/x"


@pytest_twisted.ensureDeferred
async def test_an_application_building_absolute_urls_works_through_gourmet(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("app")
    running = await gourmet(config([server]))
    response = await running.get("/absolute-redirect/2")
    # The client followed both redirects through the proxy to the end.
    assert response.code == 200
    assert json.loads(await response.content())["uri"] == "/get"
    assert [seen.uri for seen in server.seen] == [
        b"/absolute-redirect/2",
        b"/absolute-redirect/1",
        b"/get",
    ]
    first = await running.get("/absolute-redirect/2", allow_redirects=False)
    location = first.headers.getRawHeaders("location")
    assert location == [f"{running.url}/absolute-redirect/1"]


@pytest_twisted.ensureDeferred
async def test_other_sites_and_relative_locations_are_untouched(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("app")
    running = await gourmet(config([server]))
    for url in ("http://example.com/x", "/relative", f"http://{server.address}0/x"):
        response = await running.get(
            "/redirect-to/", params={"url": url}, allow_redirects=False
        )
        assert response.code == 302
        assert response.headers.getRawHeaders("location") == [url]


@pytest_twisted.ensureDeferred
async def test_refresh_and_content_location_are_rewritten(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("app")
    running = await gourmet(config([server]))
    response = await running.get("/refresh")
    assert response.headers.getRawHeaders("refresh") == [f"3; url={running.url}/get"]
    assert response.headers.getRawHeaders("content-location") == [
        f"{running.url}/refresh?a=1"
    ]


@pytest_twisted.ensureDeferred
async def test_redirect_rewrite_off_passes_the_servers_address(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("app")
    running = await gourmet(config([server], upstream_extra="redirect_rewrite = false"))
    response = await running.get("/absolute-redirect/1", allow_redirects=False)
    assert response.headers.getRawHeaders("location") == [
        f"http://{server.address}/get"
    ]


@pytest_twisted.ensureDeferred
async def test_with_preserve_host_the_clients_scheme_is_restored(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("app")
    running = await gourmet(config([server], upstream_extra="preserve_host = true"))
    response = await running.get(
        "/absolute-redirect/1", headers={"Host": "shop.example"}, allow_redirects=False
    )
    # The application was sent the client's Host and named it: a plain
    # http client of plain http Gourmet keeps the URL as it was.
    assert response.headers.getRawHeaders("location") == ["http://shop.example/get"]


@pytest_twisted.ensureDeferred
async def test_without_a_host_the_proxys_own_address_is_named(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("app")
    running = await gourmet(config([server]))
    client = await raw_client(
        running.port, b"GET /absolute-redirect/1 HTTP/1.0\r\n\r\n"
    )
    response = await client.response()
    assert response.header(b"location") == f"{running.url}/get".encode()
    client.close()
