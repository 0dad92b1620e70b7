"""
The reactor's poll loop, without a logging context for every event.

Twisted's epoll reactor hands each socket event to
``twisted.python.log.callWithLogger``, which asks the connection for its
log prefix, copies the context dictionary, and pushes and pops it around
the call, so that a legacy ``log.msg`` can say which connection it came
from.  Gourmet and twisted.web log with ``twisted.logger``, which does not
read that context, and the wrapping took 8% of the proxy's time on PyPy
(vmprof).  This loop calls the reactor's own event handler directly and
logs what escapes it, as the wrapper did.
"""

from __future__ import annotations

import errno
from typing import Any, Optional

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

_log = Logger()


def install_poll_loop(reactor: Any) -> bool:
    """
    Give ``reactor`` this loop if it is Twisted's epoll reactor with its
    own; whether it did.
    """
    if not isinstance(reactor, EPollReactor):
        return False
    if getattr(reactor.doIteration, "__func__", None) is not EPollReactor.doPoll:
        return False  # already installed, or someone else's loop
    if not all(hasattr(reactor, name) for name in ("_selectables", "_poller")):
        return False  # a Twisted that keeps its poller elsewhere: the stock loop
    handle = reactor._doReadOrWrite

    def poll(timeout: Optional[float]) -> None:
        selectables = reactor._selectables
        try:
            events = reactor._poller.poll(
                -1 if timeout is None else timeout, len(selectables)
            )
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except Exception:
                _log.failure(
                    "unhandled error handling {selectable}", selectable=selectable
                )

    # mainLoop looks doIteration up on the instance for every turn.
    reactor.doIteration = poll  # type: ignore[method-assign]
    return True
