"""
Where Gourmet's own log (errors, servers going down and coming back) goes
when ``twistd`` runs it in the foreground: standard error, so that the
access log has standard output to itself.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    PredicateResult,
    textFileLogObserver,
)
from zope.interface import implementer

#: The lines Twisted's DNS client logs for every query: it opens a UDP port
#: on a random source port per query (against spoofed answers) and logs its
#: opening and closing unconditionally.  With ``provider = "dns"`` and a
#: short TTL that is dozens of lines a minute saying nothing; Gourmet opens
#: no other UDP port.
_PER_QUERY_LINES = re.compile(
    r"DNSDatagramProtocol starting on \d+"
    r"|\(UDP Port \d+ Closed\)"
    r"|(Starting|Stopping) protocol <twisted\.names\.dns\.DNSDatagramProtocol "
)


@implementer(ILogFilterPredicate)
class _NotPerQueryDNS:
    """
    Leave out the lines Twisted's DNS client logs for each query.
    """

    def __call__(self, event: LogEvent) -> PredicateResult:
        if event.get("log_namespace") == "log_legacy" and _PER_QUERY_LINES.match(
            str(event.get("log_text", ""))
        ):
            return PredicateResult.no
        return PredicateResult.maybe


def quiet_dns() -> ILogFilterPredicate:
    """
    The filter that leaves out the lines Twisted's DNS client logs for each
    query.
    """
    return _NotPerQueryDNS()


def foreground_observer(twistd_options: Optional[Any]) -> Optional[ILogObserver]:
    """
    The log observer Gourmet wants for ``twistd -n`` with no ``--logfile``
    or ``--logger`` given, or None to leave twistd's choice alone.

    :param twistd_options: twistd's own options (the ``parent`` of the
        plugin's options), or None outside twistd.
    """
    if twistd_options is None:
        return None
    if not twistd_options.get("nodaemon") or twistd_options.get("logfile"):
        return None
    if twistd_options.get("logger"):
        return None
    return FilteringLogObserver(textFileLogObserver(sys.stderr), [quiet_dns()])
