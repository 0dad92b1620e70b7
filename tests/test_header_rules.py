"""
A location's header rules: what its servers are sent and what its clients
get, set, added and removed, with variables filled in; and the headers
Gourmet owns, which no rule may touch.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

import pytest
import pytest_twisted

from gourmet.config.load import ConfigError, parse_config
from gourmet.http.rules import (
    HeaderRules,
    RuleError,
    Variables,
    compile_template,
    host_variable,
)
from tests.configs import config

VARIABLES = Variables(
    remote_addr=b"203.0.113.7", scheme=b"https", host=b"shop.test", request_id=b"42"
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("prod", b"prod"),
        ("$remote_addr", b"203.0.113.7"),
        ("for=$remote_addr;proto=${scheme}", b"for=203.0.113.7;proto=https"),
        ("${host}:8443", b"shop.test:8443"),
        ("id $request_id costs $$5", b"id 42 costs $5"),
        ("$$host", b"$host"),
        ("caf\u00e9", "caf\u00e9".encode()),
    ],
)
def test_values_are_filled_in(text: str, value: bytes) -> None:
    assert compile_template(text).render(VARIABLES) == value


def test_a_value_without_variables_is_compiled_to_itself() -> None:
    template = compile_template("no-store")
    assert template.constant == b"no-store"
    assert template.render(None) == b"no-store"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("$hostname", "unknown variable $hostname; known: $remote_addr"),
        ("${nope}", "unknown variable $nope"),
        ("50$", "write '$$' for a dollar sign"),
        ("a\r\nX-Injected: 1", "control characters"),
        ("nul\x00", "control characters"),
        (" padded", "begin or end with spaces"),
    ],
)
def test_bad_values_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_template(text)
    assert fragment in str(caught.value)


def test_set_replaces_add_appends_remove_deletes_whatever_the_case() -> None:
    rules = HeaderRules(
        set=((b"X-Env", compile_template("prod")),),
        add=((b"Link", compile_template("</b>")),),
        remove=(b"X-Debug",),
    )
    headers = [
        (b"x-env", b"dev"),
        (b"Link", b"</a>"),
        (b"X-DEBUG", b"1"),
        (b"Accept", b"*/*"),
        (b"X-Env", b"test"),
    ]
    assert rules.apply(headers, None) == [
        (b"Link", b"</a>"),
        (b"Accept", b"*/*"),
        (b"X-Env", b"prod"),
        (b"Link", b"</b>"),
    ]


@pytest.mark.parametrize(
    ("host", "value"),
    [
        (b"Shop.Test:8080", b"shop.test"),
        (b"shop.test", b"shop.test"),
        (b"[2001:DB8::1]:443", b"[2001:db8::1]"),
        (None, b"127.0.0.1"),
    ],
)
def test_host_is_the_clients_without_its_port(
    host: Optional[bytes], value: bytes
) -> None:
    assert host_variable(host, b"127.0.0.1") == value


# -- the configuration ----------------------------------------------------

#: Issue 15's example, as written there.
ISSUE_EXAMPLE = (
    'request_headers = { set = { "X-Env" = "prod" }, add = { },'
    ' remove = ["X-Debug"] }\n'
    'response_headers = { set = { "Cache-Control" = "no-store" },'
    ' remove = ["Server", "X-Powered-By"] }\n'
)


def location_config(location_extra: str, server_extra: str = "") -> str:
    return config(["127.0.0.1:9"], server_extra=server_extra) + location_extra


def test_the_issues_example_loads() -> None:
    (location,) = parse_config(
        location_config(ISSUE_EXAMPLE), "test.toml"
    ).frontend.locations
    assert location.request_headers is not None
    assert location.response_headers is not None
    assert location.request_headers.remove == (b"X-Debug",)
    assert [name for name, _ in location.response_headers.set] == [b"Cache-Control"]
    assert location.response_headers.remove == (b"Server", b"X-Powered-By")


def test_a_location_without_rules_has_none() -> None:
    text = location_config("request_headers = { set = {}, remove = [] }\n")
    (location,) = parse_config(text, "test.toml").frontend.locations
    assert location.request_headers is None and location.response_headers is None


REQUEST = "server.locations[0].request_headers"
RESPONSE = "server.locations[0].response_headers"

BAD = [
    (
        'request_headers = { set = { "Content-Length" = "0" } }',
        f"{REQUEST}.set.Content-Length",
        "Gourmet frames each message",
    ),
    (
        'request_headers = { remove = ["Accept", "transfer-encoding"] }',
        f"{REQUEST}.remove[1]",
        "framing and hop-by-hop headers",
    ),
    (
        'request_headers = { set = { "Host" = "a" } }',
        f"{REQUEST}.set.Host",
        "preserve_host",
    ),
    (
        'request_headers = { add = { "X-Forwarded-For" = "1.2.3.4" } }',
        f"{REQUEST}.add.X-Forwarded-For",
        "trusted_proxies",
    ),
    (
        'request_headers = { remove = ["X-Real-IP"] }',
        f"{REQUEST}.remove[0]",
        "forwarding headers",
    ),
    (
        'request_headers = { set = { "Via" = "me" } }',
        f"{REQUEST}.set.Via",
        "forwarding headers",
    ),
    (
        'request_headers = { set = { "X-Request-ID" = "mine" } }',
        f"{REQUEST}.set.X-Request-ID",
        "the request ID is Gourmet's own",
    ),
    (
        'response_headers = { remove = ["Connection"] }',
        f"{RESPONSE}.remove[0]",
        "Gourmet frames each message",
    ),
    (
        'response_headers = { set = { "x-request-id" = "mine" } }',
        f"{RESPONSE}.set.x-request-id",
        "request ID",
    ),
    (
        'response_headers = { add = { "Upgrade" = "h2c" } }',
        f"{RESPONSE}.add.Upgrade",
        "hop-by-hop",
    ),
    (
        'request_headers = { set = { "X-Who" = "$remote_adr" } }',
        f"{REQUEST}.set.X-Who",
        "unknown variable $remote_adr",
    ),
    (
        'response_headers = { add = { "Link" = ["</a>", "</b>\\r\\nX: 1"] } }',
        f"{RESPONSE}.add.Link[1]",
        "control characters",
    ),
    (
        'request_headers = { set = { "X Env" = "1" } }',
        f'{REQUEST}.set."X Env"',
        "not a header name",
    ),
    (
        'request_headers = { set = { "X-Env" = "a" }, remove = ["x-env"] }',
        f"{REQUEST}.remove[0]",
        "x-env is named in set already",
    ),
    (
        'request_headers = { sett = { "X-Env" = "a" } }',
        f"{REQUEST}.sett",
        "unknown key; did you mean 'set'?",
    ),
    (
        'request_headers = { set = { "X-Env" = 1 } }',
        f"{REQUEST}.set.X-Env",
        "expected a non-empty string, got 1",
    ),
    (
        'request_headers = { set = { "Accept-Encoding" = "" } }',
        f"{REQUEST}.set.Accept-Encoding",
        "to delete a header, name it in remove",
    ),
]


@pytest.mark.parametrize(("extra", "key", "fragment"), BAD, ids=[k for _, k, _ in BAD])
def test_a_bad_rule_is_an_error_naming_its_key(
    extra: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(location_config(extra + "\n"), "test.toml")
    error = caught.value
    assert error.key == key
    assert fragment in error.message
    assert str(error).startswith(f"test.toml: {key}: ")


def test_request_id_variable_needs_request_ids() -> None:
    text = location_config(
        'request_headers = { set = { "X-Trace" = "t-$request_id" } }\n',
        server_extra="request_id = false",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    assert caught.value.key == "server.request_id"
    assert "server.locations[0].request_headers uses $request_id" in str(caught.value)


# -- through the proxy ----------------------------------------------------


def seen_values(server: Any, name: bytes) -> Optional[List[bytes]]:
    values: Optional[List[bytes]] = server.seen[-1].headers.get(name)
    return values


@pytest_twisted.ensureDeferred
async def test_request_rules_set_add_and_remove_what_the_server_is_sent(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("a")
    rules = (
        'request_headers = { set = { "X-Env" = "prod", "X-Client" ='
        ' "$remote_addr $scheme $host $$1" },'
        ' add = { "X-Tag" = ["gourmet", "id=${request_id}"] },'
        ' remove = ["X-Debug", "Cookie"] }\n'
    )
    running = await gourmet(config([server]) + rules)
    response = await running.get(
        "/x",
        headers={
            "Host": "Shop.Test:8080",
            "X-Env": "dev",
            "X-Tag": "client",
            "X-Debug": "1",
            "Cookie": "session=secret",
            "Accept": "text/plain",
        },
    )
    assert response.code == 200
    await response.content()
    (request_id,) = response.headers.getRawHeaders("x-request-id")
    assert seen_values(server, b"x-env") == [b"prod"]
    assert seen_values(server, b"x-client") == [b"127.0.0.1 http shop.test $1"]
    assert seen_values(server, b"x-tag") == [
        b"client",
        b"gourmet",
        b"id=" + request_id.encode(),
    ]
    assert seen_values(server, b"x-debug") is None
    assert seen_values(server, b"cookie") is None
    # What no rule names passes as before.
    assert seen_values(server, b"accept") == [b"text/plain"]
    assert seen_values(server, b"x-forwarded-for") == [b"127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_remote_addr_is_the_client_a_trusted_proxy_names(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("a")
    text = config([server], server_extra='trusted_proxies = ["127.0.0.1"]') + (
        'request_headers = { set = { "X-Client-IP" = "$remote_addr" } }\n'
    )
    running = await gourmet(text)
    response = await running.get("/", headers={"X-Forwarded-For": "203.0.113.7"})
    await response.content()
    assert seen_values(server, b"x-client-ip") == [b"203.0.113.7"]


@pytest_twisted.ensureDeferred
async def test_response_rules_set_add_and_remove_what_the_client_gets(
    gourmet: Any, make_upstreams: Any
) -> None:
    (server,) = make_upstreams("a")
    rules = (
        'response_headers = { set = { "Cache-Control" = "no-store",'
        ' "X-Served-To" = "$remote_addr over $scheme" },'
        ' add = { "Set-Cookie" = "c=3; Secure" }, remove = ["Server", "X-Custom"] }\n'
    )
    running = await gourmet(config([server]) + rules)
    # The upstream answers /cookies with two cookies, X-Custom and
    # Twisted's Server.
    response = await running.get("/cookies")
    assert response.code == 201
    assert await response.content() == b"cookies"
    headers = response.headers
    assert headers.getRawHeaders("set-cookie") == ["a=1", "b=2", "c=3; Secure"]
    assert headers.getRawHeaders("cache-control") == ["no-store"]
    assert headers.getRawHeaders("x-served-to") == ["127.0.0.1 over http"]
    assert not headers.hasHeader("server")
    assert not headers.hasHeader("x-custom")


@pytest_twisted.ensureDeferred
async def test_rules_are_per_location_and_spare_gourmets_own_errors(
    gourmet: Any, make_upstreams: Any
) -> None:
    a, b = make_upstreams("a", "b")
    text = (
        "[upstreams.a]\n"
        f'[[upstreams.a.servers]]\npath = "{a.address}"\n'
        "[upstreams.b]\n"
        f'[[upstreams.b.servers]]\npath = "{b.address}"\n'
        "[server]\n"
        'listen = ["tcp:0:interface=127.0.0.1"]\n'
        "[[server.locations]]\n"
        'location = "^/api/"\nupstream = "a"\n'
        'request_headers = { set = { "X-Env" = "prod" } }\n'
        'response_headers = { set = { "Cache-Control" = "public, max-age=60" } }\n'
        "[[server.locations]]\n"
        'location = "^/"\nupstream = "b"\n'
    )
    running = await gourmet(text)
    response = await running.get("/api/x", headers={"X-Env": "dev"})
    await response.content()
    assert response.headers.getRawHeaders("cache-control") == ["public, max-age=60"]
    assert seen_values(a, b"x-env") == [b"prod"]
    response = await running.get("/other", headers={"X-Env": "dev"})
    await response.content()
    assert not response.headers.hasHeader("cache-control")
    assert seen_values(b, b"x-env") == [b"dev"]
    # Gourmet's own 502 stays uncacheable: response rules are for what the
    # servers answer.
    await a.stop()
    response = await running.get("/api/x", headers={"Accept": "application/json"})
    assert response.code == 502
    assert json.loads(await response.content())["status"] == 502
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]


@pytest_twisted.ensureDeferred
async def test_host_without_a_host_header_is_the_address_gourmet_was_reached_on(
    gourmet: Any, make_upstreams: Any, raw_socket: Any
) -> None:
    (server,) = make_upstreams("a")
    text = config([server]) + 'request_headers = { set = { "X-Host" = "$host" } }\n'
    running = await gourmet(text)
    client = raw_socket(running.port)
    await client.send(b"GET / HTTP/1.0\r\n\r\n")
    assert (await client.read_response()).startswith(b"HTTP/1.0 200 ")
    assert seen_values(server, b"x-host") == [b"127.0.0.1"]
