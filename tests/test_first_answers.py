"""
Start-up with providers: the proxy accepts once every provider has
answered once (a set of servers or a failure), or after
:data:`~gourmet.discovery.updates.FIRST_ANSWER_WAIT`, so that its first
requests are not answered 503 for an upstream whose servers are about to
be known (Envoy's cluster warming does the same).  A provider here is a
test's own, registered by name, answering when the test says.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any, List, Mapping, Optional

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface import implementer

from gourmet.config.load import parse_config
from gourmet.discovery.provider import (
    IProviderFactory,
    IServerProvider,
    IServerSink,
    ProvidedServer,
)
from gourmet.discovery.registry import PROVIDERS
from gourmet.discovery.updates import FIRST_ANSWER_WAIT, Discovery
from tests.configs import LISTEN
from tests.rawhttp import sleep

UPSTREAM = """\
[upstreams.{name}]
provider = "held"
"""


@implementer(IServerProvider)
class Held:
    """
    A provider that answers only when the test calls :meth:`answer`.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sink: Optional[IServerSink] = None

    def start(self, sink: IServerSink) -> None:
        self.sink = sink

    def stop(self) -> None:
        pass

    def answer(self, *addresses: str) -> None:
        assert self.sink is not None
        self.sink.servers([ProvidedServer(address) for address in addresses])


@implementer(IProviderFactory)
class HeldFactory:
    name = "held"
    keys: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.made: List[Held] = []

    def options(self, raw: Mapping[str, Any], directory: Path) -> None:
        return None

    def provider(self, options: None, upstream: str, reactor: Any) -> Held:
        self.made.append(Held(upstream))
        return self.made[-1]


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldFactory:
    factory = HeldFactory()
    monkeypatch.setitem(PROVIDERS._all(), "held", factory)
    return factory


def configuration(*names: str) -> Any:
    text = "".join(UPSTREAM.format(name=name) for name in names)
    text += "[server]\n[[server.locations]]\nlocation = '/'\nupstream = 'one'\n"
    return parse_config(text, "gourmet.toml")


def test_fires_once_every_provider_has_answered(held: HeldFactory) -> None:
    clock = Clock()
    discovery = Discovery(clock, lambda config: None)
    discovery.update(configuration("one", "two").upstreams)
    answered = discovery.first_answers()
    one, two = held.made
    one.answer("127.0.0.1:9001")
    assert not answered.called
    # A failure is an answer too: waiting longer would not make servers.
    assert two.sink is not None
    two.sink.failed("unreachable")
    assert answered.called
    assert clock.getDelayedCalls() == []


def test_a_silent_provider_is_waited_for_no_longer_than_the_limit(
    held: HeldFactory,
) -> None:
    clock = Clock()
    discovery = Discovery(clock, lambda config: None)
    discovery.update(configuration("one", "two").upstreams)
    answered = discovery.first_answers()
    held.made[0].answer("127.0.0.1:9001")
    with capturedLogs() as events:
        clock.advance(FIRST_ANSWER_WAIT - 0.1)
        assert not answered.called
        clock.advance(0.1)
    assert answered.called and answered.result is None
    [event] = [each for each in events if each.get("upstreams")]
    assert event["upstreams"] == "two"
    # Its late answer changes nothing of start-up, and leaves no error
    # behind (the wait the timeout cancelled was consumed).
    del answered
    with capturedLogs() as later:
        held.made[1].answer("127.0.0.1:9002")
        gc.collect()
    assert [each for each in later if "log_failure" in each] == []
    assert discovery.first_answers().called


@pytest_twisted.ensureDeferred
async def test_a_request_sent_before_the_first_answer_is_served_after_it(
    held: HeldFactory, gourmet: Any, make_upstreams: Any
) -> None:
    (a,) = make_upstreams("a")
    text = UPSTREAM.format(name="one") + (
        f"[server]\n{LISTEN}\n[[server.locations]]\nlocation = '/'\nupstream = 'one'\n"
    )
    running = await gourmet(text)
    answers: List[Any] = []
    response: Deferred[Any] = running.get("/").addCallback(answers.append)
    # A real socket: the request is in the listener's backlog meanwhile.
    await sleep(0.3)
    assert answers == []  # not a 503
    [provider] = held.made
    provider.answer(a.address)
    await response
    [answer] = answers
    assert answer.code == 200
    assert json.loads(await answer.content())["server"] == "a"
