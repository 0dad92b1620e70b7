"""
Applying what providers find: each upstream with a provider gets its
latest good set of servers the way a reload gives the file's (servers that
stay keep their health, figures and the operator's weight and state; new
ones start, with slow start if configured; removed ones finish what they
have and get nothing new), and keeps that set while the provider fails.
"""

from __future__ import annotations

from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

from attrs import asdict, evolve
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gourmet.config.model import MAX_WEIGHT, UpstreamConfig, UpstreamServerConfig
from gourmet.config.origin import parse_origin
from gourmet.discovery.provider import IServerProvider, IServerSink, ProvidedServer
from gourmet.discovery.registry import PROVIDERS

#: What applies an upstream's configuration with a new set of servers.
Apply = Callable[[UpstreamConfig], None]
Found = Tuple[ProvidedServer, ...]

#: How long start-up waits for every provider's first answer before the
#: proxy accepts anyway (Envoy's ``initial_fetch_timeout`` is 15 s too).
FIRST_ANSWER_WAIT = 15.0


def server_config(
    found: ProvidedServer, upstream: UpstreamConfig
) -> UpstreamServerConfig:
    """
    A provider's server as a static one would be configured.

    :raises ValueError: for an address or weight Gourmet cannot use.
    """
    origin = parse_origin(found.address, tls_verify=found.tls_verify)
    weight = 1 if found.weight is None else found.weight
    if not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight {weight}: expected 0 to {MAX_WEIGHT}")
    return UpstreamServerConfig(
        path=found.address,
        origin=origin,
        weight=0 if found.draining else weight,
        max_fail=upstream.max_fail if found.max_fail is None else found.max_fail,
        fail_timeout=(
            upstream.fail_timeout if found.fail_timeout is None else found.fail_timeout
        ),
    )


