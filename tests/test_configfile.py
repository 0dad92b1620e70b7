"""
The configuration file: what loads, the defaults it gets, and the one-line
error, naming the key, for what does not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import pytest

from gourmet.admin.passwords import hash_password, verify_password
from gourmet.config.endpoints import endpoint_is_loopback
from gourmet.config.load import ConfigError, load_config, parse_config
from gourmet.config.model import (
    AdminConfig,
    DemoConfig,
    FrontendConfig,
    GourmetConfig,
    LogConfig,
    UpstreamConfig,
    UpstreamServerConfig,
)
from gourmet.config.origin import parse_origin
from gourmet.upstream.balancers import BALANCERS
from tests.reference import reference_config
from tests.test_tls import certificate_files

ETC = Path(__file__).parents[1] / "etc"

SERVER = 'path = "127.0.0.1:9001"'
LOCATION = 'location = "^/"\nupstream = "b"'
TOKEN = "0123456789abcdef"
PASSWORD_HASH = hash_password("s3cret", salt=bytes(16))


def config(
    upstream: str = "",
    server: str = SERVER,
    frontend: str = "",
    location: str = LOCATION,
    tail: str = "",
) -> str:
    """
    A small valid configuration, with each part replaced or added to.
    """
    return (
        f"[upstreams.b]\n{upstream}\n"
        f"[[upstreams.b.servers]]\n{server}\n"
        f"[server]\n{frontend}\n"
        f"[[server.locations]]\n{location}\n"
        f"{tail}\n"
    )


def servers(upstream: UpstreamConfig) -> List[Tuple[str, int]]:
    return [(server.path, server.weight) for server in upstream.servers]


def routes(config: GourmetConfig) -> List[Tuple[str, str]]:
    return [(each.pattern.pattern, each.upstream) for each in config.frontend.locations]


def test_reference_readme_loads() -> None:
    """
    The original Gourmet's documented configuration loads as written.
    """
    toml = reference_config()
    loaded = parse_config(toml, "README.md")
    backend, front = loaded.upstreams
    assert (backend.name, backend.balancer, backend.provider) == (
        "backend",
        "round_robin",
        "static",
    )
    assert servers(backend) == [
        ("api1.foo.bar", 5),
        ("api2.foo.bar", 1),
        ("api3.foo.bar", 1),
    ]
    assert (front.name, front.balancer) == ("front", "round_robin")
    assert servers(front) == [
        ("static1.foo.bar", 2),
        ("static2.foo.bar", 1),
        ("static3.foo.bar", 1),
    ]
    assert str(backend.servers[0].origin) == "http://api1.foo.bar:80"
    assert loaded.frontend.endpoints == ("tcp:80",)
    assert routes(loaded) == [("api/(.+/?)", "backend"), ("static/.+/?", "front")]


def test_example_with_every_option_loads() -> None:
    path = str(ETC / "gourmet.toml")
    loaded = load_config(path)
    assert loaded.source == path
    backend, front = loaded.upstreams
    assert servers(backend)[0] == ("127.0.0.1:9001", 5)
    assert str(backend.servers[2].origin) == "https://api3.internal:8443"
    assert front.balancer == "least_conn"
    assert loaded.frontend.listen == ("tcp:8080:interface=127.0.0.1",)
    assert loaded.frontend.max_body_size == 1024 * 1024
    assert routes(loaded) == [("^/api/(.+/?)", "backend"), ("^/", "front")]
    assert loaded.admin == AdminConfig()


def test_the_container_image_configuration_loads() -> None:
    """
    The Containerfile's: the demo on every interface of the container, the
    console on its loopback, where the image's health check asks it.
    """
    loaded = load_config(str(ETC / "container.toml"))
    assert loaded.frontend.listen == ("tcp:8080",)
    assert loaded.admin.listen == "tcp:8081:interface=127.0.0.1"
    assert not loaded.admin.reading_needs_credentials
    (demo,) = loaded.upstreams
    assert [server.path for server in demo.servers] == list(loaded.demo.listen)
    containerfile = (ETC.parent / "Containerfile").read_text()
    assert "COPY etc/container.toml /etc/gourmet/gourmet.toml\n" in containerfile
    assert "http://127.0.0.1:8081/api/session" in containerfile


def test_demo_loads() -> None:
    loaded = load_config(str(ETC / "demo.toml"))
    assert loaded.demo.listen == ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003")
    api = loaded.upstream("api")
    assert servers(api)[0] == ("127.0.0.1:9001", 3)
    assert {server.fail_timeout for server in api.servers} == {5.0}
    assert [each.pass_match for each in loaded.frontend.locations] == [
        False,
        True,
        False,
    ]
    admin = loaded.admin
    assert (admin.listen, admin.token) == (
        "tcp:8081:interface=127.0.0.1",
        "demo-token-change-me",
    )
    assert admin.loopback
    ((user, encoded),) = admin.users
    assert user == "admin"
    assert verify_password("gourmet", encoded)


def test_defaults_are_the_models() -> None:
    """
    What a configuration leaves out gets the default :mod:`gourmet.config.model`
    declares.
    """
    loaded = parse_config(config(), "test.toml")
    server = UpstreamServerConfig("127.0.0.1:9001", parse_origin("127.0.0.1:9001"))
    assert loaded.upstreams == (UpstreamConfig("b", (server,)),)
    assert loaded.frontend == FrontendConfig(locations=loaded.frontend.locations)
    assert loaded.log == LogConfig()
    assert loaded.demo == DemoConfig()
    location = loaded.frontend.locations[0]
    assert (location.host, location.pass_match) == (None, False)


def test_admin_defaults_to_a_read_only_console_on_loopback() -> None:
    admin = parse_config(config(), "test.toml").admin
    assert admin == AdminConfig()
    assert admin.listen == "tcp:8081:interface=127.0.0.1"
    assert admin.loopback
    assert not admin.has_credentials


def test_every_admin_option() -> None:
    admin = f"""
        [admin]
        listen = "tcp:9443:interface=0.0.0.0"
        token = "{TOKEN}"
        hosts = ["Gourmet.Example.COM", "[::1]"]
        [admin.users]
        alice = "{PASSWORD_HASH}"
        "bob smith" = "{PASSWORD_HASH}"
    """
    loaded = parse_config(config(tail=admin), "test.toml").admin
    assert loaded == AdminConfig(
        listen="tcp:9443:interface=0.0.0.0",
        token=TOKEN,
        users=(("alice", PASSWORD_HASH), ("bob smith", PASSWORD_HASH)),
        hosts=("gourmet.example.com", "[::1]"),
    )
    assert (loaded.loopback, loaded.has_credentials) == (False, True)


def test_admin_off() -> None:
    text = config(tail='[admin]\nlisten = "off"')
    admin = parse_config(text, "test.toml").admin
    assert (admin.listen, admin.loopback) == (None, False)


@pytest.mark.parametrize(
    "credentials",
    [f'token = "{TOKEN}"', f'[admin.users]\nalice = "{PASSWORD_HASH}"'],
    ids=["token", "users"],
)
def test_admin_listens_beyond_loopback_with_credentials(credentials: str) -> None:
    text = config(tail=f'[admin]\nlisten = "tcp:8081"\n{credentials}')
    admin = parse_config(text, "test.toml").admin
    assert (admin.listen, admin.has_credentials) == ("tcp:8081", True)


def test_admin_token_file_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin.token").write_text(f"  {TOKEN}\n")
    (tmp_path / "secrets" / "admin.token").chmod(0o600)
    path = tmp_path / "gourmet.toml"
    path.write_text(config(tail='[admin]\ntoken_file = "secrets/admin.token"'))
    assert load_config(str(path)).admin.token == TOKEN


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"short\n", "{}: expected a string of at least 16 characters"),
        (b"\n", "{}: expected a string of at least 16 characters"),
        (b"with a space in it\n", "{}: expected a string of at least 16"),
        (b"\xff" * 20, "cannot read {}: 'utf-8' codec can't decode"),
    ],
    ids=["short", "empty", "spaces", "not utf-8"],
)
def test_admin_token_file_refused(tmp_path: Path, content: bytes, message: str) -> None:
    token = tmp_path / "admin.token"
    token.write_bytes(content)
    token.chmod(0o600)
    path = tmp_path / "gourmet.toml"
    path.write_text(config(tail='[admin]\ntoken_file = "admin.token"'))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.key == "admin.token_file"
    assert caught.value.message.startswith(message.format(token))


def test_admin_token_is_never_shown() -> None:
    text = config(tail='[admin]\ntoken = "hunter2"')
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("description", "loopback"),
    [
        ("tcp:8081:interface=127.0.0.1", True),
        ("tcp:port=8081:interface=127.0.0.2", True),
        ("tcp:8081:interface=\\:\\:1", True),
        ("tcp:8081:interface=localhost", True),
        ("tcp:8081:interface=LOCALHOST", True),
        ("tcp:8081:127.0.0.1", True),
        ("tcp:interface=127.0.0.1:port=8081", True),
        ("tcp6:8081:interface=\\:\\:1", True),
        ("tcp6:8081:50:\\:\\:1", True),
        ("ssl:8443:interface=127.0.0.1:privateKey=k.pem", True),
        ("ssl:8443:k.pem:c.pem:SSLv23_METHOD:127.0.0.1", True),
        ("unix:/run/g.sock", True),
        ("unix:address=/run/g.sock:mode=600", True),
        ("tcp:8081", False),
        ("tcp:8081:interface=", False),
        ("tcp:8081:interface=0.0.0.0", False),
        ("tcp:8081:interface=10.0.0.1", False),
        ("tcp:8081:interface=127.0.0.1:interface=0.0.0.0", False),
        ("tcp:8081:interface=::", False),
        ("tcp6:8081", False),
        ("ssl:8443:privateKey=k.pem", False),
        ("ssl:8443:k.pem:interface=127.0.0.1", True),
        ("ssl:8443:k.pem:127.0.0.1", False),
        ("systemd:domain=INET:index=0", False),
        ("TCP:8081:interface=127.0.0.1", False),
        ("le:/certs:tcp:8081:interface=127.0.0.1", False),
        ("8081", False),
        ("port=8081", False),
        ("", False),
    ],
)
def test_endpoint_is_loopback(description: str, loopback: bool) -> None:
    assert endpoint_is_loopback(description) is loopback


def test_every_upstream_option() -> None:
    upstream = """
        balancer = "random"
        connect_timeout = 1.5
        read_timeout = 30
        tries = 0
        fail_status = [500, 502]
        retry_status = [503]
        panic_threshold = 0
        preserve_host = true
        keepalive = 0
        keepalive_timeout = 0
        ewma_decay = 2.5
    """
    loaded = parse_config(config(upstream=upstream), "test.toml").upstreams[0]
    assert loaded.ewma_decay == 2.5
    assert (loaded.retry_status, loaded.panic_threshold) == (frozenset({503}), 0)
    assert (loaded.balancer, loaded.connect_timeout, loaded.read_timeout) == (
        "random",
        1.5,
        30.0,
    )
    assert (loaded.tries, loaded.fail_status) == (0, frozenset({500, 502}))
    assert (loaded.preserve_host, loaded.keepalive, loaded.keepalive_timeout) == (
        True,
        0,
        0.0,
    )


def test_servers_inherit_health_settings_from_their_upstream() -> None:
    text = config(
        upstream="max_fail = 3\nfail_timeout = 2.5",
        server=(
            'path = "127.0.0.1:9001"\n'
            '[[upstreams.b.servers]]\npath = "https://h:8443"\n'
            "max_fail = 0\nfail_timeout = 7\ntls_verify = false"
        ),
    )
    first, second = parse_config(text, "test.toml").upstreams[0].servers
    assert (first.max_fail, first.fail_timeout) == (3, 2.5)
    assert (second.max_fail, second.fail_timeout) == (0, 7.0)
    assert (first.origin.tls_verify, second.origin.tls_verify) == (True, False)


def test_original_spellings() -> None:
    """
    The original Gourmet's ``path`` and ``http_pass`` name a location's
    pattern and upstream too.
    """
    location = (
        'path = "^/x/(.*)"\nhttp_pass = "b"\nhost = "a.example"\npass_match = true'
    )
    loaded = parse_config(config(location=location), "test.toml")
    (only,) = loaded.frontend.locations
    assert (only.pattern.pattern, only.upstream) == ("^/x/(.*)", "b")
    assert (only.host, only.pass_match) == ("a.example", True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("512", 512),
        ('"512"', 512),
        ('"10k"', 10 * 1024),
        ('"10K"', 10 * 1024),
        ('"1m"', 1024 * 1024),
        ('"2G"', 2 * 1024**3),
    ],
)
def test_max_body_size(value: str, expected: int) -> None:
    text = config(frontend=f"max_body_size = {value}")
    assert parse_config(text, "test.toml").frontend.max_body_size == expected


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9001", "127.1.2.3:1", "localhost:65535", "[::1]:9001"]
)
def test_demo_listens_on_loopback(address: str) -> None:
    text = config(tail=f'[demo]\nlisten = ["{address}"]')
    assert parse_config(text, "test.toml").demo.listen == (address,)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "conf"
    directory.mkdir()
    (directory / "error.html").write_text("<p>$status</p>")
    path = directory / "gourmet.toml"
    path.write_text(
        config(
            frontend='error_page = "error.html"',
            tail='[log]\naccess_log = "logs/access.log"\naccess_log_format = "json"',
        )
    )
    loaded = load_config(str(path))
    assert loaded.frontend.error_page == str(directory / "error.html")
    assert loaded.log == LogConfig(str(directory / "logs" / "access.log"), "json")


def test_certificate_files_are_relative_to_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "conf"
    key, certificate = certificate_files(directory / "tls")
    path = directory / "gourmet.toml"
    listen = "ssl:8443:privateKey=tls/key.pem:certKey=tls/cert.pem"
    admin = f"ssl:8444:interface=127.0.0.1:privateKey={key}:certKey=tls/cert.pem"
    path.write_text(
        config(frontend=f"listen = ['{listen}']", tail=f"[admin]\nlisten = '{admin}'")
    )
    loaded = load_config(str(path))
    assert loaded.frontend.listen == (
        f"ssl:8443:privateKey={key}:certKey={certificate}",
    )
    # An absolute name is kept as it is.
    assert loaded.admin.listen == (
        f"ssl:8444:interface=127.0.0.1:privateKey={key}:certKey={certificate}"
    )


@pytest.mark.parametrize("key", ["server.listen[0]", "admin.listen"])
def test_a_missing_certificate_is_a_configuration_error(
    tmp_path: Path, key: str
) -> None:
    path = tmp_path / "gourmet.toml"
    listen = "'ssl:8443:interface=127.0.0.1:certKey=cert.pem'"
    path.write_text(
        config(frontend=f"listen = [{listen}]")
        if key.startswith("server")
        else config(tail=f"[admin]\nlisten = {listen}")
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    # Twisted's default key file, found beside the configuration.
    missing = tmp_path / "server.pem"
    assert str(caught.value) == (
        f"{path}: {key}: cannot read {missing}: No such file or directory"
    )


def test_an_error_page_that_is_not_text_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "error.html"
    page.write_bytes(b"<p>\xff</p>")
    path = tmp_path / "gourmet.toml"
    path.write_text(config(frontend='error_page = "error.html"'))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(
        f"{path}: server.error_page: cannot read {page}: 'utf-8' codec can't decode"
    )


@pytest.mark.parametrize("target", ["stdout", "off", "/var/log/gourmet.log"])
def test_access_log_targets_kept(target: str) -> None:
    text = config(tail=f'[log]\naccess_log = "{target}"')
    assert parse_config(text, "test.toml", "/srv").log.access_log == target


BAD = [
    # Safe defaults (issue 10).
    (config(frontend="backlog = 0"), "server.backlog", "from 1 to 65535, got 0"),
    (
        config(upstream="panic_threshold = 101"),
        "upstreams.b.panic_threshold",
        "expected a whole number from 0 to 100, got 101",
    ),
    (config(upstream="ewma_decay = 0"), "upstreams.b.ewma_decay", "above 0"),
    (
        config(upstream="retry_status = [503, 99]"),
        "upstreams.b.retry_status[1]",
        "expected a whole number from 100 to 599, got 99",
    ),
    # Limits and trust (issue 4).
    (config(frontend="max_headers = 0"), "server.max_headers", "from 1 to 10000"),
    (config(frontend="max_request_line = 10"), "server.max_request_line", "got 10"),
    (config(frontend="header_timeout = 0"), "server.header_timeout", "above 0"),
    (config(frontend="body_min_rate = -1"), "server.body_min_rate", "got -1"),
    (
        config(frontend='trusted_proxies = ["10.0.0.0/8", "nope"]'),
        "server.trusted_proxies[1]",
        'expected an IP address or network such as 10.0.0.0/8, got "nope"',
    ),
    (config(upstream="header_timeout = -1"), "upstreams.b.header_timeout", "got -1"),
    # The PROXY protocol (issue 15).
    (
        config(frontend='accept_proxy_protocol = ["10.0.0.0/8", "lb"]'),
        "server.accept_proxy_protocol[1]",
        'expected an IP address or network such as 10.0.0.0/8, got "lb"',
    ),
    (
        config(upstream='proxy_protocol = "v3"'),
        "upstreams.b.proxy_protocol",
        'expected "v1", "v2" or false, got "v3"',
    ),
    (
        config(upstream="proxy_protocol = true"),
        "upstreams.b.proxy_protocol",
        'expected "v1", "v2" or false, got true',
    ),
    # Values of the wrong type or out of range.
    (
        config(server=SERVER + "\nweight = -1"),
        "upstreams.b.servers[0].weight",
        "expected a whole number from 0 to 1000, got -1",
    ),
    (
        config(server=SERVER + "\nweight = 1.5"),
        "upstreams.b.servers[0].weight",
        "got 1.5",
    ),
    (
        config(server=SERVER + "\nweight = true"),
        "upstreams.b.servers[0].weight",
        "got true",
    ),
    (
        config(server=SERVER + '\ntls_verify = "no"'),
        "upstreams.b.servers[0].tls_verify",
        'expected true or false, got "no"',
    ),
    (config(upstream="connect_timeout = 0"), "upstreams.b.connect_timeout", "above 0"),
    (
        config(upstream="keepalive_timeout = -1"),
        "upstreams.b.keepalive_timeout",
        "expected a number of at least 0, got -1",
    ),
    (config(upstream="tries = -1"), "upstreams.b.tries", "of at least 0, got -1"),
    (
        config(upstream="fail_status = [502, 503, 600]"),
        "upstreams.b.fail_status[2]",
        "expected a whole number from 100 to 599, got 600",
    ),
    (
        config(upstream="fail_status = 502"),
        "upstreams.b.fail_status",
        "expected an array",
    ),
    (config(upstream='balancer = "fastest"'), "upstreams.b.balancer", 'got "fastest"'),
    (
        config(upstream='provider = "kube"'),
        "upstreams.b.provider",
        "'kubernetes', 'static', got \"kube\"",
    ),
    (
        config(server='path = "ftp://h"'),
        "upstreams.b.servers[0].path",
        "expected scheme http or https",
    ),
    (config(frontend="port = 0"), "server.port", "from 1 to 65535, got 0"),
    (
        config(frontend='listen = ["tcp:80", ""]'),
        "server.listen[1]",
        "non-empty string",
    ),
    (config(frontend='max_body_size = "10x"'), "server.max_body_size", 'got "10x"'),
    (config(frontend="max_body_size = -1"), "server.max_body_size", "got -1"),
    (
        config(frontend='error_page = "no-such-page.html"'),
        "server.error_page",
        "no such file: " + os.path.abspath("no-such-page.html"),
    ),
    (
        config(tail='[log]\naccess_log_format = "xml"'),
        "log.access_log_format",
        "expected one of 'combined', 'json', got \"xml\"",
    ),
    (
        config(tail='[demo]\nlisten = ["127.0.0.1:9001", "0.0.0.0:9002"]'),
        "demo.listen[1]",
        "with a loopback host (127.x.x.x, [::1] or localhost) and a port from 1 to"
        ' 65535, got "0.0.0.0:9002"',
    ),
    (config(tail='[demo]\nlisten = ["localhost"]'), "demo.listen[0]", '"host:port"'),
    # The admin console.
    (config(tail='[admin]\nlisten = ""'), "admin.listen", "non-empty string"),
    (
        config(tail='[admin]\nlisten = "tcp:8081"'),
        "admin.listen",
        "an admin listener that is not on loopback needs credentials: set"
        " admin.token, admin.token_file or [admin.users]",
    ),
    (
        config(tail='[admin]\nlisten = "tcp:8081:interface=0.0.0.0"\n[admin.users]'),
        "admin.listen",
        "needs credentials",
    ),
    (
        config(tail='[admin]\ntoken = "short"'),
        "admin.token",
        "expected a string of at least 16 characters",
    ),
    (
        config(tail="[admin]\ntoken = 1234567890123456789"),
        "admin.token",
        "expected a string of at least 16 characters",
    ),
    (
        config(tail='[admin]\ntoken = "a token with spaces in it"'),
        "admin.token",
        "printable ASCII without spaces",
    ),
    (
        config(tail=f'[admin]\ntoken = "{TOKEN}"\ntoken_file = "admin.token"'),
        "admin.token_file",
        "give either 'token' or 'token_file', not both",
    ),
    (
        config(tail='[admin]\ntoken_file = "no-such.token"'),
        "admin.token_file",
        "no such file: " + os.path.abspath("no-such.token"),
    ),
    (
        config(tail='[admin.users]\nalice = "s3cret"'),
        "admin.users.alice",
        "expected a hash made by `python -m gourmet.passwords`: scrypt$N$r$p$salt$hash",
    ),
    (
        config(tail='[admin.users]\nalice = ""'),
        "admin.users.alice",
        "expected a non-empty string",
    ),
    (
        config(tail=f'[admin.users]\n"" = "{PASSWORD_HASH}"'),
        'admin.users.""',
        "expected a non-empty string",
    ),
    (
        config(tail=f'[admin.users]\n"a:b" = "{PASSWORD_HASH}"'),
        'admin.users."a:b"',
        "expected a user name without ':' or control characters",
    ),
    (config(tail='[admin]\nusers = "alice"'), "admin.users", "expected a table"),
    (
        config(tail='[admin]\nhosts = ["gourmet.example", ""]'),
        "admin.hosts[1]",
        "non-empty string",
    ),
    (
        config(tail='[admin]\nhosts = ["gourmet.example:8081"]'),
        "admin.hosts[0]",
        "expected a host name or [IPv6 address] without a port",
    ),
    (
        config(tail=f'[admin]\ntokne = "{TOKEN}"'),
        "admin.tokne",
        "unknown key; did you mean 'token'?",
    ),
    (config(tail="[admin]\nport = 8081"), "admin.port", "unknown key"),
    # Locations.
    (
        config(location='location = "^/"\npath = "^/"\nupstream = "b"'),
        "server.locations[0].location",
        "give either 'location' or 'path', not both",
    ),
    (
        config(location='upstream = "b"'),
        "server.locations[0].location",
        "missing key: expected 'location' (a regular expression)",
    ),
    (
        config(location='location = "("\nupstream = "b"'),
        "server.locations[0].location",
        "not a regular expression: missing ), unterminated subpattern",
    ),
    (
        config(location='location = "^/"\nupstream = "c"'),
        "server.locations[0].upstream",
        "no upstream named 'c'; defined: 'b'",
    ),
    (
        config(location='location = "^/"\nhttp_pass = "c"'),
        "server.locations[0].http_pass",
        "no upstream named 'c'",
    ),
    (
        config(location='location = "^/"\nupstream = "b"\nhttp_pass = "b"'),
        "server.locations[0].upstream",
        "give either 'upstream' or 'http_pass', not both",
    ),
    # Unknown and misspelt keys.
    (
        config(server=SERVER + "\nwieght = 2"),
        "upstreams.b.servers[0].wieght",
        "unknown key; did you mean 'weight'?",
    ),
    (
        config(server='pth = "127.0.0.1:9001"'),
        "upstreams.b.servers[0].pth",
        "unknown key; did you mean 'path'?",
    ),
    (config(tail="[metrics]\nport = 9000"), "metrics", "unknown key"),
    (
        config().replace("[upstreams.b]", "[upstream.b]"),
        "upstream",
        "unknown key; did you mean 'upstreams'?",
    ),
    (
        config(upstream="max_fails = 2"),
        "upstreams.b.max_fails",
        "did you mean 'max_fail'?",
    ),
    # Tables missing, empty or of the wrong type.
    ("[server]\nport = 80", "upstreams", "missing key: expected 'upstreams'"),
    ("upstreams = 3\n[server]", "upstreams", "expected a table, got 3"),
    (
        "[upstreams]\n[server]",
        "upstreams",
        "expected at least one [upstreams.NAME] table",
    ),
    (config().split("[server]")[0], "server", "missing key: expected 'server'"),
    (
        config(upstream="preserve_host = true").replace(
            "[[upstreams.b.servers]]\n" + SERVER, ""
        ),
        "upstreams.b.servers",
        "missing key: expected 'servers'",
    ),
    (
        config().replace("[[upstreams.b.servers]]", "servers = []"),
        "upstreams.b.servers",
        "expected an array of tables, at least one [[upstreams.b.servers]] table, "
        "got an empty array",
    ),
    (
        config().replace("[[upstreams.b.servers]]", 'servers = "x"'),
        "upstreams.b.servers",
        "expected an array of tables, at least one [[upstreams.b.servers]] table,"
        ' got "x"',
    ),
    (
        config().replace("[upstreams.b]", '[upstreams."a b"]'),
        'upstreams."a b"',
        "expected a name of letters, digits",
    ),
    (
        config(server=SERVER + "\nweight = -1").replace(".b", '."api.v1"'),
        'upstreams."api.v1".servers[0].weight',
        "got -1",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD, ids=[k for _, k, _ in BAD])
def test_bad_configuration(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    error = caught.value
    assert (error.source, error.key) == ("test.toml", key)
    assert fragment in error.message
    assert str(error) == f"test.toml: {key}: {error.message}"
    assert "\n" not in str(error)


def test_bad_balancer_lists_every_balancer() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(upstream='balancer = "fastest"'), "test.toml")
    for name in BALANCERS:
        assert repr(name) in caught.value.message


@pytest.mark.parametrize(
    "content",
    [config().encode() + b"[server\n", b"\xff = 1\n"],
    ids=["syntax", "utf-8"],
)
def test_not_toml_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    error = caught.value
    assert (error.source, error.key) == (str(path), "")
    assert error.message.startswith("not valid TOML: ")
    assert str(error).startswith(f"{path}: not valid TOML: ")
    assert "\n" not in str(error)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ConfigError("a.toml", "server.port", "bad"), "a.toml: server.port: bad"),
        (ConfigError("a.toml", "", "bad"), "a.toml: bad"),
        (ConfigError("a.toml", "k", "two\nlines"), "a.toml: k: two lines"),
    ],
)
def test_error_is_one_line(error: ConfigError, line: str) -> None:
    assert str(error) == line


def test_limits_and_trusted_proxies() -> None:
    loaded = parse_config(
        config(
            upstream="header_timeout = 5",
            frontend=(
                "max_request_line = 4096\nmax_header_size = 8192\nmax_headers = 50\n"
                "header_timeout = 3\nbody_min_rate = 0\nidle_timeout = 30\n"
                'max_connections = 100\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n'
                "backlog = 1024"
            ),
        ),
        "test.toml",
    )
    server = loaded.frontend
    assert (server.max_request_line, server.max_header_size) == (4096, 8192)
    assert (server.max_headers, server.header_timeout) == (50, 3)
    assert (server.body_min_rate, server.idle_timeout) == (0, 30)
    assert (server.max_connections, server.backlog) == (100, 1024)
    assert server.trusted_proxies == ("10.0.0.0/8", "::1")
    assert loaded.upstreams[0].header_timeout == 5


def test_proxy_protocol_both_ways() -> None:
    loaded = parse_config(
        config(
            upstream='proxy_protocol = "v2"',
            frontend='accept_proxy_protocol = ["10.0.0.0/8", "::1"]',
        ),
        "test.toml",
    )
    assert loaded.frontend.accept_proxy_protocol == ("10.0.0.0/8", "::1")
    assert loaded.upstreams[0].proxy_protocol == "v2"
    off = parse_config(config(upstream="proxy_protocol = false"), "test.toml")
    assert off.upstreams[0].proxy_protocol is None
    assert off.frontend.accept_proxy_protocol == ()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_others_may_read_stops_start_up(tmp_path: Path, mode: int) -> None:
    token = tmp_path / "admin.token"
    token.write_text(TOKEN)
    token.chmod(mode)
    path = tmp_path / "gourmet.toml"
    path.write_text(config(tail='[admin]\ntoken_file = "admin.token"'))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == (
        f"{path}: admin.token_file: {token} may be read by others (mode"
        f" {mode:04o}): make it its owner's only (chmod 600 {token})"
    )


def test_secrets_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "admin-token").write_text(TOKEN + "\n")
    (credentials / "read-token").write_text("r" * 20)
    for secret in credentials.iterdir():
        secret.chmod(0o400)  # as systemd makes them
    text = config(
        tail="[admin]\n"
        'token_file = "$CREDENTIALS_DIRECTORY/admin-token"\n'
        'read_token_file = "$CREDENTIALS_DIRECTORY/read-token"'
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    admin = parse_config(text, "test.toml").admin
    assert (admin.token, admin.read_token) == (TOKEN, "r" * 20)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    assert caught.value.key == "admin.token_file"
    assert caught.value.message.startswith("$CREDENTIALS_DIRECTORY is not set")


def test_roles_and_their_checks() -> None:
    hashed = hash_password("x" * 12)
    admin = parse_config(
        config(
            tail="[admin]\nread_requires_credentials = true\n"
            f'read_token = "{"r" * 20}"\n[admin.viewers]\nvera = "{hashed}"'
        ),
        "test.toml",
    ).admin
    assert admin.viewers == (("vera", hashed),)
    assert admin.reading_needs_credentials and not admin.has_credentials
    with pytest.raises(ConfigError, match=r"'vera' is in \[admin.users\] too"):
        parse_config(
            config(
                tail=f'[admin.users]\nvera = "{hashed}"\n'
                f'[admin.viewers]\nvera = "{hashed}"'
            ),
            "test.toml",
        )
    with pytest.raises(ConfigError, match="nobody could read"):
        parse_config(
            config(tail="[admin]\nread_requires_credentials = true"), "test.toml"
        )
