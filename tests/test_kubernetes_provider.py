"""
``provider = "kubernetes"`` (:mod:`gourmet.discovery.kubernetes`).

No Kubernetes API server can run here: the provider talks HTTPS over
loopback to :class:`tests.fake_kubernetes.FakeKubernetes`, a fake that
implements list, watch, bookmarks and ``410 Gone`` as the API documents
them, with its own CA and bearer token.  The EndpointSlice it serves, and
the one read first below, is ``tests/data/endpointslice.json``, written
field for field as a cluster returns one.  Each provider runs as Gourmet
runs it (a :class:`ProvidedUpstream` over an :class:`Upstream`), with
retries shortened; the last test runs a real ``twistd`` with requests
flowing while the fake scales the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import pytest_twisted
from attrs import evolve
from twisted.internet import reactor
from twisted.internet.task import Clock

from gourmet.admin.views import upstream_view
from gourmet.config.load import ConfigError, parse_config
from gourmet.config.model import UpstreamConfig
from gourmet.discovery.kubernetes import (
    EndpointSlices,
    KubernetesOptions,
    Timing,
    endpoint_state,
    service_servers,
    slice_servers,
)
from gourmet.discovery.updates import ProvidedUpstream
from gourmet.upstream.state import Upstream
from tests.fake_kubernetes import FakeKubernetes, endpoint, recorded_slice
from tests.processes import Twistd
from tests.rawhttp import sleep
from tests.test_discovery_twistd import Traffic, api, gourmet_with, until

#: Retries in tens of milliseconds, the token read at each request.
FAST = Timing(first_retry=0.05, last_retry=0.2, token_refresh=0.0)


def upstream_text(keys: str) -> str:
    return (
        f"[upstreams.api]\n{keys}\n[server]\n[[server.locations]]\n"
        'location = "/"\nupstream = "api"\n'
    )


def load(keys: str, directory: Path) -> UpstreamConfig:
    return parse_config(upstream_text(keys), "gourmet.toml", str(directory)).upstream(
        "api"
    )


# The slice's JSON, and the API's rules for its conditions.


def test_a_recorded_endpointslice_gives_its_ready_and_draining_endpoints() -> None:
    found = slice_servers(recorded_slice(), "http")
    assert [(each.address, each.draining) for each in found] == [
        ("10.244.1.17:8080", False),
        ("10.244.2.31:8080", False),
        # Not ready but serving while terminating: drained, not cut.
        ("10.244.2.8:8080", True),
    ]
    assert found[0].metadata == {
        "pod": "api-6d9f8b7c5-4xw2p",
        "node": "worker-1",
        "zone": "europe-west1-b",
    }
    metrics = slice_servers(recorded_slice(), "metrics")
    assert metrics[0].address == "10.244.1.17:9090"
    assert slice_servers(recorded_slice(), "grpc") == []
    with pytest.raises(ValueError, match="'http', 'metrics'"):
        slice_servers(recorded_slice(), None)


@pytest.mark.parametrize(
    ("conditions", "state"),
    [
        ({}, "ready"),  # nil ready is ready
        ({"ready": True, "serving": True, "terminating": False}, "ready"),
        ({"ready": False, "serving": True, "terminating": True}, "draining"),
        ({"ready": False, "serving": False, "terminating": True}, None),
        ({"ready": False, "serving": True}, None),  # not terminating: not ready
        ({"ready": False, "terminating": True}, None),  # nil serving: as ready
        ({"ready": False}, None),
    ],
)
def test_endpoint_conditions(conditions: Dict[str, bool], state: Optional[str]) -> None:
    assert endpoint_state(conditions) == state


def test_ipv6_addresses_are_bracketed_and_an_endpoint_in_two_slices_is_one() -> None:
    one, two = recorded_slice(), recorded_slice()
    one["endpoints"] = [
        endpoint("fd00::5", ready=False, serving=True, terminating=True)
    ]
    two["endpoints"] = [endpoint("fd00::5"), endpoint("fd00::6", ready=None)]
    found = service_servers({"a": one, "b": two}, "http")
    assert [(each.address, each.draining) for each in found] == [
        ("[fd00::5]:8080", False),
        ("[fd00::6]:8080", False),
    ]


# Options.


def test_options_default_to_the_pods_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    options = load(
        'provider = "kubernetes"\nnamespace = "shop"\nservice = "api"', tmp_path
    ).provider_options
    assert options.api_server == "https://[fd00::1]:6443"
    assert options.port is None
    account = Path("/var/run/secrets/kubernetes.io/serviceaccount")
    assert options.token_file == account / "token"
    assert options.ca_file == account / "ca.crt"
    relative = load(
        'provider = "kubernetes"\nnamespace = "shop"\nservice = "api"\n'
        'token_file = "t"\nca_file = "c"\napi_server = "https://k8s.test"',
        tmp_path,
    ).provider_options
    assert relative.token_file == tmp_path / "t"
    assert relative.api_server == "https://k8s.test:443"


@pytest.mark.parametrize(
    ("keys", "key", "message"),
    [
        ('service = "api"', "namespace", "missing key"),
        ('namespace = "shop"\nservice = "API"', "service", "a Kubernetes name"),
        ('namespace = "shop"\nservice = "api"\nport = 80', "port", "name"),
        (
            'namespace = "shop"\nservice = "api"\napi_server = "http://k8s.test"',
            "api_server",
            "https://",
        ),
        ('namespace = "shop"\nservice = "api"', "api_server", "outside a pod"),
    ],
)
def test_option_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str, key: str, message: str
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError) as raised:
        load(f'provider = "kubernetes"\n{keys}', tmp_path)
    assert raised.value.key == f"upstreams.api.{key}"
    assert message in raised.value.message


def test_the_token_file_is_read_again_each_minute(tmp_path: Path) -> None:
    clock = Clock()
    token = tmp_path / "token"
    token.write_text("one\n")
    options = KubernetesOptions(
        "shop", "api", None, "https://k8s.test:443", token, tmp_path / "ca.crt"
    )
    slices = EndpointSlices(options, clock)
    assert slices.token() == "one"
    token.write_text("two\n")  # kubelet rotates it
    clock.advance(59)
    assert slices.token() == "one"
    clock.advance(1)
    assert slices.token() == "two"


# Against the fake API server.


class Watched:
    """
    An upstream whose servers the provider finds in ``fake``.
    """

    def __init__(
        self,
        fake: FakeKubernetes,
        directory: Path,
        timing: Timing = FAST,
        **config: str,
    ) -> None:
        self.fake = fake
        self.config = load(fake.config(**config), directory)
        self.upstream = Upstream(self.config, reactor)
        self.provider = EndpointSlices(self.config.provider_options, reactor, timing)
        self.provided = ProvidedUpstream(
            self.config, self.provider, self.apply, reactor
        )

    def apply(self, config: UpstreamConfig) -> None:
        self.upstream.reconfigure(config)

    def servers(self) -> Dict[str, int]:
        """
        Each server's address and weight.
        """
        return {each.name: each.weight for each in self.upstream.servers}

    def error(self) -> Optional[str]:
        return self.provided.last_error

    async def has(self, servers: Dict[str, int]) -> None:
        await until(f"servers {servers}", lambda: self.servers() == servers, 5)

    async def scaled(self, *octets: int) -> None:
        """
        The slice ``api-abc`` now has ready endpoints 10.0.0.N: wait until
        they are the upstream's servers.
        """
        self.fake.write("api-abc", ready(*octets))
        await self.has(weights(*octets))

    async def watching(self) -> None:
        """
        Wait until the provider's watch is open at both ends (cut before
        its head arrives, it would be a failed request, not a broken watch).
        """
        await until(
            "a watch",
            lambda: len(self.fake.watches) == 1 and self.provider.watching,
            5,
        )


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKubernetes]:
    server = FakeKubernetes(tmp_path)
    server.start()
    yield server
    pytest_twisted.blockon(server.stop())


@pytest.fixture
def watching(fake: FakeKubernetes, tmp_path: Path) -> Iterator[Any]:
    started: List[Watched] = []

    def watch(timing: Timing = FAST, **config: str) -> Watched:
        watched = Watched(fake, tmp_path, timing, **config)
        watched.provided.start()
        started.append(watched)
        return watched

    yield watch
    for each in started:
        pytest_twisted.blockon(each.provided.stop())


async def watch_slice(fake: FakeKubernetes, watching: Any, *octets: int) -> Watched:
    """
    A provider watching the slice ``api-abc`` of ready endpoints
    10.0.0.N, once it has found them.
    """
    watched: Watched = watching()
    await watched.scaled(*octets)
    return watched


def ready(*last_octets: int) -> List[Dict[str, Any]]:
    return [endpoint(f"10.0.0.{each}") for each in last_octets]


def weights(*last_octets: int, weight: int = 1) -> Dict[str, int]:
    return {f"10.0.0.{each}:8080": weight for each in last_octets}


@pytest_twisted.ensureDeferred
async def test_a_slice_scaled_from_2_to_5_to_1_is_followed(
    fake: FakeKubernetes, watching: Any
) -> None:
    fake.write("api-abc", ready(1, 2))
    fake.write("other-xyz", ready(9), service="other")
    watched = watching()
    await watched.has(weights(1, 2))
    await watched.scaled(1, 2, 3, 4, 5)
    await watched.scaled(4)
    # One list, then one watch from the list's version, bookmarks asked.
    listed, watch = fake.requests
    assert listed["labelSelector"] == "kubernetes.io/service-name=api"
    assert watch["labelSelector"] == "kubernetes.io/service-name=api"
    assert watch["resourceVersion"] == "1002"
    assert (watch["watch"], watch["allowWatchBookmarks"]) == ("1", "true")
    assert watched.provided.updates == 3
    view = upstream_view(watched.upstream, ["/"], None, watched.provided)
    assert view["servers"][0]["found"] == {
        "pod": "api-10-0-0-4",
        "node": "worker-1",
        "zone": "zone-a",
    }


@pytest_twisted.ensureDeferred
async def test_a_terminating_endpoint_is_drained_not_cut(
    fake: FakeKubernetes, watching: Any
) -> None:
    watched = await watch_slice(fake, watching, 1, 2)
    stopping = endpoint("10.0.0.2", ready=False, serving=True, terminating=True)
    fake.write("api-abc", [*ready(1), stopping])
    # Still there, for its requests in flight, with weight 0 for new ones.
    await watched.has({"10.0.0.1:8080": 1, "10.0.0.2:8080": 0})
    assert [each.draining for each in watched.provided.found or ()] == [False, True]
    picked = [watched.upstream.pick() for _ in range(10)]
    assert {each.name for each in picked if each is not None} == {"10.0.0.1:8080"}
    await watched.scaled(1)


@pytest.mark.parametrize(
    "how", ["HTTP 410 on the next watch", "ERROR 410 on the next watch", "mid-stream"]
)
@pytest_twisted.ensureDeferred
async def test_a_version_gone_lists_again(
    fake: FakeKubernetes, watching: Any, how: str
) -> None:
    watched = await watch_slice(fake, watching, 1)
    if how == "mid-stream":
        await watched.scaled(1, 2)
        fake.write("api-abc", ready(2, 3))
        await watched.watching()
        fake.expire_watches()
        expected = weights(2, 3)
    else:
        fake.gone_as = "status" if how.startswith("HTTP") else "event"
        await watched.watching()
        fake.break_watches()
        fake.write("api-abc", ready(1, 2))  # while no watch is open
        fake.compact()
        expected = weights(1, 2)
    await watched.has(expected)
    await watched.watching()
    lists = fake.lists()
    assert len(lists) == 2
    # The new watch starts from the new list's version.
    assert fake.watched_from()[-1] == str(fake.version)
    assert watched.error() is None


@pytest_twisted.ensureDeferred
async def test_a_bookmark_moves_the_version_the_next_watch_starts_from(
    fake: FakeKubernetes, watching: Any
) -> None:
    watched = await watch_slice(fake, watching, 1)
    fake.other_writes(50)
    await watched.watching()
    fake.bookmark()
    await until("the bookmark", lambda: watched.provider.version == "1051", 5)
    # Older versions are gone: only the bookmark's lets the watch resume.
    fake.compact()
    await watched.watching()
    fake.end_watches()
    await until("a new watch", lambda: len(fake.watch_requests()) == 2, 5)
    assert fake.watched_from() == ["1001", "1051"]
    await watched.scaled(1, 2)
    assert len(fake.lists()) == 1
    assert watched.provided.updates == 2


@pytest_twisted.ensureDeferred
async def test_a_broken_watch_resumes_from_the_last_version(
    fake: FakeKubernetes, watching: Any
) -> None:
    watched = await watch_slice(fake, watching, 1)
    await watched.scaled(1, 2)
    await watched.watching()
    fake.break_watches()
    fake.write("api-abc", ready(2))  # missed, then sent from the history
    await watched.has(weights(2))
    assert fake.watched_from() == ["1001", "1002"] and len(fake.lists()) == 1
    # A broken watch is no failure: the provider says nothing went wrong.
    assert watched.provided.errors == 0


@pytest_twisted.ensureDeferred
async def test_a_silent_watch_counts_as_broken(
    fake: FakeKubernetes, watching: Any
) -> None:
    # No event nor bookmark for longer than it may: a dead connection.
    fake.write("api-abc", ready(1))
    watched = watching(timing=evolve(FAST, silence=0.3))
    await watched.has(weights(1))
    await until("a second watch", lambda: len(fake.watch_requests()) == 2, 5)
    assert fake.watched_from() == ["1001", "1001"]
    await watched.scaled(1, 2)
    assert watched.provided.errors == 0


@pytest_twisted.ensureDeferred
async def test_the_token_is_sent_as_bearer_and_read_again(
    fake: FakeKubernetes, watching: Any
) -> None:
    watched = await watch_slice(fake, watching, 1)
    assert {each["authorization"] for each in fake.requests} == {"Bearer token-1"}
    # Kubelet rotates the token: the next request sends the new one.
    fake.token = "token-2"
    fake.token_file.write_text("token-2\n")
    await watched.watching()
    fake.break_watches()
    await watched.scaled(1, 2)
    assert fake.requests[-1]["authorization"] == "Bearer token-2"
    # A token the server refuses: the servers stay, the error says why.
    fake.token = "token-3"
    await watched.watching()
    fake.break_watches()
    await until("the error", lambda: watched.error() is not None, 5)
    assert "HTTP 401: Unauthorized" in str(watched.error())
    assert watched.servers() == weights(1, 2)


@pytest_twisted.ensureDeferred
async def test_the_api_unreachable_keeps_the_last_set_and_says_why(
    fake: FakeKubernetes, watching: Any
) -> None:
    watched = await watch_slice(fake, watching, 1, 2)
    await watched.watching()
    await fake.stop()
    await until("the error", lambda: watched.error() is not None, 5)
    assert "refused" in str(watched.error()), watched.error()
    assert watched.servers() == weights(1, 2)
    await sleep(0.5)  # retries, each failing, change nothing
    assert watched.servers() == weights(1, 2)
    assert watched.provided.errors > 1
    fake.write("api-abc", ready(3))
    fake.start()  # the same port again
    await watched.has(weights(3))
    assert watched.error() is None


@pytest_twisted.ensureDeferred
async def test_a_server_the_ca_does_not_sign_is_refused(
    fake: FakeKubernetes, tmp_path: Path, watching: Any
) -> None:
    other = FakeKubernetes(tmp_path / "other")
    fake.ca_file.write_bytes(other.ca_file.read_bytes())
    fake.write("api-abc", ready(1))
    watched = watching()
    await until("the error", lambda: watched.error() is not None, 5)
    assert "certificate verify failed" in str(watched.error()), watched.error()
    assert watched.servers() == {}
    assert fake.requests == []


@pytest_twisted.ensureDeferred
async def test_an_api_server_reached_by_address_is_verified_by_it(
    fake: FakeKubernetes, watching: Any
) -> None:
    # As in a pod: https://$KUBERNETES_SERVICE_HOST, an IP address that
    # the API server's certificate names.
    fake.write("api-abc", ready(1))
    watched = watching(host="127.0.0.1")
    await watched.has(weights(1))
    assert watched.error() is None


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_watch(fake: FakeKubernetes, watching: Any) -> None:
    watched = await watch_slice(fake, watching, 1)
    await watched.watching()
    await watched.provided.stop()
    await until("the watch closed", lambda: fake.watches == [], 5)
    fake.write("api-abc", ready(2))
    await sleep(0.2)
    assert watched.servers() == weights(1)


# Through a real twistd.


@pytest_twisted.ensureDeferred
async def test_twistd_follows_a_scaled_service_with_no_request_lost(
    tmp_path: Path, fake: FakeKubernetes, processes: List[Twistd], make_upstreams: Any
) -> None:
    servers = make_upstreams("a", "b", "c", "d", "e")

    def scale(count: int) -> None:
        # Each pod's port differs here: one slice per port, as the
        # EndpointSlice controller groups endpoints of one port mapping.
        for index, server in enumerate(servers):
            name = f"api-{server.name}"
            if index < count:
                fake.write(name, [endpoint("127.0.0.1")], port=server.port_number)
            elif name in fake.slices:
                stopping = endpoint(
                    "127.0.0.1", ready=False, serving=True, terminating=True
                )
                fake.write(name, [stopping], port=server.port_number)

    scale(2)
    gourmet = await gourmet_with(tmp_path, processes, fake.config())
    # Until the first list is answered the upstream has no server (503).
    for _ in range(100):
        if len((await api(gourmet))["servers"]) == 2:
            break
        await sleep(0.05)
    traffic = Traffic(gourmet)
    try:
        await until("b answers", lambda: traffic.answered["b"] > 0, 10)
        scale(5)
        await until("e answers", lambda: traffic.answered["e"] > 0, 10)
        scale(1)
        await sleep(0.5)
        counts = dict(traffic.answered)
        await until("more to a", lambda: traffic.answered["a"] > counts["a"] + 50, 10)
        assert {name: traffic.answered[name] for name in "bcde"} == {
            name: counts[name] for name in "bcde"
        }
        view = await api(gourmet)
        for name in "bcde":
            fake.delete(f"api-{name}")
        await until("one server", lambda: len(fake.slices) == 1, 1)
    finally:
        await traffic.stop()
    assert traffic.failures == []
    assert view["provider"]["name"] == "kubernetes"
    assert view["provider"]["last_error"] is None
    # Drained servers stay listed, with weight 0, until their slices go.
    assert [each["weight"] for each in view["servers"]] == [1, 0, 0, 0, 0]