@implementer(IServerSink)
class ProvidedUpstream:
    """
    One upstream's provider, running, and what it said last.

    :ivar found: the latest good set; None before the first.
    :ivar updates: sets received; :ivar errors: failures reported.
    :ivar last_update: when the latest set came; :ivar last_error: the
        latest failure, until a set comes; :ivar error_since: when failures
        began.
    :ivar metadata: what the provider said of each server, by address.
    :ivar has_answered: whether the provider answered (a set or a failure)
        or inherited a set.
    """

    log = Logger()

    def __init__(
        self,
        config: UpstreamConfig,
        provider: IServerProvider,
        apply: Apply,
        clock: IReactorTime,
        found: Optional[Found] = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self._apply = apply
        self._clock = clock
        self.found = found
        self.metadata: Dict[str, Mapping[str, str]] = {}
        self.updates = 0
        self.errors = 0
        self.last_update: Optional[float] = None
        self.last_error: Optional[str] = None
        self.error_since: Optional[float] = None
        self._stopped = False
        self.has_answered = found is not None
        self._waiting: List[Deferred[None]] = []

    def answered(self) -> Deferred[None]:
        """
        Fires once the provider has answered (a set or a failure), or at
        once if it has, or if a set was inherited from the one it replaces.
        """
        if self.has_answered:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def _heard(self) -> None:
        self.has_answered = True
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            if not each.called:  # not cancelled by a timeout
                each.callback(None)

    def start(self) -> None:
        self.provider.start(self)

    def stop(self) -> Any:
        self._stopped = True
        return maybeDeferred(self.provider.stop)

    def servers(self, found: Sequence[ProvidedServer]) -> None:
        if self._stopped:
            return
        try:
            for each in found:
                server_config(each, self.config)
        except ValueError as error:
            self.failed(f"a server it found is not usable: {error}")
            return
        self.updates += 1
        self.last_update = self._clock.seconds()
        self.metadata = {each.address: each.metadata for each in found}
        if self.last_error is not None:
            self.log.info(
                "upstream {upstream}: provider {provider} answers again",
                upstream=self.config.name,
                provider=self.config.provider,
            )
            self.last_error = self.error_since = None
        found = tuple(found)
        if found != self.found:
            self._log_change(self.found or (), found)
            self.found = found
            self._apply(self.with_servers(self.config))
        self._heard()

    def failed(self, reason: str) -> None:
        if self._stopped:
            return
        self.errors += 1
        if reason != self.last_error:
            # Once per new reason, not at every retry of the same failure.
            self.log.error(
                "upstream {upstream}: provider {provider} failed: {reason}"
                " (its {count} servers stay)",
                upstream=self.config.name,
                provider=self.config.provider,
                reason=reason,
                count=len(self.found or ()),
            )
        self.last_error = reason
        if self.error_since is None:
            self.error_since = self._clock.seconds()
        self._heard()

    def with_servers(self, config: UpstreamConfig) -> UpstreamConfig:
        """
        ``config`` with the latest good set of servers.
        """
        servers = tuple(server_config(each, config) for each in self.found or ())
        return evolve(config, servers=servers)

    def _log_change(self, before: Found, after: Found) -> None:
        old = {each.address for each in before}
        new = {each.address for each in after}
        self.log.info(
            "upstream {upstream}: provider {provider} found {count} servers"
            " ({added} added, {removed} removed)",
            upstream=self.config.name,
            provider=self.config.provider,
            count=len(after),
            added=", ".join(sorted(new - old)) or "none",
            removed=", ".join(sorted(old - new)) or "none",
        )


class Discovery:
    """
    The providers of a configuration's upstreams, started, restarted by
    reloads that change them, and stopped.
    """

    log = Logger()

    def __init__(self, reactor: Any, apply: Apply) -> None:
        self._reactor = reactor
        self._apply = apply
        self.upstreams: Dict[str, ProvidedUpstream] = {}

    def with_servers(self, config: UpstreamConfig) -> UpstreamConfig:
        """
        ``config`` as its upstream runs: with a provider, the latest good
        set it found (a reload's table has none).
        """
        running = self.upstreams.get(config.name)
        if config.provider == "static" or running is None:
            return config
        return running.with_servers(config)

    def update(self, configs: Iterable[UpstreamConfig]) -> None:
        """
        Run the providers of ``configs``: those whose options are the same
        keep running (and their servers); others start, keeping the
        servers of the one they replace until they find theirs.
        """
        wanted = {each.name: each for each in configs if each.provider != "static"}
        kept: Dict[str, Optional[Found]] = {}
        for name, running in list(self.upstreams.items()):
            config = wanted.get(name)
            if config is not None and _same_provider(config, running.config):
                running.config = config
                continue
            running.stop()
            del self.upstreams[name]
            kept[name] = running.found
        for name, config in wanted.items():
            if name not in self.upstreams:
                self._start(config, kept.get(name))

    def _start(self, config: UpstreamConfig, found: Optional[Found]) -> None:
        factory = PROVIDERS[config.provider]
        provider = factory.provider(config.provider_options, config.name, self._reactor)
        running = ProvidedUpstream(config, provider, self._apply, self._reactor, found)
        self.upstreams[config.name] = running
        running.start()

    def first_answers(self, seconds: float = FIRST_ANSWER_WAIT) -> Deferred[None]:
        """
        Fires once every provider running has answered once, or after
        ``seconds`` (saying which have not): what the proxy waits for
        before it accepts, so that its first requests do not get 503 for
        an upstream whose servers are about to be known.
        """
        running = list(self.upstreams.values())
        # Errors consumed: a timeout cancels the waits of the silent ones.
        every: Deferred[None] = gatherResults(
            [each.answered() for each in running], consumeErrors=True
        ).addCallback(lambda _: None)

        def late(result: object, timeout: float) -> None:
            silent = sorted(e.config.name for e in running if not e.has_answered)
            self.log.warn(
                "no servers found within {timeout:g} s for {upstreams}: accepting"
                " anyway (their requests get 503 until their providers answer)",
                timeout=timeout,
                upstreams=", ".join(silent),
            )

        return every.addTimeout(seconds, self._reactor, onTimeoutCancel=late)

    def stop(self) -> Any:
        """
        Stop every provider; fires once they have.
        """
        running, self.upstreams = list(self.upstreams.values()), {}
        return DeferredList([each.stop() for each in running])


def _same_provider(one: UpstreamConfig, other: UpstreamConfig) -> bool:
    return (one.provider, one.provider_options) == (
        other.provider,
        other.provider_options,
    )


def found_as_data(found: Iterable[ProvidedServer]) -> List[Dict[str, Any]]:
    """
    A provider's set as plain data (for a worker process).
    """
    return [{**asdict(each), "metadata": dict(each.metadata)} for each in found]


def found_from_data(data: Iterable[Mapping[str, Any]]) -> Found:
    """
    The set :func:`found_as_data` made.
    """
    return tuple(ProvidedServer(**each) for each in data)


class ProvidedElsewhere(Discovery):
    """
    The providers of a worker process: none run here; the supervisor's
    sets come with :meth:`provided`.
    """

    def __init__(self, reactor: Any, apply: Apply) -> None:
        super().__init__(reactor, apply)
        self._configs: Dict[str, UpstreamConfig] = {}
        self._found: Dict[str, Found] = {}

    def with_servers(self, config: UpstreamConfig) -> UpstreamConfig:
        found = self._found.get(config.name)
        if config.provider == "static" or found is None:
            return config
        servers = tuple(server_config(each, config) for each in found)
        return evolve(config, servers=servers)

    def update(self, configs: Iterable[UpstreamConfig]) -> None:
        self._configs = {each.name: each for each in configs}

    def provided(self, upstream: str, found: Found) -> None:
        """
        The supervisor's provider found ``found`` for ``upstream``.
        """
        self._found[upstream] = found
        config = self._configs.get(upstream)
        if config is not None:
            self._apply(self.with_servers(config))
