"""
Providers applied to upstreams (:mod:`gourmet.discovery`), on a Clock: the
servers a provider finds become the upstream's as a reload's would
(servers that stay keep their state and the operator's overrides, new ones
slow start), a failing provider keeps the last set, and a reload keeps a
provider whose options did not change.  ``provider = "file"`` is the
provider here, polled on the Clock; tests/test_discovery_twistd.py runs it
with inotify in a real twistd.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest
from prometheus_client.exposition import generate_latest
from twisted.internet.task import Clock

from gourmet.admin.metrics import ProviderCollector
from gourmet.admin.views import upstream_view
from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import UpstreamConfig
from gourmet.discovery.updates import Discovery
from gourmet.upstream.state import AdminState, Upstream

UPSTREAM = """\
[upstreams.api]
provider = "file"
file = "{file}"
slow_start = 10
{extra}
[server]
[[server.locations]]
location = "/"
upstream = "api"
"""


def servers_file(*entries: str) -> str:
    return "".join(f'[[servers]]\npath = "{entry}"\n' for entry in entries)


class Running:
    """
    An upstream whose servers a file lists, on a Clock: ``discovery``
    applies what the file provider finds to ``upstream``.
    """

    def __init__(self, directory: Path, extra: str = "") -> None:
        self.directory = directory
        self.file = directory / "api.toml"
        self.clock = Clock()
        self.config = self.load(extra)
        self.upstream = Upstream(self.config, self.clock)
        self.applied: List[UpstreamConfig] = []
        self.discovery = Discovery(self.clock, self.apply)

    def load(self, extra: str = "", file: str = "api.toml") -> UpstreamConfig:
        text = UPSTREAM.format(file=file, extra=extra)
        return parse_config(text, "gourmet.toml", str(self.directory)).upstream("api")

    def apply(self, config: UpstreamConfig) -> None:
        self.applied.append(config)
        self.upstream.reconfigure(config)

    def write(self, text: str) -> None:
        self.file.write_text(text)
        # A poll sees a change by size, inode or time: a second passes.
        self.clock.advance(1.0)

    def addresses(self) -> List[str]:
        return [server.name for server in self.upstream.servers]

    def view(self) -> Dict[str, Any]:
        return upstream_view(
            self.upstream, ["/"], None, self.discovery.upstreams.get("api")
        )


@pytest.fixture
def running(tmp_path: Path) -> Running:
    return Running(tmp_path)


def test_the_files_servers_become_the_upstreams(running: Running) -> None:
    running.file.write_text(servers_file("10.0.0.1:80", "10.0.0.2:80"))
    running.discovery.update([running.config])
    assert running.addresses() == ["10.0.0.1:80", "10.0.0.2:80"]
    # The first set has nothing to ramp up against: no slow start.
    assert all(
        server.slow_start_share(10) == 1.0 for server in running.upstream.servers
    )
    view = running.view()
    assert view["provider"]["name"] == "file"
    assert view["provider"]["updates"] == 1
    assert view["provider"]["last_error"] is None
    assert view["servers"][0]["found"] == {}


def test_servers_that_stay_keep_their_state_and_new_ones_slow_start(
    running: Running,
) -> None:
    running.file.write_text(servers_file("10.0.0.1:80", "10.0.0.2:80"))
    running.discovery.update([running.config])
    first, second = running.upstream.servers
    first.set_weight(7)
    second.admin_state = AdminState.DRAIN
    first.health.failed("connection refused")

    running.write(servers_file("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
    assert running.addresses() == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    kept_first, kept_second, added = running.upstream.servers
    assert (kept_first, kept_second) == (first, second)
    assert first.weight == 7 and first.weight_override == 7
    assert second.admin_state is AdminState.DRAIN
    assert not first.health.available()
    assert added.slow_start_share(10) == pytest.approx(0.05)

    running.write(servers_file("10.0.0.3:80"))
    assert running.addresses() == ["10.0.0.3:80"]
    assert running.upstream.servers[0] is added


def test_a_broken_or_missing_file_keeps_the_servers_and_says_why(
    running: Running,
) -> None:
    running.file.write_text(servers_file("10.0.0.1:80"))
    running.discovery.update([running.config])
    running.write(servers_file("10.0.0.1:80") + "[[servers]]\nweight = 2\n")
    assert running.addresses() == ["10.0.0.1:80"]
    error = running.view()["provider"]["last_error"]
    assert "servers[1].path" in error and "missing key" in error
    assert running.view()["provider"]["error_since"] == running.clock.seconds()

    running.write("")
    assert running.addresses() == ["10.0.0.1:80"]
    assert "at least one [[servers]]" in running.view()["provider"]["last_error"]

    running.file.unlink()
    running.clock.advance(1.0)
    assert running.addresses() == ["10.0.0.1:80"]
    assert "cannot read" in running.view()["provider"]["last_error"]

    running.write(servers_file("10.0.0.2:80"))
    assert running.addresses() == ["10.0.0.2:80"]
    provider = running.view()["provider"]
    assert provider["last_error"] is None and provider["errors"] == 3


def test_a_provider_failing_from_the_start_leaves_the_upstream_empty_not_broken(
    running: Running,
) -> None:
    running.discovery.update([running.config])
    assert running.addresses() == []
    assert running.upstream.pick() is None
    assert "cannot read" in running.view()["provider"]["last_error"]
    running.write(servers_file("10.0.0.1:80"))
    assert running.addresses() == ["10.0.0.1:80"]


def test_a_reload_keeps_a_provider_whose_options_stay(running: Running) -> None:
    running.file.write_text(servers_file("10.0.0.1:80"))
    running.discovery.update([running.config])
    provided = running.discovery.upstreams["api"]
    reloaded = running.load(extra="max_fail = 5")
    running.discovery.update([reloaded])
    assert running.discovery.upstreams["api"] is provided
    # A reload's table has no servers: the provider's are given.
    with_servers = running.discovery.with_servers(reloaded)
    assert [each.path for each in with_servers.servers] == ["10.0.0.1:80"]
    assert with_servers.servers[0].max_fail == 5


def test_a_new_provider_keeps_the_old_servers_until_it_finds_its_own(
    running: Running,
) -> None:
    running.file.write_text(servers_file("10.0.0.1:80"))
    running.discovery.update([running.config])
    other = running.load(file="missing.toml")
    running.discovery.update([other])
    assert running.discovery.upstreams["api"].config is other
    kept = running.discovery.with_servers(other)
    assert [each.path for each in kept.servers] == ["10.0.0.1:80"]
    (running.directory / "missing.toml").write_text(servers_file("10.0.0.9:80"))
    running.clock.advance(1.0)
    assert running.addresses() == ["10.0.0.9:80"]


def test_a_stopped_provider_changes_nothing_more(running: Running) -> None:
    running.file.write_text(servers_file("10.0.0.1:80"))
    running.discovery.update([running.config])
    running.discovery.stop()
    running.write(servers_file("10.0.0.2:80"))
    assert running.addresses() == ["10.0.0.1:80"]
    assert running.clock.getDelayedCalls() == []


def test_metrics_count_updates_and_errors(running: Running) -> None:
    running.file.write_text(servers_file("10.0.0.1:80"))
    running.discovery.update([running.config])
    running.write("not toml [")
    text = generate_latest(
        _Registry(ProviderCollector(lambda: running.discovery.upstreams))
    ).decode()
    labels = 'provider="file",upstream="api"'
    assert f"gourmet_provider_updates_total{{{labels}}} 1.0" in text
    assert f"gourmet_provider_errors_total{{{labels}}} 1.0" in text
    assert f"gourmet_provider_failing{{{labels}}} 1.0" in text


class _Registry:
    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def collect(self) -> Any:
        return self.collector.collect()


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (
            '[[upstreams.api.servers]]\npath = "10.0.0.1:80"\n',
            "servers",
            "finds the servers",
        ),
        ("poll_interval = 0", "poll_interval", "expected above 0"),
        ("poll_intervall = 2", "poll_intervall", "poll_interval"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, extra: str, key: str, message: str
) -> None:
    text = UPSTREAM.format(file="api.toml", extra=extra)
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gourmet.toml", str(tmp_path))
    assert raised.value.key == f"upstreams.api.{key}"
    assert message in raised.value.message


def test_a_provider_needs_its_keys(tmp_path: Path) -> None:
    text = UPSTREAM.format(file="api.toml", extra="").replace('file = "api.toml"\n', "")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gourmet.toml", str(tmp_path))
    assert raised.value.key == "upstreams.api.file"
