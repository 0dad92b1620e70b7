"""
The admin console's Klein app in memory, through treq's ``StubTreq``: every
route, every invalid input, every authentication case.  The upstreams are
the real runtime objects; no request leaves the process.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Dict, Optional

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from gourmet.admin.app import AdminApp, AdminResource
from gourmet.admin.auth import AdminSecurity
from gourmet.admin.passwords import hash_password
from gourmet.config.load import parse_config
from gourmet.upstream.state import Upstream
from gourmet.upstream.stats import FAILURE_SECONDS

TOKEN = "a-token-of-twenty-chars"
PASSWORD = "s3cret-pass"
PASSWORD_HASH = hash_password(PASSWORD)

CONFIG = """
[upstreams.backend]
[[upstreams.backend.servers]]
path = "127.0.0.1:9001"
weight = 2
[[upstreams.backend.servers]]
path = "https://api.internal:8443"

[server]
[[server.locations]]
location = "^/api/"
upstream = "backend"

[admin]
listen = "{listen}"
{credentials}
"""
CREDENTIALS = f'token = "{TOKEN}"\n[admin.users]\nalice = "{PASSWORD_HASH}"\n'


class Console:
    """
    An admin app over real upstream state, and a client for it.
    """

    def __init__(
        self,
        listen: str = "tcp:8081:interface=127.0.0.1",
        credentials: str = CREDENTIALS,
    ) -> None:
        config = parse_config(
            CONFIG.format(listen=listen, credentials=credentials), "test.toml"
        )
        self.clock = Clock()
        self.clock.advance(1000)
        self.upstreams = {u.name: Upstream(u, self.clock) for u in config.upstreams}
        self.security = AdminSecurity(config.admin, clock=self.clock)
        app = AdminApp(config, self.upstreams, self.security)
        self.client: Any = StubTreq(AdminResource(app))

    def server(self, index: int) -> Any:
        return self.upstreams["backend"].servers[index]

    async def call(
        self,
        method: str,
        path: str,
        *,
        auth: Optional[str] = None,
        body: Any = None,
        headers: Optional[Dict[str, str]] = None,
        host: str = "127.0.0.1:8081",
        follow: bool = True,
    ) -> Any:
        sent = {"Host": host, **(headers or {})}
        if auth == "token":
            sent["Authorization"] = f"Bearer {TOKEN}"
        elif auth == "alice":
            sent["Authorization"] = basic("alice", PASSWORD)
        elif auth is not None:
            sent["Authorization"] = auth
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        response = await self.client.request(
            method,
            "http://127.0.0.1:8081" + path,
            headers=sent,
            data=data,
            allow_redirects=follow,
        )
        response.body = await response.content()
        return response

    async def csrf(self) -> str:
        response = await self.call("GET", "/api/session", auth="alice")
        token: str = json.loads(response.body)["csrf_token"]
        return token


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def document(response: Any) -> Any:
    return json.loads(response.body)


SERVER_A = "/api/upstreams/backend/servers/127.0.0.1-9001"
SERVER_B = "/api/upstreams/backend/servers/https-api.internal-8443"


@pytest_twisted.ensureDeferred
async def test_list_upstreams_shows_servers_and_locations() -> None:
    console = Console()
    console.server(0).attempt_started()
    console.server(0).responded(200, 0.004)
    console.server(0).succeeded()
    response = await console.call("GET", "/api/upstreams")
    assert response.code == 200
    (backend,) = document(response)["upstreams"]
    assert backend["name"] == "backend"
    assert backend["balancer"] == "round_robin"
    assert backend["locations"] == ["^/api/"]
    first, second = backend["servers"]
    assert first["id"] == "127.0.0.1-9001"
    assert second["id"] == "https-api.internal-8443"
    assert second["address"] == "https://api.internal:8443"
    assert first["state"] == "up"
    assert (first["weight"], first["configured_weight"]) == (2, 2)
    assert (first["active"], first["requests"], first["failures"]) == (1, 1, 0)
    assert first["latency_ms"]["mean"] == 4.0
    # What p2c_ewma balances by; none yet for a server never measured.
    assert first["latency_ms"]["ewma"] == 4.0
    assert second["latency_ms"]["ewma"] is None
    assert first["statuses"] == {"2xx": 1}
    assert len(backend["history"]["requests"]) == backend["history"]["seconds"]


@pytest_twisted.ensureDeferred
async def test_one_upstream_and_unknown_names() -> None:
    console = Console()
    response = await console.call("GET", "/api/upstreams/backend")
    assert document(response)["name"] == "backend"
    missing = await console.call("GET", "/api/upstreams/nope")
    assert missing.code == 404
    assert document(missing)["description"] == "No upstream named 'nope'."
    no_server = await console.call(
        "PATCH", "/api/upstreams/backend/servers/x", auth="token", body={"weight": 1}
    )
    assert no_server.code == 404
    assert "has no server 'x'" in document(no_server)["description"]
    no_page = await console.call("GET", "/nothing")
    assert no_page.code == 404
    assert document(no_page)["status"] == 404


@pytest_twisted.ensureDeferred
async def test_patch_weight_with_token_applies_to_the_balancer() -> None:
    console = Console()
    response = await console.call("PATCH", SERVER_A, auth="token", body={"weight": 7})
    assert response.code == 200
    changed = document(response)
    assert (changed["weight"], changed["configured_weight"]) == (7, 2)
    assert changed["weight_overridden"] is True
    assert console.server(0).weight == 7
    reset = await console.call("PATCH", SERVER_A, auth="token", body={"weight": None})
    assert document(reset)["weight"] == 2
    assert document(reset)["weight_overridden"] is False


@pytest.mark.parametrize(
    ("state", "shown", "available"),
    [("drain", "drain", False), ("disabled", "disabled", False), ("up", "up", True)],
)
@pytest_twisted.ensureDeferred
async def test_patch_state(state: str, shown: str, available: bool) -> None:
    console = Console()
    response = await console.call(
        "PATCH", SERVER_A, auth="token", body={"state": state}
    )
    assert response.code == 200
    assert document(response)["state"] == shown
    assert document(response)["weight"] == (2 if available else 0)
    picked = console.server(0) in console.upstreams["backend"].candidates()
    assert picked is available


@pytest_twisted.ensureDeferred
async def test_post_is_the_same_as_patch() -> None:
    console = Console()
    response = await console.call("POST", SERVER_A, auth="token", body={"weight": 5})
    assert response.code == 200
    assert console.server(0).weight == 5


INVALID = [
    ({"weight": -1}, "weight must be a whole number from 0 to 1000"),
    ({"weight": 1001}, "got 1001"),
    ({"weight": "3"}, 'got "3"'),
    ({"weight": 2.5}, "got 2.5"),
    ({"weight": True}, "got true"),
    ({"state": "sleeping"}, 'state must be one of up, drain, disabled, got "sleeping"'),
    ({"weight": 1, "colour": "red"}, "Unknown field 'colour'"),
    ({}, "Expected a JSON object"),
    ([1, 2], "Expected a JSON object"),
    (b"weight=3", "The body is not JSON."),
    # Hostile bodies: each a JSON 400, never a 500 and a traceback.
    (b"[" * 100_000 + b"]" * 100_000, "The body is not JSON."),
    (b'{"weight": "\xff\xfe"}', "The body is not JSON."),
    ({"state": ["up"]}, 'state must be one of up, drain, disabled, got ["up"]'),
    ({"state": {"a": 1}}, "state must be one of up, drain, disabled"),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
@pytest_twisted.ensureDeferred
async def test_invalid_changes_get_400_and_change_nothing(
    body: Any, message: str
) -> None:
    console = Console()
    response = await console.call("PATCH", SERVER_A, auth="token", body=body)
    assert response.code == 400
    assert message in document(response)["description"]
    server = console.server(0)
    assert (server.weight, server.admin_state.value) == (2, "up")


@pytest_twisted.ensureDeferred
async def test_change_needs_json() -> None:
    console = Console()
    response = await console.call(
        "PATCH",
        SERVER_A,
        auth="token",
        body=b"weight=3",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 415
    assert console.server(0).weight == 2


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer wrong-token-wrong-token", basic("alice", "wrong"), "Digest x"],
)
@pytest_twisted.ensureDeferred
async def test_changes_without_valid_credentials_get_401(auth: Optional[str]) -> None:
    console = Console()
    response = await console.call("PATCH", SERVER_A, auth=auth, body={"weight": 3})
    assert response.code == 401
    assert response.headers.getRawHeaders("www-authenticate")[0].startswith("Basic")
    assert console.server(0).weight == 2


@pytest_twisted.ensureDeferred
async def test_without_configured_credentials_the_console_is_read_only() -> None:
    console = Console(credentials="")
    listing = await console.call("GET", "/api/upstreams")
    assert listing.code == 200
    response = await console.call("PATCH", SERVER_A, body={"weight": 3})
    assert response.code == 403
    assert "Changes are turned off" in document(response)["description"]
    session = document(await console.call("GET", "/api/session"))
    assert session["can_change"] is False
    assert session["sign_in"] is False


@pytest_twisted.ensureDeferred
async def test_browser_change_needs_the_csrf_token() -> None:
    console = Console()
    without = await console.call("PATCH", SERVER_A, auth="alice", body={"weight": 3})
    assert without.code == 403
    assert "CSRF" in document(without)["description"]
    wrong = await console.call(
        "PATCH",
        SERVER_A,
        auth="alice",
        body={"weight": 3},
        headers={"X-CSRF-Token": "0" * 64},
    )
    assert wrong.code == 403
    assert console.server(0).weight == 2
    right = await console.call(
        "PATCH",
        SERVER_A,
        auth="alice",
        body={"weight": 3},
        headers={
            "X-CSRF-Token": await console.csrf(),
            "Origin": "http://127.0.0.1:8081",
        },
    )
    assert right.code == 200
    assert console.server(0).weight == 3


@pytest_twisted.ensureDeferred
async def test_cross_site_form_post_gets_403() -> None:
    """
    A hostile page makes the browser post a form to the console: the browser
    adds the user's Basic credentials, but cannot add the CSRF token, and
    says where the post came from.
    """
    console = Console()
    response = await console.call(
        "POST",
        SERVER_A,
        auth="alice",
        body=b"weight=0",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "http://evil.example",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert response.code == 403
    assert console.server(0).weight == 2


@pytest_twisted.ensureDeferred
async def test_stolen_csrf_token_from_another_origin_is_refused() -> None:
    console = Console()
    token = await console.csrf()
    response = await console.call(
        "PATCH",
        SERVER_A,
        auth="alice",
        body={"weight": 0},
        headers={"X-CSRF-Token": token, "Origin": "http://evil.example"},
    )
    assert response.code == 403
    assert console.server(0).weight == 2


@pytest_twisted.ensureDeferred
async def test_session_gives_the_csrf_token_only_to_a_signed_in_user() -> None:
    console = Console()
    anonymous = document(await console.call("GET", "/api/session"))
    assert anonymous == {
        "user": None,
        "csrf_token": None,
        "can_change": False,
        "sign_in": True,
        "max_weight": 1000,
    }
    alice = document(await console.call("GET", "/api/session", auth="alice"))
    assert alice["user"] == "alice"
    assert alice["can_change"] is True
    assert len(alice["csrf_token"]) == 64


@pytest_twisted.ensureDeferred
async def test_login_asks_for_credentials_then_goes_back() -> None:
    console = Console()
    challenge = await console.call("GET", "/login")
    assert challenge.code == 401
    assert "Basic" in challenge.headers.getRawHeaders("www-authenticate")[0]
    signed_in = await console.call("GET", "/login", auth="alice", follow=False)
    assert signed_in.code == 302
    assert signed_in.headers.getRawHeaders("location") == ["/"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8081", "127.0.0.2"])
@pytest_twisted.ensureDeferred
async def test_other_host_names_are_refused(host: str) -> None:
    console = Console()
    response = await console.call("GET", "/api/upstreams", host=host)
    assert response.code == 403
    assert "not one of this console's names" in document(response)["description"]


@pytest.mark.parametrize("host", ["localhost:8081", "[::1]:8081", "127.0.0.1"])
@pytest_twisted.ensureDeferred
async def test_loopback_host_names_are_accepted(host: str) -> None:
    console = Console()
    response = await console.call("GET", "/api/upstreams", host=host)
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_configured_host_names_are_accepted() -> None:
    console = Console(
        listen="tcp:8081",
        credentials=CREDENTIALS.replace(
            "[admin.users]", 'hosts = ["LB.Example.com"]\n[admin.users]'
        ),
    )
    response = await console.call(
        "GET", "/api/upstreams", host="lb.example.com", auth="token"
    )
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_reading_needs_credentials_off_loopback() -> None:
    console = Console(listen="tcp:8081")
    for path in ("/", "/api/upstreams", "/api/session", "/metrics"):
        response = await console.call("GET", path)
        assert response.code == 401, path
    response = await console.call("GET", "/api/upstreams", auth="token")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_every_response_carries_the_security_headers() -> None:
    console = Console()
    for method, path, host in [
        ("GET", "/api/upstreams", "127.0.0.1"),
        ("GET", "/nothing", "127.0.0.1"),
        ("GET", "/api/upstreams", "evil.example"),
        ("PATCH", SERVER_A, "127.0.0.1"),
    ]:
        response = await console.call(method, path, host=host, body={"weight": 1})
        headers = response.headers
        assert headers.getRawHeaders("x-frame-options") == ["DENY"], path
        policy = headers.getRawHeaders("content-security-policy")[0]
        assert "frame-ancestors 'none'" in policy
        assert "script-src 'self'" in policy


@pytest_twisted.ensureDeferred
async def test_no_secret_appears_in_any_response() -> None:
    console = Console()
    texts = []
    for path in ("/api/upstreams", "/api/session", "/metrics", "/login"):
        texts.append((await console.call("GET", path, auth="alice")).body)
    joined = b"\n".join(texts).decode()
    assert TOKEN not in joined
    assert PASSWORD_HASH not in joined
    assert PASSWORD_HASH.split("$")[-1] not in joined


@pytest_twisted.ensureDeferred
async def test_wrong_method_gets_405() -> None:
    console = Console()
    response = await console.call("DELETE", "/api/upstreams", auth="token")
    assert response.code == 405
    assert document(response)["status"] == 405


@pytest_twisted.ensureDeferred
async def test_metrics_are_valid_prometheus_text() -> None:
    console = Console()
    server = console.server(0)
    server.attempt_started()
    server.responded(503, 0.02)
    server.failed("status 503")
    server.attempt_finished()
    await console.call("PATCH", SERVER_A, auth="token", body={"weight": 9})
    response = await console.call("GET", "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    families = {
        family.name: family
        for family in text_string_to_metric_families(response.body.decode())
    }
    assert {
        "gourmet_upstream_requests",
        "gourmet_upstream_failures",
        "gourmet_upstream_active_requests",
        "gourmet_upstream_server_up",
        "gourmet_upstream_server_weight",
        "gourmet_upstream_server_configured_weight",
        "gourmet_upstream_response_seconds",
    } <= set(families)

    samples = [sample for family in families.values() for sample in family.samples]

    def value(name: str, **labels: str) -> float:
        for sample in samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
        raise AssertionError((name, labels))

    a = {"upstream": "backend", "server": "127.0.0.1:9001"}
    b = {"upstream": "backend", "server": "https://api.internal:8443"}
    assert value("gourmet_upstream_requests_total", code="5xx", **a) == 1
    assert value("gourmet_upstream_requests_total", code="2xx", **a) == 0
    assert value("gourmet_upstream_failures_total", **a) == 1
    assert value("gourmet_upstream_server_weight", **a) == 9
    assert value("gourmet_upstream_server_configured_weight", **a) == 2
    # One failure (max_fail = 1) took a out; b is untouched.
    assert value("gourmet_upstream_server_up", **a) == 0
    assert value("gourmet_upstream_server_up", **b) == 1
    # The 503 counted as a failure: a slow answer to p2c_ewma.
    assert value("gourmet_upstream_latency_ewma_seconds", **a) == FAILURE_SECONDS
    assert math.isnan(value("gourmet_upstream_latency_ewma_seconds", **b))
    histogram = {"upstream": "backend"}
    assert (
        value("gourmet_upstream_response_seconds_bucket", le="0.025", **histogram) == 1
    )
    assert (
        value("gourmet_upstream_response_seconds_bucket", le="0.01", **histogram) == 0
    )
    assert value("gourmet_upstream_response_seconds_count", **histogram) == 1
    # One of two down is not a panic.
    assert value("gourmet_upstream_panic", **histogram) == 0


@pytest_twisted.ensureDeferred
async def test_a_panic_shows_in_the_api_and_the_metrics() -> None:
    console = Console()
    for index in (0, 1):
        console.server(index).failed("connect failed", responded=False)
    response = await console.call("GET", "/api/upstreams/backend")
    shown = document(response)
    assert shown["panic"] is True
    assert shown["panic_since"] == console.clock.seconds()
    assert [server["state"] for server in shown["servers"]] == ["down", "down"]
    metrics = (await console.call("GET", "/metrics")).body.decode()
    assert 'gourmet_upstream_panic{upstream="backend"} 1.0' in metrics.splitlines()


@pytest_twisted.ensureDeferred
async def test_a_password_guesser_must_wait_and_is_logged() -> None:
    console = Console()
    guess = basic("alice", "guess")
    with capturedLogs() as events:
        answers = [
            (await console.call("GET", "/api/upstreams", auth=guess)).code
            for _ in range(6)
        ]
    # Five tries are free; then the address waits, 1 s, then 2 s...
    assert answers == [401] * 5 + [429]
    waited = await console.call("GET", "/api/upstreams", auth=guess)
    assert waited.code == 429
    assert waited.headers.getRawHeaders("retry-after") == ["1"]
    assert document(waited)["description"] == (
        "Too many failed sign-ins: try again in 1 s."
    )
    said = [formatEvent(event) for event in events]
    assert "admin: failed sign-in as alice from 127.0.0.1" in said
    # After the wait the password is checked again: the right one works,
    # and the address starts afresh.
    console.clock.advance(1)
    assert (await console.call("GET", "/api/upstreams", auth="alice")).code == 200
    metrics = (await console.call("GET", "/metrics")).body.decode().splitlines()
    assert "gourmet_admin_failed_signins_total 5.0" in metrics
    assert "gourmet_admin_throttled_requests_total 2.0" in metrics


@pytest_twisted.ensureDeferred
async def test_a_non_ascii_csrf_token_is_403_not_a_crash() -> None:
    console = Console()
    response = await console.call(
        "PATCH",
        SERVER_A,
        auth="alice",
        body={"weight": 3},
        headers={"X-CSRF-Token": "jeton-\u00e9t\u00e9".encode().decode("latin-1")},
    )
    assert response.code == 403
    assert "CSRF token" in document(response)["description"]
    assert console.server(0).weight == 2


@pytest.mark.parametrize(
    "last_change", [{"state": "drain"}, {"state": "disabled"}, {"weight": 0}]
)
@pytest_twisted.ensureDeferred
async def test_leaving_an_upstream_with_no_server_needs_force(
    last_change: Dict[str, Any],
) -> None:
    console = Console()
    first = await console.call("PATCH", SERVER_A, auth="token", body=last_change)
    assert first.code == 200  # the other server still takes requests
    refused = await console.call("PATCH", SERVER_B, auth="token", body=last_change)
    assert refused.code == 409
    assert document(refused)["description"].startswith(
        "This would leave backend with no server taking requests: every request"
        " to it would get 503."
    )
    assert console.server(1).weight == 1  # unchanged
    forced = await console.call(
        "PATCH", SERVER_B, auth="token", body={**last_change, "force": True}
    )
    assert forced.code == 200
    assert console.server(1).weight == 0
    assert console.upstreams["backend"].candidates() == []


@pytest_twisted.ensureDeferred
async def test_force_must_be_a_boolean() -> None:
    console = Console()
    response = await console.call(
        "PATCH", SERVER_A, auth="token", body={"state": "drain", "force": "yes"}
    )
    assert response.code == 400
    assert (
        document(response)["description"] == 'force must be true or false, got "yes".'
    )


READ_TOKEN = "a-read-token-for-scrapers"
VIEWER = f'read_token = "{READ_TOKEN}"\n[admin.viewers]\nvera = "{PASSWORD_HASH}"\n'
#: The read-only credentials beside the token and alice, who may change.
ALL_ROLES = (
    f'read_token = "{READ_TOKEN}"\n{CREDENTIALS}'
    f'[admin.viewers]\nvera = "{PASSWORD_HASH}"\n'
)


@pytest.mark.parametrize(
    "auth", [f"Bearer {READ_TOKEN}", basic("vera", PASSWORD)], ids=["token", "viewer"]
)
@pytest_twisted.ensureDeferred
async def test_read_only_credentials_read_everything_and_change_nothing(
    auth: str,
) -> None:
    console = Console(
        listen="tcp:8081:interface=0.0.0.0",
        credentials=f"read_requires_credentials = true\n{ALL_ROLES}",
    )
    for path in ("/", "/api/upstreams", "/api/upstreams/backend", "/metrics"):
        assert (await console.call("GET", path)).code == 401, path
        assert (await console.call("GET", path, auth=auth)).code == 200, path
    session = document(await console.call("GET", "/api/session", auth=auth))
    assert session["can_change"] is False
    change = await console.call(
        "PATCH",
        SERVER_A,
        auth=auth,
        body={"weight": 7},
        headers={"X-CSRF-Token": session["csrf_token"]},
    )
    assert change.code == 403
    assert document(change)["description"] == "These credentials may read, not change."
    assert console.server(0).weight == 2


@pytest_twisted.ensureDeferred
async def test_read_requires_credentials_closes_reading_on_loopback() -> None:
    console = Console(credentials=f"read_requires_credentials = true\n{VIEWER}")
    assert (await console.call("GET", "/api/upstreams")).code == 401
    opened = Console(credentials=VIEWER)
    assert (await opened.call("GET", "/api/upstreams")).code == 200


@pytest_twisted.ensureDeferred
async def test_changes_are_listed_and_the_latest_undone() -> None:
    console = Console()
    await console.call("PATCH", SERVER_A, auth="token", body={"weight": 7})
    console.clock.advance(5)
    await console.call("PATCH", SERVER_A, auth="token", body={"state": "drain"})
    listed = document(await console.call("GET", "/api/upstreams"))["changes"]
    assert [(c["who"], c["when"], c["description"]) for c in listed] == [
        ("token", 1005.0, "state up -> drain"),
        ("token", 1000.0, "weight 2 -> 7"),
    ]
    with capturedLogs() as events:
        undone = await console.call("POST", "/api/changes/undo", auth="token")
    assert undone.code == 200
    said = [formatEvent(event) for event in events]
    assert any(
        line.startswith("admin: token from ")
        and line.endswith(" undid backend/127.0.0.1:9001: state up -> drain")
        for line in said
    ), said
    assert document(undone)["undone"]["description"] == "state up -> drain"
    assert (console.server(0).admin_state.value, console.server(0).weight) == (
        "up",
        7,
    )
    await console.call("POST", "/api/changes/undo", auth="token")
    assert console.server(0).weight == 2
    assert console.server(0).weight_override is None  # the configured one again
    nothing = await console.call("POST", "/api/changes/undo", auth="token")
    assert nothing.code == 409
    assert document(nothing)["description"] == "There is no change to undo."
