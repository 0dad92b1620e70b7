"""
The start-up check: every private name of Twisted's that a module of
:mod:`gourmet._twisted` relies on must exist on the installed Twisted.

The names are listed here rather than in the modules that use them, so
that a name gone from Twisted is reported in one clear line before any of
those modules is imported (an import of a vanished name would fail with a
traceback instead).  Where doing without a module is safe (it only makes
Gourmet faster), Gourmet falls back to Twisted's stock behaviour and says
so; where a defence depends on it, Gourmet refuses to start.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from attrs import frozen
from twisted.logger import Logger

import twisted
from gourmet._twisted.requirements import Requirement, instance, missing

_log = Logger()


def _chunk_decoder(cls: Any) -> Any:
    """
    A chunked decoder that has read a chunk's size line: it then holds the
    size in ``length``.
    """
    decoder = cls(lambda data: None, lambda rest: None)
    decoder.dataReceived(b"5\r\n")
    return decoder


def _file_descriptor(cls: Any) -> Any:
    return cls(reactor=object())


@frozen
class Fenced:
    """
    One module of :mod:`gourmet._twisted` and what it relies on.

    :ivar purpose: what Gourmet loses without it, for the message.
    :ivar optional: whether Gourmet may run without it (stock Twisted
        behaviour is then used, which is slower but as safe).
    """

    module: str
    purpose: str
    optional: bool
    requires: Tuple[Requirement, ...]


_HTTP = "twisted.web.http"

FENCED = (
    Fenced(
        "gourmet._twisted.channel",
        "the strict reading of requests (smuggling defences, body limits)",
        optional=False,
        requires=(
            Requirement(_HTTP, "HTTPChannel", "_maybeChooseTransferDecoder"),
            Requirement(_HTTP, "HTTPChannel", "_transferDecoder", instance),
            Requirement(_HTTP, "HTTPChannel", "_finishRequestBody"),
            Requirement(_HTTP, "HTTPChannel", "_handlingRequest", instance),
            Requirement(_HTTP, "HTTPChannel", "_dataBuffer", instance),
            Requirement(_HTTP, "HTTPChannel", "_respondToBadRequestAndDisconnect"),
            Requirement(_HTTP, "HTTPChannel", "_buffer", instance),
            Requirement(_HTTP, "_IdentityTransferDecoder", "dataReceived"),
            Requirement(_HTTP, "_ChunkedTransferDecoder", "_dataReceived_CHUNK_LENGTH"),
            Requirement(_HTTP, "_ChunkedTransferDecoder", "_dataReceived_TRAILER"),
            Requirement(_HTTP, "_ChunkedTransferDecoder", "_buffer", _chunk_decoder),
            Requirement(_HTTP, "_ChunkedTransferDecoder", "length", _chunk_decoder),
        ),
    ),
    Fenced(
        "gourmet._twisted.headers",
        "response headers passed on as the upstream sent them",
        optional=False,
        requires=(
            Requirement("twisted.web.http_headers", "", "_nameEncoder"),
            Requirement("twisted.web.http_headers", "Headers", "_rawHeaders", instance),
        ),
    ),
    Fenced(
        "gourmet._twisted.sockets",
        "eager writes and buffered reads (speed only)",
        optional=True,
        requires=(
            Requirement("twisted.internet.tcp", "Connection", "_dataReceived"),
            Requirement("twisted.internet.tcp", "Connection", "_aborting"),
            Requirement("twisted.internet.tcp", "Connection", "_writeDisconnecting"),
            Requirement("twisted.internet.tcp", "Connection", "_writeDisconnected"),
            Requirement(
                "twisted.internet.abstract",
                "FileDescriptor",
                "_tempDataBuffer",
                _file_descriptor,
            ),
        ),
    ),
    Fenced(
        "gourmet._twisted.client",
        "quiet client connections to providers (log lines only)",
        optional=True,
        requires=(
            Requirement("twisted.web.client", "", "_HTTP11ClientFactory"),
            Requirement("twisted.web.client", "HTTPConnectionPool", "_factory"),
        ),
    ),
    Fenced(
        "gourmet._twisted.pollloop",
        "the poll loop without a log context per event (speed only)",
        optional=True,
        requires=(
            Requirement("twisted.internet.epollreactor", "EPollReactor", "doPoll"),
            Requirement(
                "twisted.internet.epollreactor", "EPollReactor", "_doReadOrWrite"
            ),
        ),
    ),
)


class TwistedMismatch(Exception):
    """
    The installed Twisted lacks a name a defence of Gourmet's relies on.
    """


def check_twisted(
    fenced: Optional[Tuple[Fenced, ...]] = None, log_fallbacks: bool = True
) -> List[str]:
    """
    Check every fenced module's requirements.

    :param fenced: the modules to check; all of :data:`FENCED` by default.
    :param log_fallbacks: whether to log each optional module done without.
    :return: the optional modules that cannot be used (Gourmet does without
        them).
    :raises TwistedMismatch: naming the first required name that is gone.
    """
    unusable = []
    for each in FENCED if fenced is None else fenced:
        gone = missing(each.requires)
        if not gone:
            continue
        if not each.optional:
            raise TwistedMismatch(
                f"Twisted {twisted.__version__} lacks {gone[0]}, which"
                f" {each.module} ({each.purpose}) relies on: install a Twisted"
                " that Gourmet supports (see its pyproject.toml)"
            )
        if log_fallbacks:
            _log.warn(
                "Twisted {version} lacks {name}: doing without {purpose}",
                version=twisted.__version__,
                name=str(gone[0]),
                purpose=each.purpose,
            )
        unusable.append(each.module)
    return unusable
