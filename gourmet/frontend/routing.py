"""
Routing: which location a request belongs to, and the target it is
forwarded with.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

from gourmet.config.model import LocationConfig
from gourmet.http import hosts


def _passed_path(match: re.Match[str]) -> bytes:
    """
    The path a ``pass_match`` location forwards: ``/`` and the last capture
    group (the whole match when the pattern has no group; nothing when that
    group did not take part).  No second slash is added to a capture that
    starts with one.
    """
    groups = match.re.groups
    captured = (match.group(groups) if groups else match.group(0)) or ""
    if not captured.startswith("/"):
        captured = "/" + captured
    return captured.encode("latin-1")


class Router:
    """
    Finds the first location, in configuration order, whose pattern is found
    in the request path (and whose host, if it has one, is the request's).

    Patterns are searched in the path as the client sent it, still
    percent-encoded and without the query string, as HAProxy's ``path``
    matches; this is the Go original's behaviour too.
    """

    def __init__(self, locations: Sequence[LocationConfig]) -> None:
        self.locations = tuple(locations)

    def route(
        self, path: bytes, query: bytes, host: Optional[bytes]
    ) -> Optional[Tuple[int, bytes]]:
        """
        :param path: the request path, without the query.
        :param query: the query string without ``?``; empty when none.
        :param host: the request's Host header, if it has one.
        :return: the index of the matching location and the target to
            forward (path and query); None when no location matches.
        """
        text = path.decode("latin-1")
        host_name = (
            hosts.host_name(host.decode("latin-1")) if host is not None else None
        )
        for index, location in enumerate(self.locations):
            if location.host is not None and location.host.lower() != host_name:
                continue
            match = location.pattern.search(text)
            if match is None:
                continue
            target = _passed_path(match) if location.pass_match else path
            if query:
                target += b"?" + query
            return index, target
        return None
