"""
CPython's garbage collector, kept off what lives as long as the process.

A full collection of CPython's cyclic collector visits every container
object it tracks.  Gourmet started (Twisted, Klein, the configuration and
what they built) is some 70,000 of them, and one full collection of those
took 35 to 60 ms on the benchmark's machine; under load, with requests
leaving cyclic garbage behind, full collections come every few seconds, and
each one stalls every connection at once: the slowest requests of a run
were those that met one.  What start-up made lives until Gourmet stops, so
once the service is built (before it listens), :func:`settle` collects
what start-up threw away and
moves the rest out of the collector's sight (``gc.freeze``): a full
collection then looks only at what requests made.  After a reload, what the
old configuration held is let go, collected once, and what is kept is
frozen again.

PyPy's collector is incremental and has no freeze: there this does nothing.
"""

from __future__ import annotations

import gc


def settle() -> bool:
    """
    Collect the garbage, then freeze every object left; whether this
    Python can (CPython).
    """
    freeze = getattr(gc, "freeze", None)
    if freeze is None:
        return False
    gc.unfreeze()
    gc.collect()
    freeze()
    return True


def settle_again() -> bool:
    """
    :func:`settle` after a reload, if Gourmet settled at start-up (not in
    a process that never did, such as a test's); whether it did.
    """
    if not getattr(gc, "get_freeze_count", lambda: 0)():
        return False
    return settle()
