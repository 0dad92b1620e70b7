"""
``[[streams]]`` as the configuration file gives them: defaults, spellings,
and errors that name the key, as start-up and ``gourmet check`` say them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import StreamConfig
from tests.processes import GOURMET
from tests.test_streams import stream_config

BASE = stream_config(["127.0.0.1:6379"]).split("[[streams]]")[0]


def streams(text: str) -> tuple[StreamConfig, ...]:
    return parse_config(BASE + text, "gourmet.toml").streams


def error(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        streams(text)
    return str(raised.value)


def test_defaults_and_spellings() -> None:
    (plain,) = streams("[[streams]]\nlisten = 'tcp:6379'\nupstream = 'tcp'\n")
    assert plain == StreamConfig(
        listen="tcp:6379", upstream="tcp", proxy_protocol=None, idle_timeout=600.0
    )
    for given, meant in [
        ("true", "v2"),
        ("false", None),
        ('"v1"', "v1"),
        ('"v2"', "v2"),
    ]:
        text = "[[streams]]\nlisten = 'tcp:1'\nupstream = 'tcp'\n"
        (stream,) = streams(text + f"proxy_protocol = {given}\n")
        assert stream.proxy_protocol == meant
    assert streams("") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[streams]]\nlisten = 'tcp:1'\nupstream = 'postgres'\n",
            "streams[0].upstream: no upstream named 'postgres'; defined: 'tcp'",
        ),
        (
            "[[streams]]\nlisten = 'tcp:1'\nupstream = 'tcp'\nproxy_protocol = 'v3'\n",
            'streams[0].proxy_protocol: expected false, true (meaning "v2"), "v1"'
            ' or "v2", got "v3"',
        ),
        (
            "[[streams]]\nlisten = 'tcp:1'\nupstream = 'tcp'\nidle_timeout = -1\n",
            "streams[0].idle_timeout: expected a number of at least 0, got -1",
        ),
        (
            "[[streams]]\nupstream = 'tcp'\n",
            "streams[0].listen: missing key",
        ),
        (
            "[[streams]]\nlisten = 'tcp:1'\nupstream = 'tcp'\nidle_timout = 3\n",
            "streams[0].idle_timout: unknown key; did you mean 'idle_timeout'?",
        ),
        (
            "[[streams]]\nlisten = 'tcp:1'\nupstream = 'tcp'\n"
            "[[streams]]\nlisten = 'tcp:1'\nupstream = 'tcp'\n",
            "streams[1].listen: the same as streams[0].listen",
        ),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    assert message in error(text)


def test_gourmet_check_parses_and_names_the_streams(tmp_path: Path) -> None:
    config = tmp_path / "gourmet.toml"
    config.write_text(BASE + "[[streams]]\nlisten = 'tcp:6379'\nupstream = 'tcp'\n")
    done = subprocess.run(
        [*GOURMET, "check", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "1 TCP stream on tcp:6379" in done.stdout
    config.write_text(BASE + "[[streams]]\nlisten = 'tcp:nope'\nupstream = 'tcp'\n")
    done = subprocess.run(
        [*GOURMET, "check", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "streams[0].listen: not a Twisted endpoint string" in done.stderr
