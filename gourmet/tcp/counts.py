"""
What one ``[[streams]]`` listener has carried, for the console and
``/metrics``.
"""

from __future__ import annotations

from attrs import define


@define
class StreamCounts:
    """
    What one stream listener has carried, for the console and ``/metrics``.

    :ivar connections: client connections accepted, in all.
    :ivar active: client connections open now.
    :ivar failed: client connections closed because no server could be
        connected to (every try failed, or none was available).
    :ivar received: bytes received from clients (and sent to servers).
    :ivar sent: bytes received from servers (and sent to clients).
    """

    connections: int = 0
    active: int = 0
    failed: int = 0
    received: int = 0
    sent: int = 0
