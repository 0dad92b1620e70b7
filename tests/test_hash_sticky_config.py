"""
``balancer = "hash"``, ``hash_key``, ``hash_balance_factor``,
``sticky_cookie`` and ``sticky_secret`` as the configuration file gives
them: defaults, and errors that name the key.
"""

from __future__ import annotations

import pytest

from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import UpstreamConfig
from tests.configs import config

STREAM = '[[streams]]\nlisten = "tcp:0:interface=127.0.0.1"\nupstream = "backend"\n'


def upstream(extra: str, after: str = "") -> UpstreamConfig:
    text = config(["127.0.0.1:9001", "127.0.0.1:9002"], upstream_extra=extra)
    return parse_config(text + after, "gourmet.toml").upstreams[0]


def error(extra: str, after: str = "") -> str:
    with pytest.raises(ConfigError) as raised:
        upstream(extra, after)
    return str(raised.value)


def test_defaults_leave_hashing_and_stickiness_off() -> None:
    plain = upstream("")
    assert plain.hash_key is None
    assert plain.hash_balance_factor == 0.0
    assert plain.sticky_cookie is None
    assert plain.sticky_secret is None


@pytest.mark.parametrize("key", ["ip", "uri", "header:X-Tenant", "cookie:session_id"])
def test_hash_keys(key: str) -> None:
    hashed = upstream(
        f'balancer = "hash"\nhash_key = "{key}"\nhash_balance_factor = 1.25'
    )
    assert (hashed.balancer, hashed.hash_key) == ("hash", key)
    assert hashed.hash_balance_factor == 1.25


def test_sticky_on_any_balancer() -> None:
    sticky = upstream(
        'balancer = "least_conn"\nsticky_cookie = "gourmet_srv"\n'
        'sticky_secret = "0123456789abcdef0123"'
    )
    assert sticky.sticky_cookie == "gourmet_srv"
    assert sticky.sticky_secret == "0123456789abcdef0123"


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            'balancer = "hash"',
            'upstreams.backend.hash_key: missing key: balancer = "hash" needs one:'
            ' "ip", "uri", "header:NAME" or "cookie:NAME"',
        ),
        (
            'balancer = "hash"\nhash_key = "host"',
            'upstreams.backend.hash_key: expected "ip", "uri", "header:NAME" or'
            ' "cookie:NAME", got "host"',
        ),
        (
            'balancer = "hash"\nhash_key = "header:"',
            'upstreams.backend.hash_key: expected "ip", "uri", "header:NAME" or'
            ' "cookie:NAME", got "header:"',
        ),
        (
            'hash_key = "ip"',
            'upstreams.backend.hash_key: only for balancer = "hash"',
        ),
        (
            'balancer = "round_robin"\nhash_balance_factor = 1.25',
            'upstreams.backend.hash_balance_factor: only for balancer = "hash"',
        ),
        (
            'balancer = "hash"\nhash_key = "ip"\nhash_balance_factor = 0.5',
            "upstreams.backend.hash_balance_factor: expected 0 (off) or a number"
            " of at least 1, got 0.5",
        ),
        (
            'sticky_cookie = "a b"',
            "upstreams.backend.sticky_cookie: expected a cookie name (an HTTP"
            ' token), got "a b"',
        ),
        (
            'sticky_cookie = "s"\nsticky_secret = "short"',
            "upstreams.backend.sticky_secret: expected a string of at least 16"
            ' characters, got "short"',
        ),
    ],
)
def test_errors_name_the_key(extra: str, message: str) -> None:
    assert error(extra) == f"gourmet.toml: {message}"


def test_a_stream_may_hash_only_by_ip() -> None:
    assert upstream('balancer = "hash"\nhash_key = "ip"', STREAM).hash_key == "ip"
    assert error('balancer = "hash"\nhash_key = "cookie:sid"', STREAM) == (
        'gourmet.toml: streams[0].upstream: upstreams.backend.hash_key = "cookie:sid"'
        ' means nothing to a TCP stream: only "ip" does'
    )
