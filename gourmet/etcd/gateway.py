"""
etcd's v3 HTTP/JSON gateway, as ``provider = "etcd"`` speaks it (etcd 3.4
and later serve it under ``/v3/``): calls that answer one JSON object, and
the watch's stream of them, one a line; over connections with TCP
keepalive, made one per request.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Callable, List, Optional, cast

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as NoAnswer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from gourmet._twisted.client import QuietPool
from gourmet.etcd.options import EtcdOptions

#: The longest message Gourmet reads from etcd: a range of every key, or one
#: watch response.  Past it the answer is refused rather than buffered.
MAX_MESSAGE = 16 * 1024 * 1024
#: TCP keepalive on every connection to etcd: seconds of silence before
#: TCP asks whether etcd is still there, seconds between asks, and asks
#: unanswered before it gives up.  A watch is silent while nothing changes;
#: without these, one to an etcd that vanished without a word (its host
#: gone, a partition) would wait for the system's two hours.
KEEPALIVE = (10, 5, 2)


class EtcdSaid(Exception):
    """
    etcd answered with an error, or with what is not its API.
    """


class Gateway:
    """
    Calls to etcd members, each within ``timeout`` seconds (but for a
    stream's body), with the authentication token :ivar token: if set.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        # A connection per request: one kept idle would be found dead at the
        # next use after etcd restarts, and a POST is not retried.
        pool = QuietPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(
            reactor, Endpoints(reactor, timeout), pool=pool
        )
        self._http = HTTPClient(agent)
        self.token: Optional[str] = None

    def call(self, endpoint: str, path: str, request: Any) -> Deferred[Any]:
        """
        One call that is not a stream: its answer.

        :raises EtcdSaid: for an error, or what is not etcd's answer.
        """
        answering = Deferred.fromCoroutine(self._answer(endpoint, path, request))
        return answering.addTimeout(self._timeout, self._reactor)

    async def _answer(self, endpoint: str, path: str, request: Any) -> Any:
        response = await self._post(endpoint, path, request)
        answers: List[Any] = []
        body = JSONLines(answers.append)
        response.deliverBody(body)
        await body.done
        if body.error is not None:
            raise body.error
        if not answers:
            raise EtcdSaid("the answer was cut: " + why_lost(body.reason))
        answer = answers[0] if len(answers) == 1 else None
        if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
            # A stream's call with one request (a lease's keepalive): its
            # one answer, wrapped by the gateway.
            answer = answer["result"]
        if (
            response.code != 200
            or not isinstance(answer, dict)
            or "header" not in answer
        ):
            raise EtcdSaid(_error_text(response.code, answers))
        return answer

    async def stream(
        self,
        endpoint: str,
        path: str,
        request: Any,
        received: Callable[[Any], None],
    ) -> JSONLines:
        """
        A call whose answer is a stream: its body, each message given to
        ``received`` as it comes, until ``done`` fires.

        :raises EtcdSaid: if etcd refused it.
        """
        response = await self._post(endpoint, path, request)
        if response.code != 200:
            answers: List[Any] = []
            body = JSONLines(answers.append)
            response.deliverBody(body)
            await body.done.addTimeout(self._timeout, self._reactor)
            raise EtcdSaid(_error_text(response.code, answers))
        stream = JSONLines(received)
        response.deliverBody(stream)
        return stream

    def _post(self, endpoint: str, path: str, body: Any) -> Any:
        headers = Headers({b"Content-Type": [b"application/json"]})
        if self.token is not None:
            # etcd's gateway takes the token as it is, with no scheme.
            headers.addRawHeader(b"Authorization", self.token.encode("utf-8"))
        return self._http.post(
            endpoint + path,
            data=json.dumps(body).encode("utf-8"),
            headers=headers,
            unbuffered=True,
            timeout=self._timeout,
            reactor=self._reactor,
        )


async def sign_in(gateway: Gateway, endpoint: str, options: EtcdOptions) -> None:
    """
    Get ``gateway`` a new token from ``endpoint`` for ``options``' user.
    """
    gateway.token = None
    credentials = {"name": options.username, "password": options.password}
    answer = await gateway.call(endpoint, "/v3/auth/authenticate", credentials)
    gateway.token = str(answer["token"])


def message_of(answer: Any) -> str:
    """
    What etcd says in an error object.
    """
    if not isinstance(answer, dict):
        return "not an answer of etcd v3 API"
    # A call's error has the message at the top; a stream's, under "error"
    # (etcd's gRPC gateway).
    inner = answer.get("error")
    message = answer.get("message") or (
        inner.get("message") if isinstance(inner, dict) else None
    )
    return str(message or "not an answer of etcd v3 API")


def _error_text(code: int, answers: List[Any]) -> str:
    return f"HTTP {code}: " + message_of(answers[0] if answers else None)


def why_lost(reason: Optional[Failure]) -> str:
    """
    Why a connection or a request ended, in a few words.
    """
    if reason is None:
        return "no reason given"
    if reason.check(EtcdSaid):
        return reason.getErrorMessage()
    # twisted.web's ResponseFailed and ResponseNeverReceived hold the
    # connection's own reasons.
    inner = getattr(reason.value, "reasons", None)
    if inner:
        reason = inner[0]
    if reason.check(CancelledError, NoAnswer):
        # The timeout's: treq's cancels the request, addTimeout the read.
        return "no answer in time"
    return reason.getErrorMessage() or repr(reason.value)


class JSONLines(Protocol):
    """
    A response body of JSON messages, one a line (the watch's stream; a
    call's answer is one), each given to ``received`` as it comes.  What
    ``received`` raises as :class:`EtcdSaid` ends the body.

    :ivar error: what ended the body early: a message that was not JSON, or
        what ``received`` raised.
    :ivar reason: why the body ended.
    :ivar done: fires when the body ends; cancelled, closes it.
    :ivar closed: fires once its connection is closed.
    """

    def __init__(self, received: Callable[[Any], None]) -> None:
        self._received = received
        self._parts: List[bytes] = []
        self._size = 0
        self.error: Optional[Exception] = None
        self.reason: Optional[Failure] = None
        self.done: Deferred[None] = Deferred(lambda ignored: self.abort())
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.error is not None:
            return
        *lines, rest = data.split(b"\n")
        if lines:
            self._deliver(b"".join([*self._parts, lines[0]]))
            for line in lines[1:]:
                self._deliver(line)
            self._parts, self._size = [], 0
        self._parts.append(rest)
        self._size += len(rest)
        if self._size > MAX_MESSAGE and self.error is None:
            self._stop(EtcdSaid(f"a message of over {MAX_MESSAGE} bytes"))

    def _deliver(self, line: bytes) -> None:
        if self.error is not None or not line.strip():
            return
        try:
            self._received(json.loads(line))
        except EtcdSaid as error:
            self._stop(error)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # Not etcd's API as Gourmet knows it: this endpoint fails.
            self._stop(EtcdSaid(f"not an answer of etcd v3 API: {error!r}"))

    def _stop(self, error: Exception) -> None:
        self.error = error
        self.abort()

    def abort(self) -> None:
        # A response body's transport is a producer: stopping it closes
        # the connection (twisted.web.client's way to abandon a body).
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._parts:
            self._deliver(b"".join(self._parts))
        self.reason = reason
        self.closed.callback(None)
        # Already called when cancelled: the canceller closed the body.
        if not self.done.called:
            self.done.callback(None)


@implementer(IAgentEndpointFactory)
class Endpoints:
    """
    Connections to etcd as the Agent would make them, with TCP keepalive
    (:data:`KEEPALIVE`) under TLS, when there is TLS.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        tcp = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        endpoint = _KeptAlive(tcp)
        if uri.scheme == b"https":
            creator = self._tls.creatorForNetloc(uri.host, uri.port)
            return wrapClientTLS(creator, endpoint)
        return endpoint


@implementer(IStreamClientEndpoint)
class _KeptAlive:
    """
    A TCP endpoint whose connections have :data:`KEEPALIVE`.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._endpoint.connect(factory).addCallback(_keep_alive)


def _keep_alive(protocol: IProtocol) -> IProtocol:
    transport = cast(Any, protocol).transport
    transport.setTcpKeepAlive(True)
    handle = transport.getHandle()
    idle, interval, count = KEEPALIVE
    for name, value in [
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
    ]:
        # Linux's names; a system without them keeps its own timings.
        option = getattr(socket, name, None)
        if option is not None:
            handle.setsockopt(socket.IPPROTO_TCP, option, value)
    return protocol
